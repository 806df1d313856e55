//! The channels of an imec (Neuropixels AP or LF) stream: which of the two it is, the gain of each
//! readout channel (`~imroTbl`, else the meta, else the part's fixed gain) and where its contact
//! is (catalogue layout of the part, else `~snsGeomMap`).

use crate::stream::ChannelInfo;

use super::geometry::{self, Contact, ImroTable, ProbePart};
use super::meta_map::Ctx;
use super::saved_channels::{channel_name, classify, uv_per_bit, Group, Saved};
use super::{MetaError, StreamKind};

/// `ap` or `lf`: from the saved counts `snsApLfSy`, else from the file name.
pub(super) fn imec_kind(cx: &Ctx) -> Result<StreamKind, MetaError> {
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

/// Where the contacts of the saved probe channels come from.
enum Layout {
    /// Catalogue layout, one contact per IMRO entry (readout channel).
    PerReadout(Vec<Contact>),
    /// `~snsGeomMap`, one contact per saved AP/LF channel in saved order.
    PerSaved(Vec<Contact>),
    None,
}

/// The saved probe channels in file order, and the probe's part number.
pub(super) fn imec_channels(
    cx: &Ctx,
    saved: &[Saved],
) -> Result<(Option<String>, Vec<ChannelInfo>), MetaError> {
    const GROUPS: [Group; 3] = [Group::Ap, Group::Lf, Group::Sy];
    let classes = classify(cx, saved, &GROUPS, "acqApLfSy", "snsApLfSy")?;
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
    use std::fmt::Write as _;

    use crate::formats::spikeglx::geometry;
    use crate::formats::spikeglx::tests::{data_dir, np1_meta, np2_meta, parse};
    use crate::formats::spikeglx::SpikeGlxMeta;
    use crate::stream::{ChannelInfo, ChannelKind};

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
