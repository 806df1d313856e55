//! `type = "moments"`: per unit, streaming mean, variance, skewness and excess kurtosis
//! (ALGORITHMS.md §4: exact, Pébay's update; optionally exponentially weighted), of calcium traces
//! or of binned spike counts, so two-photon ROIs and Neuropixels channels are judged alike.
//!
//! ```toml
//! [transforms.moments]
//! type = "moments"
//! inputs = ["dff", "features"]
//! value = "dff"        # traces: the value column (one unit per `roi`)
//! columns = "count_"   # wide tables (e.g. bin_features): every column with this prefix is a
//!                      # unit named by the rest of the column name (`count_AP3` → `AP3`)
//! emit_every_s = 1.0   # a table of every unit each time the data time crosses a multiple
//! tau_s = 30           # optional: also exponentially weighted moments, time constant in s
//! ```
//!
//! Inputs: traces (unit = `roi`, as its decimal text; a Utf8 `group` column, where present, is
//! carried to the output as the unit's group) or any table with `time_s: Float64` whose columns
//! start with `columns` (any numeric type; one row = one sample of every unit). Missing values
//! (NaN, null) are skipped. A traces frame is complete when the next frame's rows begin (or at
//! the end of the input), so output does not depend on how the input was cut into batches.
//!
//! Output (layout `table`), stream id `<input id>.moments`, with `neurod.source_stream` = the
//! input id: one row per unit each time the data time of a new frame (row, for tables) reaches
//! the next multiple of `emit_every_s`, covering everything before it, and once more at the end of
//! the input. Columns: `frame_index: Int64` (the last frame included; for tables the 0-based
//! ordinal of the last row included), `time_s: Float64` (its time), `unit: Utf8`, `group: Utf8`
//! (nullable), `n: Int64`, `mean`, `variance` (population, M2/n), `skew` (g1), `excess_kurtosis`
//! (g2) and the raw central sums `m2`, `m3`, `m4` (Float64; so that a consumer can merge units
//! exactly, as `predictability` does for groups). With `tau_s`: `ew_n` (effective sample size),
//! `ew_mean`, `ew_variance`, `ew_skew`, `ew_excess_kurtosis`, with α = 1 − exp(−Δt/τ) per sample,
//! Δt the frame period (1 / rate) or, for tables, `neurod.bin_samples` / rate (1 / rate without
//! it). Statistics match `scipy.stats.skew` / `kurtosis` with their defaults.
//!
//! The updates run on [`crate::stats::MomentsBank`]: one value per unit per frame, structure of
//! arrays, vectorised across units.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use super::bin_features::BIN_SAMPLES_KEY;
use super::per_stream::PerStream;
use super::spike_detect::SOURCE_STREAM_KEY;
use super::traces::{self, err};
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::stats::{EwMomentsBank, MomentsBank};
use crate::stream::{keys, Layout, FRAME_INDEX, TIME_S};

pub const TYPE: &str = "moments";
/// Output stream id: `<input stream id>` + this.
pub const STREAM_SUFFIX: &str = ".moments";
pub const UNIT: &str = "unit";
pub const GROUP: &str = "group";
pub const N: &str = "n";
pub const MEAN: &str = "mean";
pub const VARIANCE: &str = "variance";
pub const SKEW: &str = "skew";
pub const EXCESS_KURTOSIS: &str = "excess_kurtosis";
pub const M2: &str = "m2";
pub const M3: &str = "m3";
pub const M4: &str = "m4";

fn default_value() -> String {
    "dff".into()
}
fn default_columns() -> String {
    "count_".into()
}
fn default_emit_every_s() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_value")]
    value: String,
    #[serde(default = "default_columns")]
    columns: String,
    #[serde(default = "default_emit_every_s")]
    emit_every_s: f64,
    tau_s: Option<f64>,
}

