//! `type = "spike_detect"`: spikes from the AP band of continuous streams, causally, chunk by
//! chunk (ALGORITHMS.md §2: bandpass, common median reference, MAD noise, negative threshold
//! crossing, local exclusion over channels within a radius and ±`exclude_ms`).
//!
//! ```toml
//! [transforms.spikes]
//! type = "spike_detect"
//! inputs = ["probe0"]
//! band = [250, 3000]       # Hz, Butterworth in second-order sections, causal
//! order = 1
//! reference = "global"     # common median over the whole probe; "shank" or "none"
//! threshold = 5.0          # k: a spike goes below -k·σ
//! radius_um = 60           # local exclusion radius (same shank)
//! exclude_ms = 0.5         # ... and time window, ±
//! dead_time_ms = 2.0       # per-channel dead time after a kept spike
//! calibration_s = 2.0      # σ from the first seconds of each stream ...
//! refresh_s = 60           # ... re-estimated this often over the latest calibration_s (0 = never)
//! backend = "auto"         # the fastest present: never a software GPU; with a hardware GPU,
//!                          # GPU and CPU measured on the stream's first seconds. "hardware": a
//!                          # hardware GPU, else the CPU; "gpu": any Vulkan adapter (lavapipe
//!                          # counts), an error without one; "cpu"
//! ```
//!
//! Defaults, and why they are not SpikeInterface's (bandpass 300–6000 Hz order 5, radius 50 µm,
//! ±1 ms in 0.105): SpikeInterface filters forward *and* backward, so its waveforms do not ring;
//! a causal Butterworth of order 3 or more rings after every spike, and the late troughs cross the
//! threshold again (on six ground-truth recordings, 6–20 µV noise: precision 0.33–0.78 at order 3,
//! ±0.1 ms, against SpikeInterface's 0.97–0.99). A first-order 250–3000 Hz band (Blackrock's
//! 250 Hz high-pass; most spike energy is below 3 kHz), ±0.5 ms over 60 µm and a 2 ms dead time
//! match or beat SpikeInterface's recall and precision on all six (`daemon/tests/spikes.rs` checks
//! three of them), causally.
//!
//! `backend` follows the rule shared by every kernel-backed transform ([`super::backend`]).
//! With `auto` and a hardware GPU both chains run the first `calibration_s` + 1 s of each stream
//! and the faster is kept (their detections are identical, so the switch is seamless); lavapipe
//! (Mesa's software Vulkan) is never taken by `auto`: on two cores it runs the chain at about
//! 1.3× real time against the CPU twins' ~37× (`bench/spikes.sh`).
//!
//! Only `ap` channels are detected (sync and other channels are neither detected nor part of the
//! median). In the daemon, streams on the input that are not continuous (a rig's frames, tables)
//! never reach it: the topology passes by every layout a transform does not take. The chain ([`kernels::chain`]) is built when a stream's first batch arrives, from the
//! geometry and µV per bit in its schema. The CPU chain reads the Int16 columns in place,
//! converting them to µV sample-major in one tiled pass; a GPU chain gets them copied sample-major
//! into a buffer the stream keeps (no allocation per batch once it has grown to the batch size).
//!
//! Output, default port, one events stream per input stream, id `<input stream id>.spikes`:
//! `sample_index: Int64` (of the input stream), `time_s: Float64` (= sample_index / rate),
//! `channel: Int32` (saved-channel index in the input stream), `amplitude_uv: Float32` (the
//! filtered, referenced value at the peak, negative), `threshold_uv: Float32` (k·σ it was judged
//! against, positive). Rows are in (sample, channel) order. The spikes do not depend on how the
//! input was chunked. The first `calibration_s` of a stream is held until σ is known, then
//! detected too (only that window waits); afterwards a spike leaves with the batch that completes
//! its ±`exclude_ms` context. `finish` flushes what is held back at the end of the input.
//!
//! Port `progress` (a watermark, for [`super::bin_features`]): a one-row table per input batch
//! that moved it, `complete_before_sample: Int64`: every spike of that stream with
//! `sample_index` below it has been sent on the default port before this row.
//!
//! Metrics (in [`crate::metrics::shared_registry`], as transforms get no `ComponentMetrics`):
//! `neurod_kernel_backend{backend, component_id} 1` for the backend in use, and
//! `neurod_spike_detect_latency_seconds{component_id}`: for each input batch, the time from
//! `process` being called with it (the topology calls it as soon as the batch leaves the inbox)
//! to its spike rows being ready — the wait in its stream's worker queue, conversion, the chain
//! and the output batch. Queueing in the inbox before that, and the hand-over to the consumers'
//! inboxes after (on the next `process` call), are not included.
//!
//! Threads: each input stream is detected on a worker thread of its own ([`workers`]): the end
//! of a stream's calibration (σ over the whole window, then the held-back samples detected, about
//! 0.1 s of one core for a 384-channel probe) would otherwise stall every other stream's batches
//! behind it, and with 8 probes calibrating together the inbox overflowed; each worker's queue
//! holds [`workers::QUEUE_S`] of its stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
};
use arrow::datatypes::{DataType, Field, Int16Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use kernels::chain::{ChainConfig, Detection, DetectionChain, Reference};
use kernels::Backend;
use prometheus::{HistogramOpts, HistogramVec};
use serde::Deserialize;

use super::backend::{self, Preference};
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::metrics::shared_registry;
use crate::stream::{
    self, keys, sample_span, ChannelKind, ContinuousInfo, Layout, SAMPLE_INDEX, TIME_S,
};

mod workers;

use super::per_stream::PerStream;
use workers::Workers;

pub const TYPE: &str = "spike_detect";
/// The side port carrying the watermark.
pub const PROGRESS_PORT: &str = "progress";
/// Output stream id: `<input stream id>` + this.
pub const STREAM_SUFFIX: &str = ".spikes";
pub const CHANNEL: &str = "channel";
pub const AMPLITUDE_UV: &str = "amplitude_uv";
pub const THRESHOLD_UV: &str = "threshold_uv";
pub const COMPLETE_BEFORE_SAMPLE: &str = "complete_before_sample";
/// Schema metadata of the spikes and progress streams: the id of the continuous stream they
/// were detected on.
pub const SOURCE_STREAM_KEY: &str = "neurod.source_stream";
/// Schema metadata of the spikes stream: the detection parameters, as JSON.
pub const PARAMS_KEY: &str = "neurod.spike_detect";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReferenceOption {
    #[default]
    Global,
    Shank,
    None,
}

fn default_band() -> [f64; 2] {
    [250.0, 3000.0]
}
fn default_order() -> usize {
    1
}
fn default_dead_time_ms() -> f64 {
    2.0
}
fn default_threshold() -> f64 {
    5.0
}
fn default_radius_um() -> f64 {
    60.0
}
fn default_exclude_ms() -> f64 {
    0.5
}
fn default_calibration_s() -> f64 {
    2.0
}
fn default_refresh_s() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_band")]
    band: [f64; 2],
    #[serde(default = "default_order")]
    order: usize,
    #[serde(default)]
    reference: ReferenceOption,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "default_radius_um")]
    radius_um: f64,
    #[serde(default = "default_exclude_ms")]
    exclude_ms: f64,
    #[serde(default = "default_dead_time_ms")]
    dead_time_ms: f64,
    #[serde(default = "default_calibration_s")]
    calibration_s: f64,
    #[serde(default = "default_refresh_s")]
    refresh_s: f64,
    #[serde(default)]
    backend: Preference,
}

