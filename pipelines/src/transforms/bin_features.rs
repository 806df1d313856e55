//! `type = "bin_features"`: per channel and per fixed bin, the threshold-crossing count and the
//! spike-band power, the usual inputs of BCI decoders.
//!
//! ```toml
//! [transforms.spikes]
//! type = "spike_detect"
//! inputs = ["probe0"]
//!
//! [transforms.features]
//! type = "bin_features"
//! inputs = ["probe0", "spikes", "spikes.progress"]
//! bin_ms = 20
//! band = [300, 6000]   # Hz, for the power
//! order = 3
//! counts = true        # false: power only, from the continuous input alone
//! ```
//!
//! Inputs, by position: the continuous stream (power), the `spike_detect` spikes detected on it
//! (counts) and `spike_detect`'s `progress` port, which says up to which sample the spikes are
//! complete; with `counts = false`, the continuous input alone. A batch whose layout is not its
//! input's is an error naming the input. Several probes may share the inputs: each spikes and
//! progress stream goes with the continuous stream its schema names in `neurod.source_stream`. Bins are `bin_samples = round(bin_ms · rate / 1000)` samples long and
//! aligned on `sample_index` 0, so they do not depend on how the input was chunked.
//!
//! Output, one row per bin, stream id `<continuous stream id>.bins` (layout `table`), one column
//! per `ap` channel so that `pyarrow`/`pandas` users get plain numeric columns:
//! `bin_start_sample: Int64`, `time_s: Float64` (bin start / rate), `samples: UInt32` (samples of
//! the bin seen: `bin_samples` except where the stream starts, ends or has a hole),
//! `count_<channel>: UInt16` (spikes whose peak falls in the bin), and `power_<channel>: Float32`
//! (mean square of the band-passed signal, µV², causal Butterworth with state carried across
//! batches, no median reference). A bin leaves once its power is complete (the data has passed
//! its end) and its counts are (the progress has passed its end: spikes lag the data by the
//! detector's ±exclude context, and by the calibration window at the start). At the end of the
//! input the held bins leave, the last one partial.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, UInt16Array, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use kernels::filter::{butter_bandpass, SosFilter};
use serde::Deserialize;

use super::per_stream::PerStream;
use super::spike_detect::{band_problems, CHANNEL, COMPLETE_BEFORE_SAMPLE, SOURCE_STREAM_KEY};
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::stream::{
    self, keys, parse_rate, sample_span, ChannelKind, ContinuousInfo, Layout, SAMPLE_INDEX, TIME_S,
};

pub const TYPE: &str = "bin_features";
pub const BIN_START_SAMPLE: &str = "bin_start_sample";
pub const SAMPLES: &str = "samples";
/// Output stream id: `<continuous stream id>` + this.
pub const BINS_SUFFIX: &str = ".bins";
/// Schema metadata of the output: samples per bin.
pub const BIN_SAMPLES_KEY: &str = "neurod.bin_samples";

/// The spike band of BCI decoders' power feature (not `spike_detect`'s detection band).
fn default_band() -> [f64; 2] {
    [300.0, 6000.0]
}
fn default_order() -> usize {
    3
}
fn default_bin_ms() -> f64 {
    20.0
}
fn default_counts() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_bin_ms")]
    bin_ms: f64,
    #[serde(default = "default_band")]
    band: [f64; 2],
    #[serde(default = "default_order")]
    order: usize,
    #[serde(default = "default_counts")]
    counts: bool,
}

