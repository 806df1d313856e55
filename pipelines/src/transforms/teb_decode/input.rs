//! One input of `teb_decode`: which of its streams is the model's, its columns found by name,
//! its rows' times, and its bins ([`crate::teb::bins::Binner`], the rule training uses).

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Schema, SchemaRef, UInt16Type};
use arrow::record_batch::RecordBatch;

use super::super::traces;
use crate::stream::{keys, parse_rate, Layout, SAMPLE_INDEX, TIME_S};
use crate::teb::bins::{row_period, Bin, Binner, Refused};

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
    /// Each model column of the last batch as f32, reused.
    scratch: Vec<Vec<f32>>,
}

fn same_schema(a: &SchemaRef, b: &Schema) -> bool {
    std::ptr::eq(a.as_ref(), b) || **a == *b
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
            binner: Binner::new(bin_s, row_period(schema)?, columns.len()),
            counted: Refused::default(),
            scratch: Vec::new(),
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
        self.scratch.resize_with(self.columns.len(), Vec::new);
        for (&i, buf) in self.columns.iter().zip(self.scratch.iter_mut()) {
            as_f32(batch.column(i), buf)
                .map_err(|e| format!("`{}` as Float32: {e}", self.schema.field(i).name()))?;
        }
        let slices: Vec<&[f32]> = self.scratch.iter().map(Vec::as_slice).collect();
        self.binner.push(&times, &slices, out);
        Ok(())
    }
}

/// `column` as f32 into `out` (reused: a 384-column source row costs no allocation per
/// column). Nulls are missing values: NaN, which the binner refuses and counts. The common
/// types are read directly; others go through Arrow's cast.
fn as_f32(column: &ArrayRef, out: &mut Vec<f32>) -> Result<(), arrow::error::ArrowError> {
    out.clear();
    let nulls = column.null_count() > 0;
    let valid = |r: usize| !nulls || column.is_valid(r);
    if let Some(a) = column.as_primitive_opt::<UInt16Type>() {
        out.extend(a.values().iter().enumerate().map(|(r, v)| {
            if valid(r) {
                f32::from(*v)
            } else {
                f32::NAN
            }
        }));
    } else if let Some(a) = column.as_primitive_opt::<Float32Type>() {
        out.extend(
            a.values()
                .iter()
                .enumerate()
                .map(|(r, v)| if valid(r) { *v } else { f32::NAN }),
        );
    } else {
        let c = cast(column, &DataType::Float32)?;
        let a = c.as_primitive::<Float32Type>();
        out.extend(a.iter().map(|v| v.unwrap_or(f32::NAN)));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, UInt16Array};

    use super::*;

    #[test]
    fn columns_of_every_numeric_type_read_as_f32_with_nulls_as_nan() {
        let mut out = vec![9.0; 7];
        let counts: ArrayRef = Arc::new(UInt16Array::from(vec![Some(3), None, Some(65535)]));
        as_f32(&counts, &mut out).unwrap();
        assert_eq!(out[0], 3.0);
        assert!(out[1].is_nan());
        assert_eq!(out[2], 65535.0);
        assert_eq!(out.len(), 3, "the buffer is refilled, not appended to");
        let wide: ArrayRef = Arc::new(Float64Array::from(vec![0.5, -2.25]));
        as_f32(&wide, &mut out).unwrap();
        assert_eq!(out, [0.5, -2.25]);
    }
}
