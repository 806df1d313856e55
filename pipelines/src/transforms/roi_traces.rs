//! `type = "roi_traces"`: per-ROI fluorescence and neuropil of every frame
//! ([`crate::imaging::rois`]).
//!
//! ```toml
//! [transforms.traces]
//! type = "roi_traces"
//! inputs = ["mc", "sim.rois"]    # frames, and a ROI-mask stream (or set `labels`)
//! # labels = "/data/labels.tif"  # a label image instead (.tif/.tiff/.npy; 0 = background,
//! #                              # k = ROI k)
//! weighted = true                # use the ROI stream's weights (Suite2p lam); false: plain means
//! neuropil_inner_px = 2          # gap between a ROI and its neuropil annulus (Suite2p: 2)
//! neuropil_min_pixels = 350      # the annulus grows to this many pixels (Suite2p: 350)
//! neuropil_max_radius_px = 50    # ... but never reaches farther than this from its ROI
//! max_held_frames = 300          # frames held per stream while no ROIs are known
//! backend = "auto"               # the fastest present (never a software GPU; with a hardware
//!                                # GPU, measured); "hardware": a hardware GPU else the CPU;
//!                                # "gpu": a GPU (lavapipe counts) or a configuration error; "cpu"
//! ```
//!
//! F = Σ w·x / Σ w over a ROI's pixels; Fneu = the plain mean over its annulus: pixels more than
//! `neuropil_inner_px` from the ROI, in no ROI at all, out to the smallest radius that holds
//! `neuropil_min_pixels` (Suite2p's recipe, with Euclidean distances). A ROI whose annulus is
//! empty gets NaN as Fneu.
//!
//! Inputs, by position: the frames, then (without `labels`) the ROI masks; a batch whose layout
//! is not its input's is an error naming the input. ROIs: from `labels` (read when the
//! transform is built; a file that cannot be read is a configuration error), or from the `rois`
//! streams of the second input (layout `rois`: one row per ROI pixel, `roi, y, x, weight`,
//! height and width in the metadata), e.g. the simulated rig's `rois` port. Each ROI batch is a complete set and replaces the one before; it applies to the
//! frames stream named by its `neurod.source_stream` metadata, or, without it, to every frames
//! stream of its size. Frames that arrive before their ROIs are held, at most `max_held_frames`
//! per stream; beyond that the oldest are dropped, and each batch that drops is reported as an
//! error (counted in the component's metrics) naming how many frames went. Frames still held at
//! the end of the input are reported the same way. With `labels`, ROI streams are refused.
//!
//! Backends: the sums run in `kernels::roi` (CPU twin) or its WGSL shader; both give the same
//! numbers (F bit-identical where the GPU keeps IEEE rounding, contract 1e-5 relative; Fneu from
//! exact integer sums), chosen by the rule every kernel-backed transform shares
//! ([`super::backend`]): with `auto` and a hardware GPU, both trace each frames stream's first
//! 2 s ([`TRIAL_S`]; the CPU's numbers go out) and the faster is kept for that stream. The one in
//! use is exported as `neurod_kernel_backend{backend, component_id} 1`. A GPU failure on a batch
//! with "auto" or "hardware" is logged and that batch is traced on the CPU; with "gpu" it is an
//! error.
//!
//! Output, default port, one traces stream per frames stream, id `<frames stream id>.traces`
//! (layout `traces`, `neurod.source_stream` = the frames stream id, the frame rate as
//! `neurod.sampling_hz`): per frame, one row per ROI in ascending ROI number: `frame_index`,
//! `time_s`, `roi: Int32`, `f: Float32`, `fneu: Float32`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, Float32Array, Float64Array, Int32Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use kernels::backend::{Plan, Trial};
use kernels::gpu::roi::GpuRoiExtractor;
use kernels::gpu::GpuContext;
use kernels::Backend;

