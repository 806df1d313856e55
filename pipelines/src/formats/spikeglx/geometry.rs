//! Neuropixels electrode layouts and IMRO tables: where the electrode behind each readout
//! channel sits, exactly as probeinterface 0.4.2 (`read_spikeglx`) reports it.
//!
//! The per-part-number constants in [`PARTS`] and the IMRO type table in [`IMRO_TYPES`] are
//! transcribed from probeinterface 0.4.2's `resources/neuropixels_probe_features.json`
//! (itself Bill Karsh's ProbeTable, table version 1.8), and the rules below follow its
//! `neuropixels_tools.py` (`build_neuropixels_probe`, `_parse_imro_string`,
//! `_resolve_active_contacts_for_np1`, `_resolve_active_contacts_for_np1110`).
//! probeinterface is MIT licensed, Copyright (c) 2020 SpikeInterface.
//!
//! Conventions (probeinterface's): x = 0 is the centre of the leftmost electrode of the odd
//! rows of shank 0, y = 0 the centre of the bottom row; shanks of multi-shank probes are placed
//! `shank_pitch` apart in x; single-shank probes report shank 0.

/// Layout of the entries of an `~imroTbl` (probeinterface's `z_imro_formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImroFormat {
    /// `(channel bank ref_id ap_gain lf_gain [ap_hipas_flt])`: NP1.0, 3A/3B, NHP, Ultra, ...
    Np1000,
    /// Header `(type,col_mode,ref_id,ap_gain,lf_gain,ap_hipas_flt)`, 24 `(group bankA bankB)`.
    Np1110,
    /// `(channel bank_mask ref_id electrode)`: NP2.0 single shank (type 21).
    Np2000,
    /// `(channel bank_mask ref_id electrode)`: NP2.0 single shank, commercial (2003).
    Np2003,
    /// `(channel shank bank ref_id electrode)`: NP2.0 four shanks (type 24).
    Np2010,
    /// `(channel shank bank ref_id electrode)`: NP2.0 four shanks, commercial (2013).
    Np2013,
    /// `(channel shank bank ref_id electrode)`: NP2.0 quad base, 1536 channels (2020).
    Np2020,
    /// `(channel bank ref_id electrode)`: NXT single shank (3010).
    Np3010,
    /// `(channel shank bank ref_id electrode)`: NXT four shanks (3020, 3022).
    Np3020,
}

impl ImroFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ImroFormat::Np1000 => "imro_np1000",
            ImroFormat::Np1110 => "imro_np1110",
            ImroFormat::Np2000 => "imro_np2000",
            ImroFormat::Np2003 => "imro_np2003",
            ImroFormat::Np2010 => "imro_np2010",
            ImroFormat::Np2013 => "imro_np2013",
            ImroFormat::Np2020 => "imro_np2020",
            ImroFormat::Np3010 => "imro_np3010",
            ImroFormat::Np3020 => "imro_np3020",
        }
    }

    /// Values each table entry must have (NP1.0's trailing `ap_hipas_flt` is absent in 3A).
    fn entry_fields(self) -> usize {
        match self {
            ImroFormat::Np1000 => 5,
            ImroFormat::Np1110 => 3,
            ImroFormat::Np2000 | ImroFormat::Np2003 | ImroFormat::Np3010 => 4,
            ImroFormat::Np2010 | ImroFormat::Np2013 | ImroFormat::Np2020 | ImroFormat::Np3020 => 5,
        }
    }

    /// 10-bit NP1.0-style probes (imMaxInt 512 when the meta does not say).
    pub(crate) fn is_np1_family(self) -> bool {
        matches!(self, ImroFormat::Np1000 | ImroFormat::Np1110)
    }
}

/// One probe part number's layout (probeinterface's `neuropixels_probes` entry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProbePart {
    pub part_number: &'static str,
    pub shanks: u32,
    pub cols_per_shank: u32,
    pub rows_per_shank: u32,
    /// Horizontal and vertical electrode pitch (µm).
    pub pitch_um: [f64; 2],
    /// Horizontal offset of the leftmost electrode centre from the shank edge, on even and on
    /// odd rows (µm); their difference is the stagger of even rows.
    pub row_offset_um: [f64; 2],
    pub shank_pitch_um: f64,
    pub imro: ImroFormat,
    pub adc_bits: u32,
    pub adc_range_vpp: f64,
    /// The AP gain, where the part has only one.
    pub fixed_ap_gain: Option<f64>,
}

/// Where one electrode sits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Contact {
    pub x_um: f64,
    pub y_um: f64,
    pub shank: u32,
}

