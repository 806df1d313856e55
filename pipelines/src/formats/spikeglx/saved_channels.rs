//! Which acquired channels a `.meta` says were saved, in file order (`~snsChanMap`,
//! `snsSaveChanSubset`), which group each belongs to (AP/LF/SY, MN/MA/XA/XD) and the naming and
//! µV-per-bit rules both stream types share.

use crate::stream::ChannelKind;

use super::meta_map::{short, Ctx};
use super::{geometry, MetaError, MAX_CHANNELS};

/// Parses `snsSaveChanSubset`: `all` (channels `0..n_saved`) or comma-separated acquired-channel
/// indices and inclusive ranges (`0:5,8,12:150`). Returns them ascending without repeats, the
/// order SpikeGLX writes them in the `.bin`.
pub fn parse_save_chan_subset(text: &str, n_saved: usize) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok((0..n_saved.min(MAX_CHANNELS)).collect());
    }
    let index = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{:?} is not a channel index", short(s.trim())))
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty element".into());
        }
        let (lo, hi) = match part.split_once(':') {
            Some((a, b)) => (index(a)?, index(b)?),
            None => {
                let i = index(part)?;
                (i, i)
            }
        };
        if hi < lo {
            return Err(format!("range {part} runs backwards"));
        }
        if hi - lo >= MAX_CHANNELS || out.len() + (hi - lo) >= MAX_CHANNELS {
            return Err(format!("more than {MAX_CHANNELS} channels"));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One saved channel: its acquired-channel index and, from `~snsChanMap`, its name.
pub(super) struct Saved {
    pub(super) acquired: usize,
    pub(super) name: Option<String>,
}

/// The saved channels in file order: from `~snsChanMap` when it lists exactly `nSavedChans`
/// channels, else from `snsSaveChanSubset` (absent = all).
pub(super) fn saved_channels(cx: &Ctx, n_saved: usize) -> Result<Vec<Saved>, MetaError> {
    if let Some(map) = cx.get("~snsChanMap") {
        match parse_chan_map(map) {
            Ok(list) if list.len() == n_saved => {
                return Ok(list
                    .into_iter()
                    .map(|(name, acquired)| Saved {
                        acquired,
                        name: Some(name),
                    })
                    .collect())
            }
            Ok(list) => tracing::debug!(
                "{}: `~snsChanMap` lists {} channels, nSavedChans = {n_saved}; using snsSaveChanSubset",
                cx.name,
                list.len()
            ),
            Err(why) => tracing::warn!(
                "{}: ignoring unreadable `~snsChanMap` ({why}); using snsSaveChanSubset",
                cx.name
            ),
        }
    }
    let subset = cx.get("snsSaveChanSubset").unwrap_or("all");
    let list = parse_save_chan_subset(subset, n_saved)
        .map_err(|why| cx.invalid("snsSaveChanSubset", subset, why))?;
    if list.len() != n_saved {
        return Err(cx.inconsistent(format!(
            "`snsSaveChanSubset` = {:?} lists {} channels but `nSavedChans` = {n_saved}",
            short(subset),
            list.len()
        )));
    }
    Ok(list
        .into_iter()
        .map(|acquired| Saved {
            acquired,
            name: None,
        })
        .collect())
}

/// `(384,384,1)(AP0;0:0)(AP1;1:1)…(SY0;768:768)` → `[("AP0", 0), …]` (header skipped).
fn parse_chan_map(text: &str) -> Result<Vec<(String, usize)>, String> {
    let groups = geometry::parenthesised(text)?;
    let mut out = Vec::with_capacity(groups.len().saturating_sub(1));
    for g in groups.iter().skip(1) {
        let parsed = g.split_once(';').and_then(|(name, rest)| {
            let chan = rest.split(':').next()?.trim().parse::<usize>().ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| (name.to_string(), chan))
        });
        match parsed {
            Some(entry) => out.push(entry),
            None => return Err(format!("entry {:?} is not `NAME;channel:order`", short(g))),
        }
    }
    Ok(out)
}

/// Channel groups of both stream types, in acquisition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Ap,
    Lf,
    Sy,
    Mn,
    Ma,
    Xa,
    Xd,
}

