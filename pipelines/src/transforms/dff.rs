//! `type = "dff"`: neuropil correction and a causal dF/F on traces (ALGORITHMS.md §3).
//!
//! ```toml
//! [transforms.dff]
//! type = "dff"
//! inputs = ["plane0"]
//! neuropil_coefficient = 0.7  # F_c = F − r·F_neu (F_c = F when the stream has no `fneu`)
//! baseline = "percentile"     # or "allen"
//! percentile = 8              # "percentile": F0 = this percentile of F_c over the window
//! window_s = 60               # trailing window; default 60 ("percentile"), 180 ("allen")
//! short_window_frames = 101   # "allen": the short median filter, in frames
//! min_baseline = 1.0          # the divisor is max(|F0|, min_baseline), see below
//! ```
//!
//! Input: traces (one row per ROI per frame, `f` and optionally `fneu` Float32). Output, stream
//! id `<input id>.dff`, same layout: the input columns, then `fc` = F_c and `dff` (Float32;
//! computed in f64). Columns already named `fc` or `dff` are replaced.
//!
//! The baseline is trailing, per ROI: the window is the last `round(window_s · rate)` frames of
//! that ROI up to and including the current one (fewer at the start of the stream), so
//! dF/F at frame t uses nothing after t and does not depend on how the input was cut into
//! batches. The percentile interpolates linearly between order statistics (numpy's default),
//! kept in an order-statistic window ([`crate::stats::OrderWindow`]): O(log w) per sample, no
//! allocation per frame. Missing values (NaN, null) give NaN and stay out of the window.
//!
//! - `percentile`: F0 = P-th percentile of F_c over the window (Suite2p's `prctile_baseline`,
//!   made trailing); dF/F = (F_c − F0) / max(|F0|, min_baseline).
//! - `allen`: the Allen Brain Observatory recipe made trailing: F0 = median of F_c over the
//!   window; d1 = (F_c − F0) / max(|F0|, min_baseline); m = median of d1 over the last
//!   `short_window_frames`; σ = 1.4826 · median |d1 − m| over the long window (Allen's robust
//!   noise estimate, without its two outlier passes); dF/F = d1 − min(m, 2.5σ). Allen's filters
//!   are centred, so the first minutes cannot match their output.
//!
//! Baselines at or below zero: Suite2p's F − 0.7·F_neu can be negative where the neuropil is
//! bright. Dividing by F0 would flip the sign of dF/F, and dividing by a tiny F0 blows it up, so
//! the divisor is max(|F0|, `min_baseline`) (in the traces' units): the sign of dF/F stays that of
//! F_c − F0 and its size stays bounded. Every sample whose F0 is below `min_baseline` (zero or
//! negative included) is counted in `neurod_dff_small_baseline_total{component_id}`.
//!
//! Per-stream state ([`PerStream`], the rule every transform follows): a stream's baselines
//! start on its first batch. A batch whose schema differs from the one they started on (a new
//! frame rate in the metadata above all, or other columns) is a new recording under the same id:
//! every ROI's baseline window restarts from that batch. Nothing is held back (each batch is
//! answered at once), so the retired state has nothing to flush.
//!
//! Rows of a ROI whose `frame_index` does not advance (a replayed or duplicated frame) are
//! dropped from the output and reported as an error of the batch; the rest of it goes on.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::Deserialize;

use super::per_stream::PerStream;
use super::traces::{self, err};
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::metrics::shared_registry;
use crate::stats::OrderWindow;
use crate::stream::{self, Layout};

pub const TYPE: &str = "dff";
pub const F: &str = "f";
pub const FNEU: &str = "fneu";
pub const FC: &str = "fc";
pub const DFF: &str = "dff";
/// Output stream id: `<input stream id>` + this.
pub const STREAM_SUFFIX: &str = ".dff";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Baseline {
    #[default]
    Percentile,
    Allen,
}

