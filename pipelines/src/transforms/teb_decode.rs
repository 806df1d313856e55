//! `type = "teb_decode"`: live decoding with a transfer-entropy-bottleneck model (docs/teb.md):
//! per bin, the prediction of the target's next bin from its own past and the source's, and the
//! rate: how much information the model took from the source (an estimate of the transfer
//! entropy, in nats per bin, and smoothed in bits per second).
//!
//! ```toml
//! [transforms.decode]
//! type = "teb_decode"
//! inputs = ["features", "rig"]          # [source, target], told apart by position
//! model = "models/speed"                # a model directory: model.json + weights.safetensors
//! backend = "auto"                      # auto | hardware | gpu | cpu (the one backend rule)
//! emit_to = "udp://127.0.0.1:9760"      # optional, or unix:///run/neurod/decode.sock
//! rate_smoothing_s = 1.0                # window of rate_bits_per_s
//! ```
//!
//! **Inputs**, by position: the source, then the target; tables (with `time_s: Float64`) or
//! continuous streams (timed by `sample_index / rate`). On each input the decoded stream is the
//! one whose id is the model's (`model.json` `source.stream_id` / `target.stream_id`); while
//! that id has not appeared, the first stream that has all the model's columns (then, should
//! the model's own id appear, decoding restarts on it). Other streams on the input are passed by
//! (said once in the log). Columns are found by name (`model.json` `columns`), any numeric type;
//! the model's own stream without them is an error naming the input and the columns missing. A
//! batch that is neither a table nor continuous is an error naming the input.
//!
//! **Bins**: each input is binned by [`crate::teb::bins::Binner`], the rule training uses
//! (`bin_s` from the model; bin k is `[k·bin_s, (k+1)·bin_s)`, the mean of its rows). A bin
//! closes with the row that reaches its end when the stream declares its row period: continuous
//! streams and tables with `neurod.sampling_hz` (1/rate), `bin_features` tables
//! (`neurod.bin_samples`/rate); other tables close a bin with the next bin's first row. When both
//! inputs have bin k, one model step gives the prediction of bin k+1 and this step's rate.
//! A bin missing from either input (neither filled in nor interpolated) is a **gap**: the
//! recurrent state is reset before the next bin both have, counted in `neurod_teb_gaps_total`
//! and `neurod_teb_gap_bins_total`. An input's bins wait at most 10 s of data for the other's.
//!
//! **Output** (default port, layout `table`, stream id `<target stream id>.<component id>`), one
//! row per step, in bin order:
//! - `time_s: Float64`: start of the predicted bin, `bin_index · bin_s`;
//! - `bin_index: Int64`: the predicted bin (k+1 for the step at the close of bin k);
//! - `predicted_<col>: Float32` per target column: the full model's prediction (raw units);
//! - `target_only_<col>: Float32`: the target-only model's prediction of the same bin;
//! - `actual_<col>: Float32` (nullable): the target's value of that bin; a row leaves once the
//!   target has passed its bin, null when the target never had it (a gap, the end);
//! - `rate_nats: Float32`: KL(q ‖ p) of this step, nats per bin;
//! - `rate_bits_per_s: Float32`: the mean `rate_nats` over the bins of the last
//!   `rate_smoothing_s` of data, / `bin_s` / ln 2.
//!
//! Schema metadata: `neurod.teb.model` (the `model` option), `neurod.teb.source_stream`,
//! `neurod.teb.target_stream`, `neurod.teb.bin_s`.
//!
//! **`emit_to`**: per step, before the row, one datagram of `48 + 4·n_targets` bytes, little
//! endian, to a UDP address or a Unix datagram socket (`examples/teb_udp_reader.py` reads it):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | 4 bytes | magic `NTEB` |
//! | 4 | u16 | version, 1 |
//! | 6 | u16 | flags: bit 0 the state was reset before this step (first bin, gap, new recording); bit 1 first step of a reloaded model |
//! | 8 | u32 | n_targets |
//! | 12 | u32 | model_generation: 0 for the model loaded at start, +1 per reload |
//! | 16 | u64 | sequence: from 0, +1 per record, sent or not (a jump: records lost) |
//! | 24 | i64 | bin_index (of the predicted bin, as in the rows) |
//! | 32 | f64 | time_s (as in the rows) |
//! | 40 | f32 | rate_nats |
//! | 44 | f32 | rate_bits_per_s |
//! | 48 | f32 × n_targets | predicted values, in model.json's target column order |
//!
//! Sending never blocks; a datagram that cannot go (no reader, full buffer) is counted in
//! `neurod_teb_records_total{outcome="failed"}` and the stream goes on.
//!
//! **Reload**: the model files are polled once a second (mtime, size, inode). Once they have
//! changed and stayed so for one poll, a thread loads the new model, checks it reads the same
//! columns (names, order) and `bin_s` as the running one, and warms its state on the bins of the
//! current run (at most the last 30 s); the data path steps it through the bins decoded
//! meanwhile and swaps: no bin is missed, and the next record has flag bit 1. A model that fails
//! to load or does not fit is logged, counted (`neurod_teb_model_reloads_total{outcome="failed"}`,
//! and as an error of the component) and not tried again until its files change; the running
//! model goes on.
//!
//! **Backend**: `backend` is the rule of every kernel-backed transform ([`super::backend`]), as
//! `kernels::teb::TebDecoder` applies it when the model is loaded (at start and at each reload):
//! `auto` never takes a software adapter, and with a hardware one times both on the model's own
//! size and keeps the faster; `gpu` without an adapter is a configuration error. The choice is
//! logged and exported as `neurod_kernel_backend{component_id}` (with `auto`'s figures in
//! `neurod_kernel_compute_seconds_per_data_second`).
//!
//! **Metrics** (in [`crate::metrics::shared_registry`]):
//! `neurod_teb_decode_latency_seconds{component_id}` (histogram: from the bin being complete on
//! both inputs, i.e. the later input's bin close, to the step done and its record sent),
//! `neurod_transfer_entropy_bits_per_second{component_id,model,source,target}` (the smoothed
//! rate), `neurod_teb_prediction_squared_error{component_id,column}` (mean over the rows of the
//! last 30 s with an actual value), `neurod_teb_gaps_total`, `neurod_teb_gap_bins_total`,
//! `neurod_teb_model_reloads_total{outcome}`, `neurod_teb_records_total{outcome}`,
//! `neurod_teb_refused_rows_total{input,reason}` (rows the binner refused: `late`, `not_finite`).