/// Problems with a bandpass `band` and `order` (shared with `bin_features`); the upper edge
/// against Nyquist can only be checked once a stream's rate is known.
pub(crate) fn band_problems(band: [f64; 2], order: usize) -> Vec<String> {
    let mut out = Vec::new();
    let [low, high] = band;
    if !(low.is_finite() && high.is_finite() && low > 0.0 && low < high) {
        out.push(format!(
            "`band` = [{low}, {high}] must be two frequencies in Hz, 0 < low < high"
        ));
    }
    if !(1..=8).contains(&order) {
        out.push(format!("`order` = {order} must be between 1 and 8"));
    }
    out
}

impl Options {
    fn problems(&self) -> Vec<String> {
        let mut out = band_problems(self.band, self.order);
        let mut check = |ok: bool, msg: String| {
            if !ok {
                out.push(msg);
            }
        };
        let t = self.threshold;
        check(
            t.is_finite() && t > 0.0,
            format!("`threshold` = {t} must be a positive multiple of the noise"),
        );
        let r = self.radius_um;
        check(
            r.is_finite() && r >= 0.0,
            format!("`radius_um` = {r} must be 0 or more"),
        );
        let e = self.exclude_ms;
        check(
            e.is_finite() && (0.0..=10.0).contains(&e),
            format!("`exclude_ms` = {e} must be between 0 and 10"),
        );
        let d = self.dead_time_ms;
        check(
            d.is_finite() && (0.0..=100.0).contains(&d),
            format!("`dead_time_ms` = {d} must be between 0 and 100"),
        );
        let c = self.calibration_s;
        check(
            c.is_finite() && c > 0.0 && c <= 600.0,
            format!("`calibration_s` = {c} must be above 0 and at most 600"),
        );
        let f = self.refresh_s;
        check(
            crate::limits::seconds(f).is_ok(),
            format!(
                "`refresh_s` = {f} must be 0 (never) or a number of seconds up to {:e}",
                crate::limits::MAX_SECONDS
            ),
        );
        out
    }

    fn reference(&self) -> Reference {
        match self.reference {
            ReferenceOption::Global => Reference::Global,
            ReferenceOption::Shank => Reference::PerShank,
            ReferenceOption::None => Reference::None,
        }
    }

    /// What the spikes stream's schema records about how it was made.
    fn params_json(&self) -> String {
        serde_json::json!({
            "band_hz": self.band,
            "order": self.order,
            "reference": match self.reference {
                ReferenceOption::Global => "global",
                ReferenceOption::Shank => "shank",
                ReferenceOption::None => "none",
            },
            "threshold": self.threshold,
            "radius_um": self.radius_um,
            "exclude_ms": self.exclude_ms,
            "dead_time_ms": self.dead_time_ms,
            "calibration_s": self.calibration_s,
            "refresh_s": self.refresh_s,
        })
        .to_string()
    }
}

/// The process-wide series of this transform (see the module docs).
struct Series {
    latency: HistogramVec,
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "neurod_spike_detect_latency_seconds",
                "Per input batch, from spike_detect receiving it to its spike rows being ready (the stream's worker queue, conversion, detection chain, output batch; not inbox queueing).",
            )
            .buckets(vec![
                1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                0.1, 0.25, 1.0, 2.5,
            ]),
            &["component_id"],
        )
        .expect("valid metric definition");
        if let Err(e) = shared_registry().register(Box::new(latency.clone())) {
            tracing::warn!(error = %e, "spike_detect metrics not registered");
        }
        Series { latency }
    })
}

pub struct SpikeDetect {
    id: String,
    options: Options,
    params_json: String,
    /// The checks of each input stream ([`PerStream`]), by id; its detection runs on its
    /// worker. A schema change finishes the old worker before the new one starts under the
    /// same id, so the check is replaced by hand rather than through `for_schema` (which makes
    /// the new state before handing back the old).
    streams: PerStream<StreamCheck>,
    workers: Workers,
    /// Streams whose chain could not be built: reported once, then skipped.
    failed: HashSet<String>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    Ok(Box::new(build_detect(ctx, options)?))
}

