//! `type = "suite2p"`: replays a Suite2p `plane0` folder ([`crate::formats::suite2p`]) as a
//! traces stream, frame by frame, as if the traces were being extracted live.
//!
//! ```toml
//! [sources.s2p]
//! type = "suite2p"
//! path = "/data/mouse1/suite2p/plane0"
//! pace = "realtime"      # or "max"
//! batch_frames = 1       # frames per batch (each batch has one row per ROI per frame)
//! cells_only = false     # true: only ROIs that iscell.npy marks as cells
//! # rate_hz = 30.0       # frame rate; required only when ops.npy has no usable `fs`
//! ```
//!
//! Default port, traces layout ([`stream::traces_schema`]), stream id `<component id>.<plane
//! folder name>` (e.g. `s2p.plane0`): `frame_index`, `time_s` (= frame_index / rate), `roi`
//! (the ROI's index in the Suite2p files, also with `cells_only`), then `f`, `fneu` and, when
//! `spks.npy` exists, `spks`: the files' float32 values, unchanged. Rows are frame-major.
//!
//! Port `rois`, ROI layout ([`stream::rois_schema`]), stream id `<traces stream id>.rois`: every
//! ROI's mask once, before the first trace batch: one row per pixel (`roi`, `y`, `x`, `weight` =
//! Suite2p's `lam`), on the `Ly` × `Lx` image of `ops.npy` (or the smallest image holding every
//! pixel). Nothing is sent there when `stat.npy` is absent.
//!
//! The folder is checked at validation (files, shapes, frame rate) and read into memory when
//! the source starts; a malformed `stat.npy` then ends the source with an error naming it.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, PortSpec, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::formats::suite2p::{Suite2pFiles, Suite2pPlane};
use crate::pace::{Pace, Pacer};
use crate::stream::{self, Layout};

pub const TYPE: &str = "suite2p";
pub const ROIS_PORT: &str = "rois";
/// Stream id of the masks: the traces stream id + this.
pub const ROIS_SUFFIX: &str = ".rois";
pub const F: &str = "f";
pub const FNEU: &str = "fneu";
pub const SPKS: &str = "spks";

fn default_batch_frames() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: PathBuf,
    #[serde(default)]
    pace: Pace,
    #[serde(default = "default_batch_frames")]
    batch_frames: usize,
    #[serde(default)]
    cells_only: bool,
    #[serde(default)]
    rate_hz: Option<f64>,
}

pub struct Suite2pSource {
    files: Suite2pFiles,
    stream_id: String,
    rate_hz: f64,
    pace: Pace,
    batch_frames: usize,
    cells_only: bool,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let cfg: Config = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("source `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    if !(1..=100_000).contains(&cfg.batch_frames) {
        errors.push(format!(
            "{prefix}: `batch_frames` = {} must be between 1 and 100000",
            cfg.batch_frames
        ));
    }
    if let Some(r) = cfg.rate_hz {
        if let Err(why) = crate::limits::check_rate(r) {
            errors.push(format!("{prefix}: `rate_hz` = {r}: {why}"));
        }
    }
    let files = match Suite2pPlane::probe(&cfg.path) {
        Ok(f) => Some(f),
        Err(e) => {
            errors.push(format!("{prefix}: {e}"));
            None
        }
    };
    let rate_hz = files.as_ref().and_then(|f| cfg.rate_hz.or(f.ops.fs));
    if let Some(f) = &files {
        if let (None, Some(fs)) = (cfg.rate_hz, f.ops.fs) {
            if let Err(why) = crate::limits::check_rate(fs) {
                errors.push(format!(
                    "{prefix}: {}: `fs` = {fs}: {why}; set `rate_hz`",
                    f.dir.join("ops.npy").display()
                ));
            }
        }
        if rate_hz.is_none() {
            errors.push(format!(
                "{prefix}: {}: no frame rate (ops.npy missing or without a numeric `fs`); set \
                 `rate_hz`",
                f.dir.display()
            ));
        }
        if cfg.cells_only && !f.has_iscell {
            errors.push(format!(
                "{prefix}: `cells_only = true` needs {}",
                f.dir.join(crate::formats::suite2p::ISCELL_NPY).display()
            ));
        }
        if let (Some(r), Some(fs)) = (cfg.rate_hz, f.ops.fs) {
            if r != fs {
                tracing::warn!("{prefix}: `rate_hz` = {r} overrides ops.npy's fs = {fs}");
            }
        }
    }
    let (Some(files), Some(rate_hz), true) = (files, rate_hz, errors.is_empty()) else {
        return Err(errors);
    };
    let plane = files
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "plane0".into());
    Ok(Box::new(Suite2pSource {
        stream_id: format!("{}.{plane}", ctx.id),
        files,
        rate_hz,
        pace: cfg.pace,
        batch_frames: cfg.batch_frames,
        cells_only: cfg.cells_only,
    }))
}

