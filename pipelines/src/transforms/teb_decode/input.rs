//! One input of `teb_decode`: which of its streams is the model's, its columns found by name,
//! its rows' times, and its bins ([`crate::teb::bins::Binner`], the rule training uses).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, Float32Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::super::bin_features::BIN_SAMPLES_KEY;
use super::super::traces;
use crate::stream::{keys, parse_rate, Layout, SAMPLE_INDEX, TIME_S};
use crate::teb::bins::{Bin, Binner, Refused};

/// How a stream's rows are timed.
enum Clock {
    /// A `time_s: Float64` column.
    TimeS,
    /// `sample_index / rate` (continuous streams).
    SampleIndex(f64),
}

/// The model's stream on one input, as its current schema gives it.
pub(super) struct Reader {
    schema: SchemaRef,
    columns: Vec<usize>,
    clock: Clock,
    pub binner: Binner,
    /// `binner.refused` already counted.
    pub counted: Refused,
}

fn same_schema(a: &SchemaRef, b: &Schema) -> bool {
    std::ptr::eq(a.as_ref(), b) || **a == *b
}

/// The row period a stream declares (see the module docs of `teb_decode`).
fn row_period(schema: &Schema, layout: Layout) -> Result<Option<f64>, String> {
    let md = schema.metadata();
    let Some(rate) = md.get(keys::SAMPLING_HZ) else {
        return Ok(None);
    };
    let rate = parse_rate(rate).map_err(|e| format!("`{}`: {e}", keys::SAMPLING_HZ))?;
    let samples = match (layout, md.get(BIN_SAMPLES_KEY)) {
        (Layout::Table, Some(b)) => b
            .parse::<u32>()
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| format!("`{BIN_SAMPLES_KEY}` = {b:?} is not a positive integer"))?,
        _ => 1,
    };
    Ok(Some(f64::from(samples) / rate))
}

impl Reader {
    /// `columns` (the model's, by name) of a stream of `schema`; the error says what is missing.
    pub fn new(schema: &SchemaRef, columns: &[String], bin_s: f64) -> Result<Reader, String> {
        let missing = missing_columns(schema, columns);
        if !missing.is_empty() {
            return Err(format!("lacks the model's columns {}", list(&missing)));
        }
        let mut idx = Vec::with_capacity(columns.len());
        for c in columns {
            let i = schema.index_of(c).map_err(|e| e.to_string())?;
            let t = schema.field(i).data_type();
            if !t.is_numeric() {
                return Err(format!("column `{c}` is {t}, not numeric"));
            }
            idx.push(i);
        }
        let layout = Layout::of(schema).unwrap_or(Layout::Table);
        let clock = match layout {
            Layout::Continuous => {
                let rate = schema
                    .metadata()
                    .get(keys::SAMPLING_HZ)
                    .ok_or_else(|| format!("no `{}`", keys::SAMPLING_HZ))
                    .and_then(|r| parse_rate(r).map_err(|e| format!("sampling rate: {e}")))?;
                Clock::SampleIndex(rate)
            }
            _ => Clock::TimeS,
        };
        Ok(Reader {
            schema: schema.clone(),
            columns: idx,
            clock,
            binner: Binner::new(bin_s, row_period(schema, layout)?, columns.len()),
            counted: Refused::default(),
        })
    }

    pub fn fits(&self, schema: &Schema) -> bool {
        same_schema(&self.schema, schema)
    }

    /// The batch's rows into the binner; complete bins appended to `out`.
    pub fn push(&mut self, batch: &RecordBatch, out: &mut Vec<Bin>) -> Result<(), String> {
        let times: Vec<f64> = match self.clock {
            Clock::TimeS => traces::time_s(batch, "")
                .map_err(|_| format!("`{TIME_S}` must be a non-null Float64 column"))?
                .values()
                .to_vec(),
            Clock::SampleIndex(rate) => {
                let s = batch
                    .column_by_name(SAMPLE_INDEX)
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .filter(|a| a.null_count() == 0)
                    .ok_or_else(|| format!("`{SAMPLE_INDEX}` must be a non-null Int64 column"))?;
                s.values().iter().map(|&i| i as f64 / rate).collect()
            }
        };
        let mut values: Vec<Arc<Float32Array>> = Vec::with_capacity(self.columns.len());
        for &i in &self.columns {
            let c = cast(batch.column(i), &DataType::Float32)
                .map_err(|e| format!("`{}` as Float32: {e}", self.schema.field(i).name()))?;
            let a = c
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| format!("`{}` as Float32", self.schema.field(i).name()))?;
            // Nulls are missing values: NaN, which the binner refuses and counts.
            values.push(Arc::new(if a.null_count() == 0 {
                a.clone()
            } else {
                Float32Array::from_iter_values(a.iter().map(|v| v.unwrap_or(f32::NAN)))
            }));
        }
        let slices: Vec<&[f32]> = values.iter().map(|a| a.values().as_ref()).collect();
        self.binner.push(&times, &slices, out);
        Ok(())
    }
}