/// [`build`] without the box: benchmarks and tests use [`SpikeDetect::settle`].
pub fn build_detect(ctx: &BuildContext, options: toml::Table) -> Result<SpikeDetect, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors: Vec<String> = o
        .problems()
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();
    if let Err(e) = backend::plan(&prefix, o.backend) {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SpikeDetect {
        id: ctx.id.into(),
        params_json: o.params_json(),
        options: o,
        streams: PerStream::new(),
        workers: Workers::new(ctx.id, series().latency.with_label_values(&[ctx.id])),
        failed: HashSet::new(),
    })
}

impl Transform for SpikeDetect {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Continuous]
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::default_port(&[Layout::Events]),
            PortSpec::named(PROGRESS_PORT, &[Layout::Table]),
        ]
    }

    fn process(
        &mut self,
        _input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let arrived = Instant::now();
        let schema = batch.schema();
        let stream_id = stream::stream_id_of(&schema).unwrap_or("unnamed");
        if let Some(layout) = Layout::of(&schema).filter(|l| *l != Layout::Continuous) {
            return Err(ComponentError::Other(format!(
                "stream `{stream_id}`: spike_detect takes continuous streams, not {}",
                layout.as_str()
            )));
        }
        if self.failed.contains(stream_id) {
            return self.workers.drain(out);
        }
        let stale = self
            .streams
            .get_mut(stream_id)
            .is_some_and(|s| !s.accepts_schema(&schema));
        if stale {
            // Channels or rate changed (a new recording under the same id): finish the old
            // chain so nothing it holds is lost, then start afresh (the stale check is replaced
            // below; until then it is never used: a finished worker takes no batch).
            tracing::warn!(component = %self.id, stream = %stream_id, "stream schema changed: restarting spike detection");
            self.workers.finish(stream_id, out)?;
        }
        if stale || !self.streams.contains(stream_id) {
            match StreamState::new(&self.id, &self.options, &self.params_json, &schema) {
                Ok(s) => {
                    let input = StreamCheck::of(&s);
                    self.workers.start(stream_id, s, batch.num_rows())?;
                    self.streams.insert(stream_id, input);
                }
                Err(e) => {
                    self.failed.insert(stream_id.to_string());
                    return Err(ComponentError::Other(format!(
                        "stream `{stream_id}`: {e}; its batches are skipped from now on"
                    )));
                }
            }
        }
        let handed = match self.streams.get_mut(stream_id) {
            Some(input) if batch.num_rows() > 0 => match input.check(&batch) {
                Ok(first) => self.workers.send(stream_id, batch, first, arrived),
                Err(e) => Err(e),
            },
            _ => Ok(()),
        };
        let drained = self.workers.drain(out);
        handed.and(drained)
    }

    fn finish(&mut self, out: &mut TransformContext) -> Result<(), ComponentError> {
        let (id, workers) = (&self.id, &mut self.workers);
        self.streams.finish_each(|stream, _| {
            workers.finish(stream, out).inspect_err(|e| {
                tracing::error!(component = %id, %stream, error = %e, "flushing spike detection failed");
            })
        })
    }
}

impl SpikeDetect {
    /// Waits until every batch handed over so far is done, emitting what came of it (tests and
    /// benchmarks use it to see, and time, the output of each batch as it happens).
    pub fn settle(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        self.workers.settle(out)
    }
}

/// What `spike_detect`'s own thread checks of a stream's batches before handing them to its
/// worker: the schema, contiguous sample indices, and the channel columns.
struct StreamCheck {
    schema: SchemaRef,
    id: String,
    n_channels: usize,
    /// The sample expected next; `None` before the first batch.
    next_sample: Option<i64>,
    gaps: crate::gap_log::GapLog,
}

impl StreamCheck {
    fn of(s: &StreamState) -> Self {
        StreamCheck {
            schema: s.input_schema.clone(),
            id: s.input_id.clone(),
            n_channels: s.n_channels,
            next_sample: None,
            gaps: Default::default(),
        }
    }

    fn accepts_schema(&self, schema: &SchemaRef) -> bool {
        Arc::ptr_eq(&self.schema, schema) || *self.schema == **schema
    }

    /// The batch's first sample, once it is known to continue the stream with well-formed
    /// columns (it is then expected to be detected).
    fn check(&mut self, batch: &RecordBatch) -> Result<i64, ComponentError> {
        let first = self.check_indices(batch)?;
        self.check_columns(batch)?;
        self.next_sample = Some(first + batch.num_rows() as i64);
        Ok(first)
    }

    fn err(&self, msg: String) -> ComponentError {
        ComponentError::Other(format!("stream `{}`: {msg}", self.id))
    }

    /// The batch's first sample index, after checking the batch continues the stream.
    fn check_indices(&mut self, batch: &RecordBatch) -> Result<i64, ComponentError> {
        let span = sample_span(batch, self.next_sample)
            .map_err(|why| self.err(format!("{why}; dropped")))?;
        if span.gap > 0 {
            // Live sources drop batches when a consumer falls behind (counted there); the
            // filter simply continues across the hole.
            if let Some((gaps, missing)) = self.gaps.note(span.gap as u64) {
                tracing::warn!(stream = %self.id, gaps, missing, latest_from = span.first - span.gap, "gaps in the input: samples missing (logged at most every 10 s; the edge's drops are counted in neurod_edge_dropped_rows_total)");
            }
        }
        Ok(span.first)
    }