mod core;
mod input;
pub mod record;
mod reload;
mod series;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use kernels::backend::{Figure, Verdict};
use kernels::teb::{Choice, TebDecoder, TebModel};
use serde::Deserialize;

use self::core::{Core, Row};
use self::input::{Reader, Side, Take};
use self::reload::{Fit, Reloader};
use self::series::Handles;
use super::backend::{self, Preference};
use crate::component::{
    parse_options, BuildContext, ComponentError, Input, PortSpec, Transform, TransformContext,
};
use crate::stream::{self, keys, Layout, TIME_S};

pub const TYPE: &str = "teb_decode";
pub const BIN_INDEX: &str = "bin_index";
pub const RATE_NATS: &str = "rate_nats";
pub const RATE_BITS_PER_S: &str = "rate_bits_per_s";
pub const PREDICTED_PREFIX: &str = "predicted_";
pub const TARGET_ONLY_PREFIX: &str = "target_only_";
pub const ACTUAL_PREFIX: &str = "actual_";
pub const MODEL_KEY: &str = "neurod.teb.model";
pub const SOURCE_STREAM_KEY: &str = "neurod.teb.source_stream";
pub const TARGET_STREAM_KEY: &str = "neurod.teb.target_stream";
pub const BIN_S_KEY: &str = "neurod.teb.bin_s";

fn default_rate_smoothing_s() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    model: PathBuf,
    #[serde(default)]
    backend: Preference,
    emit_to: Option<String>,
    #[serde(default = "default_rate_smoothing_s")]
    rate_smoothing_s: f64,
}

