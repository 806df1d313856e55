//! What a `--source`/`--target` PATH is: a stored stream (its directory, or its id under a data
//! directory, found through the catalog as `neurod ls` finds it) or Parquet files written by
//! anyone; how its rows are timed and which of its columns are values.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::LoadError;
use crate::sources::replay::{glob_match, is_parquet, name_of, parquet_files_in};
use crate::storage::{
    foreign_stream, list_data_dir, list_path, open_parquet_columns, StoredStream,
};
use crate::stream::{
    keys, parse_rate, ChannelKind, Layout, FRAME_INDEX, ROI, SAMPLE_INDEX, TIME_S,
};
use crate::teb::bins::row_period;
use crate::transforms::bin_features::{BIN_START_SAMPLE, SAMPLES};

/// Columns that say where a row is, never what was measured: left out of the default selection.
const BOOKKEEPING: &[&str] = &[
    TIME_S,
    SAMPLE_INDEX,
    FRAME_INDEX,
    BIN_START_SAMPLE,
    SAMPLES,
    ROI,
];

/// The value a traces stream gives by default (the others are its ingredients).
const TRACES_DEFAULT_VALUE: &str = "dff";

/// How rows are timed and laid out.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shape {
    /// One row per time: `time_s` and value columns (tables, `bin_features`, wide traces,
    /// Parquet from elsewhere).
    Table,
    /// `sample_index` and one column per channel; time = `sample_index / rate`.
    Continuous { rate: f64 },
    /// One row per ROI per frame (`time_s`, `roi`, values): pivoted to one column per value and
    /// ROI, named [`traces_column`].
    LongTraces { rois: Vec<i32> },
}

/// One input, resolved.
#[derive(Debug, Clone)]
pub struct Input {
    /// As given on the command line: what errors name.
    pub name: String,
    pub stream_id: String,
    pub files: Vec<PathBuf>,
    pub(super) schema: SchemaRef,
    pub(super) shape: Shape,
    /// The row period the stream's metadata states (1/rate of a continuous or traces stream, a
    /// `bin_features` stream's bin width, a table's rate): the [`crate::teb::bins::Binner`]'s
    /// `row_s`, as live decoding has it.
    pub row_s: Option<f64>,
    /// The row period, stated or estimated from the first rows: the default bin width.
    pub period_s: Option<f64>,
    pub first_time_s: Option<f64>,
    pub last_time_s: Option<f64>,
}

/// The column a long traces stream's value `value` of ROI `roi` becomes: `dff_12`.
pub fn traces_column(value: &str, roi: i32) -> String {
    format!("{value}_{roi}")
}

/// The reverse of [`traces_column`]: (value, roi).
pub fn parse_traces_column(name: &str) -> Option<(&str, i32)> {
    let (value, roi) = name.rsplit_once('_')?;
    Some((value, roi.parse().ok()?))
}

fn ids(streams: &[&StoredStream]) -> String {
    let mut ids: Vec<&str> = streams.iter().map(|s| s.stream_id.as_str()).collect();
    ids.dedup();
    let more = if ids.len() > 20 { ", ..." } else { "" };
    format!(
        "{}{more}",
        ids.into_iter().take(20).collect::<Vec<_>>().join(", ")
    )
}

