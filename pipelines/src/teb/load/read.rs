//! Reading an [`Input`]'s selected columns file by file, batch by batch (projection: nothing
//! else is decoded), into a [`Binner`]: memory holds one batch and the bins, never the rows.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use kernels::teb::model::StreamColumns;

use super::input::{parse_traces_column, Input, Shape};
use super::{Binned, LoadError};
use crate::storage::open_parquet_columns;
use crate::stream::{keys, parse_rate, FRAME_INDEX, ROI, SAMPLE_INDEX, TIME_S};
use crate::teb::bins::{Bin, Binner};

/// Past this, the bins of one input would not fit a lab PC's memory: a larger bin is asked for.
const MAX_BINNED_BYTES: f64 = 4.0 * (1u64 << 30) as f64;

/// Pivoted trace rows handed to the binner at a time.
const PIVOT_ROWS: usize = 4096;

/// The binner and the bins it gave out, flattened as they come.
struct Collect {
    binner: Binner,
    index: Vec<i64>,
    values: Vec<f32>,
    out: Vec<Bin>,
    rows: u64,
}

impl Collect {
    fn push(&mut self, time_s: &[f64], columns: &[Vec<f32>]) {
        let cols: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
        self.binner.push(time_s, &cols, &mut self.out);
        self.rows += time_s.len() as u64;
        self.drain();
    }
    fn drain(&mut self) {
        for b in self.out.drain(..) {
            self.index.push(b.index);
            self.values.extend_from_slice(&b.values);
        }
    }
    fn finish(mut self, stream: StreamColumns) -> Binned {
        self.out.extend(self.binner.finish());
        self.drain();
        Binned {
            stream,
            bin_s: self.binner.bin_s(),
            index: self.index,
            values: self.values,
            rows: self.rows,
            refused: self.binner.refused,
        }
    }
}

/// A numeric column as f32, nulls as NaN (which the binner refuses and counts).
fn to_f32(col: &ArrayRef) -> Result<Vec<f32>, String> {
    let c = cast(col, &DataType::Float32).map_err(|e| e.to_string())?;
    let a = c.as_primitive::<Float32Type>();
    Ok(if a.null_count() == 0 {
        a.values().to_vec()
    } else {
        a.iter().map(|v| v.unwrap_or(f32::NAN)).collect()
    })
}

fn to_f64(col: &ArrayRef) -> Result<Vec<f64>, String> {
    let c = cast(col, &DataType::Float64).map_err(|e| e.to_string())?;
    let a = c.as_primitive::<Float64Type>();
    Ok(if a.null_count() == 0 {
        a.values().to_vec()
    } else {
        a.iter().map(|v| v.unwrap_or(f64::NAN)).collect()
    })
}

/// Bins `columns` of `input` on bins of `bin_s`.
pub(super) fn bin(input: &Input, columns: &[String], bin_s: f64) -> Result<Binned, LoadError> {
    let err = |m: String| LoadError::new(&input.name, m);
    if let (Some(a), Some(b)) = (input.first_time_s, input.last_time_s) {
        let bytes = ((b - a) / bin_s + 1.0) * columns.len() as f64 * 4.0;
        if bytes > MAX_BINNED_BYTES {
            return Err(err(format!(
                "{:.0} s in bins of {} ms × {} columns would take {:.1} GiB: give a larger \
                 --bin-ms or fewer columns",
                b - a,
                bin_s * 1e3,
                columns.len(),
                bytes / (1u64 << 30) as f64
            )));
        }
    }
    let mut collect = Collect {
        binner: Binner::new(bin_s, input.row_s, columns.len()),
        index: Vec::new(),
        values: Vec::new(),
        out: Vec::new(),
        rows: 0,
    };
    match &input.shape {
        Shape::Table => read_rows(input, columns, &mut collect, Timing::Column)?,
        Shape::Continuous { rate } => {
            read_rows(input, columns, &mut collect, Timing::Index(*rate))?
        }
        Shape::LongTraces { .. } => read_traces(input, columns, &mut collect)?,
    }
    let stream = StreamColumns {
        stream_id: input.stream_id.clone(),
        columns: columns.to_vec(),
    };
    Ok(collect.finish(stream))
}