impl Source for Suite2pSource {
    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::default_port(&[Layout::Traces]),
            PortSpec::named(ROIS_PORT, &[Layout::Rois]),
        ]
    }

    fn overflow(&self) -> Overflow {
        Overflow::Block
    }

    fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), ComponentError> {
        let plane = Suite2pPlane::load(&self.files.dir)
            .map_err(|e| ComponentError::Other(e.to_string()))?;
        let rois: Vec<usize> = match (&plane.iscell, self.cells_only) {
            (Some(iscell), true) => (0..plane.files.rois)
                .filter(|&r| iscell[r].is_cell)
                .collect(),
            _ => (0..plane.files.rois).collect(),
        };
        tracing::info!(
            "source `{}`: replaying {} ({} of {} ROIs, {} frames at {} Hz)",
            ctx.id,
            self.files.dir.display(),
            rois.len(),
            plane.files.rois,
            plane.files.frames,
            self.rate_hz
        );
        let context = |what: &str| format!("{}: {what}", self.files.dir.display());
        if let Some(masks) = rois_batch(&plane, &rois, &self.stream_id) {
            let batch = masks.map_err(|e| ComponentError::arrow(context("ROI masks"), e))?;
            if let Some(port) = ctx.outputs.port(ROIS_PORT) {
                // A mask table nobody reads is no reason to stop the traces.
                let _ = port.send(batch);
            }
        }
        let values: &[&str] = if plane.spks.is_some() {
            &[F, FNEU, SPKS]
        } else {
            &[F, FNEU]
        };
        let schema = stream::traces_schema(&self.stream_id, &self.rate_hz.to_string(), values);
        let pacer = Pacer::new(self.pace, self.rate_hz);
        let output = ctx.outputs.main();
        let mut start = 0;
        while start < plane.files.frames {
            let end = (start + self.batch_frames).min(plane.files.frames);
            if !pacer.wait_for(end as u64, &ctx.shutdown) {
                tracing::info!("source `{}`: stopped by shutdown", ctx.id);
                return Ok(());
            }
            let batch = traces_batch(&plane, &rois, start..end, self.rate_hz, &schema)
                .map_err(|e| ComponentError::arrow(context("building a batch"), e))?;
            if output.send(batch).is_err() {
                tracing::info!("source `{}`: every consumer stopped", ctx.id);
                return Ok(());
            }
            ctx.metrics.set_lag(pacer.lag_seconds(end as u64));
            start = end;
        }
        tracing::info!(
            "source `{}`: finished {} ({} frames)",
            ctx.id,
            self.files.dir.display(),
            plane.files.frames
        );
        Ok(())
    }
}