/// The one stream `name` means: an existing path (stream directory, Parquet file or folder of
/// them, or a store/data directory holding exactly one stream), else a stream id under
/// `data_dir`.
pub fn resolve(name: &str, data_dir: Option<&Path>) -> Result<Input, LoadError> {
    let err = |m: String| LoadError::new(name, m);
    let path = Path::new(name);
    let stream = if path.exists() {
        stream_at(path).map_err(err)?
    } else if let Some(dir) = data_dir {
        let all = list_data_dir(dir).map_err(|e| err(e.to_string()))?;
        let found: Vec<&StoredStream> = all
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.stream_id == name)
            .collect();
        match found.as_slice() {
            [] => {
                let held: Vec<&StoredStream> = all.iter().map(|(_, s)| s).collect();
                return Err(err(format!(
                    "no such file, and no stream of that id under {} (there: {})",
                    dir.display(),
                    if held.is_empty() {
                        "nothing".to_string()
                    } else {
                        ids(&held)
                    }
                )));
            }
            [one] => (*one).clone(),
            several => {
                return Err(err(format!(
                    "held by several stores under {} ({}): give the stream directory",
                    dir.display(),
                    several
                        .iter()
                        .map(|s| s.dir.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    } else {
        return Err(err(
            "no such file or directory (give --data-dir to look stream ids up)".into(),
        ));
    };
    Input::of(name, stream)
}

fn stream_at(path: &Path) -> Result<StoredStream, String> {
    if path.is_file() {
        if !is_parquet(path) {
            return Err(
                "not a Parquet file (give a stream directory, a stream id with \
                        --data-dir, a Parquet file or a folder of them)"
                    .into(),
            );
        }
        return foreign_stream(&name_of(path, true), &[path.to_path_buf()])
            .map_err(|e| e.to_string());
    }
    let stored = list_path(path).map_err(|e| e.to_string())?;
    match stored.as_slice() {
        [(_, one)] => return Ok(one.clone()),
        [] => {}
        several => {
            let streams: Vec<&StoredStream> = several.iter().map(|(_, s)| s).collect();
            return Err(format!(
                "holds {} streams ({}): give one stream's directory, or its id with --data-dir",
                streams.len(),
                ids(&streams)
            ));
        }
    }
    let files = parquet_files_in(path).map_err(|e| format!("listing: {e}"))?;
    if files.is_empty() {
        return Err("holds no stored stream and no Parquet file".into());
    }
    foreign_stream(&name_of(path, false), &files).map_err(|e| e.to_string())
}

/// A schema's rate (`neurod.sampling_hz`), if it states a valid one.
fn rate_of(schema: &Schema) -> Option<f64> {
    schema
        .metadata()
        .get(keys::SAMPLING_HZ)
        .and_then(|t| parse_rate(t).ok())
}

impl Input {
    fn of(name: &str, stream: StoredStream) -> Result<Input, LoadError> {
        let err = |m: String| LoadError::new(name, m);
        let Some(first) = stream.files.first() else {
            let segments = stream.segments.len();
            return Err(err(format!(
                "stream `{}` has no finished file yet ({segments} unconverted segment(s): wait \
                 for the store to rotate or stop the daemon)",
                stream.stream_id
            )));
        };
        let schema = file_schema(&first.path).map_err(err)?;
        // Files a store wrote (even copied elsewhere) carry their own id.
        let stream_id = crate::stream::stream_id_of(&schema)
            .unwrap_or(&stream.stream_id)
            .to_string();
        let rate = rate_of(&schema);
        let has = |c: &str| schema.field_with_name(c).is_ok();
        let time_numeric = schema
            .field_with_name(TIME_S)
            .is_ok_and(|f| f.data_type().is_numeric());
        let layout = Layout::of(&schema);
        let shape = match layout {
            Some(Layout::Continuous) => {
                let (Some(rate), true) = (rate, has(SAMPLE_INDEX)) else {
                    return Err(err(format!(
                        "a continuous stream needs `{SAMPLE_INDEX}` and a valid `{}` to be timed",
                        keys::SAMPLING_HZ
                    )));
                };
                Shape::Continuous { rate }
            }
            Some(l @ (Layout::Events | Layout::Frames | Layout::Rois)) => {
                return Err(err(format!(
                    "a stream of layout `{}` has no values per time to bin (spikes: bin them \
                     with `bin_features`; frames: extract traces with `roi_traces`)",
                    l.as_str()
                )))
            }
            _ if !time_numeric => {
                return Err(err(format!(
                    "no numeric `{TIME_S}` column (seconds) to time the rows by"
                )))
            }
            Some(Layout::Traces) if has(ROI) => {
                let rois = scan_rois(
                    &stream
                        .files
                        .iter()
                        .map(|f| f.path.clone())
                        .collect::<Vec<_>>(),
                )
                .map_err(err)?;
                Shape::LongTraces { rois }
            }
            _ => Shape::Table,
        };
        let row_s = row_period(&schema).map_err(err)?;
        let period_s = match row_s {
            Some(r) => Some(r),
            None if shape == Shape::Table => estimate_period(&first.path).map_err(err)?,
            None => None,
        };
        let files: Vec<PathBuf> = stream.files.iter().map(|f| f.path.clone()).collect();
        Ok(Input {
            name: name.to_string(),
            stream_id,
            first_time_s: stream.first_time_s(),
            last_time_s: stream.last_time_s(),
            files,
            schema,
            shape,
            row_s,
            period_s,
        })
    }

    /// Every value column: numeric, not bookkeeping, and for continuous streams not a sync or
    /// digital channel; for long traces, `<value>_<roi>` per value column and ROI.
    pub fn value_columns(&self) -> Vec<String> {
        let fields = self.value_fields();
        match &self.shape {
            Shape::LongTraces { rois } => fields
                .iter()
                .flat_map(|v| rois.iter().map(move |&r| traces_column(v, r)))
                .collect(),
            _ => fields,
        }
    }

    /// The numeric, non-bookkeeping fields of the schema.
    fn value_fields(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .filter(|f| f.data_type().is_numeric() && !BOOKKEEPING.contains(&f.name().as_str()))
            .filter(|f| {
                let kind = f
                    .metadata()
                    .get(keys::CHANNEL_KIND)
                    .and_then(|k| ChannelKind::parse(k));
                !matches!(kind, Some(ChannelKind::Sync | ChannelKind::Digital))
            })
            .map(|f| f.name().clone())
            .collect()
    }

    /// The columns `patterns` select (names, `prefix*`-style globs, or for long traces a value
    /// name meaning it for every ROI), in the stream's order; none: the default (every value
    /// column; `dff` alone for a traces stream that has it).
    pub fn select(&self, patterns: &[String]) -> Result<Vec<String>, LoadError> {
        let all = self.value_columns();
        if patterns.is_empty() {
            let chosen: Vec<String> = match &self.shape {
                Shape::LongTraces { .. }
                    if self
                        .value_fields()
                        .iter()
                        .any(|v| v == TRACES_DEFAULT_VALUE) =>
                {
                    all.into_iter()
                        .filter(|c| {
                            parse_traces_column(c).is_some_and(|(v, _)| v == TRACES_DEFAULT_VALUE)
                        })
                        .collect()
                }
                _ => all,
            };
            if chosen.is_empty() {
                return Err(LoadError::new(
                    &self.name,
                    format!("has no numeric value column besides `{TIME_S}` and bookkeeping"),
                ));
            }
            return Ok(chosen);
        }
        let traces = matches!(self.shape, Shape::LongTraces { .. });
        let mut keep = vec![false; all.len()];
        for p in patterns {
            let p = p.trim();
            let mut matched = false;
            for (k, c) in all.iter().enumerate() {
                let by_value = traces && parse_traces_column(c).is_some_and(|(v, _)| v == p);
                if c == p || by_value || glob_match(p, c) {
                    keep[k] = true;
                    matched = true;
                }
            }
            if !matched {
                return Err(LoadError::new(&self.name, self.no_match(p, &all)));
            }
        }
        Ok(all
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect())
    }

    fn no_match(&self, pattern: &str, all: &[String]) -> String {
        if let Ok(f) = self.schema.field_with_name(pattern) {
            if !f.data_type().is_numeric() {
                return format!("column `{pattern}` is {}, not numeric", f.data_type());
            }
        }
        let more = if all.len() > 12 { ", ..." } else { "" };
        format!(
            "no numeric value column matches `{pattern}` (there: {}{more})",
            all.iter().take(12).cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// The Arrow schema of one Parquet file (its metadata included).
fn file_schema(path: &Path) -> Result<SchemaRef, String> {
    let file = File::open(path).map_err(|e| format!("{}: opening: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: reading the footer: {e}", path.display()))?;
    Ok(builder.schema().clone())
}

/// Every ROI of a long traces stream's files (only the `roi` column is read).
fn scan_rois(files: &[PathBuf]) -> Result<Vec<i32>, String> {
    let mut rois = BTreeSet::new();
    for path in files {
        let (_, reader) = open_parquet_columns(path, &[ROI])?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("{}: reading: {e}", path.display()))?;
            let col = cast(batch.column(0), &DataType::Int32)
                .map_err(|e| format!("{}: `{ROI}`: {e}", path.display()))?;
            rois.extend(col.as_primitive::<Int32Type>().iter().flatten());
        }
    }
    Ok(rois.into_iter().collect())
}

/// The median step of the first rows' `time_s` (a table without a stated rate); `None` when
/// fewer than two rows have one.
fn estimate_period(path: &Path) -> Result<Option<f64>, String> {
    let (_, mut reader) = open_parquet_columns(path, &[TIME_S])?;
    let Some(batch) = reader.next() else {
        return Ok(None);
    };
    let batch = batch.map_err(|e| format!("{}: reading: {e}", path.display()))?;
    let t = cast(batch.column(0), &DataType::Float64)
        .map_err(|e| format!("{}: `{TIME_S}`: {e}", path.display()))?;
    let t = t.as_primitive::<Float64Type>();
    let mut steps: Vec<f64> = t
        .iter()
        .take(1001)
        .collect::<Vec<_>>()
        .windows(2)
        .filter_map(|w| Some(w[1]? - w[0]?))
        .filter(|d| d.is_finite() && *d > 0.0)
        .collect();
    steps.sort_by(f64::total_cmp);
    // To the nanosecond: differences of rounded times are off in their last bits.
    Ok(steps
        .get(steps.len() / 2)
        .map(|m| ((m * 1e9).round() / 1e9).max(1e-9)))
}