impl Group {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Group::Ap => "AP",
            Group::Lf => "LF",
            Group::Sy => "SY",
            Group::Mn => "MN",
            Group::Ma => "MA",
            Group::Xa => "XA",
            Group::Xd => "XD",
        }
    }

    pub(super) fn kind(self) -> ChannelKind {
        match self {
            Group::Ap => ChannelKind::Ap,
            Group::Lf => ChannelKind::Lf,
            Group::Sy => ChannelKind::Sync,
            Group::Mn | Group::Ma | Group::Xa => ChannelKind::Analog,
            Group::Xd => ChannelKind::Digital,
        }
    }

    /// From a `~snsChanMap` name such as `AP12` or `XD0`.
    fn from_name(name: &str, groups: &[Group]) -> Option<(Group, usize)> {
        groups.iter().find_map(|g| {
            let index = name.strip_prefix(g.prefix())?.parse().ok()?;
            Some((*g, index))
        })
    }
}

/// Assigns each saved channel its group and index within the group: by the acquired counts
/// (`acqApLfSy` / `acqMnMaXaDw`; the saved counts stand in when everything was saved), else by
/// the `~snsChanMap` names.
pub(super) fn classify<const N: usize>(
    cx: &Ctx,
    saved: &[Saved],
    groups: &[Group; N],
    counts_key: &str,
    saved_counts_key: &str,
) -> Result<Vec<(Group, usize)>, MetaError> {
    let all_saved = cx
        .get("snsSaveChanSubset")
        .is_none_or(|s| s.trim() == "all");
    let counts = match cx.counts::<N>(counts_key)? {
        Some(c) => Some(c),
        None if all_saved => cx.counts::<N>(saved_counts_key)?,
        None => None,
    };
    let counts = counts.as_ref().map(|c| &c[..]);
    let mut out = Vec::with_capacity(saved.len());
    for s in saved {
        let by_count = counts.map(|counts| {
            let mut base = 0usize;
            for (g, n) in groups.iter().zip(counts) {
                if s.acquired < base + n {
                    return Some((*g, s.acquired - base));
                }
                base += n;
            }
            None
        });
        let by_name = || s.name.as_deref().and_then(|n| Group::from_name(n, groups));
        match (by_count, by_name()) {
            (Some(Some(c)), _) => out.push(c),
            (Some(None), _) => {
                let total: usize = counts.map(|c| c.iter().sum()).unwrap_or(0);
                return Err(cx.inconsistent(format!(
                    "saved channel {} is beyond the {total} acquired channels (`{counts_key}` = {})",
                    s.acquired,
                    cx.get(counts_key).unwrap_or_default()
                )));
            }
            (None, Some(c)) => out.push(c),
            (None, None) => return Err(cx.missing(counts_key)),
        }
    }
    Ok(out)
}

pub(super) fn channel_name(s: &Saved, group: Group, index: usize) -> String {
    s.name
        .clone()
        .unwrap_or_else(|| format!("{}{index}", group.prefix()))
}

pub(super) fn uv_per_bit(
    range_v: Option<f64>,
    max_int: Option<f64>,
    gain: Option<f64>,
) -> Option<f64> {
    let (r, m, g) = (range_v?, max_int?, gain?);
    let uv = r / m / g * 1e6;
    (r > 0.0 && m > 0.0 && g > 0.0 && uv.is_finite()).then_some(uv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_chan_subset_parsing() {
        let v = parse_save_chan_subset("0:5,8,12:150", 999).unwrap();
        let want: Vec<usize> = (0..=5).chain([8]).chain(12..=150).collect();
        assert_eq!(v, want);
        assert_eq!(parse_save_chan_subset("all", 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            parse_save_chan_subset(" 0:383, 768 ", 0).unwrap().len(),
            385
        );
        // SpikeGLX writes the .bin in ascending acquired order whatever the list's order.
        assert_eq!(
            parse_save_chan_subset("768,0:1", 0).unwrap(),
            vec![0, 1, 768]
        );
        for bad in ["", "5:2", "a", "1:2:3", "0:5,,8", "-1", "0:99999999999"] {
            assert!(parse_save_chan_subset(bad, 10).is_err(), "{bad:?} accepted");
        }
    }
}