pub struct MomentsTransform {
    options: Options,
    streams: PerStream<StreamState>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    let e = o.emit_every_s;
    if !(e.is_finite() && e > 0.0) {
        errors.push(format!("{prefix}: `emit_every_s` = {e} must be positive"));
    }
    if let Some(t) = o.tau_s.filter(|t| !(t.is_finite() && *t > 0.0)) {
        errors.push(format!("{prefix}: `tau_s` = {t} must be positive"));
    }
    if o.value.is_empty() || o.columns.is_empty() {
        errors.push(format!("{prefix}: `value` and `columns` must not be empty"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(MomentsTransform {
        options: o,
        streams: PerStream::new(),
    }))
}

impl Transform for MomentsTransform {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Traces, Layout::Table]
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Table])]
    }

    fn process(
        &mut self,
        _input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = traces::stream_id(&schema);
        let layout = Layout::of(&schema);
        let wide = match layout {
            Some(Layout::Traces) => false,
            Some(Layout::Table) | None => true,
            Some(l) => {
                return Err(err(
                    &sid,
                    format!("moments takes traces or tables, not {}", l.as_str()),
                ))
            }
        };
        let options = &self.options;
        let state = self
            .streams
            .try_get_or_insert_with(&sid, || StreamState::new(options, &sid, &schema, wide))?;
        if state.wide != wide {
            return Err(err(
                &sid,
                "changed between traces and a table; batch dropped",
            ));
        }
        if wide {
            state.wide_batch(&self.options, &sid, &batch, out)
        } else {
            state.traces_batch(&self.options, &sid, &batch, out)
        }
    }

    fn finish(&mut self, out: &mut TransformContext) -> Result<(), ComponentError> {
        self.streams.finish_each(|_, s| {
            s.flush_row();
            if s.pushed_since_emit {
                s.emit(out)
            } else {
                Ok(())
            }
        })
    }
}

struct StreamState {
    wide: bool,
    units: Vec<String>,
    groups: Vec<Option<String>>,
    by_roi: HashMap<i32, usize>,
    by_name: HashMap<String, usize>,
    bank: MomentsBank,
    ew: Option<EwMomentsBank>,
    /// The frame being assembled: one value per unit (NaN = none yet).
    row: Vec<f64>,
    row_frame: Option<i64>,
    row_time: f64,
    row_filled: bool,
    /// Last frame (row ordinal for tables) pushed, and its time.
    last_frame: i64,
    last_time: f64,
    rows_seen: i64,
    next_emit: Option<f64>,
    pushed_since_emit: bool,
    out_schema: SchemaRef,
}

impl StreamState {
    fn new(o: &Options, sid: &str, schema: &Schema, wide: bool) -> Result<Self, ComponentError> {
        let md = schema.metadata();
        let ew = match o.tau_s {
            None => None,
            Some(tau) => {
                let rate = traces::rate(schema, sid)?;
                let dt = match md.get(BIN_SAMPLES_KEY).and_then(|b| b.parse::<f64>().ok()) {
                    Some(b) if wide && b > 0.0 => b / rate,
                    _ => 1.0 / rate,
                };
                Some(EwMomentsBank::new(0, 1.0 - (-dt / tau).exp()))
            }
        };
        let mut out_md: HashMap<String, String> = HashMap::new();
        out_md.insert(keys::STREAM_ID.into(), format!("{sid}{STREAM_SUFFIX}"));
        out_md.insert(keys::LAYOUT.into(), Layout::Table.as_str().into());
        out_md.insert(keys::STREAM_KIND.into(), "moments".into());
        out_md.insert(SOURCE_STREAM_KEY.into(), sid.into());
        if let Some(r) = md.get(keys::SAMPLING_HZ) {
            out_md.insert(keys::SAMPLING_HZ.into(), r.clone());
        }
        Ok(StreamState {
            wide,
            units: Vec::new(),
            groups: Vec::new(),
            by_roi: HashMap::new(),
            by_name: HashMap::new(),
            bank: MomentsBank::default(),
            out_schema: moments_schema(out_md, ew.is_some()),
            ew,
            row: Vec::new(),
            row_frame: None,
            row_time: 0.0,
            row_filled: false,
            last_frame: -1,
            last_time: f64::NAN,
            rows_seen: 0,
            next_emit: None,
            pushed_since_emit: false,
        })
    }