pub struct TebDecode {
    id: String,
    sides: [Side; 2],
    core: Core,
    reloader: Reloader,
    /// The output schema, for the (source, target) streams it was made for.
    schema: Option<(String, String, SchemaRef)>,
    model_label: String,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    Ok(Box::new(build_decode(ctx, options)?))
}

/// [`build`] without the box (tests drive reloads by hand).
pub fn build_decode(ctx: &BuildContext, options: toml::Table) -> Result<TebDecode, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    let s = o.rate_smoothing_s;
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        errors.push(format!(
            "{prefix}: `rate_smoothing_s` = {s} must be above 0 and at most 3600"
        ));
    }
    if ctx.inputs.len() != 2 {
        errors.push(format!(
            "{prefix}: takes 2 inputs, the source then the target, and has {}",
            ctx.inputs.len()
        ));
    }
    let sender = match o.emit_to.as_deref().map(record::Target::parse) {
        None => None,
        Some(Err(e)) => {
            errors.push(format!("{prefix}: `emit_to` {e}"));
            None
        }
        Some(Ok(t)) => match record::Sender::open(&t) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("{prefix}: `emit_to`: cannot open a socket: {e}"));
                None
            }
        },
    };
    // The files' stamps before reading them: a change while loading is seen at the first poll.
    let reloader = Reloader::new(&o.model, o.backend);
    let model = if o.model.is_dir() {
        TebModel::load(&o.model)
            .map_err(|e| errors.push(format!("{prefix}: `model`: {e}")))
            .ok()
    } else {
        errors.push(format!(
            "{prefix}: `model` = {} is not a directory (a model directory holds model.json and weights.safetensors)",
            o.model.display()
        ));
        None
    };
    let decoder = model.as_ref().and_then(|m| {
        TebDecoder::new(o.backend, m)
            .map_err(|e| errors.push(format!("{prefix}: `backend`: {e}")))
            .ok()
    });
    let (Some(model), Some((decoder, choice)), true) = (model, decoder, errors.is_empty()) else {
        return Err(errors);
    };
    report_choice(ctx.id, &model, &choice);
    let input = |i: usize| ctx.inputs.get(i).map_or("", String::as_str);
    let c = &model.config;
    let sides = [
        Side::new(input(0), "source", &c.source.stream_id, &c.source.columns),
        Side::new(input(1), "target", &c.target.stream_id, &c.target.columns),
    ];
    let model_label = o.model.display().to_string();
    let handles = Handles::new(ctx.id, [input(0), input(1)]);
    Ok(TebDecode {
        id: ctx.id.into(),
        sides,
        core: Core::new(
            model,
            decoder,
            model_label.clone(),
            o.rate_smoothing_s,
            sender,
            handles,
        ),
        reloader,
        schema: None,
        model_label,
    })
}

impl TebDecode {
    /// A finished reload swapped in, or a failed one reported; a load started when the files
    /// have changed.
    fn poll_model(&mut self, ctx: &TransformContext) {
        let core = &self.core;
        let outcome = self.reloader.poll(
            Instant::now(),
            || Fit::of(core.model()),
            || core.warm_bins(),
        );
        if let Some(outcome) = outcome {
            self.apply(outcome, ctx);
        }
    }

    fn apply(&mut self, outcome: reload::Outcome, ctx: &TransformContext) {
        let dir = self.reloader.dir().display().to_string();
        match outcome.and_then(|ready| self.core.swap(ready)) {
            Ok(choice) => {
                self.core.handles.reload_ok.inc();
                report_choice(&self.id, self.core.model(), &choice);
                tracing::info!(component = %self.id, model = %dir, generation = self.core.generation, "model reloaded");
            }
            Err(e) => {
                self.core.handles.reload_failed.inc();
                let msg = format!("model {dir} not reloaded, the running model goes on: {e}");
                tracing::error!(component = %self.id, "{msg}");
                ctx.metrics.error("model_reload", "reloading", msg);
            }
        }
    }