impl ProbePart {
    /// Largest ADC code, the `imMaxInt` of metas that carry it.
    pub(crate) fn max_int(&self) -> f64 {
        f64::from(1u32 << self.adc_bits.clamp(1, 31).saturating_sub(1))
    }

    /// `imAiRangeMax` (V), half the peak-to-peak ADC range.
    pub(crate) fn ai_range_max(&self) -> f64 {
        self.adc_range_vpp / 2.0
    }

    /// Position of `electrode` (0-based within its shank) on `shank`, as
    /// `build_neuropixels_probe` lays them out; `None` if the probe has no such electrode.
    /// A single-shank part accepts no shank or shank 0; a multi-shank part needs the shank.
    pub(crate) fn contact(&self, shank: Option<i64>, electrode: i64) -> Option<Contact> {
        let per_shank = i64::from(self.cols_per_shank) * i64::from(self.rows_per_shank);
        if self.cols_per_shank == 0 || !(0..per_shank).contains(&electrode) {
            return None;
        }
        let shank: u32 = match (self.shanks, shank) {
            (1, None) | (1, Some(0)) => 0,
            (1, Some(_)) | (_, None) => return None,
            (n, Some(s)) => u32::try_from(s).ok().filter(|s| *s < n)?,
        };
        let cols = i64::from(self.cols_per_shank);
        let (y_idx, x_idx) = (electrode / cols, electrode % cols);
        let stagger = if y_idx % 2 == 0 {
            self.row_offset_um[0] - self.row_offset_um[1]
        } else {
            0.0
        };
        let shank_shift = if self.shanks > 1 {
            f64::from(shank) * self.shank_pitch_um
        } else {
            0.0
        };
        Some(Contact {
            x_um: x_idx as f64 * self.pitch_um[0] + stagger + shank_shift,
            y_um: y_idx as f64 * self.pitch_um[1],
            shank,
        })
    }
}

/// The catalogue entry of a part number.
pub(crate) fn part(part_number: &str) -> Option<&'static ProbePart> {
    PARTS.iter().find(|p| p.part_number == part_number)
}

/// The table format and catalogue part number of an IMRO header type code (`0`, `21`, ...).
pub(crate) fn imro_type(code: &str) -> Option<(ImroFormat, &'static str)> {
    IMRO_TYPES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, f, p)| (*f, *p))
}

/// One readout channel of an IMRO table, resolved to its electrode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ImroChannel {
    pub shank: Option<i64>,
    /// Electrode within the shank; `None` where the entry cannot name one.
    pub electrode: Option<i64>,
    pub ap_gain: Option<f64>,
    pub lf_gain: Option<f64>,
}

/// A parsed `~imroTbl`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImroTable {
    /// The header's first field: a type code (`0`, `21`, `2013`) or, since SpikeGLX 20260115,
    /// a part number (`NP2020`); the 3A serial number is replaced by `0`.
    pub type_field: String,
    /// `None` for a type this build does not know: then `channels` is empty.
    pub format: Option<ImroFormat>,
    /// Part number the type stands for (the header's own part number, or the catalogue's
    /// part for a type code).
    pub type_part: Option<&'static str>,
    /// One per readout channel, in table order (NP1110's 24 groups expanded to 384 channels).
    pub channels: Vec<ImroChannel>,
}