use super::backend::{self, Preference};
use super::per_stream::PerStream;
use super::spike_detect::SOURCE_STREAM_KEY;
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::imaging::frames::{check_frames_schema, image_dims, Frames};
use crate::imaging::labels;
use crate::imaging::rois::{NeuropilParams, RoiSet};
use crate::stream::{self, keys, traces_schema, Layout, ROI, ROI_WEIGHT, ROI_X, ROI_Y};

pub const TYPE: &str = "roi_traces";
/// Output stream id: `<frames stream id>` + this.
pub const TRACES_SUFFIX: &str = ".traces";
pub const F: &str = "f";
pub const FNEU: &str = "fneu";

fn default_true() -> bool {
    true
}
fn default_inner() -> f32 {
    2.0
}
fn default_min_pixels() -> usize {
    350
}
fn default_max_radius() -> f32 {
    50.0
}
fn default_max_held() -> usize {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    labels: Option<PathBuf>,
    #[serde(default = "default_true")]
    weighted: bool,
    #[serde(default = "default_inner")]
    neuropil_inner_px: f32,
    #[serde(default = "default_min_pixels")]
    neuropil_min_pixels: usize,
    #[serde(default = "default_max_radius")]
    neuropil_max_radius_px: f32,
    #[serde(default = "default_max_held")]
    max_held_frames: usize,
    #[serde(default)]
    backend: Preference,
}

/// Seconds of frames per stream over which `auto` measures the CPU and a hardware GPU.
pub const TRIAL_S: f64 = 2.0;
/// The frame rate assumed for the trial when a frames stream states none.
const TRIAL_FALLBACK_HZ: f64 = 30.0;

/// A ROI set and which frames it is for.
struct Rois {
    /// The frames stream it names; `None`: any of its size.
    stream: Option<String>,
    set: Arc<RoiSet>,
}

pub struct RoiTraces {
    id: String,
    options: Options,
    neuropil: NeuropilParams,
    /// From `labels`, or by ROI stream id.
    fixed: Option<Arc<RoiSet>>,
    /// The latest ROI set of each ROI stream, looked up in first-seen order.
    streamed: PerStream<Rois>,
    /// Per frames stream ([`PerStream`], no schema tracked: a new frame size or rate goes on
    /// with the same state, held frames included; the output schema follows the rate).
    frames: PerStream<FramesState>,
    /// Where the sums run: the CPU twin, a GPU, or both measured per stream.
    plan: Plan,
}

#[derive(Default)]
struct FramesState {
    held: VecDeque<RecordBatch>,
    held_frames: usize,
    /// Output schema for the rate text it was made with.
    out: Option<(String, SchemaRef)>,
    f: Vec<f32>,
    fneu: Vec<f32>,
    /// The GPU copy of the ROI set last traced on the GPU.
    gpu: Option<(Arc<RoiSet>, GpuRoiExtractor)>,
    /// With a measured plan: the trial under way, or the backend it chose.
    choice: Choice,
    /// The GPU's F and Fneu during a trial (timed, not used).
    trial_f: Vec<f32>,
    trial_fneu: Vec<f32>,
}

#[derive(Default)]
enum Choice {
    #[default]
    NotStarted,
    Trial(Trial),
    Decided(Backend),
}

