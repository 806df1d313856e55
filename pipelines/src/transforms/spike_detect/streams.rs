//! One input stream inside `spike_detect`: the checks its batches pass on the transform's own
//! thread ([`StreamCheck`]), the chain and the Arrow output on its worker ([`StreamState`]), and
//! the output schemas.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
};
use arrow::datatypes::{DataType, Field, Int16Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use kernels::chain::{Detection, DetectionChain};
use kernels::Backend;

use super::backend::Preference;
use super::options::{chain_config, Options};
use super::{
    AMPLITUDE_UV, CHANNEL, COMPLETE_BEFORE_SAMPLE, PARAMS_KEY, PROGRESS_PORT, SOURCE_STREAM_KEY,
    STREAM_SUFFIX, THRESHOLD_UV,
};
use crate::batch::Batch;
use crate::component::{ComponentError, Emitter};
use crate::stream::{
    keys, sample_span, span_after, ContinuousInfo, Layout, SampleSpan, SAMPLE_INDEX, TIME_S,
};

/// What `spike_detect`'s own thread checks of a stream's batches before handing them to its
/// worker: the schema, contiguous sample indices, and the channel columns.
pub(super) struct StreamCheck {
    schema: SchemaRef,
    id: String,
    n_channels: usize,
    /// The sample expected next; `None` before the first batch.
    next_sample: Option<i64>,
    gaps: crate::gap_log::GapLog,
}

impl StreamCheck {
    pub(super) fn of(s: &StreamState) -> Self {
        StreamCheck {
            schema: s.input_schema.clone(),
            id: s.input_id.clone(),
            n_channels: s.n_channels,
            next_sample: None,
            gaps: Default::default(),
        }
    }

    pub(super) fn accepts_schema(&self, schema: &SchemaRef) -> bool {
        Arc::ptr_eq(&self.schema, schema) || *self.schema == **schema
    }

    /// The batch's first sample, once it is known to continue the stream with well-formed
    /// columns (it is then expected to be detected). Samples as a source read them were
    /// checked against the schema when the batch was made, and are consecutive.
    pub(super) fn check(&mut self, batch: &Batch) -> Result<i64, ComponentError> {
        let first = match batch.sample_rows() {
            Some(rows) => {
                let end = rows.first_index + batch.num_rows() as i64;
                self.note_span(span_after(rows.first_index, end, self.next_sample))?
            }
            None => {
                let columns = batch.record_batch();
                let first = self.note_span(sample_span(columns, self.next_sample))?;
                self.check_columns(columns)?;
                first
            }
        };
        self.next_sample = Some(first + batch.num_rows() as i64);
        Ok(first)
    }

    fn err(&self, msg: String) -> ComponentError {
        ComponentError::Other(format!("stream `{}`: {msg}", self.id))
    }

    /// The batch's first sample index, once its span is known to continue the stream.
    fn note_span(&mut self, span: Result<SampleSpan, String>) -> Result<i64, ComponentError> {
        let span = span.map_err(|why| self.err(format!("{why}; dropped")))?;
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
pub(super) struct StreamState {
    input_schema: SchemaRef,
    input_id: String,
    pub(super) sampling_hz: f64,
    n_channels: usize,
    pub(super) chain: Box<dyn DetectionChain>,
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
    pub(super) fn new(
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
    pub(super) fn process(
        &mut self,
        batch: &Batch,
        first: i64,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.detections.clear();
        let done = match batch.sample_rows() {
            // Sample-major, as the chain takes them: the columns are never built.
            Some(rows) => self.chain.process(first, rows.values, &mut self.detections),
            None => {
                // The chain reads the Int16 columns in place (the CPU chain converts and
                // transposes them in one pass; a GPU chain transposes them into `raw` first).
                // The columns are looked up once here: the chain asks for each several times
                // per batch.
                let columns: Vec<&[i16]> = batch
                    .record_batch()
                    .columns()
                    .iter()
                    .skip(1)
                    .map(|c| {
                        c.as_primitive_opt::<Int16Type>()
                            .map_or(&[][..], |a| a.values())
                    })
                    .collect();
                self.chain.process_columns(
                    first,
                    &columns.as_slice(),
                    &mut self.raw,
                    &mut self.detections,
                )
            }
        };
        done.map_err(|e| self.err(format!("detection failed at sample {first}: {e}")))?;
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

    pub(super) fn finish(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
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
