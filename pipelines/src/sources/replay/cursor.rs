//! One replayed stream read batch by batch: its files in order, rows outside the time window or
//! already held by the stores this source feeds left out, each batch keyed by its first time.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, Float64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchReader};

use super::merge::Keyed;
use crate::storage::{open_parquet_batched, Held, StoredFile, StoredReader, StoredStream};
use crate::stream::{keys, Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

/// About this many bytes per batch read (a probe: ~0.1 s; a 512×512 camera: a few frames).
pub const BATCH_BYTES: u64 = 2 << 20;

/// `[from_s, to_s)`; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub from_s: Option<f64>,
    pub to_s: Option<f64>,
}

impl Window {
    fn contains(&self, t: f64) -> bool {
        self.from_s.is_none_or(|f| t >= f) && self.to_s.is_none_or(|e| t < e)
    }
    /// Whether `[first, last]` may hold a time inside the window (unknown bounds: yes).
    fn overlaps(&self, first: Option<f64>, last: Option<f64>) -> bool {
        let after_start = match (self.from_s, last) {
            (Some(f), Some(l)) => l >= f,
            _ => true,
        };
        let before_end = match (self.to_s, first) {
            (Some(e), Some(f)) => f < e,
            _ => true,
        };
        after_start && before_end
    }
}

/// How a row's time is found in one file.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeOf {
    /// Continuous streams: `sample_index / sampling_hz`.
    Index(f64),
    /// The `time_s` column.
    Column,
    /// No time (ROI masks, tables without `time_s`): the whole stream goes out first.
    Untimed,
}

/// How the time of a schema's rows is found, or why it cannot be.
pub fn time_of(schema: &Schema) -> TimeOf {
    let rate = schema
        .metadata()
        .get(keys::SAMPLING_HZ)
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0);
    let index = schema
        .field_with_name(SAMPLE_INDEX)
        .is_ok_and(|f| f.data_type() == &DataType::Int64);
    match (Layout::of(schema), rate) {
        (Some(Layout::Continuous), Some(rate)) if index => TimeOf::Index(rate),
        _ if schema
            .field_with_name(TIME_S)
            .is_ok_and(|f| f.data_type().is_numeric()) =>
        {
            TimeOf::Column
        }
        _ => TimeOf::Untimed,
    }
}

/// What the stores this source feeds already hold of the stream, as rows not to send again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skip {
    Nothing,
    /// Rows whose `sample_index`/`frame_index` is at most this.
    ThroughIndex(i64),
    /// Rows whose time is at most this (streams without an index column).
    ThroughTime(f64),
    /// The whole stream (untimed streams, sent whole once).
    All,
}

impl Skip {
    /// The rule for a stream of layout `layout` from what every store holds of it.
    pub fn from_held(held: Held, indexed: bool, timed: bool) -> Skip {
        match (indexed, timed, held) {
            (
                true,
                _,
                Held {
                    last_index: Some(i),
                    ..
                },
            ) => Skip::ThroughIndex(i),
            (
                false,
                true,
                Held {
                    last_time_s: Some(t),
                    ..
                },
            ) => Skip::ThroughTime(t),
            (false, false, Held { any: true, .. }) => Skip::All,
            _ => Skip::Nothing,
        }
    }
}

/// A stream's reader. `foreign`: Parquet written elsewhere, sent as a `table` stream named
/// `stream_id` (its schema gets `neurod.stream_id` and `neurod.layout`, `time_s` becomes Float64).
pub struct StreamCursor {
    pub stream_id: String,
    files: VecDeque<StoredFile>,
    foreign: bool,
    window: Window,
    skip: Skip,
    open: Option<OpenFile>,
    /// The rest of the batch last read, cut in time slices ([`SLICE_S`]).
    slices: VecDeque<Keyed>,
}

struct OpenFile {
    path: PathBuf,
    reader: StoredReader,
    time: TimeOf,
    /// The schema batches go out with, when it differs from the file's.
    stamped: Option<SchemaRef>,
}

/// A read failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub error_type: &'static str,
    pub message: String,
}