/// The layout of each input, by position: the frames, then (without `labels`) the ROI masks.
const INPUT_LAYOUTS: [(Layout, Layout); 2] = [
    (Layout::Frames, Layout::Frames),
    (Layout::Rois, Layout::Rois),
];

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    if !(o.neuropil_inner_px.is_finite() && (0.0..=50.0).contains(&o.neuropil_inner_px)) {
        errors.push(format!(
            "{prefix}: `neuropil_inner_px` = {} must be within 0..=50",
            o.neuropil_inner_px
        ));
    }
    if !(o.neuropil_max_radius_px.is_finite()
        && o.neuropil_max_radius_px > o.neuropil_inner_px
        && o.neuropil_max_radius_px <= 500.0)
    {
        errors.push(format!(
            "{prefix}: `neuropil_max_radius_px` = {} must exceed `neuropil_inner_px` and be at most 500",
            o.neuropil_max_radius_px
        ));
    }
    if o.neuropil_min_pixels > 100_000 {
        errors.push(format!(
            "{prefix}: `neuropil_min_pixels` = {} must be at most 100000",
            o.neuropil_min_pixels
        ));
    }
    if o.max_held_frames > 100_000 {
        errors.push(format!(
            "{prefix}: `max_held_frames` = {} must be at most 100000",
            o.max_held_frames
        ));
    }
    let neuropil = NeuropilParams {
        inner_px: o.neuropil_inner_px,
        min_pixels: o.neuropil_min_pixels,
        max_radius_px: o.neuropil_max_radius_px,
    };
    let mut fixed = None;
    if errors.is_empty() {
        if let Some(path) = &o.labels {
            match labels::read(path)
                .and_then(|img| RoiSet::from_labels(img.height, img.width, &img.labels, neuropil))
            {
                Ok(set) => fixed = Some(Arc::new(set)),
                Err(e) => errors.push(format!("{prefix}: `labels`: {e}")),
            }
        }
    }
    let wanted = if o.labels.is_some() { 1 } else { 2 };
    if ctx.inputs.len() != wanted {
        errors.push(format!(
            "{prefix}: takes {wanted} input(s), the frames{}, and has {}",
            if wanted == 2 {
                " then the ROI masks (or set `labels`)"
            } else {
                " (`labels` gives the ROIs)"
            },
            ctx.inputs.len()
        ));
    }
    let plan = match backend::plan(&prefix, o.backend) {
        Ok(plan) => Some(plan),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let Some(plan) = plan.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    let reason = match &plan {
        Plan::Cpu(why) => why,
        Plan::Gpu(_) => "asked for",
        Plan::Measure(_) => "measuring the CPU and the hardware GPU on each stream's first seconds",
    };
    backend::report(ctx.id, backend::starting_backend(&plan), reason);
    Ok(Box::new(RoiTraces {
        id: ctx.id.into(),
        options: o,
        neuropil,
        fixed,
        streamed: PerStream::new(),
        frames: PerStream::new(),
        plan,
    }))
}

impl Transform for RoiTraces {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Frames, Layout::Rois]
    }

    fn input_layout(&self, index: usize) -> Option<Layout> {
        INPUT_LAYOUTS.get(index).map(|(_, layout)| *layout)
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Traces])]
    }

    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = stream::stream_id_of(&schema)
            .unwrap_or("unnamed")
            .to_string();
        let role = input.role(&INPUT_LAYOUTS, &schema)?;
        match role {
            Layout::Rois => self.rois(sid, &batch, out),
            _ => self.frames(sid, batch, out),
        }
    }

    fn finish(&mut self, _out: &mut TransformContext) -> Result<(), ComponentError> {
        // One error naming every stream's lost frames, in the order the streams came.
        let mut lost = Vec::new();
        self.frames.finish_each(|id, s| {
            if s.held_frames > 0 {
                lost.push(format!("`{id}`: {}", s.held_frames));
            }
            Ok(())
        })?;
        if lost.is_empty() {
            Ok(())
        } else {
            Err(ComponentError::Other(format!(
                "frames that never got ROIs, not traced: {}",
                lost.join(", ")
            )))
        }
    }
}

impl RoiTraces {
    /// The ROI set for frames stream `sid` of `h` × `w`, if one is known.
    fn set_for(&self, sid: &str, h: usize, w: usize) -> Option<Arc<RoiSet>> {
        if let Some(f) = &self.fixed {
            return Some(f.clone());
        }
        let fits = |r: &&Rois| r.set.height == h && r.set.width == w;
        let sets = || self.streamed.iter().map(|(_, r)| r).filter(fits);
        sets()
            .find(|r| r.stream.as_deref() == Some(sid))
            .or_else(|| sets().find(|r| r.stream.is_none()))
            .map(|r| r.set.clone())
    }

