//! `neurod inspect`: what a recording on disk holds (kind, exact rate, channels, duration,
//! µV per bit, channel geometry), without reading its samples.
//!
//! Accepts a SpikeGLX `.meta` or `.bin` (one stream) and an Open Ephys `structure.oebin` or
//! recording folder (one description per continuous stream). A recording still being written
//! has no duration ("growing").
//!
//! Also a Suite2p `plane0` folder (or a file in it): ROIs, frames, frame rate, image size,
//! cells, and per ROI the skewness, excess kurtosis and POYO-SSL label (ALGORITHMS.md §4–§5,
//! default thresholds) of F − 0.7·Fneu ([`suite2p::neuropil_corrected`]: float32, as Suite2p
//! computes it; moments in float64); and a
//! TIFF stack or folder of stacks: frames, height, width, pixel type.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::formats::openephys::{OebinError, OpenEphysRecording, OEBIN};
use crate::formats::spikeglx::{pair_paths, MetaError, SpikeGlxMeta};
use crate::formats::suite2p::{self, neuropil_corrected, Suite2pError, Suite2pPlane};
use crate::formats::tiff_stack::{self, is_tiff_name, TiffStackError};
use crate::stats::{Label, Moments, PoyoRule};
use crate::stream::{ChannelKind, StreamDescription};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    SpikeGlx(#[from] MetaError),
    #[error(transparent)]
    OpenEphys(#[from] OebinError),
    #[error(transparent)]
    Suite2p(#[from] Suite2pError),
    #[error(transparent)]
    Tiff(#[from] TiffStackError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a recording neurod knows: give a SpikeGLX .meta or .bin, an Open Ephys \
         structure.oebin or recording folder, a Suite2p plane folder, or a TIFF stack",
        .path.display()
    )]
    UnknownKind { path: PathBuf },
}

/// What `neurod inspect` found at a path.
#[derive(Debug, Clone)]
pub enum Description {
    /// Continuous streams (SpikeGLX, Open Ephys).
    Streams(Vec<StreamDescription>),
    Suite2p(Suite2pDescription),
    Tiff(TiffDescription),
}

/// A Suite2p plane folder.
#[derive(Debug, Clone, Serialize)]
pub struct Suite2pDescription {
    pub path: String,
    pub kind: &'static str,
    pub roi_count: usize,
    pub frames: usize,
    /// `fs` of ops.npy.
    pub rate_hz: Option<f64>,
    /// `Ly` × `Lx` of ops.npy (or the extent of the ROI pixels).
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// ROIs that iscell.npy marks as cells.
    pub cells: Option<usize>,
    /// The signal the statistics describe.
    pub signal: &'static str,
    pub rule: PoyoRule,
    pub predictable: usize,
    pub unpredictable: usize,
    pub rois: Vec<RoiDescription>,
}

/// One ROI's statistics (NaN, printed as null, for a constant trace).
#[derive(Debug, Clone, Serialize)]
pub struct RoiDescription {
    pub index: usize,
    pub skew: f64,
    pub excess_kurtosis: f64,
    pub label: Option<Label>,
    pub iscell: Option<bool>,
    pub npix: Option<usize>,
}

/// A TIFF stack, or a folder of them.
#[derive(Debug, Clone, Serialize)]
pub struct TiffDescription {
    pub path: String,
    pub kind: &'static str,
    pub files: usize,
    /// Whole pages.
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub dtype: &'static str,
    /// From ScanImage metadata, when present.
    pub rate_hz: Option<f64>,
    /// Why counting stopped early: a truncated (or still growing) last page.
    pub incomplete: Option<String>,
}

impl Description {
    /// `neurod inspect --json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Description::Streams(s) => to_json(s),
            Description::Suite2p(d) => serde_json::to_value(d).unwrap_or(serde_json::Value::Null),
            Description::Tiff(d) => serde_json::to_value(d).unwrap_or(serde_json::Value::Null),
        }
    }

    /// `neurod inspect`.
    pub fn render_text(&self) -> String {
        match self {
            Description::Streams(s) => render_text(s),
            Description::Suite2p(d) => render_suite2p(d),
            Description::Tiff(d) => render_tiff(d),
        }
    }
}

const SUITE2P_FILES: &[&str] = &[
    suite2p::F_NPY,
    suite2p::FNEU_NPY,
    suite2p::SPKS_NPY,
    suite2p::ISCELL_NPY,
    suite2p::STAT_NPY,
    suite2p::OPS_NPY,
];

