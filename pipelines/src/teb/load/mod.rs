//! What `neurod train-teb` trains on: its `--source` and `--target` PATHs read, binned with the
//! live decoder's [`Binner`](super::bins::Binner) and aligned on the bins both have.
//!
//! A PATH is a stored stream (its directory, or its id under `--data-dir`, found through the
//! catalog as `neurod ls` finds it) or Parquet files written by anyone (one file, or a folder of
//! `*.parquet` read in name order). Recognised, from the schema:
//!
//! - a `table` (or any Parquet without neurod metadata) with a numeric `time_s` and numeric value
//!   columns; a `bin_features` table is one, whose row period is its bin
//!   (`neurod.bin_samples / neurod.sampling_hz`); wide traces (a column per ROI) are one too;
//! - a `continuous` stream: time = `sample_index / neurod.sampling_hz`, a column per channel
//!   (raw values; sync and digital channels are left out of the default selection);
//! - a `traces` stream in neurod's long form (one row per ROI per frame), pivoted to one column
//!   per value and ROI named `<value>_<roi>` ([`traces_column`]: `dff_12`); default `dff`.
//!
//! Columns: by default every numeric value column (not `time_s`, `sample_index`,
//! `frame_index`, `bin_start_sample`, `samples`, `roi`); or names and `*`/`?` globs
//! (`count_*`), and for traces a value name for all its ROIs. Only the chosen columns are
//! decoded (Parquet projection) and files are read batch by batch, so memory holds the bins,
//! not the rows. The bin width is `--bin-ms`, else the source's own row period (stated in its
//! metadata, or for a table from elsewhere the median step of its first rows). Bins missing on
//! either side (gaps, rows refused as not finite) are dropped, never filled:
//! [`Aligned::segments`] gives the runs.

mod input;
mod read;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use super::bins::Refused;
use super::data::Aligned;
use kernels::teb::model::StreamColumns;

pub use input::{parse_traces_column, resolve, traces_column, Input};

/// Fewer common bins than this cannot be trained on (and split for validation).
pub const MIN_BINS: usize = 20;

/// A problem with one input (or the pair), naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The input as given (a path or a stream id), or both for a problem of the pair.
    pub input: String,
    pub message: String,
}

impl LoadError {
    pub fn new(input: &str, message: impl Into<String>) -> Self {
        LoadError {
            input: input.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.input, self.message)
    }
}

impl std::error::Error for LoadError {}

/// One input's bins.
#[derive(Debug, Clone, PartialEq)]
pub struct Binned {
    pub stream: StreamColumns,
    pub bin_s: f64,
    /// Bin numbers, strictly increasing.
    pub index: Vec<i64>,
    /// `bins × columns`, row-major.
    pub values: Vec<f32>,
    /// Rows read (frames, for long traces).
    pub rows: u64,
    pub refused: Refused,
}

impl Binned {
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.stream.columns.len()
    }
    /// Start of the first bin and end of the last, seconds.
    pub fn span_s(&self) -> Option<(f64, f64)> {
        let first = *self.index.first()?;
        let last = *self.index.last()?;
        Some((first as f64 * self.bin_s, (last + 1) as f64 * self.bin_s))
    }
}

/// What `neurod train-teb` asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub source: String,
    pub target: String,
    pub data_dir: Option<PathBuf>,
    /// Names or globs; empty: the default selection.
    pub source_columns: Vec<String>,
    pub target_columns: Vec<String>,
    /// Bin width, seconds; `None`: the source's row period.
    pub bin_s: Option<f64>,
}

/// One side of what was loaded, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub input: String,
    pub stream_id: String,
    pub columns: usize,
    pub rows: u64,
    pub bins: usize,
    pub refused: Refused,
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub aligned: Aligned,
    pub source: Side,
    pub target: Side,
    /// Things a user should know (rows refused, a stream sparser than the bins).
    pub warnings: Vec<String>,
}