fn default_coefficient() -> f64 {
    0.7
}
fn default_percentile() -> f64 {
    8.0
}
/// Most frames in a trailing baseline window (over 9 hours at 30 Hz).
const MAX_WINDOW_FRAMES: usize = 1_000_000;

fn default_short_window() -> usize {
    101
}
fn default_min_baseline() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_coefficient")]
    neuropil_coefficient: f64,
    #[serde(default)]
    baseline: Baseline,
    #[serde(default = "default_percentile")]
    percentile: f64,
    window_s: Option<f64>,
    #[serde(default = "default_short_window")]
    short_window_frames: usize,
    #[serde(default = "default_min_baseline")]
    min_baseline: f64,
}

impl Options {
    fn window_s(&self) -> f64 {
        self.window_s.unwrap_or(match self.baseline {
            Baseline::Percentile => 60.0,
            Baseline::Allen => 180.0,
        })
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let r = self.neuropil_coefficient;
        if !(r.is_finite() && (0.0..=2.0).contains(&r)) {
            out.push(format!(
                "`neuropil_coefficient` = {r} must be between 0 and 2"
            ));
        }
        let p = self.percentile;
        if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
            out.push(format!("`percentile` = {p} must be between 0 and 100"));
        }
        let w = self.window_s();
        if !(w.is_finite() && w > 0.0 && w <= 3600.0) {
            out.push(format!("`window_s` = {w} must be above 0 and at most 3600"));
        }
        if !(1..=100_000).contains(&self.short_window_frames) {
            out.push(format!(
                "`short_window_frames` = {} must be between 1 and 100000",
                self.short_window_frames
            ));
        }
        let m = self.min_baseline;
        if !(m.is_finite() && m > 0.0) {
            out.push(format!("`min_baseline` = {m} must be positive"));
        }
        out
    }
}

fn small_baseline_series() -> &'static IntCounterVec {
    static SERIES: OnceLock<IntCounterVec> = OnceLock::new();
    SERIES.get_or_init(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "neurod_dff_small_baseline_total",
                "Samples whose trailing baseline F0 was below min_baseline (zero or negative included); dF/F divided by max(|F0|, min_baseline).",
            ),
            &["component_id"],
        )
        .expect("valid metric definition");
        if let Err(e) = shared_registry().register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "dff metrics not registered");
        }
        c
    })
}

pub struct Dff {
    id: String,
    options: Options,
    streams: PerStream<StreamState>,
    small_baseline: IntCounter,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let errors: Vec<String> = o
        .problems()
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(Dff {
        id: ctx.id.into(),
        options: o,
        streams: PerStream::new(),
        small_baseline: small_baseline_series().with_label_values(&[ctx.id]),
    }))
}

/// One ROI's baseline state.
struct RoiState {
    last_frame: i64,
    base: OrderWindow,
    /// `allen` only: short median of d1, and the window of |d1 − m| for σ.
    short: Option<OrderWindow>,
    resid: Option<OrderWindow>,
}

struct StreamState {
    window: usize,
    rois: HashMap<i32, RoiState>,
    /// The input columns the output keeps, and the output schema (the input schema is fixed
    /// for a state: a new one restarts it).
    keep: Vec<usize>,
    out_schema: SchemaRef,
}

impl Transform for Dff {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Traces]
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Traces])]
    }

    fn process(
        &mut self,
        _input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = traces::stream_id(&schema);
        if let Some(l) = Layout::of(&schema).filter(|l| *l != Layout::Traces) {
            return Err(err(&sid, format!("dff takes traces, not {}", l.as_str())));
        }
        let rate = traces::rate(&schema, &sid)?;
        let frames = (self.options.window_s() * rate).round();
        // The window is allocated per ROI: a frame rate no rig has must not exhaust memory.
        if frames > MAX_WINDOW_FRAMES as f64 {
            return Err(err(
                &sid,
                format!(
                    "`window_s` = {} s at {rate} Hz is {frames} frames, over {MAX_WINDOW_FRAMES}; batch dropped",
                    self.options.window_s()
                ),
            ));
        }
        let window = (frames as usize).max(1);
        let (state, retired) = self.streams.for_schema(&sid, &schema, || {
            Ok::<_, ComponentError>(StreamState::new(&schema, &sid, window))
        })?;
        if retired.is_some() {
            tracing::warn!(component = %self.id, stream = %sid, "traces schema changed (frame rate or columns): baselines restart");
        }
        state.process(&self.options, &sid, &batch, &self.small_baseline, out)
    }
}