/// Rows for frames `range` × `rois`, frame-major.
fn traces_batch(
    plane: &Suite2pPlane,
    rois: &[usize],
    range: std::ops::Range<usize>,
    rate_hz: f64,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = range.len() * rois.len();
    let mut frame = Vec::with_capacity(n);
    let mut time = Vec::with_capacity(n);
    let mut roi = Vec::with_capacity(n);
    let mut f = Vec::with_capacity(n);
    let mut fneu = Vec::with_capacity(n);
    let mut spks = Vec::with_capacity(if plane.spks.is_some() { n } else { 0 });
    for t in range {
        let ts = t as f64 / rate_hz;
        for &r in rois {
            frame.push(t as i64);
            time.push(ts);
            roi.push(r as i32);
            f.push(plane.f[[r, t]]);
            fneu.push(plane.fneu[[r, t]]);
            if let Some(s) = &plane.spks {
                spks.push(s[[r, t]]);
            }
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(frame)),
        Arc::new(Float64Array::from(time)),
        Arc::new(Int32Array::from(roi)),
        Arc::new(Float32Array::from(f)),
        Arc::new(Float32Array::from(fneu)),
    ];
    if plane.spks.is_some() {
        columns.push(Arc::new(Float32Array::from(spks)));
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// The masks of `rois`, or `None` without `stat.npy`.
fn rois_batch(
    plane: &Suite2pPlane,
    rois: &[usize],
    traces_id: &str,
) -> Option<Result<RecordBatch, arrow::error::ArrowError>> {
    let stat = plane.stat.as_ref()?;
    let (height, width) = plane.image_size()?;
    let schema = stream::rois_schema(&format!("{traces_id}{ROIS_SUFFIX}"), height, width);
    let (mut roi, mut y, mut x, mut w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &r in rois {
        let m = &stat[r];
        roi.extend(std::iter::repeat_n(r as i32, m.ypix.len()));
        y.extend_from_slice(&m.ypix);
        x.extend_from_slice(&m.xpix);
        w.extend_from_slice(&m.lam);
    }
    Some(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(roi)),
            Arc::new(Int32Array::from(y)),
            Arc::new(Int32Array::from(x)),
            Arc::new(Float32Array::from(w)),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::{Output, Outputs, Shutdown};
    use crate::edge::{Inbox, Recv};
    use crate::formats::suite2p::{run_python, test_plane};
    use crate::metrics::Metrics;
    use crate::stream::keys;
    use arrow::array::Array;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn build_source(path: &Path, extra: &str) -> Result<Box<dyn Source>, Vec<String>> {
        let mut t: toml::Table = toml::from_str(extra).unwrap();
        t.insert("path".into(), path.display().to_string().into());
        build(
            &BuildContext {
                id: "s2p",
                data_dir: Path::new("/nonexistent"),
                inputs: &[],
            },
            t,
        )
    }

    /// Runs the source with a consumer on both ports; (traces, rois).
    fn run(source: Box<dyn Source>) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        let metrics = Metrics::new();
        let m = metrics.component("s2p", "source", TYPE);
        let traces = Inbox::new(100_000, metrics.component("a", "sink", "t"));
        let rois = Inbox::new(100, metrics.component("b", "sink", "t"));
        let mut outputs = Outputs::default();
        outputs.insert(
            "",
            Output::new(vec![traces.sender()], Overflow::Block, m.clone()),
        );
        outputs.insert(
            ROIS_PORT,
            Output::new(vec![rois.sender()], Overflow::Block, m.clone()),
        );
        let ctx = SourceContext {
            id: "s2p".into(),
            outputs,
            shutdown: Shutdown::new(),
            metrics: m,
            resume: Default::default(),
        };
        // The outputs end when the source drops them.
        let h = std::thread::spawn(move || source.run(ctx));
        let drain = |inbox: &Inbox| {
            let mut out = Vec::new();
            loop {
                match inbox.recv_timeout(Duration::from_secs(30)) {
                    Recv::Data(b) => out.push(b.into_record_batch()),
                    Recv::Closed => return out,
                    Recv::Timeout => panic!("nothing for 30 s"),
                }
            }
        };
        let t = drain(&traces);
        let r = drain(&rois);
        h.join().unwrap().unwrap();
        (t, r)
    }

    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
    }

    #[test]
    fn replays_every_trace_value_and_the_masks() {
        let Some(dir) = test_plane() else { return };
        let source = build_source(&dir, "pace = 'max'\nbatch_frames = 100").unwrap();
        let (traces, rois) = run(source);
        let plane = Suite2pPlane::load(&dir).unwrap();
        assert_eq!(traces.len(), 9, "864 frames in batches of 100");
        let schema = traces[0].schema();
        assert_eq!(schema.metadata()[keys::STREAM_ID], "s2p.suite2p-fissa");
        assert_eq!(schema.metadata()[keys::SAMPLING_HZ], "1");
        let mut rows = 0;
        for b in &traces {
            let frame = col::<Int64Array>(b, stream::FRAME_INDEX);
            let roi = col::<Int32Array>(b, stream::ROI);
            let f = col::<Float32Array>(b, F);
            let fneu = col::<Float32Array>(b, FNEU);
            let spks = col::<Float32Array>(b, SPKS);
            let time = col::<Float64Array>(b, stream::TIME_S);
            for i in 0..b.num_rows() {
                let (t, r) = (frame.value(i) as usize, roi.value(i) as usize);
                assert_eq!((t, r), (rows / 23, rows % 23), "frame-major order");
                assert_eq!(f.value(i).to_bits(), plane.f[[r, t]].to_bits());
                assert_eq!(fneu.value(i).to_bits(), plane.fneu[[r, t]].to_bits());
                assert_eq!(
                    spks.value(i).to_bits(),
                    plane.spks.as_ref().unwrap()[[r, t]].to_bits()
                );
                assert_eq!(time.value(i), t as f64);
                rows += 1;
            }
        }
        assert_eq!(rows, 23 * 864);
        // Masks: one batch, every pixel of every ROI, sized as ops.npy says.
        assert_eq!(rois.len(), 1);
        let md = rois[0].schema().metadata().clone();
        assert_eq!(md[keys::STREAM_ID], "s2p.suite2p-fissa.rois");
        assert_eq!(
            (md[keys::HEIGHT].as_str(), md[keys::WIDTH].as_str()),
            ("176", "156")
        );
        let stat = plane.stat.unwrap();
        let total: usize = stat.iter().map(|m| m.ypix.len()).sum();
        assert_eq!(rois[0].num_rows(), total);
        let y = col::<Int32Array>(&rois[0], stream::ROI_Y);
        let w = col::<Float32Array>(&rois[0], stream::ROI_WEIGHT);
        assert_eq!(y.value(0), stat[0].ypix[0]);
        assert_eq!(w.value(total - 1), *stat[22].lam.last().unwrap());
    }

    #[test]
    fn cells_only_keeps_the_roi_numbers_numpy_selects() {
        let Some(dir) = test_plane() else { return };
        let code = "import sys, numpy as np\n\
                    c = np.load(sys.argv[1] + '/iscell.npy')\n\
                    print(' '.join(str(i) for i in np.flatnonzero(c[:, 0] > 0.5)))";
        let Some(out) = run_python(code, &[dir.to_str().unwrap()]) else {
            return;
        };
        let want: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        let source =
            build_source(&dir, "pace = 'max'\ncells_only = true\nbatch_frames = 864").unwrap();
        let (traces, rois) = run(source);
        let roi = col::<Int32Array>(&traces[0], stream::ROI);
        assert_eq!(&roi.values()[..want.len()], &want[..]);
        assert_eq!(traces[0].num_rows(), want.len() * 864);
        let mut mask_rois: Vec<i32> = col::<Int32Array>(&rois[0], stream::ROI).values().to_vec();
        mask_rois.dedup();
        assert_eq!(mask_rois, want);
    }

    #[test]
    fn realtime_paces_frames_at_the_rate() {
        let Some(dir) = test_plane() else { return };
        let tmp = tempfile::tempdir().unwrap();
        for f in ["F.npy", "Fneu.npy"] {
            std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
        }
        // 864 frames at 8640 Hz: 0.1 s.
        let source = build_source(tmp.path(), "rate_hz = 8640.0\nbatch_frames = 10").unwrap();
        let t = Instant::now();
        let (traces, rois) = run(source);
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(traces.iter().map(|b| b.num_rows()).sum::<usize>(), 23 * 864);
        assert_eq!(traces[0].num_columns(), 5, "no spks.npy, no spks column");
        assert!(rois.is_empty(), "no stat.npy, no masks");
    }

    #[test]
    fn validation_reports_every_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let e = build_source(&tmp.path().join("plane0"), "batch_frames = 0")
            .err()
            .unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|m| m.contains("batch_frames")));
        assert!(
            e.iter().any(|m| m.contains("s2p") && m.contains("plane0")),
            "{e:?}"
        );
        let Some(dir) = test_plane() else { return };
        for f in ["F.npy", "Fneu.npy"] {
            std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
        }
        let e = build_source(tmp.path(), "cells_only = true").err().unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|m| m.contains("rate_hz")));
        assert!(e.iter().any(|m| m.contains("iscell.npy")));
    }

    #[test]
    fn bad_stat_ends_the_source_naming_the_file() {
        let Some(dir) = test_plane() else { return };
        let tmp = tempfile::tempdir().unwrap();
        for f in ["F.npy", "Fneu.npy", "ops.npy"] {
            std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
        }
        std::fs::write(tmp.path().join("stat.npy"), b"\x93NUMPY garbage").unwrap();
        let source = build_source(tmp.path(), "pace = 'max'").unwrap();
        let metrics = Metrics::new();
        let m = metrics.component("s2p", "source", TYPE);
        let mut outputs = Outputs::default();
        outputs.insert("", Output::new(vec![], Overflow::Block, m.clone()));
        let e = source
            .run(SourceContext {
                id: "s2p".into(),
                outputs,
                shutdown: Shutdown::new(),
                metrics: m,
                resume: Default::default(),
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("stat.npy"), "{e}");
    }
}