    fn frames(
        &mut self,
        sid: String,
        batch: RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let bad = |why: String| ComponentError::Other(format!("stream `{sid}`: {why}"));
        let (h, w) = check_frames_schema(batch.schema_ref()).map_err(bad)?;
        let Some(set) = self.set_for(&sid, h, w) else {
            return self.hold(sid, batch);
        };
        if set.height != h || set.width != w {
            return Err(bad(format!(
                "frames of {h}×{w}, ROIs (labels) of {}×{}",
                set.height, set.width
            )));
        }
        let gpu = Gpu {
            ctx: match &self.plan {
                Plan::Gpu(ctx) | Plan::Measure(ctx) => Some(ctx),
                Plan::Cpu(_) => None,
            },
            measure: matches!(self.plan, Plan::Measure(_)),
            strict: self.options.backend == Preference::Gpu,
            component: &self.id,
        };
        let state = self.frames.get_or_insert_with(&sid, FramesState::default);
        // ROIs known now: what was held goes first.
        let mut first_error = None;
        while let Some(held) = state.held.pop_front() {
            state.held_frames -= held.num_rows();
            if let Err(e) = state.trace(&sid, &set, &gpu, &held, out) {
                first_error.get_or_insert(e);
            }
        }
        let r = state.trace(&sid, &set, &gpu, &batch, out);
        first_error.map_or(r, Err)
    }

    fn hold(&mut self, sid: String, batch: RecordBatch) -> Result<(), ComponentError> {
        let max = self.options.max_held_frames;
        let state = self.frames.get_or_insert_with(&sid, FramesState::default);
        state.held_frames += batch.num_rows();
        state.held.push_back(batch);
        let mut dropped = 0;
        while state.held_frames > max {
            let Some(b) = state.held.pop_front() else {
                break;
            };
            state.held_frames -= b.num_rows();
            dropped += b.num_rows();
        }
        if dropped > 0 {
            return Err(ComponentError::Other(format!(
                "stream `{sid}`: no ROIs yet; {dropped} frames dropped ({max} held at most: `max_held_frames`)"
            )));
        }
        Ok(())
    }