    /// Checks the batch's channel columns are non-null Int16 of the batch's length, one per
    /// channel of the stream.
    fn check_columns(&self, batch: &RecordBatch) -> Result<(), ComponentError> {
        let (n, c) = (batch.num_rows(), self.n_channels);
        if batch.num_columns() != c + 1 {
            return Err(self.err(format!(
                "batch has {} channel columns, the stream has {c}",
                batch.num_columns().saturating_sub(1)
            )));
        }
        let good = |a: &ArrayRef| {
            a.as_any()
                .downcast_ref::<Int16Array>()
                .is_some_and(|a| a.null_count() == 0 && a.len() == n)
        };
        if let Some(bad) = (1..=c).find(|&i| !good(batch.column(i))) {
            return Err(self.err(format!("channel column {bad} is not a non-null Int16")));
        }
        Ok(())
    }
}
/// One input stream's detection state.
struct StreamState {
    input_schema: SchemaRef,
    input_id: String,
    sampling_hz: f64,
    n_channels: usize,
    chain: Box<dyn DetectionChain>,
    spikes_schema: SchemaRef,
    progress_schema: SchemaRef,
    /// The sample expected next; `None` before the first batch.
    next_sample: Option<i64>,
    /// The stream's first sample: the watermark until σ is known.
    first_sample: Option<i64>,
    /// How far behind the newest sample the chain may still hold peaks (its ±exclude context),
    /// rounded up with a sample to spare.
    holdback: i64,
    /// Last `complete_before_sample` sent.
    watermark: i64,
    /// Sample-major copy of the batch (`raw[t * C + c]`) for chains that take one, kept between
    /// batches.
    raw: Vec<i16>,
    detections: Vec<Detection>,
}

impl StreamState {
    fn new(
        component_id: &str,
        o: &Options,
        params_json: &str,
        schema: &SchemaRef,
    ) -> Result<Self, String> {
        let info = ContinuousInfo::from_schema(schema).map_err(|e| e.to_string())?;
        let cfg = chain_config(o, &info)?;
        let chain = kernels::chain::build_chain(&cfg, o.backend)
            .map_err(|e| format!("cannot build the detection chain: {e}"))?;
        let backend = chain.backend();
        crate::metrics::record_kernel_backend(component_id, backend.as_str());
        tracing::info!(
            component = %component_id,
            stream = %info.stream_id,
            backend = backend.as_str(),
            channels = cfg.detect_channels.iter().filter(|d| **d).count(),
            "spike detection running"
        );
        if backend == Backend::Cpu && o.backend == Preference::Gpu {
            return Err("`backend` = \"gpu\" but the chain fell back to the CPU".into());
        }
        let holdback = (o.exclude_ms * info.sampling_hz / 1000.0).ceil() as i64 + 1;
        Ok(StreamState {
            input_schema: schema.clone(),
            input_id: info.stream_id.clone(),
            sampling_hz: info.sampling_hz,
            n_channels: info.channels.len(),
            spikes_schema: spikes_schema(&info, params_json),
            progress_schema: progress_schema(&info),
            chain,
            next_sample: None,
            first_sample: None,
            holdback,
            watermark: i64::MIN,
            raw: Vec::new(),
            detections: Vec::new(),
        })
    }

    /// A batch [`StreamCheck::check`] has passed, starting at sample `first`.
    fn process(
        &mut self,
        batch: &RecordBatch,
        first: i64,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.detections.clear();
        // The chain reads the Int16 columns in place (the CPU chain converts and transposes
        // them in one pass; a GPU chain transposes them into `raw` first). The columns are
        // looked up once here: the chain asks for each several times per batch.
        let columns: Vec<&[i16]> = batch
            .columns()
            .iter()
            .skip(1)
            .map(|c| {
                c.as_primitive_opt::<Int16Type>()
                    .map_or(&[][..], |a| a.values())
            })
            .collect();
        self.chain
            .process_columns(
                first,
                &columns.as_slice(),
                &mut self.raw,
                &mut self.detections,
            )
            .map_err(|e| self.err(format!("detection failed at sample {first}: {e}")))?;
        let end = first + n as i64;
        self.next_sample = Some(end);
        self.first_sample.get_or_insert(first);
        self.emit_spikes(out)?;
        // σ known ⇒ everything but the last ±exclude context has been detected.
        let complete = match self.chain.noise_uv() {
            Some(_) => end - self.holdback,
            None => self.first_sample.unwrap_or(first),
        };
        self.emit_progress(complete, out)
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        self.detections.clear();
        self.chain
            .finish(&mut self.detections)
            .map_err(|e| self.err(format!("flushing the detection chain failed: {e}")))?;
        self.emit_spikes(out)?;
        if let Some(end) = self.next_sample {
            self.emit_progress(end, out)?;
        }
        Ok(())
    }

    fn err(&self, msg: String) -> ComponentError {
        ComponentError::Other(format!("stream `{}`: {msg}", self.input_id))
    }

    fn emit_spikes(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        if self.detections.is_empty() {
            return Ok(());
        }
        let d = &self.detections;
        let rate = self.sampling_hz;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                d.iter().map(|d| d.peak.sample),
            )),
            Arc::new(Float64Array::from_iter_values(
                d.iter().map(|d| d.peak.sample as f64 / rate),
            )),
            Arc::new(Int32Array::from_iter_values(
                d.iter().map(|d| d.peak.channel as i32),
            )),
            Arc::new(Float32Array::from_iter_values(
                d.iter().map(|d| d.peak.value),
            )),
            Arc::new(Float32Array::from_iter_values(
                d.iter().map(|d| d.threshold_uv),
            )),
        ];
        let b = RecordBatch::try_new(self.spikes_schema.clone(), columns)
            .map_err(|e| ComponentError::arrow("building the spikes batch", e))?;
        out.emit(b);
        Ok(())
    }

    fn emit_progress(&mut self, complete: i64, out: &mut Emitter) -> Result<(), ComponentError> {
        if complete <= self.watermark {
            return Ok(());
        }
        self.watermark = complete;
        let b = RecordBatch::try_new(
            self.progress_schema.clone(),
            vec![Arc::new(Int64Array::from(vec![complete])) as ArrayRef],
        )
        .map_err(|e| ComponentError::arrow("building the progress batch", e))?;
        out.emit_to(PROGRESS_PORT, b);
        Ok(())
    }
}

