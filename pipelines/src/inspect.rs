//! `neurod inspect`: what a recording on disk holds (kind, exact rate, channels, duration,
//! µV per bit, channel geometry), without reading its samples.
//!
//! Accepts a SpikeGLX `.meta` or `.bin` (one stream) and an Open Ephys `structure.oebin` or
//! recording folder (one description per continuous stream). A recording still being written
//! has no duration ("growing").

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::formats::openephys::{OebinError, OpenEphysRecording, OEBIN};
use crate::formats::spikeglx::{pair_paths, MetaError, SpikeGlxMeta};
use crate::stream::{ChannelKind, StreamDescription};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    SpikeGlx(#[from] MetaError),
    #[error(transparent)]
    OpenEphys(#[from] OebinError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a recording neurod knows: give a SpikeGLX .meta or .bin, or an Open Ephys \
         structure.oebin or recording folder",
        .path.display()
    )]
    UnknownKind { path: PathBuf },
}

/// Describes the stream(s) at `path`.
pub fn inspect(path: &Path) -> Result<Vec<StreamDescription>, InspectError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("meta") | Some("bin")) {
        // The .meta describes the stream; the .bin need not be here.
        return inspect_spikeglx(path);
    }
    let md = std::fs::metadata(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if md.is_dir() {
        return inspect_openephys(path);
    }
    let is_oebin = path.file_name().and_then(|n| n.to_str()) == Some(OEBIN);
    match ext.as_deref() {
        Some("oebin") => inspect_openephys(path),
        _ if is_oebin => inspect_openephys(path),
        _ => Err(InspectError::UnknownKind {
            path: path.to_path_buf(),
        }),
    }
}

fn inspect_spikeglx(path: &Path) -> Result<Vec<StreamDescription>, InspectError> {
    let (meta_path, _bin) = pair_paths(path);
    let meta = SpikeGlxMeta::read(&meta_path)?;
    let info = meta.info("")?;
    // A meta without `fileSizeBytes` was written while acquiring: the .bin is still growing.
    let duration = meta.duration_s();
    Ok(vec![StreamDescription::new(
        meta_path.display().to_string(),
        &info,
        duration,
    )])
}

fn inspect_openephys(path: &Path) -> Result<Vec<StreamDescription>, InspectError> {
    let recording = OpenEphysRecording::open(path)?;
    let mut out = Vec::with_capacity(recording.streams.len());
    for stream in &recording.streams {
        // Until the GUI stops (valid sample_numbers.npy), the .dat is still growing.
        let duration = if stream.finished {
            let samples = stream
                .samples_on_disk()
                .map_err(|source| InspectError::Io {
                    path: stream.dat_path.clone(),
                    source,
                })?;
            Some(samples as f64 / stream.sampling_hz)
        } else {
            None
        };
        out.push(StreamDescription::new(
            stream.dat_path.display().to_string(),
            &stream.info(&stream.name),
            duration,
        ));
    }
    Ok(out)
}

/// `neurod inspect --json`: the single object for one stream, a list for several.
pub fn to_json(desc: &[StreamDescription]) -> serde_json::Value {
    let v = match desc {
        [one] => serde_json::to_value(one),
        many => serde_json::to_value(many),
    };
    v.unwrap_or(serde_json::Value::Null)
}