    fn rois(
        &mut self,
        sid: String,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let bad = |why: String| ComponentError::Other(format!("ROI stream `{sid}`: {why}"));
        if self.fixed.is_some() {
            return Err(bad("`labels` is set, so ROI streams are not taken".into()));
        }
        let schema = batch.schema_ref();
        let (h, w) = image_dims(schema).map_err(bad)?;
        let col = |name: &str| {
            schema
                .index_of(name)
                .map(|i| batch.column(i))
                .map_err(|_| bad(format!("no column `{name}`")))
        };
        let int = |name: &str| -> Result<Int32Array, ComponentError> {
            col(name)?
                .as_any()
                .downcast_ref::<Int32Array>()
                .filter(|a| a.null_count() == 0)
                .cloned()
                .ok_or_else(|| bad(format!("`{name}` is not a non-null Int32")))
        };
        let (roi, y, x) = (int(ROI)?, int(ROI_Y)?, int(ROI_X)?);
        let weight = col(ROI_WEIGHT)?
            .as_any()
            .downcast_ref::<Float32Array>()
            .filter(|a| a.null_count() == 0)
            .cloned()
            .ok_or_else(|| bad(format!("`{ROI_WEIGHT}` is not a non-null Float32")))?;
        let rows =
            (0..batch.num_rows()).map(|i| (roi.value(i), y.value(i), x.value(i), weight.value(i)));
        let set =
            RoiSet::from_pixels(h, w, rows, self.options.weighted, self.neuropil).map_err(bad)?;
        tracing::info!(component = %self.id, stream = %sid, rois = set.len(), "ROIs received");
        let rois = Rois {
            stream: schema.metadata().get(SOURCE_STREAM_KEY).cloned(),
            set: Arc::new(set),
        };
        // A new set from the same ROI stream replaces the one before.
        self.streamed.insert(&sid, rois);
        // Frames that waited for these ROIs go now.
        let waiting: Vec<String> = self
            .frames
            .iter()
            .filter(|(_, s)| !s.held.is_empty())
            .map(|(id, _)| id.to_string())
            .collect();
        let mut first_error = None;
        for id in waiting {
            let Some(batch) = self.frames.get_mut(&id).and_then(|s| {
                s.held_frames -= s.held.back().map_or(0, RecordBatch::num_rows);
                s.held.pop_back()
            }) else {
                continue;
            };
            // Traced like a new batch: the held ones before it leave first, in order.
            if let Err(e) = self.frames(id, batch, out) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Where a batch's sums run.
struct Gpu<'a> {
    ctx: Option<&'a Arc<GpuContext>>,
    /// `auto` with a hardware GPU: each stream measures both first ([`Choice`]).
    measure: bool,
    /// `backend = "gpu"`: a GPU failure is an error, not a fall-back to the CPU.
    strict: bool,
    component: &'a str,
}

impl FramesState {
    /// F and Fneu of `frames` (whole frames, `data_s` seconds of them) into `self.f` and
    /// `self.fneu`: on the GPU if there is one (and, measuring, it won the trial).
    fn extract(
        &mut self,
        sid: &str,
        set: &Arc<RoiSet>,
        gpu: &Gpu<'_>,
        frames: &[i16],
        data_s: f64,
    ) -> Result<(), ComponentError> {
        if let Some(ctx) = gpu.ctx {
            if gpu.measure {
                if matches!(self.choice, Choice::NotStarted) {
                    self.choice = Choice::Trial(Trial::new(ctx.backend, TRIAL_S));
                }
                match self.choice {
                    Choice::Trial(_) => {
                        self.measure(sid, set, gpu, ctx, frames, data_s);
                        return Ok(());
                    }
                    Choice::Decided(Backend::Cpu) => {
                        set.table().extract(frames, &mut self.f, &mut self.fneu);
                        return Ok(());
                    }
                    Choice::Decided(_) | Choice::NotStarted => {}
                }
            }
            if let Err(e) = ensure_extractor(&mut self.gpu, ctx, set) {
                if gpu.strict {
                    return Err(ComponentError::Other(format!("stream `{sid}`: {e}")));
                }
                tracing::warn!(
                    component = %gpu.component, stream = %sid, error = %e,
                    "ROI extraction falls back to the CPU"
                );
            }
            if let Some((_, x)) = &mut self.gpu {
                match x.extract(frames, &mut self.f, &mut self.fneu) {
                    Ok(()) => return Ok(()),
                    Err(e) if gpu.strict => {
                        return Err(ComponentError::Other(format!("stream `{sid}`: {e}")))
                    }
                    Err(e) => tracing::warn!(
                        component = %gpu.component, stream = %sid, error = %e,
                        "GPU ROI extraction failed; this batch is traced on the CPU"
                    ),
                }
            }
        }
        set.table().extract(frames, &mut self.f, &mut self.fneu);
        Ok(())
    }

    /// A batch of the trial: the CPU's sums go out, the GPU's are only timed; once the trial
    /// has its verdict, it is reported and the stream keeps the winner.
    fn measure(
        &mut self,
        sid: &str,
        set: &Arc<RoiSet>,
        gpu: &Gpu<'_>,
        ctx: &Arc<GpuContext>,
        frames: &[i16],
        data_s: f64,
    ) {
        let Choice::Trial(trial) = &mut self.choice else {
            return;
        };
        let (f, fneu) = (&mut self.f, &mut self.fneu);
        trial.time(Backend::Cpu, data_s, || {
            set.table().extract(frames, f, fneu)
        });
        self.trial_f.resize(self.f.len(), 0.0);
        self.trial_fneu.resize(self.fneu.len(), 0.0);
        let ran = ensure_extractor(&mut self.gpu, ctx, set).and_then(|()| {
            let Some((_, x)) = &mut self.gpu else {
                return Ok(());
            };
            let (f, fneu) = (&mut self.trial_f, &mut self.trial_fneu);
            trial.time(ctx.backend, data_s, || x.extract(frames, f, fneu))
        });
        if let Err(e) = ran {
            trial.drop_gpu(e.to_string());
        }
        if let Some(verdict) = trial.verdict() {
            backend::report_verdict(gpu.component, sid, &verdict);
            if verdict.chosen == Backend::Cpu {
                self.gpu = None;
            }
            self.choice = Choice::Decided(verdict.chosen);
            self.trial_f = Vec::new();
            self.trial_fneu = Vec::new();
        }
    }

    fn trace(
        &mut self,
        sid: &str,
        set: &Arc<RoiSet>,
        gpu: &Gpu<'_>,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let Frames {
            h,
            w,
            index,
            time,
            list,
            pixels,
        } = Frames::of(batch, sid)?;
        let px = set.height * set.width;
        if h * w != px {
            return Err(ComponentError::Other(format!(
                "stream `{sid}`: frames of {h}×{w} pixels, ROIs on {}×{}",
                set.height, set.width
            )));
        }
        let schema = batch.schema_ref();
        let rate = schema
            .metadata()
            .get(keys::SAMPLING_HZ)
            .cloned()
            .unwrap_or_default();
        let hz = rate
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(TRIAL_FALLBACK_HZ);
        if self.out.as_ref().is_none_or(|(r, _)| *r != rate) {
            let s = traces_schema(&format!("{sid}{TRACES_SUFFIX}"), &rate, &[F, FNEU]);
            let mut md = s.metadata().clone();
            md.insert(SOURCE_STREAM_KEY.into(), sid.into());
            self.out = Some((
                rate,
                Arc::new(arrow::datatypes::Schema::new_with_metadata(
                    s.fields().clone(),
                    md,
                )),
            ));
        }
        let Some((_, out_schema)) = &self.out else {
            return Ok(());
        };
        let out_schema = out_schema.clone();
        let (n, k) = (list.len(), set.len());
        let mut fi = Vec::with_capacity(n * k);
        let mut ts = Vec::with_capacity(n * k);
        let mut roi = Vec::with_capacity(n * k);
        self.f.resize(n * k, 0.0);
        self.fneu.resize(n * k, 0.0);
        self.extract(sid, set, gpu, &pixels[..n * px], n as f64 / hz)?;
        let f = self.f[..n * k].to_vec();
        let fneu = self.fneu[..n * k].to_vec();
        for i in 0..n {
            fi.extend(std::iter::repeat_n(index.value(i), k));
            ts.extend(std::iter::repeat_n(time.value(i), k));
            roi.extend_from_slice(&set.ids);
        }
        let b = RecordBatch::try_new(
            out_schema,
            vec![
                Arc::new(Int64Array::from(fi)),
                Arc::new(Float64Array::from(ts)),
                Arc::new(Int32Array::from(roi)),
                Arc::new(Float32Array::from(f)),
                Arc::new(Float32Array::from(fneu)),
            ],
        )
        .map_err(|e| ComponentError::arrow("building the traces batch", e))?;
        out.emit(b);
        Ok(())
    }
}

/// The GPU copy of `set` in `slot`, made if the slot holds none or another set's.
fn ensure_extractor(
    slot: &mut Option<(Arc<RoiSet>, GpuRoiExtractor)>,
    ctx: &Arc<GpuContext>,
    set: &Arc<RoiSet>,
) -> Result<(), kernels::gpu::GpuError> {
    if slot.as_ref().is_none_or(|(s, _)| !Arc::ptr_eq(s, set)) {
        *slot = None;
        *slot = Some((set.clone(), GpuRoiExtractor::new(ctx.clone(), set.table())?));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
