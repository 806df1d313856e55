//! SpikeGLX `.meta` files (ALGORITHMS.md §1): the `key=value` map, and from it the description
//! of the `.bin` next to it — rate (exact text), saved channels in file order with their kind,
//! µV per bit and, for imec probes, the position of each contact as probeinterface 0.4.2 reads it.
//!
//! Channel numbering: SpikeGLX numbers the *acquired* channels of a stream (imec: AP, then LF,
//! then SY, with counts `acqApLfSy`; NI-DAQ: MN, MA, XA, XD with counts `acqMnMaXaDw`) and saves a
//! subset of them (`snsSaveChanSubset`, also listed with names in `~snsChanMap`) in ascending
//! order. An AP or LF channel `i` is readout channel `i` of the probe, i.e. entry `i` of
//! `~imroTbl`, which names its electrode; [`geometry`] places the electrode.

mod geometry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::stream::{parse_rate, ChannelInfo, ChannelKind, ContinuousInfo};

use geometry::{Contact, ImroTable, ProbePart};

/// More saved channels than any SpikeGLX stream has; larger counts are treated as corrupt.
const MAX_CHANNELS: usize = 100_000;
/// A `.meta` is a few hundred kB at most; refuse to slurp e.g. a `.bin` passed by mistake.
const MAX_META_BYTES: u64 = 16 << 20;
/// NI-DAQ int16 full scale.
const NI_MAX_INT: f64 = 32768.0;

/// Why a `.meta` could not be understood. Every message starts with the file's name.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: `{key}` missing")]
    Missing { file: String, key: String },
    #[error("{file}: `{key}` = {value:?} is not valid: {why}")]
    Invalid {
        file: String,
        key: String,
        /// The value, shortened if long.
        value: String,
        why: String,
    },
    #[error("{file}: {why}")]
    Inconsistent { file: String, why: String },
    #[error("{file}: unsupported: {why}")]
    Unsupported { file: String, why: String },
}

impl MetaError {
    /// The file the error is about, as given to [`SpikeGlxMeta::read`] or [`SpikeGlxMeta::parse`].
    pub fn file(&self) -> &str {
        match self {
            MetaError::Io { file, .. }
            | MetaError::Missing { file, .. }
            | MetaError::Invalid { file, .. }
            | MetaError::Inconsistent { file, .. }
            | MetaError::Unsupported { file, .. } => file,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Ap,
    Lf,
    Nidq,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            StreamKind::Ap => "ap",
            StreamKind::Lf => "lf",
            StreamKind::Nidq => "nidq",
        }
    }
}

/// A parsed SpikeGLX `.meta`: the raw `key=value` map plus the fields the daemon needs.
#[derive(Debug, Clone)]
pub struct SpikeGlxMeta {
    name: String,
    values: HashMap<String, String>,
    kind: StreamKind,
    sampling_hz_text: String,
    sampling_hz: f64,
    n_saved_chans: usize,
    file_size_bytes: Option<u64>,
    first_sample: i64,
    probe: Option<String>,
    channels: Vec<ChannelInfo>,
}