/// Describes what is at `path`.
pub fn inspect(path: &Path) -> Result<Description, InspectError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if SUITE2P_FILES.contains(&name) {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Ok(Description::Suite2p(inspect_suite2p(dir)?));
    }
    if is_tiff_name(path) && !path.is_dir() {
        return Ok(Description::Tiff(inspect_tiff(path)?));
    }
    if path.is_dir() && path.join(suite2p::F_NPY).is_file() {
        return Ok(Description::Suite2p(inspect_suite2p(path)?));
    }
    // A folder of TIFFs (ScanImage's numbered files) that is not an Open Ephys recording.
    if path.is_dir()
        && !path.join(OEBIN).exists()
        && tiff_stack::list_tiffs(path).is_ok_and(|f| !f.is_empty())
    {
        return Ok(Description::Tiff(inspect_tiff(path)?));
    }
    inspect_streams(path, ext.as_deref()).map(Description::Streams)
}

fn inspect_streams(path: &Path, ext: Option<&str>) -> Result<Vec<StreamDescription>, InspectError> {
    if matches!(ext, Some("meta") | Some("bin")) {
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
    match ext {
        Some("oebin") => inspect_openephys(path),
        _ if is_oebin => inspect_openephys(path),
        _ => Err(InspectError::UnknownKind {
            path: path.to_path_buf(),
        }),
    }
}

fn inspect_suite2p(dir: &Path) -> Result<Suite2pDescription, InspectError> {
    let plane = Suite2pPlane::load(dir)?;
    let rule = PoyoRule::default();
    let mut rois = Vec::with_capacity(plane.files.rois);
    for (index, (f, fneu)) in plane
        .f
        .rows()
        .into_iter()
        .zip(plane.fneu.rows())
        .enumerate()
    {
        let mut m = Moments::default();
        for (&f, &n) in f.iter().zip(fneu.iter()) {
            m.push(f64::from(neuropil_corrected(f, n)));
        }
        rois.push(RoiDescription {
            index,
            skew: m.skew(),
            excess_kurtosis: m.excess_kurtosis(),
            label: rule.label_moments(&m),
            iscell: plane.iscell.as_ref().map(|c| c[index].is_cell),
            npix: plane.stat.as_ref().map(|s| s[index].npix),
        });
    }
    let count = |l: Label| rois.iter().filter(|r| r.label == Some(l)).count();
    let size = plane.image_size();
    Ok(Suite2pDescription {
        path: dir.display().to_string(),
        kind: "suite2p",
        roi_count: plane.files.rois,
        frames: plane.files.frames,
        rate_hz: plane.files.ops.fs,
        height: size.map(|s| s.0),
        width: size.map(|s| s.1),
        cells: plane
            .iscell
            .as_ref()
            .map(|c| c.iter().filter(|c| c.is_cell).count()),
        signal: "F - 0.7*Fneu (float32, as Suite2p computes it)",
        rule,
        predictable: count(Label::Predictable),
        unpredictable: count(Label::Unpredictable),
        rois,
    })
}

fn inspect_tiff(path: &Path) -> Result<TiffDescription, InspectError> {
    let s = tiff_stack::summarize(path)?;
    Ok(TiffDescription {
        path: path.display().to_string(),
        kind: "tiff",
        files: s.files.len(),
        frames: s.frames,
        height: s.geometry.height,
        width: s.geometry.width,
        dtype: s.geometry.pixel.as_str(),
        rate_hz: s.rate_hz,
        incomplete: s.incomplete,
    })
}

fn opt_num<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn render_suite2p(d: &Suite2pDescription) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", d.path);
    let _ = writeln!(out, "  kind:      suite2p");
    let _ = writeln!(out, "  rois:      {}", d.roi_count);
    let _ = writeln!(out, "  cells:     {}", opt_num(d.cells));
    let _ = writeln!(out, "  frames:    {}", d.frames);
    let _ = writeln!(out, "  rate:      {} Hz", opt_num(d.rate_hz));
    let _ = writeln!(
        out,
        "  image:     {} × {}",
        opt_num(d.height),
        opt_num(d.width)
    );
    let _ = writeln!(
        out,
        "  POYO-SSL:  {} predictable, {} unpredictable (skew ≤ {}, excess kurtosis ≤ {}, of {})",
        d.predictable, d.unpredictable, d.rule.max_skew, d.rule.max_kurtosis, d.signal
    );
    let _ = writeln!(
        out,
        "  {:>5}  {:>9}  {:>15}  {:<13}  {:>6}  {:>5}",
        "index", "skew", "excess_kurtosis", "label", "iscell", "npix"
    );
    for r in &d.rois {
        let _ = writeln!(
            out,
            "  {:>5}  {:>9.4}  {:>15.4}  {:<13}  {:>6}  {:>5}",
            r.index,
            r.skew,
            r.excess_kurtosis,
            r.label.map_or("-", Label::as_str),
            opt_num(r.iscell),
            opt_num(r.npix)
        );
    }
    out
}