pub struct BinFeatures {
    id: String,
    options: Options,
    /// By continuous stream id.
    sources: PerStream<SourceBins>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors: Vec<String> = band_problems(o.band, o.order)
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();
    if !(o.bin_ms.is_finite() && o.bin_ms >= 0.1 && o.bin_ms <= 1000.0) {
        errors.push(format!(
            "{prefix}: `bin_ms` = {} must be between 0.1 and 1000",
            o.bin_ms
        ));
    }
    let roles = if o.counts { ROLES.len() } else { 1 };
    if ctx.inputs.len() != roles {
        errors.push(format!(
            "{prefix}: takes {roles} input(s), {}, and has {}",
            ROLES[..roles]
                .iter()
                .map(|(r, _)| r.what())
                .collect::<Vec<_>>()
                .join(", "),
            ctx.inputs.len()
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(BinFeatures {
        id: ctx.id.into(),
        options: o,
        sources: PerStream::new(),
    }))
}

/// What each configured input carries, by its position in `inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Continuous,
    Spikes,
    Progress,
}

const ROLES: [(Role, Layout); 3] = [
    (Role::Continuous, Layout::Continuous),
    (Role::Spikes, Layout::Events),
    (Role::Progress, Layout::Table),
];

impl Role {
    fn what(self) -> &'static str {
        match self {
            Role::Continuous => "the continuous stream",
            Role::Spikes => "its spike_detect spikes",
            Role::Progress => "their progress port",
        }
    }
}

/// Samples per bin at `rate` (the same for every input of one stream: same rate text).
fn bin_samples(bin_ms: f64, rate: f64) -> i64 {
    ((bin_ms * rate / 1000.0).round() as i64).max(1)
}

impl Transform for BinFeatures {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Continuous, Layout::Events, Layout::Table]
    }

    fn input_layout(&self, index: usize) -> Option<Layout> {
        ROLES.get(index).map(|(_, layout)| *layout)
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Table])]
    }

    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let stream_id = stream::stream_id_of(&schema).unwrap_or("unnamed");
        let role = input.role(&ROLES, &schema)?;
        let source = match role {
            Role::Continuous => stream_id.to_string(),
            Role::Spikes | Role::Progress => match schema.metadata().get(SOURCE_STREAM_KEY) {
                Some(s) => s.clone(),
                None => {
                    return Err(ComponentError::Other(format!(
                        "input `{}`, stream `{stream_id}`: no `{SOURCE_STREAM_KEY}` naming the continuous stream it belongs to",
                        input.name
                    )))
                }
            },
        };
        let state = self
            .sources
            .get_or_insert_with(&source, SourceBins::default);
        let result = match role {
            Role::Continuous => state.continuous(&self.options, &batch, out),
            Role::Spikes => state.spikes(&self.options, &batch),
            Role::Progress => state.progress(&batch),
        };
        // Whatever the batch was, bins it completed go now (an error leaves the rest intact).
        let emitted = state.emit_ready(&self.options, false, out);
        result.and(emitted)
    }

    fn finish(&mut self, out: &mut TransformContext) -> Result<(), ComponentError> {
        let (id, options) = (&self.id, &self.options);
        self.sources.finish_each(|stream, s| {
            s.emit_ready(options, true, out).inspect_err(|e| {
                tracing::error!(component = %id, %stream, error = %e, "flushing bins failed");
            })
        })
    }
}

/// Everything known about one continuous stream's bins.
#[derive(Default)]
struct SourceBins {
    power: Option<PowerState>,
    /// Samples per bin, from whichever input told the rate first.
    bin_samples: Option<i64>,
    /// Spike counts by bin index, then by saved channel.
    counts: BTreeMap<i64, Vec<u16>>,
    /// Spikes below this sample are all counted.
    complete_before: Option<i64>,
    /// Bins below this index have been sent.
    next_emit: i64,
    warned_held: bool,
}

/// Seconds of bins held for their counts before a warning, and before they go without.
const HELD_WARN_S: f64 = 10.0;
const HELD_MAX_S: f64 = 60.0;