impl StreamCursor {
    pub fn new(stream: StoredStream, foreign: bool, window: Window, skip: Skip) -> Self {
        let files = stream
            .files
            .into_iter()
            .filter(|f| window.overlaps(f.entry.first_time_s, f.entry.last_time_s))
            .filter(|f| match skip {
                Skip::ThroughIndex(i) => f.entry.last_index.is_none_or(|l| l > i),
                Skip::ThroughTime(t) => f.entry.last_time_s.is_none_or(|l| l > t),
                Skip::All => false,
                Skip::Nothing => true,
            })
            .collect();
        StreamCursor {
            stream_id: stream.stream_id,
            files,
            foreign,
            window,
            skip,
            open: None,
            slices: VecDeque::new(),
        }
    }

    fn open_next(&mut self) -> Option<Result<(), ReadError>> {
        let file = self.files.pop_front()?;
        let path = file.path;
        let reader = match open_parquet_batched(&path, Some(BATCH_BYTES)) {
            Ok(r) => r,
            Err(e) => {
                return Some(Err(ReadError {
                    error_type: e.error_type(),
                    message: e.to_string(),
                    path,
                }))
            }
        };
        let schema = reader.schema();
        let time = time_of(&schema);
        let stamped = if self.foreign {
            if time != TimeOf::Column {
                return Some(Err(no_time_column(&path)));
            }
            Some(foreign_schema(&schema, &self.stream_id))
        } else {
            None
        };
        self.open = Some(OpenFile {
            path,
            reader,
            time,
            stamped,
        });
        Some(Ok(()))
    }

    /// The rows of `batch` to send and the time of the first of them.
    fn select(
        &self,
        file: &OpenFile,
        batch: RecordBatch,
    ) -> Result<Option<VecDeque<Keyed>>, ReadError> {
        let fail = |m: String| ReadError {
            path: file.path.clone(),
            error_type: "arrow",
            message: m,
        };
        let batch = match &file.stamped {
            Some(schema) => restamp(batch, schema).map_err(|e| fail(e.to_string()))?,
            None => batch,
        };
        let times: Option<Float64Array> = match file.time {
            TimeOf::Untimed => None,
            TimeOf::Index(rate) => Some(
                index_column(&batch, SAMPLE_INDEX)
                    .ok_or_else(|| fail(format!("`{SAMPLE_INDEX}` is not Int64")))?
                    .iter()
                    .map(|i| i.map(|i| i as f64 / rate))
                    .collect(),
            ),
            TimeOf::Column => Some(float_times(&batch).map_err(&fail)?),
        };
        let index =
            index_column(&batch, SAMPLE_INDEX).or_else(|| index_column(&batch, FRAME_INDEX));
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let t = times
                    .as_ref()
                    .map(|t| t.is_valid(row).then(|| t.value(row)));
                let in_window = match t {
                    Some(Some(t)) => self.window.contains(t),
                    // Rows without a time cannot be placed in a window; untimed streams are whole.
                    Some(None) => self.window == Window::default(),
                    None => true,
                };
                let held = match self.skip {
                    Skip::ThroughIndex(h) => index
                        .as_ref()
                        .is_some_and(|ix| ix.is_valid(row) && ix.value(row) <= h),
                    Skip::ThroughTime(h) => matches!(t, Some(Some(t)) if t <= h),
                    Skip::All => true,
                    Skip::Nothing => false,
                };
                Some(in_window && !held)
            })
            .collect();
        let kept = keep.true_count();
        if kept == 0 {
            return Ok(None);
        }
        // Times of the kept rows (NaN where a row has none).
        let kept_times: Option<Vec<f64>> = times.as_ref().map(|t| {
            (0..t.len())
                .filter(|&r| keep.value(r))
                .map(|r| if t.is_valid(r) { t.value(r) } else { f64::NAN })
                .collect()
        });
        let batch = if kept == batch.num_rows() {
            batch
        } else {
            filter_record_batch(&batch, &keep).map_err(|e| fail(e.to_string()))?
        };
        Ok(Some(time_slices(batch, kept_times.as_deref())))
    }
}

/// Longest span of data in one replayed batch. A file is read in batches of about
/// [`BATCH_BYTES`], which is seconds of a probe but minutes of a behaviour table; handed out
/// whole, a table's batch would run minutes ahead of the probe's, and consumers that pair
/// streams by time (`teb_decode`, `bin_features`) would see them far apart. Slices (zero-copy)
/// keep the merge within this span of true time order.
pub const SLICE_S: f64 = 0.1;