/// A continuous batch's channel columns (all after the sample index), checked by
/// [`StreamState::check_columns`]; a column that is not Int16 reads as empty, which the chain
/// rejects.
/// The chain's configuration for one stream. Channels without a position get one far from all
/// others, so local exclusion only looks at the channel itself; without µV per bit, ADC units.
fn chain_config(o: &Options, info: &ContinuousInfo) -> Result<ChainConfig, String> {
    let n = info.channels.len();
    let detect: Vec<bool> = info
        .channels
        .iter()
        .map(|c| c.kind == ChannelKind::Ap)
        .collect();
    if !detect.iter().any(|d| *d) {
        return Err(format!(
            "none of its {n} channels is an `ap` channel, nothing to detect on"
        ));
    }
    let [low, high] = o.band;
    if high >= info.sampling_hz / 2.0 {
        return Err(format!(
            "`band` upper edge {high} Hz is not below the Nyquist frequency {} Hz of the stream",
            info.sampling_hz / 2.0
        ));
    }
    let mut unplaced = 0;
    let mut unscaled = 0;
    let (mut x_um, mut y_um, mut shank, mut uv_per_bit) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, (c, d)) in info.channels.iter().zip(&detect).enumerate() {
        match (c.x_um, c.y_um) {
            (Some(x), Some(y)) => {
                x_um.push(x);
                y_um.push(y);
            }
            _ => {
                unplaced += usize::from(*d);
                x_um.push(0.0);
                y_um.push(1e9 * (i + 1) as f64);
            }
        }
        shank.push(c.shank.unwrap_or(0));
        uv_per_bit.push(match c.uv_per_bit {
            Some(v) if v.is_finite() && v > 0.0 => v as f32,
            _ => {
                unscaled += usize::from(*d);
                1.0
            }
        });
    }
    if unplaced > 0 {
        tracing::warn!(stream = %info.stream_id, channels = unplaced, "AP channels without probe positions: local exclusion is per channel only");
    }
    if unscaled > 0 {
        tracing::warn!(stream = %info.stream_id, channels = unscaled, "AP channels without µV per bit: amplitudes are in ADC units");
    }
    Ok(ChainConfig {
        n_channels: n,
        sampling_hz: info.sampling_hz,
        band_hz: (low, high),
        order: o.order,
        reference: o.reference(),
        threshold: o.threshold,
        x_um,
        y_um,
        shank,
        radius_um: o.radius_um,
        exclude_ms: o.exclude_ms,
        dead_time_ms: o.dead_time_ms,
        calibration_s: o.calibration_s,
        refresh_s: o.refresh_s,
        uv_per_bit,
        detect_channels: detect,
    })
}

fn stream_metadata(
    info: &ContinuousInfo,
    stream_id: String,
    layout: Layout,
) -> HashMap<String, String> {
    let mut md = HashMap::new();
    md.insert(keys::STREAM_ID.into(), stream_id);
    md.insert(keys::LAYOUT.into(), layout.as_str().into());
    md.insert(keys::SAMPLING_HZ.into(), info.sampling_hz_text.clone());
    md.insert(keys::FIRST_SAMPLE.into(), info.first_sample.to_string());
    md.insert(SOURCE_STREAM_KEY.into(), info.stream_id.clone());
    md
}

/// The spikes stream's schema (see the module docs).
pub fn spikes_schema(info: &ContinuousInfo, params_json: &str) -> SchemaRef {
    let mut md = stream_metadata(
        info,
        format!("{}{STREAM_SUFFIX}", info.stream_id),
        Layout::Events,
    );
    md.insert(keys::STREAM_KIND.into(), "spikes".into());
    md.insert(PARAMS_KEY.into(), params_json.into());
    if let Some(p) = &info.probe {
        md.insert(keys::PROBE.into(), p.clone());
    }
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new(TIME_S, DataType::Float64, false),
            Field::new(CHANNEL, DataType::Int32, false),
            Field::new(AMPLITUDE_UV, DataType::Float32, false),
            Field::new(THRESHOLD_UV, DataType::Float32, false),
        ],
        md,
    ))
}