    /// Blocks until a reload in flight has finished and applies it (tests).
    #[cfg(test)]
    fn wait_reload(&mut self, ctx: &TransformContext) -> bool {
        match self.reloader.wait() {
            Some(o) => {
                self.apply(o, ctx);
                true
            }
            None => false,
        }
    }

    fn bad(side: &Side, sid: &str, why: impl std::fmt::Display) -> ComponentError {
        ComponentError::Other(format!("input `{}`, stream `{sid}`: {why}", side.input))
    }

    /// One input batch into its side's bins.
    fn read(&mut self, i: usize, batch: &RecordBatch) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = stream::stream_id_of(&schema).unwrap_or("unnamed");
        let Some(side) = self.sides.get_mut(i) else {
            return Err(ComponentError::Other(format!(
                "input {i}, stream `{sid}`: teb_decode takes 2 inputs, the source then the target"
            )));
        };
        match Layout::of(&schema) {
            Some(Layout::Table | Layout::Continuous) => {}
            other => {
                let what = other.map_or("an untyped (no `neurod.layout`)", |l| l.as_str());
                return Err(Self::bad(
                    side,
                    sid,
                    format!("{what} stream; teb_decode reads tables and continuous streams"),
                ));
            }
        }
        let target = i == 1;
        let take = side
            .take(sid, &schema, &self.id)
            .map_err(|e| Self::bad(side, sid, e))?;
        let restart = match take {
            Take::No => return Ok(()),
            Take::Switch => true,
            // A new schema of the same stream: a new recording.
            Take::Yes => side.reader.as_ref().is_some_and(|r| !r.fits(&schema)),
        };
        if restart {
            if let Some(bin) = side.reader.as_mut().and_then(|r| r.binner.finish()) {
                add(&mut self.core, target, bin.index, bin.values);
                self.core.advance(false)?;
            }
            tracing::warn!(component = %self.id, input = %side.input, stream = sid, "new stream or schema on this input: decoding restarts (the state is reset)");
            self.core.restart(target);
            side.reader = None;
        }
        if side.reader.is_none() {
            let reader = Reader::new(&schema, &side.columns, self.core.bin_s())
                .map_err(|e| Self::bad(side, sid, e))?;
            side.reader = Some(reader);
            if target {
                self.core.target_stream = sid.into();
            } else {
                self.core.source_stream = sid.into();
            }
        }
        let Some(reader) = side.reader.as_mut() else {
            return Ok(());
        };
        let mut bins = std::mem::take(&mut side.bins);
        let pushed = reader.push(batch, &mut bins);
        let refused = reader.binner.refused;
        let counted = std::mem::replace(&mut reader.counted, refused);
        let [late, not_finite] = &self.core.handles.refused[i];
        late.inc_by(refused.late.saturating_sub(counted.late));
        not_finite.inc_by(refused.not_finite.saturating_sub(counted.not_finite));
        for b in bins.drain(..) {
            add(&mut self.core, target, b.index, b.values);
        }
        side.bins = bins;
        pushed.map_err(|e| Self::bad(side, sid, e))
    }

    /// The output schema for the current target stream.
    fn schema(&mut self) -> SchemaRef {
        let (source, target) = (&self.core.source_stream, &self.core.target_stream);
        if let Some((s, t, schema)) = &self.schema {
            if s == source && t == target {
                return schema.clone();
            }
        }
        let model = self.core.model();
        let cols = &model.config.target.columns;
        let f32s = |prefix: &'static str, nullable: bool| {
            cols.iter()
                .map(move |c| Field::new(format!("{prefix}{c}"), DataType::Float32, nullable))
        };
        let mut fields = vec![
            Field::new(TIME_S, DataType::Float64, false),
            Field::new(BIN_INDEX, DataType::Int64, false),
        ];
        fields.extend(f32s(PREDICTED_PREFIX, false));
        fields.extend(f32s(TARGET_ONLY_PREFIX, false));
        fields.extend(f32s(ACTUAL_PREFIX, true));
        fields.push(Field::new(RATE_NATS, DataType::Float32, false));
        fields.push(Field::new(RATE_BITS_PER_S, DataType::Float32, false));
        let md: HashMap<String, String> = [
            (keys::STREAM_ID, format!("{target}.{}", self.id)),
            (keys::LAYOUT, Layout::Table.as_str().to_string()),
            (keys::STREAM_KIND, TYPE.to_string()),
            (MODEL_KEY, self.model_label.clone()),
            (SOURCE_STREAM_KEY, source.clone()),
            (TARGET_STREAM_KEY, target.clone()),
            (BIN_S_KEY, model.config.bin_s.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, md));
        self.schema = Some((source.clone(), target.clone(), schema.clone()));
        schema
    }

    /// The rows released so far, as one batch.
    fn emit_rows(&mut self, ctx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.core.rows.is_empty() {
            return Ok(());
        }
        let schema = self.schema();
        let rows = std::mem::take(&mut self.core.rows);
        let batch = rows_batch(schema, &rows, self.core.bin_s())
            .map_err(|e| ComponentError::arrow("building the decoded rows", e))?;
        ctx.emit(batch);
        Ok(())
    }
}