/// `batch` cut into slices of at most [`SLICE_S`] of data, each keyed by its earliest time;
/// untimed batches stay whole.
fn time_slices(batch: RecordBatch, times: Option<&[f64]>) -> VecDeque<Keyed> {
    let Some(times) = times else {
        return VecDeque::from([Keyed {
            time_s: f64::NEG_INFINITY,
            batch,
        }]);
    };
    let key = |rows: &[f64]| {
        rows.iter()
            .copied()
            .filter(|t| !t.is_nan())
            .reduce(f64::min)
            .unwrap_or(f64::NEG_INFINITY)
    };
    let mut out = VecDeque::new();
    let mut start = 0;
    let mut start_time = f64::NAN;
    for (r, &t) in times.iter().enumerate() {
        if start_time.is_nan() {
            start_time = t;
        } else if t - start_time >= SLICE_S {
            out.push_back(Keyed {
                time_s: key(&times[start..r]),
                batch: batch.slice(start, r - start),
            });
            start = r;
            start_time = t;
        }
    }
    if start < times.len() {
        out.push_back(Keyed {
            time_s: key(&times[start..]),
            batch: batch.slice(start, times.len() - start),
        });
    }
    out
}

impl Iterator for StreamCursor {
    type Item = Result<Keyed, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(k) = self.slices.pop_front() {
                return Some(Ok(k));
            }
            let Some(file) = self.open.take() else {
                if let Err(e) = self.open_next()? {
                    return Some(Err(e));
                }
                continue;
            };
            let mut file = file;
            match file.reader.next() {
                None => {}
                Some(Err(e)) => {
                    // The rest of this file cannot be trusted; the next file may be fine.
                    return Some(Err(ReadError {
                        path: file.path,
                        error_type: "parquet",
                        message: e.to_string(),
                    }));
                }
                Some(Ok(batch)) => {
                    let selected = self.select(&file, batch);
                    self.open = Some(file);
                    match selected {
                        Ok(Some(slices)) => self.slices = slices,
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }
}

fn index_column(batch: &RecordBatch, name: &str) -> Option<arrow::array::Int64Array> {
    batch
        .column_by_name(name)?
        .as_primitive_opt::<Int64Type>()
        .cloned()
}

fn float_times(batch: &RecordBatch) -> Result<Float64Array, String> {
    let column = batch
        .column_by_name(TIME_S)
        .ok_or_else(|| format!("no `{TIME_S}` column"))?;
    let as_f64 = cast(column, &DataType::Float64).map_err(|e| format!("`{TIME_S}`: {e}"))?;
    Ok(as_f64.as_primitive::<Float64Type>().clone())
}

pub fn no_time_column(path: &Path) -> ReadError {
    ReadError {
        path: path.to_path_buf(),
        error_type: "schema",
        message: format!(
            "no numeric `{TIME_S}` column: a Parquet file from elsewhere replays as a table \
             stream on its `{TIME_S}` (seconds)"
        ),
    }
}

/// A foreign file's schema as neurod sends it: its metadata plus the stream id and the table
/// layout, `time_s` as Float64.
fn foreign_schema(schema: &Schema, stream_id: &str) -> SchemaRef {
    let mut md: HashMap<String, String> = schema.metadata().clone();
    md.insert(keys::STREAM_ID.into(), stream_id.into());
    md.insert(keys::LAYOUT.into(), Layout::Table.as_str().into());
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == TIME_S {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Float64))
            } else {
                f.clone()
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, md))
}

fn restamp(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            if f.name() == TIME_S && f.data_type() != &DataType::Float64 {
                cast(c, &DataType::Float64)
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn batches_are_cut_into_slices_of_at_most_slice_s_keyed_by_their_first_time() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        let rows = 25;
        let column: ArrayRef = Arc::new(Int32Array::from_iter_values(0..rows));
        let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
        // 100 Hz rows: 10 per slice of 0.1 s.
        let times: Vec<f64> = (0..rows).map(|r| r as f64 * 0.01).collect();
        let slices = time_slices(batch.clone(), Some(&times));
        let lens: Vec<usize> = slices.iter().map(|k| k.batch.num_rows()).collect();
        assert_eq!(lens, [10, 10, 5]);
        assert_eq!(slices[1].time_s, 0.1);
        assert_eq!(
            time_slices(batch, None).len(),
            1,
            "untimed batches stay whole"
        );
    }
}