pub(super) fn missing_columns<'a>(schema: &Schema, columns: &'a [String]) -> Vec<&'a str> {
    columns
        .iter()
        .filter(|c| schema.index_of(c).is_err())
        .map(String::as_str)
        .collect()
}

/// `a`, `b`, `c` (the first 5, then how many more).
pub(super) fn list(names: &[&str]) -> String {
    let mut s = names
        .iter()
        .take(5)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 5 {
        s += &format!(" and {} more", names.len() - 5);
    }
    s
}

/// Whether `sid` is passed by for the first time (a rig's 30 kHz probe on the target input comes
/// with every batch: no allocation once it is known).
fn first_pass_by(passed_by: &mut HashSet<String>, sid: &str) -> bool {
    !passed_by.contains(sid) && passed_by.insert(sid.into())
}

/// One of the two inputs, by position.
pub(super) struct Side {
    /// The input as configured (for errors).
    pub input: String,
    /// `source` or `target`.
    pub role: &'static str,
    /// The model's stream id and columns for this side.
    pub model_stream: String,
    pub columns: Vec<String>,
    /// The stream decoded on this input.
    pub locked: Option<String>,
    pub reader: Option<Reader>,
    /// Streams passed by, each said once.
    pub passed_by: HashSet<String>,
    pub bins: Vec<Bin>,
}

/// What to do with a batch of stream `sid` on a side.
pub(super) enum Take {
    /// Decode it.
    Yes,
    /// It is the model's stream by id, where another stream was being decoded by its columns:
    /// decoding restarts on it.
    Switch,
    /// Not this side's stream.
    No,
}

impl Side {
    pub fn new(input: &str, role: &'static str, model_stream: &str, columns: &[String]) -> Self {
        Side {
            input: input.into(),
            role,
            model_stream: model_stream.into(),
            columns: columns.to_vec(),
            locked: None,
            reader: None,
            passed_by: HashSet::new(),
            bins: Vec::new(),
        }
    }

    /// The stream rule of the module docs. An `Err` is a batch of the model's own stream
    /// without the model's columns.
    pub fn take(&mut self, sid: &str, schema: &Schema, component: &str) -> Result<Take, String> {
        let exact = sid == self.model_stream;
        match self.locked.as_deref() {
            Some(l) if l == sid => return Ok(Take::Yes),
            Some(l) if exact => {
                tracing::warn!(component, input = %self.input, from = l, to = sid, "the model's {} stream appeared: decoding restarts on it", self.role);
                self.locked = Some(sid.into());
                return Ok(Take::Switch);
            }
            Some(l) => {
                if first_pass_by(&mut self.passed_by, sid) {
                    tracing::info!(component, input = %self.input, stream = sid, decoding = l, "stream passed by: another is decoded on this input");
                }
                return Ok(Take::No);
            }
            None => {}
        }
        let missing = missing_columns(schema, &self.columns);
        if !missing.is_empty() {
            if exact {
                return Err(format!(
                    "lacks the model's {} columns {}",
                    self.role,
                    list(&missing)
                ));
            }
            if first_pass_by(&mut self.passed_by, sid) {
                tracing::info!(component, input = %self.input, stream = sid, model_stream = %self.model_stream, "stream passed by: it is not the model's {} stream and lacks its columns {}", self.role, list(&missing));
            }
            return Ok(Take::No);
        }
        if !exact {
            tracing::info!(component, input = %self.input, stream = sid, model_stream = %self.model_stream, "decoding this stream as the model's {}: it has the model's columns", self.role);
        }
        self.locked = Some(sid.into());
        Ok(Take::Yes)
    }
}