/// Reads, bins and aligns the two inputs of `request`.
pub fn load(request: &Request) -> Result<Loaded, LoadError> {
    let dir = request.data_dir.as_deref();
    let source = resolve(&request.source, dir)?;
    let target = resolve(&request.target, dir)?;
    let source_columns = source.select(&request.source_columns)?;
    let target_columns = target.select(&request.target_columns)?;
    let bin_s = match request.bin_s {
        Some(b) if b.is_finite() && b > 0.0 => b,
        Some(b) => {
            return Err(LoadError::new(
                "--bin-ms",
                format!("{} is not a positive bin width", b * 1e3),
            ))
        }
        None => source.period_s.ok_or_else(|| {
            LoadError::new(
                &source.name,
                "states no row period and has too few rows to estimate one: give --bin-ms",
            )
        })?,
    };
    let pair = format!("source {} and target {}", source.name, target.name);
    if let (Some(a0), Some(a1), Some(b0), Some(b1)) = (
        source.first_time_s,
        source.last_time_s,
        target.first_time_s,
        target.last_time_s,
    ) {
        if a1 < b0 || b1 < a0 {
            return Err(LoadError::new(
                &pair,
                format!("no overlap in time (source {a0:.3}–{a1:.3} s, target {b0:.3}–{b1:.3} s)"),
            ));
        }
    }
    let sb = read::bin(&source, &source_columns, bin_s)?;
    let tb = read::bin(&target, &target_columns, bin_s)?;
    let mut warnings = Vec::new();
    for (input, b) in [(&source, &sb), (&target, &tb)] {
        if b.is_empty() {
            return Err(LoadError::new(
                &input.name,
                format!(
                    "no bin: {} rows read, {} with a value that is not finite, {} out of time \
                     order",
                    b.rows, b.refused.not_finite, b.refused.late
                ),
            ));
        }
        if b.refused != Refused::default() {
            warnings.push(format!(
                "{}: {} rows left out ({} with a value that is not finite, {} out of time order)",
                input.name,
                b.refused.not_finite + b.refused.late,
                b.refused.not_finite,
                b.refused.late
            ));
        }
        if let Some(p) = input.period_s.filter(|p| *p > 1.5 * bin_s) {
            warnings.push(format!(
                "{}: rows every {:.1} ms, sparser than the {:.1} ms bins: bins without a row \
                 are gaps",
                input.name,
                p * 1e3,
                bin_s * 1e3
            ));
        }
    }
    let aligned = align(&sb, &tb).map_err(|m| LoadError::new(&pair, m))?;
    let side = |input: &Input, b: &Binned| Side {
        input: input.name.clone(),
        stream_id: input.stream_id.clone(),
        columns: b.dim(),
        rows: b.rows,
        bins: b.len(),
        refused: b.refused,
    };
    Ok(Loaded {
        source: side(&source, &sb),
        target: side(&target, &tb),
        aligned,
        warnings,
    })
}

/// The bins both have, in order. Errors: no overlap in time, too few common bins.
pub fn align(source: &Binned, target: &Binned) -> Result<Aligned, String> {
    let mut aligned = Aligned {
        source: source.stream.clone(),
        target: target.stream.clone(),
        bin_s: source.bin_s,
        bin_index: Vec::new(),
        x: Vec::new(),
        y: Vec::new(),
    };
    let (dx, dy) = (source.dim(), target.dim());
    let (mut i, mut j) = (0, 0);
    while let (Some(&a), Some(&b)) = (source.index.get(i), target.index.get(j)) {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                aligned.bin_index.push(a);
                aligned
                    .x
                    .extend_from_slice(source.values.get(i * dx..(i + 1) * dx).unwrap_or(&[]));
                aligned
                    .y
                    .extend_from_slice(target.values.get(j * dy..(j + 1) * dy).unwrap_or(&[]));
                i += 1;
                j += 1;
            }
        }
    }
    let span = |b: &Binned| {
        b.span_s()
            .map_or("nothing".to_string(), |(a, z)| format!("{a:.3}–{z:.3} s"))
    };
    if aligned.is_empty() {
        let overlap = matches!((source.span_s(), target.span_s()),
            (Some((a0, a1)), Some((b0, b1))) if a0 < b1 && b0 < a1);
        return Err(if overlap {
            format!(
                "no bin of {} ms has rows of both (source {}, target {}): a larger --bin-ms?",
                source.bin_s * 1e3,
                span(source),
                span(target)
            )
        } else {
            format!(
                "no overlap in time (source {}, target {})",
                span(source),
                span(target)
            )
        });
    }
    if aligned.len() < MIN_BINS {
        return Err(format!(
            "only {} bins of {} ms have rows of both (source {} bins, {}; target {} bins, {}); \
             at least {MIN_BINS} are needed",
            aligned.len(),
            source.bin_s * 1e3,
            source.len(),
            span(source),
            target.len(),
            span(target)
        ));
    }
    Ok(aligned)
}