fn progress_schema(info: &ContinuousInfo) -> SchemaRef {
    let md = stream_metadata(
        info,
        format!("{}{STREAM_SUFFIX}.progress", info.stream_id),
        Layout::Table,
    );
    Arc::new(Schema::new_with_metadata(
        vec![Field::new(COMPLETE_BEFORE_SAMPLE, DataType::Int64, false)],
        md,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stream::{batch_from_interleaved, ChannelInfo};
    use rand::{Rng, SeedableRng};

    pub const RATE: f64 = 30000.0;
    pub const AP: usize = 8;

    /// 8 AP channels in two columns 32 µm apart, rows 20 µm apart (one shank), then a sync channel.
    pub fn probe_info(id: &str) -> ContinuousInfo {
        let mut channels: Vec<ChannelInfo> = (0..AP)
            .map(|i| ChannelInfo {
                name: format!("AP{i}"),
                kind: ChannelKind::Ap,
                uv_per_bit: Some(0.5),
                x_um: Some(if i % 2 == 0 { 0.0 } else { 32.0 }),
                y_um: Some(20.0 * (i / 2) as f64),
                shank: Some(0),
            })
            .collect();
        channels.push(ChannelInfo {
            name: "SY0".into(),
            kind: ChannelKind::Sync,
            uv_per_bit: None,
            x_um: None,
            y_um: None,
            shank: None,
        });
        ContinuousInfo {
            stream_id: id.into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "30000".into(),
            sampling_hz: RATE,
            first_sample: 0,
            probe: None,
            channels,
        }
    }

    /// A spike of `depth_uv` (negative) on `channel` peaking at `sample`.
    pub struct Injected {
        pub sample: usize,
        pub channel: usize,
        pub depth_uv: f64,
    }

    /// Interleaved Int16 (0.5 µV/bit): 10 µV Gaussian noise per channel, the injected spikes as
    /// 0.6 ms-wide negative bumps (0.3 of their depth on the channels beside), a toggling sync word.
    pub fn synthetic(samples: usize, spikes: &[Injected], seed: u64) -> Vec<i16> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0, 10.0).unwrap();
        let c = AP + 1;
        let mut uv = vec![0f64; samples * c];
        for t in 0..samples {
            for ch in 0..AP {
                uv[t * c + ch] = rng.sample(normal);
            }
        }
        for s in spikes {
            for dt in -12i64..=12 {
                let t = s.sample as i64 + dt;
                if t < 0 || t >= samples as i64 {
                    continue;
                }
                let w = (-(dt as f64 / 4.0).powi(2)).exp();
                for ch in 0..AP {
                    let near = ch.abs_diff(s.channel);
                    let scale = match near {
                        0 => 1.0,
                        1 => 0.3,
                        _ => 0.0,
                    };
                    uv[t as usize * c + ch] += s.depth_uv * w * scale;
                }
            }
        }
        let mut out = Vec::with_capacity(samples * c);
        for t in 0..samples {
            for ch in 0..AP {
                out.push((uv[t * c + ch] / 0.5).round().clamp(-32768.0, 32767.0) as i16);
            }
            out.push(((t / 300) % 2) as i16 * 64);
        }
        out
    }

    pub fn batches(info: &ContinuousInfo, data: &[i16], batch: usize) -> Vec<RecordBatch> {
        let c = info.channels.len();
        let schema = info.schema();
        data.chunks(batch * c)
            .enumerate()
            .map(|(k, chunk)| {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                batch_from_interleaved(&schema, (k * batch) as i64, &bytes).unwrap()
            })
            .collect()
    }

    /// The transform itself (not boxed as a `dyn Transform`), so tests can [`SpikeDetect::settle`].
    pub fn build_with(id: &str, options: &str) -> Box<SpikeDetect> {
        let t: toml::Table = toml::from_str(options).unwrap();
        let ctx = BuildContext {
            id,
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        };
        Box::new(build_detect(&ctx, t).unwrap_or_else(|e| panic!("{e:?}")))
    }

    /// A progress row: spikes sent before it, input samples processed when it came, its value.
    type Progress = (usize, i64, i64);
    /// A spike: sample, channel, amplitude, threshold.
    type Spike = (i64, i32, f32, f32);

    /// (sample, channel, amplitude, threshold) of every spike in the order sent, and the
    /// progress rows.
    /// Each batch's output is collected as soon as its worker is done with it.
    fn run(tr: &mut SpikeDetect, input: Vec<RecordBatch>) -> (Vec<Spike>, Vec<Progress>) {
        let mut spikes = Vec::new();
        let mut progress = Vec::new();
        let mut out = TransformContext::detached("t");
        let mut seen = 0i64;
        let declared = tr.ports();
        let collect =
            |out: &mut Emitter, seen: i64, spikes: &mut Vec<_>, progress: &mut Vec<Progress>| {
                assert_eq!(out.undeclared_ports(&declared), Vec::<String>::new());
                for (port, b) in out.batches.drain(..) {
                    if port == PROGRESS_PORT {
                        let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        progress.push((spikes.len(), seen, v.value(0)));
                        continue;
                    }
                    let col = |i: usize| b.column(i).clone();
                    let s = col(0);
                    let s = s.as_any().downcast_ref::<Int64Array>().unwrap();
                    let ch = col(2);
                    let ch = ch.as_any().downcast_ref::<Int32Array>().unwrap();
                    let a = col(3);
                    let a = a.as_any().downcast_ref::<Float32Array>().unwrap();
                    let th = col(4);
                    let th = th.as_any().downcast_ref::<Float32Array>().unwrap();
                    for r in 0..b.num_rows() {
                        spikes.push((s.value(r), ch.value(r), a.value(r), th.value(r)));
                    }
                }
            };
        for b in input {
            seen += b.num_rows() as i64;
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
            tr.settle(&mut out).unwrap();
            collect(&mut out, seen, &mut spikes, &mut progress);
        }
        tr.finish(&mut out).unwrap();
        collect(&mut out, seen, &mut spikes, &mut progress);
        (spikes, progress)
    }

    fn injected() -> Vec<Injected> {
        // After the 0.2 s calibration window and inside it, on both columns; 150 µV deep
        // against 10 µV noise: unmistakable.
        [(3_000, 1), (7_500, 4), (9_000, 6), (12_345, 2), (15_000, 7)]
            .into_iter()
            .map(|(sample, channel)| Injected {
                sample,
                channel,
                depth_uv: -150.0,
            })
            .collect()
    }

    const CPU: &str = "backend = 'cpu'\ncalibration_s = 0.2\nrefresh_s = 0";

    #[test]
    fn finds_each_injected_spike_once_on_its_channel_and_never_on_sync() {
        let info = probe_info("p");
        let data = synthetic(18_000, &injected(), 1);
        let mut tr = build_with("det", CPU);
        let (spikes, _) = run(tr.as_mut(), batches(&info, &data, 300));
        for inj in injected() {
            let hits: Vec<_> = spikes
                .iter()
                .filter(|s| (s.0 - inj.sample as i64).abs() <= 15)
                .collect();
            assert_eq!(hits.len(), 1, "spike at {}: {hits:?}", inj.sample);
            let (_, ch, amp, th) = *hits[0];
            assert_eq!(
                ch as usize, inj.channel,
                "local exclusion keeps the deepest channel"
            );
            assert!(amp < -60.0, "amplitude in µV after filtering: {amp}");
            // 10 µV of white noise keeps about a fifth of its power in 250–3000 Hz: σ ≈ 4 µV.
            assert!((15.0..30.0).contains(&th), "threshold k·σ in µV: {th}");
        }
        assert!(
            spikes.iter().all(|s| (s.1 as usize) < AP),
            "the sync channel is never detected"
        );
        // Noise minus the median of only 8 channels has heavy tails (std/MAD ≈ 1.14): about 0.8
        // crossings of 5σ per channel-second, ~4 here; they are few and barely past the threshold.
        let others: Vec<_> = spikes
            .iter()
            .filter(|s| {
                injected()
                    .iter()
                    .all(|i| (s.0 - i.sample as i64).abs() > 15)
            })
            .collect();
        assert!(others.len() <= 12, "{spikes:?}");
        assert!(others.iter().all(|s| -s.2 < 1.5 * s.3), "{others:?}");
    }

    #[test]
    fn output_does_not_depend_on_chunking() {
        let info = probe_info("p");
        let data = synthetic(20_000, &injected(), 2);
        let mut a = build_with("a", CPU);
        let mut b = build_with("b", CPU);
        let (sa, _) = run(a.as_mut(), batches(&info, &data, 30));
        let (sb, _) = run(b.as_mut(), batches(&info, &data, 317));
        assert!(!sa.is_empty());
        assert_eq!(sa, sb);
    }

    /// Each stream is detected on a worker thread of its own, so that one stream's burst of
    /// work (the end of its calibration) never holds up another's batches and streams use
    /// several cores; interleaved, each stream gets exactly the spikes it gets alone.
    #[test]
    fn each_stream_is_detected_on_its_own_thread_with_the_spikes_it_gets_alone() {
        let (info_a, info_b) = (probe_info("pa"), probe_info("pb"));
        let (data_a, data_b) = (
            synthetic(12_000, &injected(), 11),
            synthetic(12_000, &injected(), 12),
        );
        let mut tr = build_with("two_streams", CPU);
        let mut out = TransformContext::detached("t");
        let pairs = batches(&info_a, &data_a, 300)
            .into_iter()
            .zip(batches(&info_b, &data_b, 300));
        for (a, b) in pairs {
            tr.process(&Input::new(0, "in"), a, &mut out).unwrap();
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        // Every worker has run (a thread takes its name when it first runs).
        tr.settle(&mut out).unwrap();
        #[cfg(target_os = "linux")]
        {
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect();
            for want in ["detect pa", "detect pb"] {
                assert!(names.iter().any(|n| n == want), "{want}: {names:?}");
            }
        }
        tr.finish(&mut out).unwrap();
        let of = |stream: &str| -> Vec<(i64, i32, u32)> {
            let mut v = Vec::new();
            for (_, b) in out.batches.iter().filter(|(port, b)| {
                port.is_empty() && stream::stream_id_of(&b.schema()) == Some(stream)
            }) {
                let s = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let c = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
                let a = b.column(3).as_any().downcast_ref::<Float32Array>().unwrap();
                v.extend((0..b.num_rows()).map(|r| (s.value(r), c.value(r), a.value(r).to_bits())));
            }
            v
        };
        for (stream, info, data) in [("pa", &info_a, &data_a), ("pb", &info_b, &data_b)] {
            let (alone, _) = run(&mut build_with("alone", CPU), batches(info, data, 300));
            let alone: Vec<_> = alone.iter().map(|s| (s.0, s.1, s.2.to_bits())).collect();
            assert!(!alone.is_empty());
            assert_eq!(of(&format!("{stream}{STREAM_SUFFIX}")), alone, "{stream}");
        }
    }

    #[test]
    fn progress_is_a_true_watermark() {
        let info = probe_info("p");
        let data = synthetic(18_000, &injected(), 3);
        let mut tr = build_with("det", CPU);
        let (spikes, progress) = run(tr.as_mut(), batches(&info, &data, 30));
        assert!(progress.len() > 100, "the watermark moves batch by batch");
        for (sent_before, _, complete) in &progress {
            let late: Vec<_> = spikes[*sent_before..]
                .iter()
                .filter(|s| s.0 < *complete)
                .collect();
            assert!(
                late.is_empty(),
                "spikes below {complete} sent after it: {late:?}"
            );
        }
        for (_, seen, complete) in &progress {
            if *seen < 6_000 {
                // σ is calibrated on the first 0.2 s: nothing is complete before.
                assert_eq!(*complete, 0, "after {seen} samples");
            } else {
                // Afterwards only the ±0.5 ms context (15 samples) and a spare one are pending.
                assert!(*complete >= seen - 16, "after {seen} samples: {complete}");
            }
        }
        assert_eq!(
            progress.last().unwrap().2,
            18_000,
            "at the end everything is"
        );
    }

    #[test]
    fn spikes_schema_names_the_stream_and_its_origin() {
        let info = probe_info("rig.imec0.ap");
        let data = synthetic(9_000, &injected(), 4);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        for b in batches(&info, &data, 3000) {
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        tr.finish(&mut out).unwrap();
        let (_, b) = out.batches.iter().find(|(p, _)| p.is_empty()).unwrap();
        let s = b.schema();
        let md = s.metadata();
        assert_eq!(md[keys::STREAM_ID], "rig.imec0.ap.spikes");
        assert_eq!(md[keys::LAYOUT], "events");
        assert_eq!(md[keys::SAMPLING_HZ], "30000");
        assert_eq!(md[SOURCE_STREAM_KEY], "rig.imec0.ap");
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "sample_index",
                "time_s",
                "channel",
                "amplitude_uv",
                "threshold_uv"
            ]
        );
        let idx = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let t = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(t.value(0), idx.value(0) as f64 / RATE);
    }

    #[test]
    fn bad_options_are_all_reported() {
        let t: toml::Table = toml::from_str(
            "band = [6000, 300]\nthreshold = -1\nexclude_ms = 50\nreference = 'car'",
        )
        .unwrap();
        let ctx = BuildContext {
            id: "det",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        };
        let e = build(&ctx, t).err().unwrap();
        assert!(e[0].contains("det") && e[0].contains("car"), "{e:?}");
        let t: toml::Table =
            toml::from_str("band = [6000, 300]\nthreshold = -1\nexclude_ms = 50").unwrap();
        let e = build(&ctx, t).err().unwrap();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().all(|m| m.contains("transform `det`")), "{e:?}");
        let t: toml::Table = toml::from_str("thresold = 4").unwrap();
        assert!(build(&ctx, t).err().unwrap()[0].contains("thresold"));
    }

    #[test]
    fn band_above_nyquist_fails_the_stream_once_with_its_name() {
        let mut info = probe_info("slow");
        info.sampling_hz = 2500.0;
        info.sampling_hz_text = "2500".into();
        let data = synthetic(600, &[], 5);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        let mut bs = batches(&info, &data, 300).into_iter();
        let e = tr
            .process(&Input::new(0, "in"), bs.next().unwrap(), &mut out)
            .unwrap_err();
        assert!(
            e.to_string().contains("slow") && e.to_string().contains("Nyquist"),
            "{e}"
        );
        assert!(
            tr.process(&Input::new(0, "in"), bs.next().unwrap(), &mut out)
                .is_ok(),
            "reported once"
        );
    }

    #[test]
    fn non_continuous_and_overlapping_input_is_rejected_and_named() {
        let info = probe_info("p");
        let data = synthetic(600, &[], 6);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        let bs = batches(&info, &data, 300);
        tr.process(&Input::new(0, "in"), bs[0].clone(), &mut out)
            .unwrap();
        let e = tr
            .process(&Input::new(0, "in"), bs[0].clone(), &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("already received"), "{e}");
        let events = Schema::new_with_metadata(
            vec![Field::new("sample_index", DataType::Int64, false)],
            [
                (keys::LAYOUT.to_string(), "events".to_string()),
                (keys::STREAM_ID.to_string(), "gt".to_string()),
            ]
            .into(),
        );
        let b = RecordBatch::try_new(
            Arc::new(events),
            vec![Arc::new(Int64Array::from(vec![1i64])) as ArrayRef],
        )
        .unwrap();
        let e = tr.process(&Input::new(0, "in"), b, &mut out).unwrap_err();
        assert!(e.to_string().contains("`gt`"), "{e}");
    }

    #[test]
    fn backend_and_latency_are_exported() {
        let info = probe_info("p");
        let data = synthetic(3_000, &[], 7);
        let mut tr = build_with("det_metrics", CPU);
        let mut out = TransformContext::detached("t");
        for b in batches(&info, &data, 30) {
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        tr.settle(&mut out).unwrap();
        let text = crate::metrics::Metrics::new().render();
        assert!(
            text.contains(r#"neurod_kernel_backend{backend="cpu",component_id="det_metrics"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"neurod_spike_detect_latency_seconds_count{component_id="det_metrics"} 100"#
            ),
            "{text}"
        );
    }

    /// Neither the default nor `hardware` ever takes a software adapter (lavapipe, installed in
    /// CI): without a hardware GPU both run the CPU chain. With one, `auto` measures (the CPU's
    /// output during the trial) and `hardware` takes it.
    #[test]
    fn auto_and_hardware_never_take_a_software_adapter() {
        let backend_of = |id: &str, backend: &str| {
            let info = probe_info("p");
            let data = synthetic(600, &[], 9);
            let mut tr = build_with(id, &format!("calibration_s = 0.2\nbackend = '{backend}'"));
            let mut out = TransformContext::detached("t");
            for b in batches(&info, &data, 300) {
                tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
            }
            let text = crate::metrics::Metrics::new().render();
            ["gpu", "lavapipe", "cpu"]
                .into_iter()
                .find(|b| {
                    text.contains(&format!(
                        r#"neurod_kernel_backend{{backend="{b}",component_id="{id}"}} 1"#
                    ))
                })
                .unwrap_or_else(|| panic!("no backend exported for {id}: {text}"))
        };
        let adapter = kernels::gpu::test_context().map(|c| c.backend);
        assert_eq!(
            backend_of("det_auto", "auto"),
            "cpu",
            "adapter: {adapter:?}"
        );
        let hardware = if adapter == Some(Backend::Gpu) {
            "gpu"
        } else {
            "cpu"
        };
        assert_eq!(backend_of("det_hardware", "hardware"), hardware);
    }

    #[test]
    fn gpu_backend_runs_where_an_adapter_exists_and_is_refused_where_not() {
        let t: toml::Table = toml::from_str("backend = 'gpu'\ncalibration_s = 0.2").unwrap();
        let built = build_detect(
            &BuildContext {
                id: "det_gpu",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            t,
        );
        match kernels::gpu::test_context() {
            None => {
                let e = built.err().unwrap();
                assert!(e[0].contains("no usable GPU adapter"), "{e:?}");
            }
            Some(_) => {
                let mut gpu = built.unwrap_or_else(|e| panic!("{e:?}"));
                let gpu = &mut gpu;
                let mut cpu = build_with("det_cpu", CPU);
                let info = probe_info("p");
                let data = synthetic(18_000, &injected(), 8);
                let (sg, _) = run(gpu, batches(&info, &data, 300));
                let (sc, _) = run(cpu.as_mut(), batches(&info, &data, 300));
                let key = |v: &Vec<Spike>| v.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>();
                assert_eq!(key(&sg), key(&sc), "same spikes on GPU and CPU");
            }
        }
    }
}