/// The continuous side: band-pass filter state and the bins being summed.
struct PowerState {
    schema: SchemaRef,
    input_id: String,
    rate: f64,
    /// Saved-channel index of each `ap` channel, in order.
    ap: Vec<usize>,
    uv_per_bit: Vec<f32>,
    filter: SosFilter,
    /// Sample-major µV of the `ap` channels, reused.
    buf: Vec<f32>,
    /// The bin being summed: index and samples so far; `sums` holds its Σx² per ap channel.
    open: Option<(i64, u32)>,
    sums: Vec<f64>,
    /// Bins whose power is complete, waiting for their counts.
    done: VecDeque<DoneBin>,
    next_sample: Option<i64>,
    out_schema: SchemaRef,
}

struct DoneBin {
    index: i64,
    power: Vec<f32>,
    samples: u32,
}

impl SourceBins {
    fn set_bin_samples(
        &mut self,
        o: &Options,
        rate: f64,
        stream: &str,
    ) -> Result<i64, ComponentError> {
        let b = bin_samples(o.bin_ms, rate);
        match self.bin_samples {
            Some(known) if known != b => Err(ComponentError::Other(format!(
                "stream `{stream}`: its rate gives {b} samples per bin, its continuous stream {known}"
            ))),
            _ => {
                self.bin_samples = Some(b);
                Ok(b)
            }
        }
    }

    fn continuous(
        &mut self,
        o: &Options,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let stale = self
            .power
            .as_ref()
            .is_some_and(|p| !Arc::ptr_eq(&p.schema, &schema) && *p.schema != *schema);
        if stale {
            // A new recording under the same id: what the old one summed leaves now, with the
            // counts known so far, and the new one starts from scratch.
            tracing::warn!(stream = %stream::stream_id_of(&schema).unwrap_or("unnamed"), "stream schema changed: bins restart");
            self.emit_ready(o, true, out)?;
            self.power = None;
        }
        if self.power.is_none() {
            let p = PowerState::new(o, &schema)?;
            self.set_bin_samples(o, p.rate, &p.input_id)?;
            self.power = Some(p);
        }
        let (Some(p), Some(b)) = (self.power.as_mut(), self.bin_samples) else {
            return Ok(());
        };
        p.add(batch, b)
    }