impl SpikeGlxMeta {
    /// Reads and parses a `.meta` file; errors name the path.
    pub fn read(path: &Path) -> Result<Self, MetaError> {
        let file = path.display().to_string();
        let io = |source| MetaError::Io {
            file: file.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_META_BYTES {
            return Err(MetaError::Inconsistent {
                file,
                why: format!("{len} bytes is far too large for a SpikeGLX .meta"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::parse(&String::from_utf8_lossy(&bytes), &file)
    }

    /// Parses the text of a `.meta`; `name` (usually the file name) is used in errors and, when
    /// the meta itself does not say, to tell an `.ap` from an `.lf` stream.
    pub fn parse(text: &str, name: &str) -> Result<Self, MetaError> {
        let mut values = HashMap::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !key.is_empty() {
                values.insert(key.to_string(), value.trim().to_string());
            }
        }
        let cx = Ctx {
            name,
            values: &values,
        };
        if values.is_empty() {
            return Err(cx.inconsistent("no `key=value` lines: not a SpikeGLX .meta".into()));
        }

        let kind = match cx.get("typeThis") {
            Some("nidq") => StreamKind::Nidq,
            Some("imec") => imec_kind(&cx)?,
            Some(other) => {
                return Err(MetaError::Unsupported {
                    file: name.into(),
                    why: format!(
                        "`typeThis` = {:?}: only imec (ap, lf) and nidq streams are read",
                        short(other)
                    ),
                })
            }
            None if cx.get("niSampRate").is_some() && cx.get("imSampRate").is_none() => {
                StreamKind::Nidq
            }
            None => imec_kind(&cx)?,
        };

        let rate_key = if kind == StreamKind::Nidq {
            "niSampRate"
        } else {
            "imSampRate"
        };
        let sampling_hz_text = cx.require(rate_key)?.to_string();
        let sampling_hz = parse_rate(&sampling_hz_text)
            .map_err(|why| cx.invalid(rate_key, &sampling_hz_text, why))?;

        let n_saved_chans: usize = cx
            .num("nSavedChans")?
            .ok_or_else(|| cx.missing("nSavedChans"))?;
        if n_saved_chans == 0 || n_saved_chans > MAX_CHANNELS {
            return Err(cx.invalid(
                "nSavedChans",
                &n_saved_chans.to_string(),
                format!("expected 1 to {MAX_CHANNELS} channels"),
            ));
        }
        let file_size_bytes: Option<u64> = cx.num("fileSizeBytes")?;
        let first_sample: i64 = cx.num("firstSample")?.unwrap_or(0);

        let saved = saved_channels(&cx, n_saved_chans)?;
        let (probe, channels) = match kind {
            StreamKind::Nidq => (None, nidq_channels(&cx, &saved)?),
            StreamKind::Ap | StreamKind::Lf => imec_channels(&cx, &saved)?,
        };

        Ok(SpikeGlxMeta {
            name: name.to_string(),
            values,
            kind,
            sampling_hz_text,
            sampling_hz,
            n_saved_chans,
            file_size_bytes,
            first_sample,
            probe,
            channels,
        })
    }

    /// A raw value; table keys may be asked for with or without their `~` (`~imroTbl`).
    pub fn get(&self, key: &str) -> Option<&str> {
        lookup(&self.values, key)
    }

    /// The name given to [`Self::parse`] (the path for [`Self::read`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"ap"`, `"lf"` or `"nidq"`.
    pub fn stream_kind(&self) -> &str {
        self.kind.as_str()
    }

    /// `imSampRate` or `niSampRate` exactly as written.
    pub fn sampling_hz_text(&self) -> &str {
        &self.sampling_hz_text
    }

    pub fn sampling_hz(&self) -> f64 {
        self.sampling_hz
    }

    pub fn n_saved_chans(&self) -> usize {
        self.n_saved_chans
    }

    /// `None` for a meta written while acquiring: the `.bin` is still growing.
    pub fn file_size_bytes(&self) -> Option<u64> {
        self.file_size_bytes
    }

    /// Whole samples in the `.bin`, from `fileSizeBytes`.
    pub fn n_samples(&self) -> Option<u64> {
        self.file_size_bytes
            .map(|b| b / (2 * self.n_saved_chans as u64))
    }

    /// Duration of the `.bin` (s), from `fileSizeBytes`; `None` while growing.
    pub fn duration_s(&self) -> Option<f64> {
        self.n_samples().map(|n| n as f64 / self.sampling_hz)
    }

    /// `firstSample`, 0 if absent.
    pub fn first_sample(&self) -> i64 {
        self.first_sample
    }

    /// Probe part number (`imDatPrb_pn`, or the catalogue part the layout was taken from, e.g.
    /// `NP1010` for phase 3A); `None` for NI-DAQ.
    pub fn probe(&self) -> Option<&str> {
        self.probe.as_deref()
    }

    /// Saved channels in file order.
    pub fn channels(&self) -> &[ChannelInfo] {
        &self.channels
    }

    /// The stream's description, channels in saved (file) order.
    pub fn info(&self, stream_id: &str) -> Result<ContinuousInfo, MetaError> {
        Ok(ContinuousInfo {
            stream_id: stream_id.to_string(),
            stream_kind: self.kind.as_str().to_string(),
            sampling_hz_text: self.sampling_hz_text.clone(),
            sampling_hz: self.sampling_hz,
            first_sample: self.first_sample,
            probe: self.probe.clone(),
            channels: self.channels.clone(),
        })
    }
}

/// Given a path to a `.bin` or `.meta`, returns (meta path, bin path). Any other path is taken
/// as the common stem (`run_g0_t0.imec0.ap` → `run_g0_t0.imec0.ap.meta`, `….ap.bin`).
pub fn pair_paths(path: &Path) -> (PathBuf, PathBuf) {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let stem = match ext.as_deref() {
        Some("bin") | Some("meta") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = stem.clone().into_os_string();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    (with("meta"), with("bin"))
}

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

// ---------------------------------------------------------------------------------------------

/// Lookup and error helpers over the raw map.
struct Ctx<'a> {
    name: &'a str,
    values: &'a HashMap<String, String>,
}

fn lookup<'m>(values: &'m HashMap<String, String>, key: &str) -> Option<&'m str> {
    let other = match key.strip_prefix('~') {
        Some(bare) => bare.to_string(),
        None => format!("~{key}"),
    };
    values
        .get(key)
        .or_else(|| values.get(&other))
        .map(String::as_str)
}

impl Ctx<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        lookup(self.values, key)
    }

    fn require(&self, key: &str) -> Result<&str, MetaError> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> MetaError {
        MetaError::Missing {
            file: self.name.into(),
            key: key.into(),
        }
    }

    fn invalid(&self, key: &str, value: &str, why: String) -> MetaError {
        MetaError::Invalid {
            file: self.name.into(),
            key: key.into(),
            value: short(value).into_owned(),
            why,
        }
    }

    fn inconsistent(&self, why: String) -> MetaError {
        MetaError::Inconsistent {
            file: self.name.into(),
            why,
        }
    }

    /// An optional number; present but unparsable is an error.
    fn num<T: FromStr>(&self, key: &str) -> Result<Option<T>, MetaError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| self.invalid(key, v, "not a number of the expected kind".into())),
        }
    }

    /// An optional finite number.
    fn float(&self, key: &str) -> Result<Option<f64>, MetaError> {
        match self.num::<f64>(key)? {
            Some(v) if !v.is_finite() => {
                Err(self.invalid(key, &v.to_string(), "not finite".into()))
            }
            v => Ok(v),
        }
    }

    /// An optional list of `n` channel counts such as `acqApLfSy=384,384,1`.
    fn counts<const N: usize>(&self, key: &str) -> Result<Option<[usize; N]>, MetaError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let bad = || {
            self.invalid(
                key,
                v,
                format!("expected {N} comma-separated channel counts"),
            )
        };
        let mut out = [0usize; N];
        let mut fields = v.split(',');
        for slot in out.iter_mut() {
            *slot = fields
                .next()
                .and_then(|f| f.trim().parse().ok())
                .filter(|c| *c <= MAX_CHANNELS)
                .ok_or_else(bad)?;
        }
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(Some(out))
    }
}