    fn add_unit(&mut self, name: String) -> usize {
        let u = self.units.len();
        self.units.push(name.clone());
        self.groups.push(None);
        self.by_name.insert(name, u);
        self.bank.resize(u + 1);
        if let Some(ew) = self.ew.as_mut() {
            ew.resize(u + 1);
        }
        self.row.push(f64::NAN);
        u
    }

    /// Pushes the frame being assembled into the banks.
    fn flush_row(&mut self) {
        let Some(frame) = self.row_frame.take() else {
            return;
        };
        if self.row_filled {
            self.bank.push(&self.row);
            if let Some(ew) = self.ew.as_mut() {
                ew.push(&self.row);
            }
            self.row.iter_mut().for_each(|v| *v = f64::NAN);
            self.row_filled = false;
            self.pushed_since_emit = true;
        }
        self.last_frame = frame;
        self.last_time = self.row_time;
    }

    /// A new frame (row) at `time` begins: emits first if it crosses an emission time.
    fn begin(
        &mut self,
        o: &Options,
        frame: i64,
        time: f64,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        self.flush_row();
        let e = o.emit_every_s;
        let next = *self.next_emit.get_or_insert(((time / e).floor() + 1.0) * e);
        if time >= next {
            if self.pushed_since_emit {
                self.emit(out)?;
            }
            self.next_emit = Some(((time / e).floor() + 1.0) * e);
        }
        self.row_frame = Some(frame);
        self.row_time = time;
        Ok(())
    }

    fn traces_batch(
        &mut self,
        o: &Options,
        sid: &str,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let frames = traces::frame_index(batch, sid)?;
        let times = traces::time_s(batch, sid)?;
        let rois = traces::roi(batch, sid)?;
        let values = traces::values_f64(batch, &o.value, sid)?
            .ok_or_else(|| err(sid, format!("no `{}` column (option `value`)", o.value)))?;
        let groups = batch.schema().index_of(GROUP).ok().and_then(|i| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
        });
        for i in 0..batch.num_rows() {
            let frame = frames.value(i);
            if self.row_frame != Some(frame) {
                self.begin(o, frame, times.value(i), out)?;
            }
            let roi = rois.value(i);
            let u = match self.by_roi.get(&roi) {
                Some(&u) => u,
                None => {
                    let u = self.add_unit(roi.to_string());
                    self.by_roi.insert(roi, u);
                    u
                }
            };
            if let Some(g) = groups.as_ref().filter(|g| g.is_valid(i)) {
                if self.groups[u].as_deref() != Some(g.value(i)) {
                    self.groups[u] = Some(g.value(i).to_string());
                }
            }
            if !self.row[u].is_nan() {
                // The same ROI twice in one frame: keep both samples.
                self.flush_row();
                self.row_frame = Some(frame);
            }
            let v = values.value(i);
            self.row[u] = v;
            self.row_filled |= !v.is_nan();
        }
        Ok(())
    }

    fn wide_batch(
        &mut self,
        o: &Options,
        sid: &str,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let times = traces::time_s(batch, sid)?;
        let mut cols: Vec<(usize, Arc<Float64Array>)> = Vec::new();
        for f in schema.fields() {
            let Some(name) = f.name().strip_prefix(o.columns.as_str()) else {
                continue;
            };
            let Some(values) = traces::values_f64(batch, f.name(), sid)? else {
                continue;
            };
            let u = match self.by_name.get(name) {
                Some(&u) => u,
                None => self.add_unit(name.to_string()),
            };
            cols.push((u, values));
        }
        if cols.is_empty() {
            return Err(err(
                sid,
                format!("no column starts with `{}` (option `columns`)", o.columns),
            ));
        }
        for i in 0..batch.num_rows() {
            self.begin(o, self.rows_seen, times.value(i), out)?;
            self.rows_seen += 1;
            for (u, v) in &cols {
                let x = v.value(i);
                self.row[*u] = x;
                self.row_filled |= !x.is_nan();
            }
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        self.pushed_since_emit = false;
        let k = self.units.len();
        let m: Vec<_> = (0..k).map(|u| self.bank.get(u)).collect();
        let f64col = |f: &dyn Fn(usize) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values((0..k).map(f)))
        };
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![self.last_frame; k])),
            Arc::new(Float64Array::from(vec![self.last_time; k])),
            Arc::new(StringArray::from_iter_values(self.units.iter())),
            Arc::new(StringArray::from(self.groups.clone())),
            Arc::new(Int64Array::from_iter_values(m.iter().map(|m| m.n as i64))),
            f64col(&|u| m[u].mean),
            f64col(&|u| m[u].variance()),
            f64col(&|u| m[u].skew()),
            f64col(&|u| m[u].excess_kurtosis()),
            f64col(&|u| m[u].m2),
            f64col(&|u| m[u].m3),
            f64col(&|u| m[u].m4),
        ];
        if let Some(ew) = &self.ew {
            let e: Vec<_> = (0..k).map(|u| ew.get(u)).collect();
            cols.push(f64col(&|u| e[u].effective_n()));
            cols.push(f64col(&|u| e[u].mean));
            cols.push(f64col(&|u| e[u].variance()));
            cols.push(f64col(&|u| e[u].skew()));
            cols.push(f64col(&|u| e[u].excess_kurtosis()));
        }
        let b = RecordBatch::try_new(self.out_schema.clone(), cols)
            .map_err(|e| ComponentError::arrow("building the moments table", e))?;
        out.emit(b);
        Ok(())
    }
}