/// Splits `(a)(b)(c)` into `a`, `b`, `c`.
pub(crate) fn parenthesised(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    for piece in text.trim().split(')') {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        match piece.strip_prefix('(') {
            Some(inner) => out.push(inner.trim()),
            None => {
                return Err(format!(
                    "expected `(...)` groups, found {:?}",
                    super::short(piece)
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("empty table".into());
    }
    Ok(out)
}

fn int(field: &str, what: &str) -> Result<i64, String> {
    field
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("{what}: {:?} is not an integer", super::short(field)))
}

/// Parses an `~imroTbl` value. Errors describe what is wrong (the caller names file and key).
pub(crate) fn parse_imro(text: &str) -> Result<ImroTable, String> {
    let groups = parenthesised(text)?;
    let (header, entries) = match groups.split_first() {
        Some(split) => split,
        None => return Err("empty table".into()),
    };
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let first = header.first().copied().unwrap_or_default();
    // Phase 3A: `(serial,probe_option,n_channels)`, NP1.0 entries (probeinterface: type 0).
    let (type_field, format, type_part, n_header) = if header.len() == 3 {
        (
            "0".to_string(),
            Some(ImroFormat::Np1000),
            Some("NP1000"),
            header.get(2),
        )
    } else if let Some(p) = part(first) {
        (
            first.to_string(),
            Some(p.imro),
            Some(p.part_number),
            header.get(1),
        )
    } else if let Some((f, p)) = imro_type(first) {
        (first.to_string(), Some(f), Some(p), header.get(1))
    } else {
        (first.to_string(), None, None, header.get(1))
    };
    let Some(format) = format else {
        return Ok(ImroTable {
            type_field,
            format: None,
            type_part: None,
            channels: Vec::new(),
        });
    };
    let mut header_ints = Vec::with_capacity(header.len());
    for (i, h) in header.iter().enumerate().skip(1) {
        header_ints.push(int(h, &format!("header field {}", i + 1))?);
    }
    let mut rows = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let values = e
            .split_whitespace()
            .map(|v| int(v, &format!("entry {i}")))
            .collect::<Result<Vec<i64>, String>>()?;
        if values.len() < format.entry_fields() {
            return Err(format!(
                "entry {i} has {} values, the {} format needs {}",
                values.len(),
                format.name(),
                format.entry_fields()
            ));
        }
        rows.push(values);
    }
    let channels = if format == ImroFormat::Np1110 {
        np1110_channels(&header_ints, &rows)?
    } else {
        let declared = match n_header {
            Some(n) => int(n, "header channel count")?,
            None => return Err("header lacks the channel count".into()),
        };
        if usize::try_from(declared).ok() != Some(rows.len()) {
            return Err(format!(
                "header declares {declared} channels but the table has {} entries",
                rows.len()
            ));
        }
        rows.iter().map(|r| simple_channel(format, r)).collect()
    };
    Ok(ImroTable {
        type_field,
        format: Some(format),
        type_part,
        channels,
    })
}

/// One entry of every format but NP1110 (`row` has at least `entry_fields` values).
fn simple_channel(format: ImroFormat, row: &[i64]) -> ImroChannel {
    let at = |i: usize| row.get(i).copied();
    let gain = |i: usize| at(i).map(|g| g as f64);
    match format {
        // electrode = bank * 384 + channel (`_resolve_active_contacts_for_np1`).
        ImroFormat::Np1000 | ImroFormat::Np1110 => ImroChannel {
            shank: None,
            electrode: at(1)
                .and_then(|bank| bank.checked_mul(384))
                .and_then(|b| b.checked_add(at(0)?)),
            ap_gain: gain(3),
            lf_gain: gain(4),
        },
        ImroFormat::Np2000 | ImroFormat::Np2003 | ImroFormat::Np3010 => ImroChannel {
            shank: None,
            electrode: at(3),
            ap_gain: None,
            lf_gain: None,
        },
        ImroFormat::Np2010 | ImroFormat::Np2013 | ImroFormat::Np2020 | ImroFormat::Np3020 => {
            ImroChannel {
                shank: at(1),
                electrode: at(4),
                ap_gain: None,
                lf_gain: None,
            }
        }
    }
}

/// NP1110 (UHD2 active): 24 group entries select, per group, banks A and B; the header's
/// column mode picks between them. Port of probeinterface's `_resolve_active_contacts_for_np1110`
/// (itself SpikeGLX's `IMROTbl_T1110.cpp`), kept with its terse names for comparison.
fn np1110_channels(header: &[i64], rows: &[Vec<i64>]) -> Result<Vec<ImroChannel>, String> {
    // header (after the type): col_mode, ref_id, ap_gain, lf_gain, ap_hipas_flt
    let [col_mode, _ref_id, ap_gain, lf_gain, ..] = header else {
        return Err(format!(
            "the imro_np1110 header needs 6 fields, found {}",
            header.len() + 1
        ));
    };
    if rows.len() != 24 {
        return Err(format!(
            "the imro_np1110 format has 24 group entries, found {}",
            rows.len()
        ));
    }
    const COL_TBL: [i64; 8] = [0, 3, 1, 2, 1, 2, 0, 3];
    let grp_idx = |ch: i64| 2 * ((ch % 384) / 32) + ((ch % 384) & 1);
    let col = |ch: i64, bank: i64| {
        let grp_col = COL_TBL[(4 * (bank & 1) + grp_idx(ch) % 4) as usize];
        let crossed = (bank / 4) & 1;
        let ingrp_col = ((((ch % 64) % 32) / 2) & 1) ^ crossed;
        if ch & 1 == 1 {
            2 * grp_col + (1 - ingrp_col)
        } else {
            2 * grp_col + ingrp_col
        }
    };
    let row = |ch: i64, bank: i64| {
        let grp_row = grp_idx(ch) / 4;
        let ingrp_row = ((ch % 64) % 32) / 4;
        let b0_row = if ch & 1 == 1 {
            8 * grp_row + (7 - ingrp_row)
        } else {
            8 * grp_row + ingrp_row
        };
        bank.checked_mul(48).and_then(|b| b.checked_add(b0_row))
    };
    let mut out = Vec::with_capacity(384);
    for ch in 0..384i64 {
        let grp = grp_idx(ch) as usize;
        let (a, b) = match rows.get(grp).map(Vec::as_slice) {
            Some([_, a, b, ..]) => (*a, *b),
            _ => return Err(format!("group {grp} missing")),
        };
        // Banks are small non-negative numbers; anything else names no electrode.
        let electrode = if (0..1 << 20).contains(&a) && (0..1 << 20).contains(&b) {
            let bank = match *col_mode {
                2 => a, // ALL
                mode => {
                    let c = col(ch, a);
                    let outer = mode == 1;
                    let a_wins = if c <= 3 {
                        (c & 1 == 0) == outer
                    } else {
                        (c & 1 == 1) == outer
                    };
                    if a_wins {
                        a
                    } else {
                        b
                    }
                }
            };
            row(ch, bank).map(|r| 8 * r + col(ch, bank))
        } else {
            None
        };
        out.push(ImroChannel {
            shank: None,
            electrode,
            ap_gain: Some(*ap_gain as f64),
            lf_gain: Some(*lf_gain as f64),
        });
    }
    Ok(out)
}

/// A parsed `~snsGeomMap`: per saved probe channel, (shank, x, y) with x from the shank's
/// left edge; x is made absolute here by adding `shank * shank_pitch`.
pub(crate) fn parse_geom_map(text: &str) -> Result<Vec<Contact>, String> {
    let groups = parenthesised(text)?;
    let (header, entries) = match groups.split_first() {
        Some(split) => split,
        None => return Err("empty table".into()),
    };
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let shank_pitch: f64 = match header.get(2).map(|s| s.parse::<f64>()) {
        Some(Ok(v)) if v.is_finite() => v,
        _ => {
            return Err(format!(
                "header {:?} lacks a shank pitch",
                super::short(&header.join(","))
            ))
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let f: Vec<&str> = e.split(':').map(str::trim).collect();
        let parsed = match f.as_slice() {
            [s, x, y, ..] => match (s.parse::<u32>(), x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(s), Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => Some((s, x, y)),
                _ => None,
            },
            _ => None,
        };
        let Some((shank, x, y)) = parsed else {
            return Err(format!(
                "entry {i} {:?} is not `shank:x:y:used`",
                super::short(e)
            ));
        };
        out.push(Contact {
            x_um: x + f64::from(shank) * shank_pitch,
            y_um: y,
            shank,
        });
    }
    Ok(out)
}

// ---- Catalogue: probeinterface 0.4.2 resources/neuropixels_probe_features.json (MIT) ----

#[allow(clippy::too_many_arguments)]
const fn pp(
    part_number: &'static str,
    shanks: u32,
    cols_per_shank: u32,
    rows_per_shank: u32,
    pitch_um: [f64; 2],
    row_offset_um: [f64; 2],
    shank_pitch_um: f64,
    imro: ImroFormat,
    adc_bits: u32,
    adc_range_vpp: f64,
    fixed_ap_gain: Option<f64>,
) -> ProbePart {
    ProbePart {
        part_number,
        shanks,
        cols_per_shank,
        rows_per_shank,
        pitch_um,
        row_offset_um,
        shank_pitch_um,
        imro,
        adc_bits,
        adc_range_vpp,
        fixed_ap_gain,
    }
}

/// Part number, shanks, columns and rows per shank, [x, y] pitch, [even, odd] row offset,
/// shank pitch, IMRO format, ADC bits, ADC range (V peak to peak), fixed AP gain.
#[rustfmt::skip]
pub(crate) const PARTS: &[ProbePart] = &[
    pp("NP1000", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1001", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1010", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1011", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1012", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1013", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1014", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1015", 1, 2, 480, [32.0, 20.0], [27.0, 27.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1016", 1, 2, 480, [32.0, 20.0], [27.0, 27.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1017", 1, 2, 480, [32.0, 20.0], [27.0, 27.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1020", 1, 2, 1248, [87.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1021", 1, 2, 1248, [87.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1022", 1, 2, 1248, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1030", 1, 2, 2208, [87.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1031", 1, 2, 2208, [87.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1032", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1033", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1040", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1041", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1042", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1050", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1051", 1, 2, 2208, [103.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1100", 1, 8, 48, [6.0, 6.0], [14.0, 14.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1110", 1, 8, 768, [6.0, 6.0], [15.5, 15.5], 0.0, ImroFormat::Np1110, 10, 1.2, None),
    pp("NP1120", 1, 2, 192, [4.5, 4.5], [6.75, 6.75], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1121", 1, 1, 384, [0.0, 3.0], [6.25, 6.25], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1122", 1, 16, 24, [3.0, 3.0], [12.5, 12.5], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1123", 1, 12, 32, [4.5, 4.5], [10.25, 10.25], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1200", 1, 2, 64, [32.0, 31.0], [56.5, 36.5], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1210", 1, 2, 64, [32.0, 31.0], [56.5, 36.5], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1300", 1, 2, 480, [48.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP1400", 1, 2, 480, [48.0, 20.0], [11.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP2000", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np2000, 14, 1.0, Some(80.0)),
    pp("NP2003", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np2003, 12, 1.24, Some(100.0)),
    pp("NP2004", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np2003, 12, 1.24, Some(100.0)),
    pp("NP2005", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np2003, 12, 1.24, Some(100.0)),
    pp("NP2006", 1, 2, 640, [32.0, 15.0], [27.0, 11.0], 0.0, ImroFormat::Np2003, 12, 1.24, Some(100.0)),
    pp("NP2010", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2010, 14, 1.0, Some(80.0)),
    pp("NP2013", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2013, 12, 1.24, Some(100.0)),
    pp("NP2014", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2013, 12, 1.24, Some(100.0)),
    pp("NP2020", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2020, 12, 1.24, Some(100.0)),
    pp("NP2021", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2020, 12, 1.24, Some(100.0)),
    pp("NP2022", 4, 2, 640, [20.0, 15.0], [27.0, 11.0], 2141.45, ImroFormat::Np2020, 12, 1.24, Some(100.0)),
    pp("NP2300", 1, 2, 640, [48.0, 15.0], [11.0, 11.0], 0.0, ImroFormat::Np2003, 12, 1.24, Some(100.0)),
    pp("NP3000", 1, 1, 128, [0.0, 15.0], [59.0, 59.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("NP3010", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np3010, 12, 1.34, Some(100.0)),
    pp("NP3011", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np3010, 12, 1.34, Some(100.0)),
    pp("NP3012", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np3010, 12, 1.34, Some(100.0)),
    pp("NP3020", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np3020, 12, 1.34, Some(100.0)),
    pp("NP3021", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np3020, 12, 1.34, Some(100.0)),
    pp("NP3022", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np3020, 12, 1.34, Some(100.0)),
    pp("NP3023", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np3020, 12, 1.34, Some(100.0)),
    pp("NP3024", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np3020, 12, 1.34, Some(100.0)),
    pp("PRB2_1_2_0640_0", 1, 2, 640, [32.0, 15.0], [27.0, 27.0], 0.0, ImroFormat::Np2000, 14, 1.0, Some(80.0)),
    pp("PRB2_4_2_0640_0", 4, 2, 640, [32.0, 15.0], [27.0, 27.0], 250.0, ImroFormat::Np2010, 14, 1.0, Some(80.0)),
    pp("PRB_1_2_0480_2", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("PRB_1_4_0480_1", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
    pp("PRB_1_4_0480_1_C", 1, 2, 480, [32.0, 20.0], [27.0, 11.0], 0.0, ImroFormat::Np1000, 10, 1.2, None),
];

/// IMRO header type code -> (table format, catalogue part number).
pub(crate) const IMRO_TYPES: &[(&str, ImroFormat, &str)] = &[
    ("0", ImroFormat::Np1000, "NP1000"),
    ("21", ImroFormat::Np2000, "NP2000"),
    ("24", ImroFormat::Np2010, "NP2010"),
    ("1020", ImroFormat::Np1000, "NP1020"),
    ("1030", ImroFormat::Np1000, "NP1030"),
    ("1100", ImroFormat::Np1000, "NP1100"),
    ("1110", ImroFormat::Np1110, "NP1110"),
    ("1120", ImroFormat::Np1000, "NP1120"),
    ("1121", ImroFormat::Np1000, "NP1121"),
    ("1122", ImroFormat::Np1000, "NP1122"),
    ("1123", ImroFormat::Np1000, "NP1123"),
    ("1200", ImroFormat::Np1000, "NP1200"),
    ("1300", ImroFormat::Np1000, "NP1300"),
    ("2003", ImroFormat::Np2003, "NP2003"),
    ("2013", ImroFormat::Np2013, "NP2013"),
    ("2020", ImroFormat::Np2020, "NP2020"),
    ("3010", ImroFormat::Np3010, "NP3010"),
    ("3020", ImroFormat::Np3020, "NP3020"),
    ("3022", ImroFormat::Np3020, "NP3022"),
];