impl StreamState {
    fn new(schema: &SchemaRef, sid: &str, window: usize) -> Self {
        let keep: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() != FC && f.name() != DFF)
            .map(|(i, _)| i)
            .collect();
        let mut fields: Vec<Field> = keep.iter().map(|&i| schema.field(i).clone()).collect();
        fields.push(Field::new(FC, DataType::Float32, true));
        fields.push(Field::new(DFF, DataType::Float32, true));
        let out = Schema::new_with_metadata(fields, schema.metadata().clone());
        StreamState {
            window,
            rois: HashMap::new(),
            keep,
            out_schema: stream::with_stream_id(&out, &format!("{sid}{STREAM_SUFFIX}")),
        }
    }

    fn process(
        &mut self,
        o: &Options,
        sid: &str,
        batch: &RecordBatch,
        small_baseline: &IntCounter,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let frames = traces::frame_index(batch, sid)?;
        let rois = traces::roi(batch, sid)?;
        let f = traces::values_f64(batch, F, sid)?
            .ok_or_else(|| err(sid, format!("no `{F}` column")))?;
        let fneu = traces::values_f64(batch, FNEU, sid)?;
        let r = o.neuropil_coefficient;
        let mut fc_out = Vec::with_capacity(n);
        let mut dff_out = Vec::with_capacity(n);
        let mut keep = Vec::with_capacity(n);
        let mut stale = 0usize;
        let mut small = 0u64;
        for i in 0..n {
            let frame = frames.value(i);
            let roi = rois.value(i);
            let st = self.rois.entry(roi).or_insert_with(|| RoiState {
                last_frame: i64::MIN,
                base: OrderWindow::new(self.window),
                short: (o.baseline == Baseline::Allen)
                    .then(|| OrderWindow::new(o.short_window_frames)),
                resid: (o.baseline == Baseline::Allen).then(|| OrderWindow::new(self.window)),
            });
            if frame <= st.last_frame {
                stale += 1;
                keep.push(false);
                continue;
            }
            st.last_frame = frame;
            keep.push(true);
            let fc = match &fneu {
                Some(neu) => f.value(i) - r * neu.value(i),
                None => f.value(i),
            };
            st.base.push(fc);
            let f0 = match o.baseline {
                Baseline::Percentile => st.base.percentile(o.percentile),
                Baseline::Allen => st.base.percentile(50.0),
            };
            if f0 < o.min_baseline {
                small += 1;
            }
            let d1 = (fc - f0) / f0.abs().max(o.min_baseline);
            let dff = match (st.short.as_mut(), st.resid.as_mut()) {
                (Some(short), Some(resid)) => {
                    short.push(d1);
                    let m = short.percentile(50.0);
                    resid.push((d1 - m).abs());
                    let sigma = 1.4826 * resid.percentile(50.0);
                    d1 - m.min(2.5 * sigma)
                }
                _ => d1,
            };
            fc_out.push(fc as f32);
            dff_out.push(dff as f32);
        }
        small_baseline.inc_by(small);
        let cols = &self.keep;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(cols.len() + 2);
        if stale == 0 {
            columns.extend(cols.iter().map(|&c| batch.column(c).clone()));
        } else {
            let mask = BooleanArray::from(keep);
            for &c in cols {
                columns.push(
                    arrow::compute::filter(batch.column(c), &mask)
                        .map_err(|e| ComponentError::arrow("dropping stale rows", e))?,
                );
            }
        }
        columns.push(Arc::new(Float32Array::from(fc_out)));
        columns.push(Arc::new(Float32Array::from(dff_out)));
        if !columns[0].is_empty() {
            let b = RecordBatch::try_new(self.out_schema.clone(), columns)
                .map_err(|e| ComponentError::arrow("building the dff batch", e))?;
            out.emit(b);
        }
        if stale > 0 {
            return Err(err(
                sid,
                format!("{stale} rows repeat or go back in `frame_index` for their ROI; dropped"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stream::{keys, traces_schema};
    use arrow::array::{Float64Array, Int32Array, Int64Array};
    use std::path::PathBuf;

    pub const RATE: f64 = 30.0;

    /// `../shared/data/suite2p-fissa` F and Fneu (ROIs × frames, float32); `None` (said loudly)
    /// when absent, a failure under CI.
    pub fn suite2p_traces() -> Option<(PathBuf, ndarray::Array2<f32>, ndarray::Array2<f32>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/suite2p-fissa");
        let read = |name: &str| ndarray_npy::read_npy::<_, ndarray::Array2<f32>>(dir.join(name));
        match (read("F.npy"), read("Fneu.npy")) {
            (Ok(f), Ok(n)) => Some((dir, f, n)),
            (Err(e), _) | (_, Err(e)) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{}: {e} (required under CI)",
                    dir.display()
                );
                eprintln!("\n!!!!! SKIPPED: {} unreadable: {e} !!!!!\n", dir.display());
                None
            }
        }
    }

    /// Traces batches (frame-major, all ROIs of a frame in order) cut every `rows` rows.
    pub fn traces_batches(
        id: &str,
        f: &ndarray::Array2<f32>,
        fneu: Option<&ndarray::Array2<f32>>,
        rows: usize,
    ) -> Vec<RecordBatch> {
        let (n_roi, n_frames) = f.dim();
        let values: &[&str] = if fneu.is_some() { &[F, FNEU] } else { &[F] };
        let schema = traces_schema(id, &RATE.to_string(), values);
        let all: Vec<(i64, i32)> = (0..n_frames as i64)
            .flat_map(|t| (0..n_roi as i32).map(move |r| (t, r)))
            .collect();
        all.chunks(rows)
            .map(|c| {
                let mut cols: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|x| x.0))),
                    Arc::new(Float64Array::from_iter_values(
                        c.iter().map(|x| x.0 as f64 / RATE),
                    )),
                    Arc::new(Int32Array::from_iter_values(c.iter().map(|x| x.1))),
                    Arc::new(Float32Array::from_iter_values(
                        c.iter().map(|x| f[[x.1 as usize, x.0 as usize]]),
                    )),
                ];
                if let Some(n) = fneu {
                    cols.push(Arc::new(Float32Array::from_iter_values(
                        c.iter().map(|x| n[[x.1 as usize, x.0 as usize]]),
                    )));
                }
                RecordBatch::try_new(schema.clone(), cols).unwrap()
            })
            .collect()
    }

    pub fn build_with(id: &str, options: &str) -> Box<dyn Transform> {
        build(
            &BuildContext {
                id,
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::from_str(options).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    pub fn run(tr: &mut dyn Transform, batches: Vec<RecordBatch>) -> Vec<(String, RecordBatch)> {
        let mut out = TransformContext::detached("t");
        for b in batches {
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        tr.finish(&mut out).unwrap();
        out.out.batches
    }

    fn column(b: &RecordBatch, name: &str) -> Vec<f32> {
        b.column(b.schema().index_of(name).unwrap())
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    /// (fc, dff) per ROI × frame from the output, whatever the batching.
    fn collect(
        out: &[(String, RecordBatch)],
        n_roi: usize,
        n_frames: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut fc = vec![f32::NAN; n_roi * n_frames];
        let mut dff = fc.clone();
        for (_, b) in out {
            let t = traces::frame_index(b, "").unwrap();
            let r = traces::roi(b, "").unwrap();
            let (c, d) = (column(b, FC), column(b, DFF));
            for i in 0..b.num_rows() {
                let k = r.value(i) as usize * n_frames + t.value(i) as usize;
                fc[k] = c[i];
                dff[k] = d[i];
            }
        }
        (fc, dff)
    }

    /// numpy, written apart: for each ROI and frame, np.percentile over the trailing window.
    const NUMPY_REFERENCE: &str = r#"
import sys, numpy as np
d, w, p, floor, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
F = np.load(d + '/F.npy').astype(np.float64)
N = np.load(d + '/Fneu.npy').astype(np.float64)
fc = F - 0.7 * N
dff = np.empty_like(fc)
for r in range(fc.shape[0]):
    for t in range(fc.shape[1]):
        f0 = np.percentile(fc[r, max(0, t - w + 1):t + 1], p)
        dff[r, t] = (fc[r, t] - f0) / max(abs(f0), floor)
np.save(out, np.stack([fc, dff]))
"#;

    #[test]
    fn dff_equals_numpy_on_the_real_suite2p_traces_whatever_the_batching() {
        let Some((dir, f, fneu)) = suite2p_traces() else {
            return;
        };
        let Some(py) = python() else {
            return;
        };
        let (n_roi, n_frames) = f.dim();
        // 5 s at 30 Hz = 150 frames: the window fills, then slides over the remaining 714.
        let window = 150;
        let tmp = tempfile::tempdir().unwrap();
        let ref_path = tmp.path().join("ref.npy");
        let status = std::process::Command::new(&py)
            .args(["-c", NUMPY_REFERENCE])
            .arg(&dir)
            .args([&window.to_string(), "8", "1.0"])
            .arg(&ref_path)
            .status()
            .unwrap();
        assert!(status.success());
        let reference: ndarray::Array3<f64> = ndarray_npy::read_npy(&ref_path).unwrap();
        for rows in [n_roi * n_frames, 1, 7, 23 * 10 + 5] {
            let mut tr = build_with("dff", "window_s = 5.0");
            let out = run(tr.as_mut(), traces_batches("s2p", &f, Some(&fneu), rows));
            assert_eq!(out[0].1.schema().metadata()[keys::STREAM_ID], "s2p.dff");
            let (fc, dff) = collect(&out, n_roi, n_frames);
            for r in 0..n_roi {
                for t in 0..n_frames {
                    let k = r * n_frames + t;
                    let (want_fc, want) = (reference[[0, r, t]], reference[[1, r, t]]);
                    let tol = |w: f64| 1e-6 * w.abs().max(1.0);
                    assert!(
                        (fc[k] as f64 - want_fc).abs() <= tol(want_fc),
                        "fc roi {r} frame {t}: {} vs {want_fc}",
                        fc[k]
                    );
                    assert!(
                        (dff[k] as f64 - want).abs() <= tol(want),
                        "dff roi {r} frame {t} (batches of {rows} rows): {} vs {want}",
                        dff[k]
                    );
                }
            }
        }
    }

    pub fn python() -> Option<PathBuf> {
        match std::env::var_os("NEUROD_PYTHON") {
            Some(p) if std::path::Path::new(&p).exists() => Some(PathBuf::from(p)),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run through scripts/test.sh, which sets NEUROD_PYTHON"
                );
                eprintln!("\n!!!!! SKIPPED: NEUROD_PYTHON not set (run scripts/test.sh) !!!!!\n");
                None
            }
        }
    }

    /// Hand-computed: a trace whose baseline is negative keeps the sign of F_c − F0 and is
    /// divided by max(|F0|, min_baseline), and each such sample is counted.
    #[test]
    fn negative_and_tiny_baselines_divide_by_their_magnitude_or_the_floor() {
        let f = ndarray::Array2::from_shape_vec((1, 4), vec![-4.0f32, -2.0, -0.5, 6.0]).unwrap();
        let mut tr = build_with("dff_neg", "percentile = 0\nmin_baseline = 1.0");
        let before = small_baseline_series()
            .with_label_values(&["dff_neg"])
            .get();
        let out = run(tr.as_mut(), traces_batches("neg", &f, None, 2));
        let (_, dff) = collect(&out, 1, 4);
        // F0 = running minimum: -4, -4, -4, -4 → (x + 4) / 4.
        assert_eq!(dff, vec![0.0, 0.5, 0.875, 2.5]);
        assert_eq!(
            small_baseline_series()
                .with_label_values(&["dff_neg"])
                .get()
                - before,
            4
        );
        // A baseline of 0.25 is below the floor: divide by 1, not by 0.25.
        let f = ndarray::Array2::from_shape_vec((1, 2), vec![0.25f32, 2.25]).unwrap();
        let mut tr = build_with("dff_tiny", "percentile = 0");
        let (_, dff) = collect(&run(tr.as_mut(), traces_batches("t", &f, None, 5)), 1, 2);
        assert_eq!(dff, vec![0.0, 2.0]);
    }

    #[test]
    fn allen_baseline_is_flat_for_a_flat_trace_and_subtracts_the_short_median() {
        // Constant F = 100 with a transient: F0 = 100 (median), d1 = 0 except the transient,
        // whose short median stays 0, so dF/F = d1 there.
        let mut v = vec![100.0f32; 60];
        v[40] = 150.0;
        let f = ndarray::Array2::from_shape_vec((1, 60), v).unwrap();
        let mut tr = build_with(
            "allen",
            "baseline = 'allen'\nwindow_s = 1.0\nshort_window_frames = 5",
        );
        let (_, dff) = collect(&run(tr.as_mut(), traces_batches("a", &f, None, 9)), 1, 60);
        assert_eq!(dff[39], 0.0);
        assert_eq!(dff[40], 0.5);
        assert_eq!(dff[41], 0.0);
    }

    /// The per-stream rule: the same schema (even a new `Arc` of it) goes on with the baseline;
    /// a new frame rate is a new recording, and the baseline restarts from its first batch.
    #[test]
    fn a_frame_rate_change_restarts_the_baseline() {
        let f = ndarray::Array2::from_shape_vec((1, 4), vec![10.0f32, 10.0, 20.0, 20.0]).unwrap();
        let batches = traces_batches("rc", &f, None, 1);
        let at_rate = |b: &RecordBatch, rate: &str| {
            let schema = traces_schema("rc", rate, &[F]);
            RecordBatch::try_new(schema, b.columns().to_vec()).unwrap()
        };
        let mut tr = build_with("dff_rate", "percentile = 0");
        let input = vec![
            batches[0].clone(),
            batches[1].clone(),
            at_rate(&batches[2], &RATE.to_string()),
            at_rate(&batches[3], "15"),
        ];
        let out = run(tr.as_mut(), input);
        let dff: Vec<f32> = out.iter().flat_map(|(_, b)| column(b, DFF)).collect();
        // F0 = running minimum: 10 over the first three frames (20 → 1.0); at 15 Hz it starts
        // again from the 20 of frame 3 (→ 0.0).
        assert_eq!(dff, vec![0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn repeated_frames_are_dropped_and_reported_and_bad_options_named() {
        let f =
            ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let mut tr = build_with("rep", "");
        let batches = traces_batches("r", &f, None, 6);
        let mut out = TransformContext::detached("t");
        tr.process(&Input::new(0, "in"), batches[0].clone(), &mut out)
            .unwrap();
        let e = tr
            .process(&Input::new(0, "in"), batches[0].clone(), &mut out)
            .unwrap_err();
        assert!(
            e.to_string().contains("`r`") && e.to_string().contains("6 rows"),
            "{e}"
        );
        assert_eq!(out.batches.len(), 1, "nothing new to send");
        let e = build(
            &BuildContext {
                id: "d",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::from_str("percentile = 120\nwindow_s = -1").unwrap(),
        )
        .err()
        .unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("`d`") && e[0].contains("percentile"), "{e:?}");
    }
}