fn moments_schema(md: HashMap<String, String>, with_ew: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new(FRAME_INDEX, DataType::Int64, false),
        Field::new(TIME_S, DataType::Float64, false),
        Field::new(UNIT, DataType::Utf8, false),
        Field::new(GROUP, DataType::Utf8, true),
        Field::new(N, DataType::Int64, false),
    ];
    for name in [MEAN, VARIANCE, SKEW, EXCESS_KURTOSIS, M2, M3, M4] {
        fields.push(Field::new(name, DataType::Float64, false));
    }
    if with_ew {
        for name in [
            "ew_n",
            "ew_mean",
            "ew_variance",
            "ew_skew",
            "ew_excess_kurtosis",
        ] {
            fields.push(Field::new(name, DataType::Float64, false));
        }
    }
    Arc::new(Schema::new_with_metadata(fields, md))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Moments;
    use crate::transforms::dff::tests::{build_with as build_dff, suite2p_traces, traces_batches};
    use arrow::array::UInt16Array;
    use proptest::prelude::*;

    fn build_with(options: &str) -> Box<dyn Transform> {
        build(
            &BuildContext {
                id: "moments",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::from_str(options).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    struct Expected {
        skew: Vec<f64>,
        excess_kurtosis: Vec<f64>,
        mean: Vec<f64>,
    }

    /// scipy's values of F − 0.7·Fneu per ROI (`expected_moments.json`), with the traces.
    fn expected() -> Option<(Expected, ndarray::Array2<f32>, ndarray::Array2<f32>)> {
        let (dir, f, fneu) = suite2p_traces()?;
        let text = std::fs::read_to_string(dir.join("expected_moments.json")).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let v = |k: &str| -> Vec<f64> {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        Some((
            Expected {
                skew: v("skew"),
                excess_kurtosis: v("excess_kurtosis"),
                mean: v("mean"),
            },
            f,
            fneu,
        ))
    }

    /// The signal of `expected_moments.json`: `(F - 0.7 * Fneu).astype(np.float64)` with F and
    /// Fneu float32, which numpy evaluates in float32 (0.7 is a weak Python scalar), so here too.
    fn fc(f: &ndarray::Array2<f32>, n: &ndarray::Array2<f32>, r: usize) -> Vec<f64> {
        (0..f.dim().1)
            .map(|t| (f[[r, t]] - 0.7f32 * n[[r, t]]) as f64)
            .collect()
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    fn check(m: &Moments, e: &Expected, r: usize) {
        assert!(
            rel(m.skew(), e.skew[r]) < 1e-9,
            "roi {r} skew {} vs {}",
            m.skew(),
            e.skew[r]
        );
        assert!(
            rel(m.excess_kurtosis(), e.excess_kurtosis[r]) < 1e-9,
            "roi {r} kurtosis {} vs {}",
            m.excess_kurtosis(),
            e.excess_kurtosis[r]
        );
        assert!(rel(m.mean, e.mean[r]) < 1e-12, "roi {r} mean");
    }

    #[test]
    fn pushed_one_at_a_time_equals_scipy_on_the_real_traces() {
        let Some((e, f, n)) = expected() else { return };
        for r in 0..f.dim().0 {
            let mut m = Moments::default();
            fc(&f, &n, r).into_iter().for_each(|x| m.push(x));
            check(&m, &e, r);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random cut points: each piece pushed on its own, the pieces merged in order (a
        /// left fold) — Pébay's merge with all four M4 terms — equals scipy.
        #[test]
        fn merged_from_random_splits_equals_scipy(
            cuts in proptest::collection::vec(1usize..864, 0..12),
            roi in 0usize..23,
            tree in any::<bool>(),
        ) {
            let Some((e, f, n)) = expected() else { return Ok(()) };
            let xs = fc(&f, &n, roi);
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(xs.len());
            cuts.sort_unstable();
            cuts.dedup();
            let parts: Vec<Moments> = cuts
                .windows(2)
                .map(|w| {
                    let mut m = Moments::default();
                    xs[w[0]..w[1]].iter().for_each(|x| m.push(*x));
                    m
                })
                .collect();
            let merged = if tree {
                // Pairwise, as parallel partial results would be combined.
                let mut level = parts;
                while level.len() > 1 {
                    level = level
                        .chunks(2)
                        .map(|c| if c.len() == 2 { c[0].merge(&c[1]) } else { c[0] })
                        .collect();
                }
                level[0]
            } else {
                parts.iter().fold(Moments::default(), |a, b| a.merge(b))
            };
            prop_assert_eq!(merged.n, xs.len() as u64);
            check(&merged, &e, roi);
        }

        /// The transform (bank updates, frame assembly across batch cuts) equals scipy however
        /// the traces are batched.
        #[test]
        fn transform_equals_scipy_whatever_the_batching(rows in 1usize..2000) {
            let Some((e, f, n)) = expected() else { return Ok(()) };
            let mut dff = build_dff("dff", "window_s = 2.0");
            let mut mo = build_with("value = 'fc'\nemit_every_s = 7.0");
            let mut out = TransformContext::detached("t");
            for b in traces_batches("s2p", &f, Some(&n), rows) {
                let mut mid = TransformContext::detached("t");
                dff.process(&Input::new(0, "in"), b, &mut mid).unwrap();
                for (_, b) in mid.out.batches {
                    mo.process(&Input::new(0, "in"), b, &mut out).unwrap();
                }
            }
            mo.finish(&mut out).unwrap();
            // 864 frames at 30 Hz = 28.8 s: tables at 7, 14, 21, 28 s and at the end.
            prop_assert_eq!(out.batches.len(), 5);
            let last = &out.batches[4].1;
            let schema = last.schema();
            prop_assert_eq!(&schema.metadata()[keys::STREAM_ID], "s2p.dff.moments");
            prop_assert_eq!(&schema.metadata()[SOURCE_STREAM_KEY], "s2p.dff");
            let col = |name: &str| last.column(last.schema().index_of(name).unwrap()).clone();
            let units = col(UNIT);
            let units = units.as_any().downcast_ref::<StringArray>().unwrap();
            let skew = col(SKEW);
            let skew = skew.as_any().downcast_ref::<Float64Array>().unwrap();
            let kurt = col(EXCESS_KURTOSIS);
            let kurt = kurt.as_any().downcast_ref::<Float64Array>().unwrap();
            let nn = col(N);
            let nn = nn.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..last.num_rows() {
                let r: usize = units.value(i).parse().unwrap();
                prop_assert_eq!(nn.value(i), 864);
                // fc leaves dff as Float32: F − 0.7·Fneu rounded to f32 (≈1e-7 relative) moves
                // skew and kurtosis by far less than 1e-6.
                prop_assert!(rel(skew.value(i), e.skew[r]) < 1e-6, "roi {} skew", r);
                prop_assert!(rel(kurt.value(i), e.excess_kurtosis[r]) < 1e-6, "roi {} kurt", r);
            }
            let first = &out.batches[0].1;
            let frame = first.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
            prop_assert_eq!(frame, 209, "frames 0..=209 are before 7 s");
        }
    }

    /// A bin_features-like table: each `count_*` column is a unit; scipy's values of the same
    /// columns (scipy.stats.skew / kurtosis of the same integer series, printed once).
    #[test]
    fn wide_tables_classify_each_count_column() {
        let a: Vec<u16> = vec![0, 1, 0, 2, 0, 0, 7, 0];
        let b: Vec<u16> = vec![3, 3, 4, 3, 3, 2, 3, 3];
        let md: HashMap<String, String> = [
            (keys::STREAM_ID.to_string(), "p.bins".to_string()),
            (keys::LAYOUT.to_string(), "table".to_string()),
            (keys::SAMPLING_HZ.to_string(), "30000".to_string()),
            (BIN_SAMPLES_KEY.to_string(), "600".to_string()),
        ]
        .into();
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new(TIME_S, DataType::Float64, false),
                Field::new("count_AP0", DataType::UInt16, false),
                Field::new("count_AP1", DataType::UInt16, false),
                Field::new("power_AP0", DataType::Float32, false),
            ],
            md,
        ));
        let batch = |r: std::ops::Range<usize>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Float64Array::from_iter_values(
                        r.clone().map(|i| i as f64 * 0.02),
                    )),
                    Arc::new(UInt16Array::from(a[r.clone()].to_vec())),
                    Arc::new(UInt16Array::from(b[r.clone()].to_vec())),
                    Arc::new(arrow::array::Float32Array::from(vec![1.0f32; r.len()])),
                ],
            )
            .unwrap()
        };
        let mut tr = build_with("tau_s = 0.1");
        let mut out = TransformContext::detached("t");
        tr.process(&Input::new(0, "in"), batch(0..3), &mut out)
            .unwrap();
        tr.process(&Input::new(0, "in"), batch(3..8), &mut out)
            .unwrap();
        tr.finish(&mut out).unwrap();
        assert_eq!(out.batches.len(), 1, "0.14 s of bins: only the final table");
        let t = &out.batches[0].1;
        assert_eq!(t.schema().metadata()[keys::STREAM_ID], "p.bins.moments");
        let units = t.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((units.value(0), units.value(1)), ("AP0", "AP1"));
        assert_eq!(t.num_rows(), 2, "power columns are not units");
        let f = |name: &str, row: usize| {
            t.column(t.schema().index_of(name).unwrap())
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(row)
        };
        // scipy.stats.skew([0,1,0,2,0,0,7,0]) = 1.91227..., kurtosis = 2.13586...;
        // for [3,3,4,3,3,2,3,3]: skew 0, kurtosis 1.0 (two ±1 deviations among eight).
        assert!(
            (f(SKEW, 0) - 1.912_278_553_555_328_2).abs() < 1e-12,
            "{}",
            f(SKEW, 0)
        );
        assert!(
            (f(EXCESS_KURTOSIS, 0) - 2.135_868_776_310_059_2).abs() < 1e-12,
            "{}",
            f(EXCESS_KURTOSIS, 0)
        );
        assert!(f(SKEW, 1).abs() < 1e-12);
        assert!((f(EXCESS_KURTOSIS, 1) - 1.0).abs() < 1e-12);
        assert!((f(MEAN, 0) - 1.25).abs() < 1e-15);
        // α = 1 − exp(−0.02/0.1): the EW mean of AP1 after eight values, by the recurrence.
        let alpha = 1.0 - (-0.2f64).exp();
        let mut mu = 3.0;
        for x in &b[1..] {
            mu += alpha * (*x as f64 - mu);
        }
        assert!((f("ew_mean", 1) - mu).abs() < 1e-12);
    }
}