/// Shortens long values (tables) for messages.
pub(crate) fn short(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

/// `ap` or `lf`: from the saved counts `snsApLfSy`, else from the file name.
fn imec_kind(cx: &Ctx) -> Result<StreamKind, MetaError> {
    if let Some([ap, lf, _]) = cx.counts::<3>("snsApLfSy")? {
        if ap > 0 {
            return Ok(StreamKind::Ap);
        }
        if lf > 0 {
            return Ok(StreamKind::Lf);
        }
    }
    let name = cx.name.to_ascii_lowercase();
    if name.contains(".lf.") || name.ends_with(".lf") {
        Ok(StreamKind::Lf)
    } else {
        Ok(StreamKind::Ap)
    }
}

/// One saved channel: its acquired-channel index and, from `~snsChanMap`, its name.
struct Saved {
    acquired: usize,
    name: Option<String>,
}

/// The saved channels in file order: from `~snsChanMap` when it lists exactly `nSavedChans`
/// channels, else from `snsSaveChanSubset` (absent = all).
fn saved_channels(cx: &Ctx, n_saved: usize) -> Result<Vec<Saved>, MetaError> {
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
enum Group {
    Ap,
    Lf,
    Sy,
    Mn,
    Ma,
    Xa,
    Xd,
}

impl Group {
    fn prefix(self) -> &'static str {
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

    fn kind(self) -> ChannelKind {
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
fn classify(
    cx: &Ctx,
    saved: &[Saved],
    groups: &[Group],
    counts_key: &str,
    counts: Option<&[usize]>,
) -> Result<Vec<(Group, usize)>, MetaError> {
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

fn nidq_channels(cx: &Ctx, saved: &[Saved]) -> Result<Vec<ChannelInfo>, MetaError> {
    const GROUPS: [Group; 4] = [Group::Mn, Group::Ma, Group::Xa, Group::Xd];
    let all_saved = cx
        .get("snsSaveChanSubset")
        .is_none_or(|s| s.trim() == "all");
    let counts = match cx.counts::<4>("acqMnMaXaDw")? {
        Some(c) => Some(c),
        None if all_saved => cx.counts::<4>("snsMnMaXaDw")?,
        None => None,
    };
    let classes = classify(
        cx,
        saved,
        &GROUPS,
        "acqMnMaXaDw",
        counts.as_ref().map(|c| &c[..]),
    )?;
    let range = cx.float("niAiRangeMax")?;
    // Newer metas state `niMaxInt`; it has always been the int16 full scale.
    let max_int = cx.float("niMaxInt")?.unwrap_or(NI_MAX_INT);
    let mn_gain = cx.float("niMNGain")?;
    let ma_gain = cx.float("niMAGain")?;
    Ok(saved
        .iter()
        .zip(classes)
        .map(|(s, (group, index))| {
            let gain = match group {
                Group::Mn => mn_gain,
                Group::Ma => ma_gain,
                Group::Xa => Some(1.0),
                _ => None,
            };
            ChannelInfo {
                name: channel_name(s, group, index),
                kind: group.kind(),
                uv_per_bit: uv_per_bit(range, Some(max_int), gain),
                x_um: None,
                y_um: None,
                shank: None,
            }
        })
        .collect())
}

fn channel_name(s: &Saved, group: Group, index: usize) -> String {
    s.name
        .clone()
        .unwrap_or_else(|| format!("{}{index}", group.prefix()))
}

fn uv_per_bit(range_v: Option<f64>, max_int: Option<f64>, gain: Option<f64>) -> Option<f64> {
    let (r, m, g) = (range_v?, max_int?, gain?);
    let uv = r / m / g * 1e6;
    (r > 0.0 && m > 0.0 && g > 0.0 && uv.is_finite()).then_some(uv)
}

/// Where the contacts of the saved probe channels come from.
enum Layout {
    /// Catalogue layout, one contact per IMRO entry (readout channel).
    PerReadout(Vec<Contact>),
    /// `~snsGeomMap`, one contact per saved AP/LF channel in saved order.
    PerSaved(Vec<Contact>),
    None,
}

fn imec_channels(
    cx: &Ctx,
    saved: &[Saved],
) -> Result<(Option<String>, Vec<ChannelInfo>), MetaError> {
    const GROUPS: [Group; 3] = [Group::Ap, Group::Lf, Group::Sy];
    let all_saved = cx
        .get("snsSaveChanSubset")
        .is_none_or(|s| s.trim() == "all");
    let counts = match cx.counts::<3>("acqApLfSy")? {
        Some(c) => Some(c),
        None if all_saved => cx.counts::<3>("snsApLfSy")?,
        None => None,
    };
    let classes = classify(
        cx,
        saved,
        &GROUPS,
        "acqApLfSy",
        counts.as_ref().map(|c| &c[..]),
    )?;
    let n_probe_saved = classes
        .iter()
        .filter(|(g, _)| matches!(g, Group::Ap | Group::Lf))
        .count();

    let imro = match cx.get("~imroTbl") {
        Some(t) => Some(geometry::parse_imro(t).map_err(|why| cx.invalid("~imroTbl", t, why))?),
        None => None,
    };
    let meta_pn = cx.get("imDatPrb_pn").filter(|p| !p.is_empty());
    let type_part = imro
        .as_ref()
        .and_then(|t| t.type_part)
        .and_then(geometry::part);
    // probeinterface: phase 3A (the only meta with `imProbeOpt`) is built as NP1010; otherwise
    // the meta's part number. Older metas without one: the part the IMRO type stands for.
    let exact_part: Option<&ProbePart> = if cx.get("imProbeOpt").is_some() {
        geometry::part("NP1010")
    } else {
        match meta_pn {
            Some(pn) => geometry::part(pn),
            None => type_part,
        }
    };
    let (layout, layout_part) = choose_layout(
        cx,
        imro.as_ref(),
        exact_part,
        type_part,
        n_probe_saved,
        meta_pn,
    );
    let gain_part = exact_part.or(type_part);

    let range = match cx.float("imAiRangeMax")? {
        Some(v) => Some(v),
        None => gain_part.map(ProbePart::ai_range_max),
    };
    // NP1.0-style (10-bit) probe or not, where known.
    let family_np1: Option<bool> = if cx.get("imProbeOpt").is_some() {
        Some(true)
    } else {
        imro.as_ref()
            .and_then(|t| t.format)
            .map(|f| f.is_np1_family())
    };
    let max_int = match cx.float("imMaxInt")? {
        Some(v) => Some(v),
        None => gain_part.map(ProbePart::max_int).or(match family_np1 {
            Some(true) => Some(512.0),
            Some(false) => Some(8192.0),
            None => None,
        }),
    };
    let meta_ap_gain = cx.float("imChan0apGain")?;
    let meta_lf_gain = cx.float("imChan0lfGain")?;
    // NP2.x and later have one fixed gain (80, or 100 for the commercial 2013+ parts).
    let fixed_gain = gain_part
        .and_then(|p| p.fixed_ap_gain)
        .or((family_np1 == Some(false)).then_some(80.0));
    let readout = |i: usize| imro.as_ref().and_then(|t| t.channels.get(i));

    let mut probe_ordinal = 0usize;
    let mut channels = Vec::with_capacity(saved.len());
    for (s, (group, index)) in saved.iter().zip(classes) {
        let (gain, contact) = match group {
            Group::Ap | Group::Lf => {
                let gain = match group {
                    Group::Ap => readout(index)
                        .and_then(|r| r.ap_gain)
                        .or(meta_ap_gain)
                        .or(fixed_gain),
                    _ => readout(index)
                        .and_then(|r| r.lf_gain)
                        .or(meta_lf_gain)
                        .or(fixed_gain),
                };
                let contact = match &layout {
                    Layout::PerReadout(c) => c.get(index),
                    Layout::PerSaved(c) => c.get(probe_ordinal),
                    Layout::None => None,
                };
                probe_ordinal += 1;
                (gain, contact.copied())
            }
            _ => (None, None),
        };
        channels.push(ChannelInfo {
            name: channel_name(s, group, index),
            kind: group.kind(),
            uv_per_bit: uv_per_bit(range, max_int, gain),
            x_um: contact.map(|c| c.x_um),
            y_um: contact.map(|c| c.y_um),
            shank: contact.map(|c| c.shank),
        });
    }
    let probe = meta_pn
        .map(str::to_string)
        .or(layout_part.map(|p| p.part_number.to_string()))
        .or(gain_part.map(|p| p.part_number.to_string()));
    Ok((probe, channels))
}

/// Picks the contact positions: the catalogue layout of the exact part (what probeinterface
/// does), else `~snsGeomMap` (x from the left edge of the shank, so offset from probeinterface's
/// x by the part's odd-row offset), else the layout of the part the IMRO type stands for.
fn choose_layout(
    cx: &Ctx,
    imro: Option<&ImroTable>,
    exact_part: Option<&'static ProbePart>,
    type_part: Option<&'static ProbePart>,
    n_probe_saved: usize,
    meta_pn: Option<&str>,
) -> (Layout, Option<&'static ProbePart>) {
    let catalogue = |part: &ProbePart| -> Option<Vec<Contact>> {
        let table = imro?;
        let _known_format = table.format?;
        let contacts: Option<Vec<Contact>> = table
            .channels
            .iter()
            .map(|c| part.contact(c.shank, c.electrode?))
            .collect();
        if contacts.is_none() {
            tracing::warn!(
                "{}: `~imroTbl` (type {}) names electrodes that part {} does not have",
                cx.name,
                table.type_field,
                part.part_number
            );
        }
        contacts
    };
    if let Some(part) = exact_part {
        if let Some(c) = catalogue(part) {
            return (Layout::PerReadout(c), Some(part));
        }
    }
    if let Some(map) = cx.get("~snsGeomMap") {
        match geometry::parse_geom_map(map) {
            Ok(c) if c.len() == n_probe_saved => return (Layout::PerSaved(c), None),
            Ok(c) => tracing::warn!(
                "{}: `~snsGeomMap` has {} entries for {n_probe_saved} saved probe channels",
                cx.name,
                c.len()
            ),
            Err(why) => tracing::warn!("{}: ignoring unreadable `~snsGeomMap`: {why}", cx.name),
        }
    }
    if let Some(part) =
        type_part.filter(|p| exact_part.is_none_or(|e| e.part_number != p.part_number))
    {
        if let Some(c) = catalogue(part) {
            tracing::warn!(
                "{}: probe part {:?} is not in the catalogue; using the layout of {} (IMRO type {})",
                cx.name,
                meta_pn.unwrap_or("?"),
                part.part_number,
                imro.map(|t| t.type_field.as_str()).unwrap_or("?")
            );
            return (Layout::PerReadout(c), Some(part));
        }
    }
    (Layout::None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    // ---- synthetic metas ----

    /// NP1.0 (3B) AP meta: 384 AP + SY saved of 384 AP, 384 LF, 1 SY acquired.
    fn np1_meta(extra: &str) -> String {
        let mut imro = String::from("(0,384)");
        for ch in 0..384 {
            let _ = write!(imro, "({ch} 0 0 500 250 1)");
        }
        format!(
            "acqApLfSy=384,384,1\nimAiRangeMax=0.6\nimAiRangeMin=-0.6\nimDatPrb_pn=NP1000\n\
             imDatPrb_type=0\nimSampRate=30000.123\nnSavedChans=385\nsnsApLfSy=384,0,1\n\
             snsSaveChanSubset=0:383,768\ntypeThis=imec\nfirstSample=42\n{extra}~imroTbl={imro}\n"
        )
    }

    /// NP2.0 single-shank (type 21) AP meta, 384 AP + SY.
    fn np2_meta(extra: &str) -> String {
        let mut imro = String::from("(21,384)");
        for ch in 0..384 {
            let _ = write!(imro, "({ch} 1 0 {ch})");
        }
        format!(
            "acqApLfSy=384,0,1\nimAiRangeMax=0.5\nimDatPrb_pn=PRB2_1_2_0640_0\nimDatPrb_type=21\n\
             imSampRate=30000\nnSavedChans=385\nsnsApLfSy=384,0,1\nsnsSaveChanSubset=0:384\n\
             typeThis=imec\n{extra}~imroTbl={imro}\n"
        )
    }

    fn parse(text: &str) -> SpikeGlxMeta {
        SpikeGlxMeta::parse(text, "test.ap.meta").unwrap()
    }

    fn parse_err(text: &str, name: &str) -> String {
        match SpikeGlxMeta::parse(text, name) {
            Ok(_) => panic!("{name}: parsed a corrupt meta"),
            Err(e) => e.to_string(),
        }
    }

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

    #[test]
    fn np1_uv_per_bit_names_and_fields() {
        let m = parse(&np1_meta("fileSizeBytes=770\n"));
        assert_eq!(m.stream_kind(), "ap");
        assert_eq!(m.sampling_hz_text(), "30000.123");
        assert_eq!(m.n_saved_chans(), 385);
        assert_eq!(m.first_sample(), 42);
        assert_eq!(m.file_size_bytes(), Some(770));
        assert_eq!(m.n_samples(), Some(1));
        assert_eq!(m.get("imroTbl"), m.get("~imroTbl"));
        assert!(m.get("~imroTbl").is_some_and(|t| t.starts_with("(0,384)")));
        let info = m.info("probe0").unwrap();
        assert_eq!(info.stream_id, "probe0");
        assert_eq!(info.probe.as_deref(), Some("NP1000"));
        assert_eq!(info.channels.len(), 385);
        let ap0 = &info.channels[0];
        assert_eq!((ap0.name.as_str(), ap0.kind), ("AP0", ChannelKind::Ap));
        assert_eq!(ap0.uv_per_bit, Some(2.34375));
        assert_eq!(
            (ap0.x_um, ap0.y_um, ap0.shank),
            (Some(16.0), Some(0.0), Some(0))
        );
        let sy = &info.channels[384];
        assert_eq!((sy.name.as_str(), sy.kind), ("SY0", ChannelKind::Sync));
        assert_eq!((sy.uv_per_bit, sy.x_um, sy.shank), (None, None, None));
        // Older metas lack imMaxInt: NP1.0 is 10-bit, 512.
        assert!(m.get("imMaxInt").is_none());
        // And a meta that states it wins.
        let m = parse(&np1_meta("imMaxInt=1024\n"));
        assert_eq!(m.channels()[0].uv_per_bit, Some(0.6 / 1024.0 / 500.0 * 1e6));
    }

    #[test]
    fn np2_uv_per_bit() {
        let want = 0.5 / 8192.0 / 80.0 * 1e6;
        for extra in ["imMaxInt=8192\n", ""] {
            let m = parse(&np2_meta(extra));
            let ap = &m.channels()[10];
            assert_eq!(ap.uv_per_bit, Some(want), "{extra:?}");
            assert_eq!((ap.x_um, ap.y_um), (Some(0.0), Some(75.0)));
            assert_eq!(m.channels()[384].kind, ChannelKind::Sync);
        }
    }

    #[test]
    fn growing_meta_has_no_file_size() {
        let m = parse(&np1_meta(""));
        assert_eq!(m.file_size_bytes(), None);
        assert_eq!(m.duration_s(), None);
        let m = parse(&np1_meta("fileSizeBytes=7700000\n"));
        assert_eq!(m.n_samples(), Some(10_000));
        let d = m.duration_s().unwrap();
        assert!((d - 10_000.0 / 30000.123).abs() < 1e-12);
    }

    #[test]
    fn corrupt_metas_give_clear_errors() {
        let good = np1_meta("");
        let drop_key = |key: &str| {
            good.lines()
                .filter(|l| !l.starts_with(&format!("{key}=")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        let e = parse_err(&drop_key("imSampRate"), "sample.ap.meta");
        assert_eq!(e, "sample.ap.meta: `imSampRate` missing");

        let e = parse_err(
            &good.replace("imSampRate=30000.123", "imSampRate=fast"),
            "r.ap.meta",
        );
        assert!(
            e.starts_with("r.ap.meta: ") && e.contains("`imSampRate`"),
            "{e}"
        );
        let e = parse_err(
            &good.replace("imSampRate=30000.123", "imSampRate=-5"),
            "r.ap.meta",
        );
        assert!(e.contains("`imSampRate`"), "{e}");

        for garbage in ["385x", "", "-1", "0", "1e3"] {
            let text = good.replace("nSavedChans=385", &format!("nSavedChans={garbage}"));
            let e = parse_err(&text, "n.ap.meta");
            assert!(
                e.starts_with("n.ap.meta: ") && e.contains("`nSavedChans`"),
                "{e}"
            );
        }
        let e = parse_err(&drop_key("nSavedChans"), "n.ap.meta");
        assert_eq!(e, "n.ap.meta: `nSavedChans` missing");

        // nSavedChans disagreeing with the subset
        let e = parse_err(
            &good.replace("nSavedChans=385", "nSavedChans=384"),
            "s.ap.meta",
        );
        assert!(
            e.starts_with("s.ap.meta: ") && e.contains("snsSaveChanSubset"),
            "{e}"
        );

        // imroTbl with one entry missing
        let text = good.replace("(383 0 0 500 250 1)", "");
        let e = parse_err(&text, "i.ap.meta");
        assert!(
            e.starts_with("i.ap.meta: `~imroTbl`")
                && e.contains("384 channels")
                && e.contains("383 entries"),
            "{e}"
        );
        // ... and with a non-number and a short entry
        let e = parse_err(
            &good.replace("(7 0 0 500 250 1)", "(7 0 zero 500 250 1)"),
            "i.ap.meta",
        );
        assert!(e.contains("`~imroTbl`") && e.contains("entry 7"), "{e}");
        let e = parse_err(&good.replace("(7 0 0 500 250 1)", "(7 0 0)"), "i.ap.meta");
        assert!(e.contains("`~imroTbl`") && e.contains("entry 7"), "{e}");
        let e = parse_err(
            &good.replace("~imroTbl=(0,384)", "~imroTbl=0,384"),
            "i.ap.meta",
        );
        assert!(e.contains("`~imroTbl`"), "{e}");

        let e = parse_err(
            &good.replace("firstSample=42", "firstSample=soon"),
            "f.ap.meta",
        );
        assert!(e.contains("`firstSample`"), "{e}");
        let e = parse_err(
            &good.replace("acqApLfSy=384,384,1", "acqApLfSy=384,384"),
            "a.ap.meta",
        );
        assert!(e.contains("`acqApLfSy`"), "{e}");
        let e = parse_err(
            &good.replace("acqApLfSy=384,384,1", "acqApLfSy=384,0,1"),
            "a.ap.meta",
        );
        assert!(e.contains("768") && e.contains("acqApLfSy"), "{e}");
        let e = parse_err("hello world\n", "x.meta");
        assert!(e.starts_with("x.meta: "), "{e}");
        let e = parse_err(&good.replace("typeThis=imec", "typeThis=obx"), "o.obx.meta");
        assert!(e.starts_with("o.obx.meta: ") && e.contains("obx"), "{e}");
    }

    #[test]
    fn nidq_channels_from_counts() {
        let text = "typeThis=nidq\nniSampRate=25000\nniAiRangeMax=5\nniMNGain=200\nniMAGain=2\n\
                    acqMnMaXaDw=2,1,2,1\nsnsMnMaXaDw=1,1,2,1\nsnsSaveChanSubset=1:5\nnSavedChans=5\n";
        let m = SpikeGlxMeta::parse(text, "run_g0_t0.nidq.meta").unwrap();
        assert_eq!(m.stream_kind(), "nidq");
        let info = m.info("nidq").unwrap();
        assert_eq!(info.probe, None);
        let got: Vec<(&str, ChannelKind, Option<f64>)> = info
            .channels
            .iter()
            .map(|c| (c.name.as_str(), c.kind, c.uv_per_bit))
            .collect();
        let uv = |g: f64| Some(5.0 / 32768.0 / g * 1e6);
        assert_eq!(
            got,
            vec![
                ("MN1", ChannelKind::Analog, uv(200.0)),
                ("MA0", ChannelKind::Analog, uv(2.0)),
                ("XA0", ChannelKind::Analog, uv(1.0)),
                ("XA1", ChannelKind::Analog, uv(1.0)),
                ("XD0", ChannelKind::Digital, None),
            ]
        );
        assert!(info
            .channels
            .iter()
            .all(|c| c.x_um.is_none() && c.shank.is_none()));
        let e = parse_err(&text.replace("niSampRate=25000\n", ""), "d.nidq.meta");
        assert_eq!(e, "d.nidq.meta: `niSampRate` missing");
    }

    #[test]
    fn lf_stream_from_name_and_counts() {
        let text = np1_meta("")
            .replace("snsApLfSy=384,0,1", "snsApLfSy=0,384,1")
            .replace("snsSaveChanSubset=0:383,768", "snsSaveChanSubset=384:768")
            .replace("imSampRate=30000.123", "imSampRate=2500");
        let m = SpikeGlxMeta::parse(&text, "x.lf.meta").unwrap();
        assert_eq!(m.stream_kind(), "lf");
        let lf7 = &m.channels()[7];
        assert_eq!((lf7.name.as_str(), lf7.kind), ("LF7", ChannelKind::Lf));
        assert_eq!(lf7.uv_per_bit, Some(0.6 / 512.0 / 250.0 * 1e6));
        // LF7 is readout channel 7: electrode 7, row 3 (odd, not staggered), right column.
        assert_eq!((lf7.x_um, lf7.y_um), (Some(32.0), Some(60.0)));
        // Without snsApLfSy, the name decides.
        let text = text.replace("snsApLfSy=0,384,1\n", "");
        assert_eq!(
            SpikeGlxMeta::parse(&text, "x.lf.meta")
                .unwrap()
                .stream_kind(),
            "lf"
        );
    }

    #[test]
    fn pair_paths_from_bin_meta_or_stem() {
        let want = (
            PathBuf::from("/d/run_g0_t0.imec0.ap.meta"),
            PathBuf::from("/d/run_g0_t0.imec0.ap.bin"),
        );
        for p in [
            "/d/run_g0_t0.imec0.ap.bin",
            "/d/run_g0_t0.imec0.ap.meta",
            "/d/run_g0_t0.imec0.ap",
        ] {
            assert_eq!(pair_paths(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn read_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ap.meta");
        std::fs::write(&p, np1_meta("")).unwrap();
        assert_eq!(SpikeGlxMeta::read(&p).unwrap().n_saved_chans(), 385);
        let e = SpikeGlxMeta::read(&dir.path().join("none.ap.meta")).unwrap_err();
        assert!(e.to_string().contains("none.ap.meta"), "{e}");
        std::fs::write(&p, np1_meta("").replace("imSampRate", "imSampleRate")).unwrap();
        let e = SpikeGlxMeta::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.ap.meta") && e.contains("`imSampRate` missing"),
            "{e}"
        );
    }

    /// Truncations, dropped lines and mangled values never panic.
    #[test]
    fn no_panics_on_mangled_metas() {
        let mut samples = vec![np1_meta(""), np2_meta("")];
        if let Some(dir) = data_dir() {
            for f in [
                "probeinterface/NP1110_2x192_bank4_g0_t0.imec0.ap.meta",
                "ibl-neuropixel/np2split__NP2QB_single_shank_meta___spikeglx_ephysData_g0_t0.imec0.ap.meta",
                "ibl-neuropixel/sample3B_g0_t0.nidq.meta",
                "ibl-neuropixel/sample3A_g0_t0.imec.lf.meta",
            ] {
                if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
                    samples.push(t);
                }
            }
        }
        let mut tried = 0usize;
        let mut run = |t: &str| {
            tried += 1;
            if let Ok(m) = SpikeGlxMeta::parse(t, "m.meta") {
                let info = m.info("s").unwrap();
                assert_eq!(info.channels.len(), m.n_saved_chans());
            }
        };
        for s in &samples {
            for cut in (0..s.len()).step_by(s.len() / 97 + 1) {
                if let Some(prefix) = s.get(..cut) {
                    run(prefix);
                }
            }
            let lines: Vec<&str> = s.lines().collect();
            for skip in 0..lines.len() {
                let t: Vec<&str> = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, l)| *l)
                    .collect();
                run(&t.join("\n"));
            }
            for (from, to) in [
                ("(", ""),
                (")", ""),
                (":", ","),
                (",", ":"),
                (";", ""),
                (" ", ""),
                ("0", "-1"),
                ("1", "99999999"),
                ("3", "x"),
                ("=", "=="),
            ] {
                run(&s.replace(from, to));
                run(&s.replacen(from, to, 3));
            }
        }
        assert!(tried > 100);
    }

    // ---- the 43 real metas against probeinterface 0.4.2 ----

    fn data_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/spikeglx-meta");
        if dir.join("expected.json").is_file() {
            return Some(dir);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing and CI is set: the SpikeGLX reference metas are required",
            dir.display()
        );
        eprintln!(
            "\n!!!!!!!! SKIPPING: SpikeGLX reference metas not found at {} !!!!!!!!\n",
            dir.display()
        );
        None
    }

    fn floats(v: &serde_json::Value, key: &str) -> Vec<f64> {
        v[key]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    }

    /// The number written after `"field":` in the object of key `rel`, parsed by Rust:
    /// serde_json without its `float_roundtrip` feature may misround the last bit
    /// (30000.149579831934 becomes …937), and the comparison must be exact.
    fn raw_number(json: &str, rel: &str, field: &str) -> Option<f64> {
        let object = json.get(json.find(&format!("\"{rel}\""))?..)?;
        let value = object.get(object.find(&format!("\"{field}\""))? + field.len() + 2..)?;
        let value = value.trim_start().strip_prefix(':')?;
        let end = value.find([',', '}', '\n'])?;
        value.get(..end)?.trim().parse().ok()
    }

    #[test]
    fn real_metas_match_probeinterface() {
        let Some(dir) = data_dir() else { return };
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        let expected: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap();
        assert_eq!(expected.len(), 43, "expected.json should describe 43 metas");
        let mut failures = Vec::new();
        let (mut geometry_checked, mut error_metas) = (0, 0);
        for (rel, want) in &expected {
            let mut fail = |why: String| failures.push(format!("{rel}: {why}"));
            let meta = match SpikeGlxMeta::read(&dir.join(rel)) {
                Ok(m) => m,
                Err(e) => {
                    fail(format!("error: {e}"));
                    continue;
                }
            };
            let info = meta.info("s").unwrap();
            let rate: f64 = meta.sampling_hz_text().parse().unwrap_or(f64::NAN);
            let want_rate = raw_number(&text, rel, "sampling_hz");
            if Some(rate) != want_rate {
                fail(format!("rate {rate} != {want_rate:?}"));
            }
            if Some(info.channels.len() as u64) != want["saved_channels"].as_u64() {
                fail(format!(
                    "{} saved channels != {}",
                    info.channels.len(),
                    want["saved_channels"]
                ));
            }
            if want.get("probeinterface_error").is_some() {
                error_metas += 1;
                if let Err(why) = check_unreadable_by_probeinterface(&dir, rel, &meta) {
                    fail(why);
                }
                continue;
            }
            let ap: Vec<&ChannelInfo> = info
                .channels
                .iter()
                .filter(|c| c.kind == ChannelKind::Ap)
                .collect();
            if Some(ap.len() as u64) != want["probe_channels"].as_u64() {
                fail(format!(
                    "{} AP channels != {}",
                    ap.len(),
                    want["probe_channels"]
                ));
                continue;
            }
            let (x, y, shank) = (
                floats(want, "x_um"),
                floats(want, "y_um"),
                floats(want, "shank"),
            );
            let mut bad = Vec::new();
            for (i, c) in ap.iter().enumerate() {
                let close = |got: Option<f64>, want: Option<&f64>| match (got, want) {
                    (Some(g), Some(w)) => (g - w).abs() <= 1e-3,
                    _ => false,
                };
                if !(close(c.x_um, x.get(i))
                    && close(c.y_um, y.get(i))
                    && close(c.shank.map(f64::from), shank.get(i)))
                {
                    bad.push(format!(
                        "{} at ({:?}, {:?}, shank {:?}), want ({:?}, {:?}, {:?})",
                        c.name,
                        c.x_um,
                        c.y_um,
                        c.shank,
                        x.get(i),
                        y.get(i),
                        shank.get(i)
                    ));
                }
            }
            if !bad.is_empty() {
                fail(format!(
                    "{} of {} contacts misplaced, e.g. {}",
                    bad.len(),
                    ap.len(),
                    bad[..bad.len().min(3)].join("; ")
                ));
            }
            // Every probe channel gets a gain.
            if ap
                .iter()
                .any(|c| c.uv_per_bit.is_none_or(|u| u.is_nan() || u <= 0.0))
            {
                fail("an AP channel lacks µV/bit".into());
            }
            geometry_checked += 1;
        }
        assert!(
            failures.is_empty(),
            "{} of {} metas mismatch probeinterface:\n{}",
            failures.len(),
            expected.len(),
            failures.join("\n")
        );
        assert_eq!((geometry_checked, error_metas), (40, 3));
    }

    /// What probeinterface cannot read must still be described: LF streams with the AP
    /// stream's geometry, NI-DAQ channels of the kinds `snsMnMaXaDw` gives.
    fn check_unreadable_by_probeinterface(
        dir: &Path,
        rel: &str,
        meta: &SpikeGlxMeta,
    ) -> Result<(), String> {
        let ch = meta.channels();
        match meta.stream_kind() {
            "lf" => {
                let lf: Vec<&ChannelInfo> =
                    ch.iter().filter(|c| c.kind == ChannelKind::Lf).collect();
                let sy = ch.iter().filter(|c| c.kind == ChannelKind::Sync).count();
                if (lf.len(), sy) != (384, 1) || (meta.sampling_hz() - 2500.0).abs() > 1.0 {
                    return Err(format!(
                        "LF: {} LF + {sy} SY at {} Hz",
                        lf.len(),
                        meta.sampling_hz()
                    ));
                }
                if lf
                    .iter()
                    .any(|c| c.uv_per_bit.is_none() || c.x_um.is_none() || c.shank.is_none())
                {
                    return Err("LF channel without µV/bit or position".into());
                }
                // Same contacts as the AP stream of the same probe, where the pair is here.
                let (meta_path, _) = pair_paths(&dir.join(rel.replace(".lf.", ".ap.")));
                if let Ok(ap) = SpikeGlxMeta::read(&meta_path) {
                    let pos = |c: &ChannelInfo| (c.x_um, c.y_um, c.shank);
                    let ap_pos: Vec<_> = ap
                        .channels()
                        .iter()
                        .filter(|c| c.kind == ChannelKind::Ap)
                        .map(pos)
                        .collect();
                    let lf_pos: Vec<_> = lf.iter().map(|c| pos(c)).collect();
                    if ap_pos != lf_pos {
                        return Err(format!("LF geometry differs from {}", meta_path.display()));
                    }
                }
                Ok(())
            }
            "nidq" => {
                let counts: Vec<usize> = meta
                    .get("snsMnMaXaDw")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
                let kinds = [
                    ChannelKind::Analog,
                    ChannelKind::Analog,
                    ChannelKind::Analog,
                    ChannelKind::Digital,
                ];
                let want: Vec<ChannelKind> = counts
                    .iter()
                    .zip(kinds)
                    .flat_map(|(n, k)| std::iter::repeat_n(k, *n))
                    .collect();
                let got: Vec<ChannelKind> = ch.iter().map(|c| c.kind).collect();
                let names: Vec<&str> = ch.iter().map(|c| c.name.as_str()).collect();
                if got != want || names != ["XA0", "XD0"] {
                    return Err(format!(
                        "NI-DAQ channels {names:?} {got:?}, want kinds {want:?}"
                    ));
                }
                if ch.iter().any(|c| c.x_um.is_some())
                    || ch[0].uv_per_bit != Some(5.0 / 32768.0 * 1e6)
                    || ch[1].uv_per_bit.is_some()
                {
                    return Err("NI-DAQ µV/bit or geometry wrong".into());
                }
                Ok(())
            }
            other => Err(format!(
                "probeinterface cannot read it, yet it is an {other} stream"
            )),
        }
    }

    /// Where a meta carries `~snsGeomMap`, it agrees with the catalogue layout (x shifted by
    /// the part's odd-row offset): the fallback for parts missing from the catalogue is sound.
    #[test]
    fn geom_map_agrees_with_catalogue() {
        let Some(dir) = data_dir() else { return };
        let mut checked = 0;
        for sub in ["ibl-neuropixel", "probeinterface"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = SpikeGlxMeta::read(&e.path()) else {
                    continue;
                };
                let (Some(map), Some(pn)) = (meta.get("~snsGeomMap"), meta.probe()) else {
                    continue;
                };
                let part = geometry::part(pn).unwrap();
                let from_map = geometry::parse_geom_map(map).unwrap();
                let probe: Vec<&ChannelInfo> = meta
                    .channels()
                    .iter()
                    .filter(|c| c.x_um.is_some())
                    .collect();
                assert_eq!(from_map.len(), probe.len(), "{}", e.path().display());
                for (g, c) in from_map.iter().zip(probe) {
                    let x = g.x_um - part.row_offset_um[1];
                    assert!(
                        (Some(x), Some(g.y_um), Some(g.shank)) == (c.x_um, c.y_um, c.shank),
                        "{}: {} map ({x}, {}, {}) vs catalogue ({:?}, {:?}, {:?})",
                        e.path().display(),
                        c.name,
                        g.y_um,
                        g.shank,
                        c.x_um,
                        c.y_um,
                        c.shank
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} metas with ~snsGeomMap");
    }

    #[test]
    fn geom_map_is_used_for_unknown_parts() {
        // A part this catalogue does not know, with SpikeGLX's own geometry map.
        let mut map = String::from("(NP9999,1,0,70)");
        for ch in 0..384 {
            let _ = write!(
                map,
                "(0:{}:{}:1)",
                if ch % 2 == 0 { 27 } else { 59 },
                (ch / 2) * 15
            );
        }
        let text = np2_meta(&format!("~snsGeomMap={map}\n")).replace("PRB2_1_2_0640_0", "NP9999");
        let m = parse(&text);
        assert_eq!(m.probe(), Some("NP9999"));
        let c = &m.channels()[3];
        assert_eq!((c.x_um, c.y_um, c.shank), (Some(59.0), Some(15.0), Some(0)));
        // Without the map, the IMRO type's part (NP2000 for type 21) stands in.
        let m = parse(&np2_meta("").replace("PRB2_1_2_0640_0", "NP9999"));
        let c = &m.channels()[3];
        assert_eq!((c.x_um, c.y_um), (Some(32.0), Some(15.0)));
        assert_eq!(c.uv_per_bit, Some(0.5 / 8192.0 / 80.0 * 1e6));
    }
}