/// Reports the backend a decoder runs on, with the trial's figures when `auto` measured them
/// (as seconds of compute per second of data, like every kernel-backed transform).
fn report_choice(id: &str, model: &TebModel, choice: &Choice) {
    if choice.measured.is_empty() {
        backend::report(id, choice.backend, &choice.reason);
        return;
    }
    let steps = kernels::teb::decoder::TRIAL_STEPS as f64;
    let verdict = Verdict {
        chosen: choice.backend,
        figures: choice
            .measured
            .iter()
            .map(|c| Figure {
                backend: c.backend,
                compute_s: c.seconds_per_step * steps,
                data_s: model.config.bin_s * steps,
            })
            .collect(),
        reason: choice.reason.clone(),
    };
    backend::report_verdict(id, &model.config.source.stream_id, &verdict);
}

fn add(core: &mut Core, target: bool, index: i64, values: Vec<f32>) {
    let now = Instant::now();
    if target {
        core.y.add(index, values, now);
        core.release(false);
    } else {
        core.x.add(index, values, now);
    }
}

fn rows_batch(
    schema: SchemaRef,
    rows: &[Row],
    bin_s: f64,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let dy = rows.first().map_or(0, |r| r.prediction.len());
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.bin as f64 * bin_s),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.bin))),
    ];
    let column = |f: &dyn Fn(&Row) -> Option<f32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float32Array>())
    };
    for c in 0..dy {
        columns.push(column(&|r| r.prediction.get(c).copied()));
    }
    for c in 0..dy {
        columns.push(column(&|r| r.target_only.get(c).copied()));
    }
    for c in 0..dy {
        columns.push(column(&|r| {
            r.actual.as_ref().and_then(|a| a.get(c).copied())
        }));
    }
    columns.push(column(&|r| Some(r.rate_nats)));
    columns.push(column(&|r| Some(r.rate_bits_per_s)));
    RecordBatch::try_new(schema, columns)
}

impl Transform for TebDecode {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Table, Layout::Continuous]
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Table])]
    }

    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        ctx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.poll_model(ctx);
        let read = self.read(input.index, &batch);
        // Whatever the batch was, the bins already complete are decoded and the rows go.
        let stepped = self.core.advance(false);
        let emitted = self.emit_rows(ctx);
        read.and(stepped).and(emitted)
    }

    fn finish(&mut self, ctx: &mut TransformContext) -> Result<(), ComponentError> {
        for (i, side) in self.sides.iter_mut().enumerate() {
            if let Some(b) = side.reader.as_mut().and_then(|r| r.binner.finish()) {
                add(&mut self.core, i == 1, b.index, b.values);
            }
        }
        let r = self.core.finish();
        let emitted = self.emit_rows(ctx);
        r.and(emitted)
    }
}

#[cfg(test)]
mod tests;