#[derive(Clone, Copy)]
enum Timing {
    Column,
    /// `sample_index / rate` (the file's own rate when it states one).
    Index(f64),
}

fn check_numeric(batch: &RecordBatch, columns: &[String], file: &str) -> Result<(), String> {
    for c in columns {
        if let Ok(f) = batch.schema().field_with_name(c) {
            if !f.data_type().is_numeric() {
                return Err(format!(
                    "{file}: column `{c}` is {}, not numeric",
                    f.data_type()
                ));
            }
        }
    }
    Ok(())
}

/// Column `name` of a batch read with a projection.
fn column<'a>(batch: &'a RecordBatch, name: &str, file: &str) -> Result<&'a ArrayRef, String> {
    batch
        .schema()
        .index_of(name)
        .map(|i| batch.column(i))
        .map_err(|_| format!("{file}: no column `{name}`"))
}

/// One row per time: tables and continuous streams.
fn read_rows(
    input: &Input,
    columns: &[String],
    collect: &mut Collect,
    timing: Timing,
) -> Result<(), LoadError> {
    let err = |m: String| LoadError::new(&input.name, m);
    let time_column = match timing {
        Timing::Column => TIME_S,
        Timing::Index(_) => SAMPLE_INDEX,
    };
    let mut names = vec![time_column];
    names.extend(columns.iter().map(String::as_str));
    for path in &input.files {
        let file = path.display().to_string();
        let (schema, reader) = open_parquet_columns(path, &names).map_err(err)?;
        let rate = match timing {
            Timing::Column => None,
            Timing::Index(rate) => Some(
                schema
                    .metadata()
                    .get(keys::SAMPLING_HZ)
                    .and_then(|t| parse_rate(t).ok())
                    .unwrap_or(rate),
            ),
        };
        for batch in reader {
            let batch = batch.map_err(|e| err(format!("{file}: reading: {e}")))?;
            check_numeric(&batch, columns, &file).map_err(err)?;
            // A projection keeps the file's column order: columns are found by name.
            let time_col = column(&batch, time_column, &file).map_err(err)?;
            let time = match rate {
                None => to_f64(time_col).map_err(|e| err(format!("{file}: `{TIME_S}`: {e}")))?,
                Some(rate) => time_col
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| err(format!("{file}: `{SAMPLE_INDEX}` is not Int64")))?
                    .iter()
                    .map(|i| i.map_or(f64::NAN, |i| i as f64 / rate))
                    .collect(),
            };
            let values = columns
                .iter()
                .map(|name| {
                    column(&batch, name, &file)
                        .and_then(|c| to_f32(c).map_err(|e| format!("{file}: `{name}`: {e}")))
                        .map_err(err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            collect.push(&time, &values);
        }
    }
    Ok(())
}

/// Long traces (one row per ROI per frame), pivoted to one row per frame with a column per
/// selected (value, ROI); a ROI missing from a frame leaves NaN, so the binner refuses that
/// frame and counts it.
fn read_traces(input: &Input, columns: &[String], collect: &mut Collect) -> Result<(), LoadError> {
    let err = |m: String| LoadError::new(&input.name, m);
    let mut values: Vec<&str> = Vec::new();
    let mut position: HashMap<(usize, i32), usize> = HashMap::new();
    for (k, c) in columns.iter().enumerate() {
        let (v, roi) = parse_traces_column(c)
            .ok_or_else(|| err(format!("`{c}` is not a `<value>_<roi>` traces column")))?;
        let vi = match values.iter().position(|x| *x == v) {
            Some(i) => i,
            None => {
                values.push(v);
                values.len() - 1
            }
        };
        position.insert((vi, roi), k);
    }
    let has_frame = input.schema.field_with_name(FRAME_INDEX).is_ok();
    let mut names = vec![TIME_S, ROI];
    if has_frame {
        names.push(FRAME_INDEX);
    }
    names.extend(values.iter().copied());
    let mut pivot = Pivot::new(columns.len());
    for path in &input.files {
        let file = path.display().to_string();
        let (_, reader) = open_parquet_columns(path, &names).map_err(err)?;
        for batch in reader {
            let batch = batch.map_err(|e| err(format!("{file}: reading: {e}")))?;
            let ctx = |e: String| err(format!("{file}: {e}"));
            let get = |name: &str| column(&batch, name, &file).map_err(err);
            let time = to_f64(get(TIME_S)?).map_err(ctx)?;
            let roi = cast(get(ROI)?, &DataType::Int32).map_err(|e| ctx(e.to_string()))?;
            let roi = roi.as_primitive::<arrow::datatypes::Int32Type>();
            let frame: Option<Vec<i64>> = if has_frame {
                let f =
                    cast(get(FRAME_INDEX)?, &DataType::Int64).map_err(|e| ctx(e.to_string()))?;
                Some(
                    f.as_primitive::<Int64Type>()
                        .iter()
                        .map(|f| f.unwrap_or(i64::MIN))
                        .collect(),
                )
            } else {
                None
            };
            let vals = values
                .iter()
                .map(|v| get(v).and_then(|c| to_f32(c).map_err(ctx)))
                .collect::<Result<Vec<_>, _>>()?;
            // Every column of a batch has its row count: `get` never misses.
            for (r, &t) in time.iter().enumerate() {
                // A frame is its frame_index; without one, its time.
                let key = frame
                    .as_ref()
                    .map_or(Some(t.to_bits() as i64), |f| f.get(r).copied())
                    .unwrap_or(i64::MIN);
                pivot.row(key, t, collect);
                if r >= roi.len() || roi.is_null(r) {
                    continue;
                }
                let id = roi.value(r);
                for (vi, v) in vals.iter().enumerate() {
                    if let (Some(&k), Some(&value)) = (position.get(&(vi, id)), v.get(r)) {
                        pivot.set(k, value);
                    }
                }
            }
        }
    }
    pivot.finish(collect);
    Ok(())
}

/// Frames being assembled from long trace rows.
struct Pivot {
    key: Option<i64>,
    time: f64,
    current: Vec<f32>,
    times: Vec<f64>,
    columns: Vec<Vec<f32>>,
}

impl Pivot {
    fn new(width: usize) -> Self {
        Pivot {
            key: None,
            time: f64::NAN,
            current: vec![f32::NAN; width],
            times: Vec::new(),
            columns: vec![Vec::new(); width],
        }
    }
    /// A row of frame `key` at `time`: the frame before it is complete.
    fn row(&mut self, key: i64, time: f64, collect: &mut Collect) {
        if self.key == Some(key) {
            return;
        }
        self.close();
        if self.times.len() >= PIVOT_ROWS {
            self.flush(collect);
        }
        self.key = Some(key);
        self.time = time;
    }
    fn set(&mut self, k: usize, v: f32) {
        if let Some(slot) = self.current.get_mut(k) {
            *slot = v;
        }
    }
    fn close(&mut self) {
        if self.key.take().is_none() {
            return;
        }
        self.times.push(self.time);
        for (col, v) in self.columns.iter_mut().zip(&mut self.current) {
            col.push(std::mem::replace(v, f32::NAN));
        }
    }
    fn flush(&mut self, collect: &mut Collect) {
        collect.push(&self.times, &self.columns);
        self.times.clear();
        self.columns.iter_mut().for_each(Vec::clear);
    }
    fn finish(mut self, collect: &mut Collect) {
        self.close();
        self.flush(collect);
    }
}