/// A human-readable table per stream: a summary, then one row per channel.
pub fn render_text(desc: &[StreamDescription]) -> String {
    let mut out = String::new();
    for (i, d) in desc.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}", d.path);
        let _ = writeln!(out, "  kind:      {}", d.stream_kind);
        // `{}` on f64 prints the shortest text that reads back exactly: 29999.757983 stays that.
        let _ = writeln!(out, "  rate:      {} Hz", d.sampling_hz);
        let _ = writeln!(out, "  channels:  {}", d.saved_channels);
        let duration = match d.duration_s {
            Some(s) => format!("{s} s"),
            None => "growing".to_string(),
        };
        let _ = writeln!(out, "  duration:  {duration}");
        let _ = writeln!(out, "  µV/bit:    {}", uv_summary(d));
        if let Some(p) = &d.probe {
            let _ = writeln!(out, "  probe:     {p}");
        }
        let rows: Vec<[String; 6]> = d
            .channels
            .iter()
            .map(|c| {
                [
                    c.index.to_string(),
                    c.name.clone(),
                    c.kind.as_str().to_string(),
                    opt(c.x_um),
                    opt(c.y_um),
                    c.shank.map_or_else(|| "-".to_string(), |s| s.to_string()),
                ]
            })
            .collect();
        let header = ["index", "name", "kind", "x_um", "y_um", "shank"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for r in std::iter::once(&header).chain(&rows) {
            out.push_str("  ");
            for (k, (cell, w)) in r.iter().zip(widths).enumerate() {
                // Numbers right-aligned, text left-aligned.
                if matches!(k, 0 | 3 | 4 | 5) {
                    let _ = write!(out, "{cell:>w$}");
                } else {
                    let _ = write!(out, "{cell:<w$}");
                }
                if k + 1 < r.len() {
                    out.push_str("  ");
                }
            }
            out.push('\n');
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// µV per bit: one value when all channels agree, else the values per channel kind
/// (`ap 2.34375, sync -`).
fn uv_summary(d: &StreamDescription) -> String {
    let mut per_kind: Vec<(ChannelKind, Vec<String>)> = Vec::new();
    for c in &d.channels {
        let v = opt(c.uv_per_bit);
        match per_kind.iter_mut().find(|(k, _)| *k == c.kind) {
            Some((_, vs)) => {
                if !vs.contains(&v) {
                    vs.push(v);
                }
            }
            None => per_kind.push((c.kind, vec![v])),
        }
    }
    let mut all: Vec<&String> = per_kind.iter().flat_map(|(_, vs)| vs).collect();
    all.dedup();
    if all.len() == 1 {
        return all[0].clone();
    }
    per_kind
        .iter()
        .map(|(k, vs)| format!("{} {}", k.as_str(), vs.join("/")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rel: &str) -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(rel);
        if p.exists() {
            Some(p)
        } else if std::env::var_os("CI").is_some() {
            panic!("test data missing: {}", p.display());
        } else {
            eprintln!(
                "!!! SKIPPED: test data missing: {} (CI would fail)",
                p.display()
            );
            None
        }
    }

    #[test]
    fn real_np1_meta_is_described() {
        let Some(p) = data("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta") else {
            return;
        };
        let d = inspect(&p).unwrap();
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!(d.stream_kind, "ap");
        assert_eq!(d.sampling_hz, 30000.390639481);
        assert_eq!(d.saved_channels, 385);
        let ap = d
            .channels
            .iter()
            .filter(|c| c.kind == ChannelKind::Ap)
            .count();
        assert_eq!(ap, 384);
        assert_eq!(d.channels[384].kind, ChannelKind::Sync);
        // fileSizeBytes 19045367880 / 770 bytes per sample / rate; the meta's fileTimeSecs
        // is 824.4640643928594.
        let dur = d.duration_s.unwrap();
        assert!((dur - 24_734_244.0 / 30000.390639481).abs() < 1e-9, "{dur}");
        assert!((dur - 824.4640643928594).abs() < 1e-3, "{dur}");
        let text = render_text(std::slice::from_ref(d));
        assert!(text.contains("30000.390639481 Hz"), "{text}");
        assert!(text.contains("ap 2.34375, sync -"), "{text}");
        assert!(text.contains("sample3B_g0_t0.imec1.ap.meta"));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .filter(|w: &Vec<&str>| w.len() == 6)
            .collect();
        assert_eq!(rows[0], ["index", "name", "kind", "x_um", "y_um", "shank"]);
        assert_eq!(rows.iter().filter(|w| w[2] == "ap").count(), 384);
        assert_eq!(rows[385][2], "sync");
    }

    #[test]
    fn a_bin_path_finds_its_meta() {
        let Some(p) = data("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("x.imec1.ap.meta");
        std::fs::copy(&p, &meta).unwrap();
        let bin = dir.path().join("x.imec1.ap.bin");
        std::fs::write(&bin, b"").unwrap();
        assert_eq!(inspect(&bin).unwrap()[0].saved_channels, 385);
    }

    #[test]
    fn meta_written_while_acquiring_is_growing() {
        let Some(p) = data(
            "spikeglx-meta/ibl-neuropixel/sampleNP2.4_4shanks_while_acquiring_incomplete.ap.meta",
        ) else {
            return;
        };
        let d = inspect(&p).unwrap();
        assert_eq!(d[0].duration_s, None);
        assert!(render_text(&d).contains("duration:  growing"));
        let j = to_json(&d);
        assert!(j.is_object(), "one stream prints as one object");
        assert!(j["duration_s"].is_null());
    }

    #[test]
    fn open_ephys_16_channel_recording() {
        let Some(dir) = data("openephys-16ch-40khz/experiment1/recording1") else {
            return;
        };
        for p in [dir.clone(), dir.join("structure.oebin")] {
            let d = inspect(&p).unwrap();
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].duration_s, Some(133_120.0 / 40_000.0));
            assert_eq!(d[0].saved_channels, 16);
            assert_eq!(d[0].sampling_hz, 40000.0);
            let text = render_text(&d);
            assert!(text.contains("duration:  3.328 s"), "{text}");
            assert!(text.contains("µV/bit:    0.05000000074505806"), "{text}");
        }
    }

    #[test]
    fn open_ephys_several_streams_print_as_a_list() {
        let Some(dir) = data("openephys-np2-snippets/Record Node 101/experiment1/recording1")
        else {
            return;
        };
        let d = inspect(&dir).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|s| s.duration_s == Some(100.0 / 30000.0)));
        let j = to_json(&d);
        assert_eq!(j.as_array().map(Vec::len), Some(3));
        assert_eq!(j[0]["saved_channels"], 384);
    }

    #[test]
    fn unknown_and_missing_paths_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains(".meta"), "{e}");
        let e = inspect(&dir.path().join("gone.ap.meta"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.ap.meta"), "{e}");
        let e = inspect(dir.path()).unwrap_err().to_string();
        assert!(e.contains("structure.oebin"), "{e}");
    }
}