fn render_tiff(d: &TiffDescription) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", d.path);
    let _ = writeln!(out, "  kind:      tiff ({} file(s))", d.files);
    let _ = writeln!(out, "  frames:    {}", d.frames);
    let _ = writeln!(out, "  image:     {} × {} {}", d.height, d.width, d.dtype);
    let _ = writeln!(
        out,
        "  rate:      {}",
        d.rate_hz
            .map_or("- (no ScanImage metadata)".to_string(), |r| format!(
                "{r} Hz"
            ))
    );
    if let Some(why) = &d.incomplete {
        let _ = writeln!(out, "  incomplete: {why}");
    }
    out
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

    fn streams(p: &Path) -> Vec<StreamDescription> {
        match inspect(p).unwrap() {
            Description::Streams(s) => s,
            other => panic!("not streams: {other:?}"),
        }
    }

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
        let d = streams(&p);
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
        assert_eq!(streams(&bin)[0].saved_channels, 385);
    }

    #[test]
    fn meta_written_while_acquiring_is_growing() {
        let Some(p) = data(
            "spikeglx-meta/ibl-neuropixel/sampleNP2.4_4shanks_while_acquiring_incomplete.ap.meta",
        ) else {
            return;
        };
        let d = streams(&p);
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
            let d = streams(&p);
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
        let d = streams(&dir);
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

    #[test]
    fn suite2p_plane_moments_equal_scipys() {
        let Some(dir) = data("suite2p-fissa") else {
            return;
        };
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected_moments.json")).unwrap())
                .unwrap();
        // The folder itself and a file inside it.
        for p in [dir.clone(), dir.join("stat.npy")] {
            let Description::Suite2p(d) = inspect(&p).unwrap() else {
                panic!("not a suite2p description");
            };
            assert_eq!((d.roi_count, d.frames), (23, 864));
            assert_eq!((d.height, d.width), (Some(176), Some(156)));
            for (r, key) in [(0, "skew"), (1, "excess_kurtosis")] {
                let want = expected[key].as_array().unwrap();
                assert_eq!(want.len(), d.rois.len());
                for (roi, w) in d.rois.iter().zip(want) {
                    let got = if r == 0 {
                        roi.skew
                    } else {
                        roi.excess_kurtosis
                    };
                    let w = w.as_f64().unwrap();
                    assert!(
                        (got - w).abs() <= 1e-9 * w.abs(),
                        "ROI {} {key}: {got} vs {w}",
                        roi.index
                    );
                }
            }
            let rule = PoyoRule::default();
            for roi in &d.rois {
                let pred = roi.skew <= rule.max_skew && roi.excess_kurtosis <= rule.max_kurtosis;
                assert_eq!(
                    roi.label == Some(Label::Predictable),
                    pred,
                    "ROI {}",
                    roi.index
                );
            }
            assert_eq!(d.predictable + d.unpredictable, 23);
            let text = Description::Suite2p(d).render_text();
            assert!(
                text.contains("rois:      23") && text.contains("unpredictable"),
                "{text}"
            );
        }
    }

    #[test]
    fn tiff_stack_is_described() {
        let Some(p) = data("twophoton-thunder/thunder_mouse_500x64x64_int16.tif") else {
            return;
        };
        let d = inspect(&p).unwrap();
        let j = d.to_json();
        assert_eq!(j["frames"], 500);
        assert_eq!(
            (j["height"].as_u64(), j["width"].as_u64()),
            (Some(64), Some(64))
        );
        assert_eq!(j["dtype"], "int16");
        assert!(d.render_text().contains("64 × 64 int16"));
        // Its folder holds one TIFF and no recording: described as a stack too.
        let Description::Tiff(t) = inspect(p.parent().unwrap()).unwrap() else {
            panic!("folder of TIFFs");
        };
        assert_eq!((t.files, t.frames), (1, 500));
    }
}
