//! SpikeGLX `.meta` files (ALGORITHMS.md §1): the `key=value` map, and from it the description
//! of the `.bin` next to it — rate (exact text), saved channels in file order with their kind,
//! µV per bit and, for imec probes, the position of each contact as probeinterface 0.4.2 reads it.
//!
//! Channel numbering: SpikeGLX numbers the *acquired* channels of a stream (imec: AP, then LF,
//! then SY, with counts `acqApLfSy`; NI-DAQ: MN, MA, XA, XD with counts `acqMnMaXaDw`) and saves a
//! subset of them (`snsSaveChanSubset`, also listed with names in `~snsChanMap`) in ascending
//! order. An AP or LF channel `i` is readout channel `i` of the probe, i.e. entry `i` of
//! `~imroTbl`, which names its electrode; [`geometry`] places the electrode.
//!
//! Files: this one parses the map into [`SpikeGlxMeta`]; `meta_map` looks values up,
//! `saved_channels` lists and groups the saved channels, `nidq` and `imec` describe them per stream
//! type, `geometry` holds the probe catalogue and the `~imroTbl` / `~snsGeomMap` parsers.

mod geometry;
mod imec;
mod meta_map;
mod nidq;
mod saved_channels;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::stream::{parse_rate, ChannelInfo, ContinuousInfo};

use imec::{imec_channels, imec_kind};
use meta_map::{lookup, Ctx};
use nidq::nidq_channels;
use saved_channels::saved_channels;

pub(crate) use meta_map::short;
pub use saved_channels::parse_save_chan_subset;

/// More saved channels than any SpikeGLX stream has; larger counts are treated as corrupt.
const MAX_CHANNELS: usize = 100_000;
/// A `.meta` is a few hundred kB at most; refuse to slurp e.g. a `.bin` passed by mistake.
const MAX_META_BYTES: u64 = 16 << 20;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ChannelKind;
    use std::fmt::Write as _;

    // ---- synthetic metas ----

    /// NP1.0 (3B) AP meta: 384 AP + SY saved of 384 AP, 384 LF, 1 SY acquired.
    pub(super) fn np1_meta(extra: &str) -> String {
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
    pub(super) fn np2_meta(extra: &str) -> String {
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

    pub(super) fn parse(text: &str) -> SpikeGlxMeta {
        SpikeGlxMeta::parse(text, "test.ap.meta").unwrap()
    }

    pub(super) fn parse_err(text: &str, name: &str) -> String {
        match SpikeGlxMeta::parse(text, name) {
            Ok(_) => panic!("{name}: parsed a corrupt meta"),
            Err(e) => e.to_string(),
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

    pub(super) fn data_dir() -> Option<PathBuf> {
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
}