    fn spikes(&mut self, o: &Options, batch: &RecordBatch) -> Result<(), ComponentError> {
        if !o.counts {
            return Ok(());
        }
        let schema = batch.schema();
        let sid = stream::stream_id_of(&schema).unwrap_or("unnamed");
        let rate_text = schema.metadata().get(keys::SAMPLING_HZ).ok_or_else(|| {
            ComponentError::Other(format!("stream `{sid}`: no `{}`", keys::SAMPLING_HZ))
        })?;
        let rate = parse_rate(rate_text)
            .map_err(|e| ComponentError::Other(format!("stream `{sid}`: sampling rate: {e}")))?;
        let b = self.set_bin_samples(o, rate, sid)?;
        let col = |name: &str| {
            schema
                .index_of(name)
                .ok()
                .map(|i| batch.column(i))
                .ok_or_else(|| ComponentError::Other(format!("stream `{sid}`: no column `{name}`")))
        };
        let samples = col(SAMPLE_INDEX)?;
        let samples = samples
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| {
                ComponentError::Other(format!("stream `{sid}`: `{SAMPLE_INDEX}` is not Int64"))
            })?;
        let channels = col(CHANNEL)?;
        let channels = channels
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| {
                ComponentError::Other(format!("stream `{sid}`: `{CHANNEL}` is not Int32"))
            })?;
        let mut late = 0usize;
        let mut bad = 0usize;
        for (s, ch) in samples.iter().zip(channels.iter()) {
            let (Some(s), Some(ch)) = (s, ch.and_then(|c| usize::try_from(c).ok())) else {
                bad += 1;
                continue;
            };
            let bin = s.div_euclid(b);
            if bin < self.next_emit {
                late += 1;
                continue;
            }
            let c = self.counts.entry(bin).or_default();
            if c.len() <= ch {
                if ch > 1 << 16 {
                    bad += 1;
                    continue;
                }
                c.resize(ch + 1, 0);
            }
            c[ch] = c[ch].saturating_add(1);
        }
        if late + bad > 0 {
            return Err(ComponentError::Other(format!(
                "stream `{sid}`: {late} spikes for bins already sent, {bad} without a sample or channel; not counted"
            )));
        }
        Ok(())
    }

    fn progress(&mut self, batch: &RecordBatch) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = stream::stream_id_of(&schema).unwrap_or("unnamed");
        let v = schema
            .index_of(COMPLETE_BEFORE_SAMPLE)
            .ok()
            .and_then(|i| batch.column(i).as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| {
                ComponentError::Other(format!(
                    "stream `{sid}`: a table without `{COMPLETE_BEFORE_SAMPLE}: Int64` (bin_features takes spike_detect's progress)"
                ))
            })?;
        if let Some(max) = v.iter().flatten().max() {
            self.complete_before = Some(self.complete_before.map_or(max, |c| c.max(max)));
        }
        Ok(())
    }

    /// Sends the bins whose power and counts are complete (all of them at the end).
    fn emit_ready(
        &mut self,
        o: &Options,
        at_end: bool,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let (Some(p), Some(b)) = (self.power.as_mut(), self.bin_samples) else {
            return Ok(());
        };
        if at_end {
            p.close_open();
        }
        let counted_before = match (o.counts, at_end) {
            (false, _) | (true, true) => i64::MAX,
            (true, false) => self.complete_before.unwrap_or(i64::MIN),
        };
        let mut ready = p
            .done
            .iter()
            .take_while(|d| (d.index + 1).saturating_mul(b) <= counted_before)
            .count();
        // Without progress (no `<spike_detect id>.progress` among the inputs) bins would wait for
        // the end of the input: say so, and keep memory bounded by letting the oldest go.
        let held_s = (p.done.len() - ready) as f64 * b as f64 / p.rate;
        if held_s > HELD_WARN_S && !self.warned_held {
            self.warned_held = true;
            tracing::warn!(stream = %p.input_id, held_s, "bins are waiting for spike counts: is `<spike_detect id>.progress` among the inputs?");
        }
        if held_s > HELD_MAX_S {
            ready = p.done.len() - (HELD_MAX_S * p.rate / b as f64) as usize;
            tracing::warn!(stream = %p.input_id, bins = ready, "bins sent with the spike counts known so far");
        }
        if ready == 0 {
            return Ok(());
        }
        let bins: Vec<DoneBin> = p.done.drain(..ready).collect();
        let mut counts: Vec<Option<Vec<u16>>> = Vec::with_capacity(ready);
        for d in &bins {
            // Counts of bins that never had data (a hole in the input) go with them.
            while self
                .counts
                .first_key_value()
                .is_some_and(|(k, _)| *k < d.index)
            {
                self.counts.pop_first();
            }
            counts.push(self.counts.remove(&d.index));
        }
        if let Some(last) = bins.last() {
            self.next_emit = last.index + 1;
        }
        let batch = p.table(o.counts, b, &bins, &counts)?;
        out.emit(batch);
        Ok(())
    }
}

impl PowerState {
    fn new(o: &Options, schema: &SchemaRef) -> Result<Self, ComponentError> {
        let info = ContinuousInfo::from_schema(schema).map_err(|e| {
            ComponentError::Other(format!(
                "stream `{}`: {e}",
                stream::stream_id_of(schema).unwrap_or("unnamed")
            ))
        })?;
        let sid = &info.stream_id;
        let ap: Vec<usize> = info
            .channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == ChannelKind::Ap)
            .map(|(i, _)| i)
            .collect();
        if ap.is_empty() {
            return Err(ComponentError::Other(format!(
                "stream `{sid}`: no `ap` channel to compute features of"
            )));
        }
        let [low, high] = o.band;
        if high >= info.sampling_hz / 2.0 {
            return Err(ComponentError::Other(format!(
                "stream `{sid}`: `band` upper edge {high} Hz is not below its Nyquist frequency {} Hz",
                info.sampling_hz / 2.0
            )));
        }
        let sos = butter_bandpass(o.order, low, high, info.sampling_hz).map_err(|e| {
            ComponentError::Other(format!("stream `{sid}`: cannot design the bandpass: {e}"))
        })?;
        let uv_per_bit = ap
            .iter()
            .map(|&i| {
                info.channels[i]
                    .uv_per_bit
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .unwrap_or(1.0) as f32
            })
            .collect();
        Ok(PowerState {
            schema: schema.clone(),
            input_id: sid.clone(),
            rate: info.sampling_hz,
            filter: SosFilter::new(&sos, ap.len()),
            uv_per_bit,
            buf: Vec::new(),
            open: None,
            sums: vec![0.0; ap.len()],
            done: VecDeque::new(),
            next_sample: None,
            out_schema: bins_schema(
                &info,
                &ap,
                bin_samples(o.bin_ms, info.sampling_hz),
                o.counts,
            ),
            ap,
        })
    }

    fn err(&self, msg: String) -> ComponentError {
        ComponentError::Other(format!("stream `{}`: {msg}", self.input_id))
    }

    fn add(&mut self, batch: &RecordBatch, bin: i64) -> Result<(), ComponentError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let first = sample_span(batch, self.next_sample)
            .map_err(|why| self.err(format!("{why}; dropped")))?
            .first;
        let a = self.ap.len();
        self.buf.clear();
        self.buf.resize(n * a, 0.0);
        for (k, (&ch, &scale)) in self.ap.iter().zip(&self.uv_per_bit).enumerate() {
            let col = batch
                .column(ch + 1)
                .as_any()
                .downcast_ref::<arrow::array::Int16Array>()
                .filter(|c| c.null_count() == 0)
                .ok_or_else(|| {
                    self.err(format!("channel column {} is not a non-null Int16", ch + 1))
                })?;
            for (t, v) in col.values().iter().enumerate() {
                self.buf[t * a + k] = *v as f32 * scale;
            }
        }
        self.filter.process(&mut self.buf);
        // Taken out for the loop (closing a bin borrows `self`), put back after: no allocation.
        let buf = std::mem::take(&mut self.buf);
        for (t, row) in buf.chunks_exact(a).enumerate() {
            let index = (first + t as i64).div_euclid(bin);
            if self.open.is_none_or(|(i, _)| i != index) {
                self.close_open();
                self.open = Some((index, 0));
            }
            for (s, x) in self.sums.iter_mut().zip(row) {
                *s += f64::from(*x) * f64::from(*x);
            }
            if let Some((_, samples)) = self.open.as_mut() {
                *samples += 1;
            }
        }
        self.buf = buf;
        // A bin is complete once the data reaches its end.
        let end = first + n as i64;
        if let Some((index, _)) = self.open {
            if (index + 1) * bin <= end {
                self.close_open();
            }
        }
        self.next_sample = Some(end);
        Ok(())
    }

    fn close_open(&mut self) {
        if let Some((index, samples)) = self.open.take() {
            let n = f64::from(samples.max(1));
            self.done.push_back(DoneBin {
                index,
                power: self.sums.iter().map(|s| (s / n) as f32).collect(),
                samples,
            });
            self.sums.iter_mut().for_each(|s| *s = 0.0);
        }
    }

    fn table(
        &self,
        with_counts: bool,
        bin: i64,
        bins: &[DoneBin],
        counts: &[Option<Vec<u16>>],
    ) -> Result<RecordBatch, ComponentError> {
        let schema = self.out_schema.clone();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(3 + 2 * self.ap.len());
        cols.push(Arc::new(Int64Array::from_iter_values(
            bins.iter().map(|d| d.index * bin),
        )));
        cols.push(Arc::new(Float64Array::from_iter_values(
            bins.iter().map(|d| (d.index * bin) as f64 / self.rate),
        )));
        cols.push(Arc::new(UInt32Array::from_iter_values(
            bins.iter().map(|d| d.samples),
        )));
        if with_counts {
            for &ch in &self.ap {
                cols.push(Arc::new(UInt16Array::from_iter_values(counts.iter().map(
                    |c| c.as_ref().and_then(|c| c.get(ch)).copied().unwrap_or(0),
                ))));
            }
        }
        for k in 0..self.ap.len() {
            cols.push(Arc::new(Float32Array::from_iter_values(
                bins.iter().map(|d| d.power.get(k).copied().unwrap_or(0.0)),
            )));
        }
        RecordBatch::try_new(schema, cols)
            .map_err(|e| ComponentError::arrow("building the bins batch", e))
    }
}

/// The output schema (see the module docs).
fn bins_schema(info: &ContinuousInfo, ap: &[usize], bin: i64, with_counts: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new(BIN_START_SAMPLE, DataType::Int64, false),
        Field::new(TIME_S, DataType::Float64, false),
        Field::new(SAMPLES, DataType::UInt32, false),
    ];
    if with_counts {
        for &i in ap {
            fields.push(Field::new(
                format!("count_{}", info.channels[i].name),
                DataType::UInt16,
                false,
            ));
        }
    }
    for &i in ap {
        fields.push(Field::new(
            format!("power_{}", info.channels[i].name),
            DataType::Float32,
            false,
        ));
    }
    let mut md = HashMap::new();
    md.insert(
        keys::STREAM_ID.to_string(),
        format!("{}{BINS_SUFFIX}", info.stream_id),
    );
    md.insert(keys::LAYOUT.to_string(), Layout::Table.as_str().to_string());
    md.insert(keys::STREAM_KIND.to_string(), "bins".to_string());
    md.insert(keys::SAMPLING_HZ.to_string(), info.sampling_hz_text.clone());
    md.insert(BIN_SAMPLES_KEY.to_string(), bin.to_string());
    md.insert(SOURCE_STREAM_KEY.to_string(), info.stream_id.clone());
    Arc::new(Schema::new_with_metadata(fields, md))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::spike_detect::spikes_schema;
    use crate::transforms::spike_detect::tests::{batches, probe_info, AP, RATE};

    const INPUTS: [&str; 3] = ["probe", "det", "det.progress"];

    /// Input `i` of [`INPUTS`].
    fn input(i: usize) -> Input {
        Input::new(i, INPUTS[i])
    }

    fn build_with(options: &str) -> Box<dyn Transform> {
        let t: toml::Table = toml::from_str(options).unwrap();
        let n = if options.contains("counts = false") {
            1
        } else {
            3
        };
        let inputs: Vec<String> = INPUTS[..n].iter().map(|s| s.to_string()).collect();
        build(
            &BuildContext {
                id: "bins",
                data_dir: "/tmp".as_ref(),
                inputs: &inputs,
            },
            t,
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Interleaved Int16 at 0.5 µV/bit: a 1 kHz sine of `amp_uv` on AP0, 0 elsewhere.
    fn sine(samples: usize, amp_uv: f64) -> Vec<i16> {
        let c = AP + 1;
        let mut out = vec![0i16; samples * c];
        for t in 0..samples {
            let v = amp_uv * (2.0 * std::f64::consts::PI * 1000.0 * t as f64 / RATE).sin();
            out[t * c] = (v / 0.5).round() as i16;
        }
        out
    }

    fn spikes(at: &[(i64, i32)]) -> RecordBatch {
        let schema = spikes_schema(&probe_info("p"), "{}");
        let n = at.len();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(at.iter().map(|a| a.0))),
                Arc::new(Float64Array::from_iter_values(
                    at.iter().map(|a| a.0 as f64 / RATE),
                )),
                Arc::new(Int32Array::from_iter_values(at.iter().map(|a| a.1))),
                Arc::new(Float32Array::from(vec![-100.0f32; n])),
                Arc::new(Float32Array::from(vec![40.0f32; n])),
            ],
        )
        .unwrap()
    }

    fn progress(complete_before: i64) -> RecordBatch {
        let md = [
            (keys::STREAM_ID.to_string(), "p.spikes.progress".to_string()),
            (keys::LAYOUT.to_string(), "table".to_string()),
            (SOURCE_STREAM_KEY.to_string(), "p".to_string()),
        ]
        .into();
        let schema = Schema::new_with_metadata(
            vec![Field::new(COMPLETE_BEFORE_SAMPLE, DataType::Int64, false)],
            md,
        );
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(Int64Array::from(vec![complete_before])) as ArrayRef],
        )
        .unwrap()
    }

    fn rows(out: &mut Emitter) -> Vec<RecordBatch> {
        out.batches.drain(..).map(|(_, b)| b).collect()
    }

    fn column<T: Clone + 'static>(b: &RecordBatch, name: &str) -> T {
        b.column(b.schema().index_of(name).unwrap())
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
            .clone()
    }

    #[test]
    fn power_is_the_mean_square_of_the_band_in_uv2() {
        let mut tr = build_with("counts = false");
        let mut out = TransformContext::detached("t");
        for b in batches(&probe_info("p"), &sine(30_000, 100.0), 250) {
            tr.process(&input(0), b, &mut out).unwrap();
        }
        let got = rows(&mut out);
        let n: usize = got.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 50, "1 s in 20 ms bins, all complete before the end");
        let b = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        let p0: Float32Array = column(&b, "power_AP0");
        let p1: Float32Array = column(&b, "power_AP1");
        // A sine of amplitude A has mean square A²/2 = 5000 µV²; the band passes 1 kHz at
        // unit gain once the filter has settled (after the first bins).
        for i in 5..50 {
            assert!(
                (p0.value(i) - 5000.0).abs() < 150.0,
                "bin {i}: {}",
                p0.value(i)
            );
            assert_eq!(p1.value(i), 0.0);
        }
        let start: Int64Array = column(&b, BIN_START_SAMPLE);
        assert_eq!(start.value(1), 600, "20 ms at 30 kHz");
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names[..4],
            ["bin_start_sample", "time_s", "samples", "power_AP0"]
        );
        assert_eq!(names.len(), 3 + AP, "no count columns, no sync channel");
        assert_eq!(b.schema().metadata()[keys::STREAM_ID], "p.bins");
    }

    #[test]
    fn bins_wait_for_their_counts_then_carry_them() {
        let mut tr = build_with("");
        let mut out = TransformContext::detached("t");
        // Spikes may arrive before the data they were found in reached this transform.
        tr.process(
            &input(1),
            spikes(&[(10, 2), (20, 2), (599, 3), (600, 3), (1300, 0)]),
            &mut out,
        )
        .unwrap();
        for b in batches(&probe_info("p"), &sine(1_500, 50.0), 100) {
            tr.process(&input(0), b, &mut out).unwrap();
        }
        assert!(
            rows(&mut out).is_empty(),
            "no progress yet: counts may be incomplete"
        );
        tr.process(&input(2), progress(1_199), &mut out).unwrap();
        let got = rows(&mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].num_rows(),
            1,
            "bin 1 ends at 1200, progress only at 1199"
        );
        tr.process(&input(1), spikes(&[(1_199, 7)]), &mut out)
            .unwrap();
        tr.process(&input(2), progress(1_250), &mut out).unwrap();
        let mut got2 = rows(&mut out);
        assert_eq!(got2[0].num_rows(), 1);
        tr.finish(&mut out).unwrap();
        got2.extend(rows(&mut out));
        let all: Vec<RecordBatch> = got.into_iter().chain(got2).collect();
        let b = arrow::compute::concat_batches(&all[0].schema(), &all).unwrap();
        let start: Int64Array = column(&b, BIN_START_SAMPLE);
        assert_eq!(start.values(), &[0, 600, 1200]);
        let samples: UInt32Array = column(&b, SAMPLES);
        assert_eq!(
            samples.values(),
            &[600, 600, 300],
            "the last bin is partial"
        );
        let c = |name: &str| column::<UInt16Array>(&b, name).values().to_vec();
        assert_eq!(c("count_AP2"), [2, 0, 0]);
        assert_eq!(c("count_AP3"), [1, 1, 0], "599 and 600 fall on either side");
        assert_eq!(c("count_AP7"), [0, 1, 0]);
        assert_eq!(c("count_AP0"), [0, 0, 1]);
        assert!(b.schema().index_of("count_SY0").is_err());
    }

    #[test]
    fn output_does_not_depend_on_chunking() {
        let run = |batch: usize| {
            let mut tr = build_with("bin_ms = 5");
            let mut out = TransformContext::detached("t");
            let data = sine(7_000, 80.0);
            for (k, b) in batches(&probe_info("p"), &data, batch)
                .into_iter()
                .enumerate()
            {
                let end = (k + 1) as i64 * batch as i64;
                tr.process(&input(0), b, &mut out).unwrap();
                tr.process(&input(1), spikes(&[(end - 1, (k % AP) as i32)]), &mut out)
                    .unwrap();
                tr.process(&input(2), progress(end - 3), &mut out).unwrap();
            }
            tr.finish(&mut out).unwrap();
            let got = rows(&mut out);
            arrow::compute::concat_batches(&got[0].schema(), &got).unwrap()
        };
        let (a, b) = (run(1000), run(1000));
        assert_eq!(a, b);
        let c = run(700);
        assert_eq!(a.num_rows(), c.num_rows());
        // Powers identical bin for bin: the filter state is carried across batches.
        for name in ["power_AP0", "samples", "bin_start_sample"] {
            let i = a.schema().index_of(name).unwrap();
            assert_eq!(a.column(i), c.column(i), "{name}");
        }
    }

    #[test]
    fn foreign_tables_and_bad_options_are_named() {
        let mut tr = build_with("");
        let schema = Schema::new_with_metadata(
            vec![Field::new("x", DataType::Int64, false)],
            [
                (keys::STREAM_ID.to_string(), "units".to_string()),
                (keys::LAYOUT.to_string(), "table".to_string()),
            ]
            .into(),
        );
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(Int64Array::from(vec![1i64])) as ArrayRef],
        )
        .unwrap();
        let mut ctx = TransformContext::detached("t");
        let e = tr.process(&input(0), b.clone(), &mut ctx).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("`units`") && e.contains("`probe`"), "{e}");
        // On the progress input the layout fits, but nothing says which probe it belongs to.
        let e = tr.process(&input(2), b, &mut ctx).unwrap_err().to_string();
        assert!(
            e.contains("`det.progress`") && e.contains(SOURCE_STREAM_KEY),
            "{e}"
        );
        let two = ["probe".to_string(), "det".to_string()];
        let e = build(
            &BuildContext {
                id: "bins",
                data_dir: "/tmp".as_ref(),
                inputs: &two,
            },
            toml::Table::new(),
        )
        .err()
        .unwrap();
        assert!(
            e[0].contains("takes 3 input(s)") && e[0].contains("has 2"),
            "{e:?}"
        );
        let e = build(
            &BuildContext {
                id: "bins",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::from_str("bin_ms = 0").unwrap(),
        )
        .err()
        .unwrap();
        assert!(e[0].contains("bins") && e[0].contains("bin_ms"), "{e:?}");
    }
}
