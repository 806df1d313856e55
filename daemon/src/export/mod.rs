//! `neurod export`: a stored session, straight from the store's Parquet files, as a file for
//! training or sharing.
//!
//! - [`temporaldata`]: one temporaldata `Data` HDF5 file (POYO's tooling), spikes, units,
//!   dF/F, optionally one POYO-SSL population only.
//! - [`nwb`]: one NWB 2.x file (sharing, DANDI): raw samples, electrodes, units, ROIs and dF/F,
//!   behaviour, with the subject and session metadata given on the command line.
//! - [`units`]: the units (probe channels, ROIs with their POYO-SSL labels) and their table.
//! - [`frames`]: dF/F frame by frame and behaviour columns, as both formats read them.
//! - [`h5`]: columns appended to chunk by chunk, and temporaldata's objects as HDF5 groups.
//!
//! Streams are read file by file, batch by batch, a few columns at a time, so memory stays
//! bounded whatever the session's length. Only finished Parquet files are read: a live
//! segment of a running recording is exported once the store has converted it.

mod frames;
mod h5;
mod nwb;
mod temporaldata;
mod units;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arrow::array::{ArrowPrimitiveType, AsArray, BooleanArray, PrimitiveArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Float64Type;
use arrow::record_batch::RecordBatch;
use pipelines::storage::catalog::list_data_dir;
use pipelines::storage::{open_parquet_columns, StoredStream};
use pipelines::stream::{keys, parse_rate};
use pipelines::transforms::spike_detect::SOURCE_STREAM_KEY;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One temporaldata `Data` HDF5 file (`Data.from_hdf5`), for POYO training.
    Temporaldata,
    /// NWB 2.x, for sharing (DANDI).
    Nwb,
}

/// Which POYO-SSL population of neurons to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Population {
    /// The pretraining corpus: neurons whose traces are predictable.
    Predictable,
    /// The fine-tuning set: neurons whose traces are unpredictable.
    Unpredictable,
    /// Every unit and neuron.
    All,
}

impl Population {
    fn admits(self, label: &str) -> bool {
        match self {
            Population::All => true,
            Population::Predictable => label == "predictable",
            Population::Unpredictable => label == "unpredictable",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The data directory (or one store's directory) to export from.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Only these streams (ids, comma-separated); by default every stream the format holds.
    #[arg(long, value_delimiter = ',')]
    streams: Vec<String>,
    /// Only the neurons of this POYO-SSL population, as labelled last in the session (or at
    /// `--labels-at`).
    #[arg(long, value_enum, default_value = "all")]
    population: Population,
    /// The neurons' POYO-SSL labels as they stood at this time (s) rather than at the end of the
    /// session; a neuron not labelled by then is `unlabelled`.
    #[arg(long)]
    labels_at: Option<f64>,
    /// From this time (s) on.
    #[arg(long)]
    from_s: Option<f64>,
    /// Up to this time (s).
    #[arg(long)]
    to_s: Option<f64>,
    /// NWB: when the session began (RFC 3339, e.g. 2026-12-05T09:30:00+01:00). The store keeps
    /// times from the start of acquisition only; without this, it is estimated from the
    /// stored files' times, and the file's notes say so.
    #[arg(long)]
    session_start: Option<String>,
    /// NWB: the brain area of the probes and imaging planes (Allen Mouse Brain CCF term for a
    /// mouse, e.g. VISp).
    #[arg(long, default_value = "unknown")]
    location: String,
    #[command(flatten)]
    subject: Subject,
}

/// Who was recorded: the store does not know, so it is given here. NWB (DANDI) requires an id,
/// the species, the sex and the age; temporaldata keeps them as attributes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Subject {
    /// The subject's id (e.g. the animal's tag).
    #[arg(long)]
    pub subject_id: Option<String>,
    /// Latin binomial (e.g. "Mus musculus") or NCBI taxonomy link.
    #[arg(long)]
    pub species: Option<String>,
    /// M, F, O (other) or U (unknown, the default).
    #[arg(long, default_value = "U", value_parser = ["M", "F", "O", "U"])]
    pub sex: String,
    /// Age at the session as an ISO 8601 duration (e.g. P90D).
    #[arg(long)]
    pub age: Option<String>,
}

impl Subject {
    /// The fields given, as (name, value).
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(id) = &self.subject_id {
            out.push(("subject_id", id.as_str()));
        }
        if let Some(s) = &self.species {
            out.push(("species", s.as_str()));
        }
        out.push(("sex", self.sex.as_str()));
        if let Some(a) = &self.age {
            out.push(("age", a.as_str()));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}: {1}")]
    Stream(String, String),
    #[error("writing {path}: {message}", path = .0.display(), message = .1)]
    Write(PathBuf, String),
    #[error("nothing to export: {0}")]
    Nothing(String),
    #[error("{0}")]
    Store(String),
}

pub fn export(args: Args) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neurod export: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), ExportError> {
    let sel = Selection::new(args)?;
    let start = match args.format {
        Format::Nwb => Some(nwb::SessionStart::new(args.session_start.as_deref(), &sel)?),
        Format::Temporaldata => None,
    };
    // Written beside the destination and renamed into place once complete: a failed or
    // interrupted export leaves no half-written file under the name asked for, and an existing
    // file there is replaced only by a whole export.
    let mut name = args.out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let partial = args.out.with_file_name(name);
    let progress = Progress::new(sel.rows(args.format));
    let written = match &start {
        Some(start) => {
            let about = nwb::About {
                start,
                subject: &args.subject,
                location: &args.location,
            };
            nwb::export(&sel, &partial, &progress, &about)
        }
        None => temporaldata::export(&sel, &partial, &progress, &args.subject),
    };
    let written = written.and_then(|()| {
        std::fs::rename(&partial, &args.out)
            .map_err(|e| ExportError::Write(args.out.clone(), e.to_string()))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    progress.done(&args.out);
    Ok(())
}

/// What an export reads: the streams chosen, every stream stored (to find a spike stream's
/// probe and a trace stream's labels), the time range and the population.
pub(crate) struct Selection {
    all: Vec<StoredStream>,
    chosen: Vec<StoredStream>,
    from_s: Option<f64>,
    to_s: Option<f64>,
    population: Population,
    labels_at: Option<f64>,
    /// The session's time span, from the chosen streams' manifests, within the range asked for.
    span: (f64, f64),
    session: String,
}

impl Selection {
    fn new(args: &Args) -> Result<Self, ExportError> {
        if !args.data_dir.is_dir() {
            return Err(ExportError::Store(format!(
                "{}: no such data directory",
                args.data_dir.display()
            )));
        }
        let listed =
            list_data_dir(&args.data_dir).map_err(|e| ExportError::Store(e.to_string()))?;
        let mut all: Vec<StoredStream> = Vec::new();
        // One stream stored by two sinks (a port's copy): the copy holding more rows.
        for (_, s) in listed {
            match all.iter_mut().find(|a| a.stream_id == s.stream_id) {
                Some(a) if rows(a) >= rows(&s) => {}
                Some(a) => *a = s,
                None => all.push(s),
            }
        }
        for id in &args.streams {
            if !all.iter().any(|s| &s.stream_id == id) {
                return Err(ExportError::Stream(
                    id.clone(),
                    format!("no such stream stored under {}", args.data_dir.display()),
                ));
            }
        }
        let chosen: Vec<StoredStream> = all
            .iter()
            .filter(|s| args.streams.is_empty() || args.streams.contains(&s.stream_id))
            .cloned()
            .collect();
        let first = chosen
            .iter()
            .filter_map(StoredStream::first_time_s)
            .reduce(f64::min);
        let last = chosen
            .iter()
            .filter_map(StoredStream::last_time_s)
            .reduce(f64::max);
        let span = (
            args.from_s.or(first).unwrap_or(0.0),
            args.to_s.or(last).unwrap_or(0.0),
        );
        let session = args
            .data_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "session".into());
        Ok(Selection {
            all,
            chosen,
            from_s: args.from_s,
            to_s: args.to_s,
            population: args.population,
            labels_at: args.labels_at,
            span,
            session,
        })
    }

    fn stream(&self, id: &str) -> Option<StoredStream> {
        self.all.iter().find(|s| s.stream_id == id).cloned()
    }

    /// The chosen streams of a `neurod.stream_kind`; for traces, those with POYO-SSL labels
    /// first (the ports' copies of a trace stream come after it).
    fn of_kind(&self, kind: &str) -> Vec<StoredStream> {
        let mut out: Vec<StoredStream> = self
            .chosen
            .iter()
            .filter(|s| meta(s, keys::STREAM_KIND) == Some(kind))
            .cloned()
            .collect();
        out.sort_by_key(|s| self.stream(&format!("{}.neurons", s.stream_id)).is_none());
        out
    }

    /// The rows an export reads: those of the spike, trace and behaviour streams, and for
    /// NWB the raw streams'.
    fn rows(&self, format: Format) -> u64 {
        let raw: u64 = self
            .chosen
            .iter()
            .filter(|s| format == Format::Nwb && s.layout.as_deref() == Some("continuous"))
            .map(rows)
            .sum();
        let others = [
            self.of_kind("spikes"),
            units::dff_streams(self),
            self.of_kind("behaviour"),
        ];
        raw + others.iter().flatten().map(rows).sum::<u64>()
    }

    /// The stream's rows, `columns` of them, file by file, batch by batch.
    fn batches<'a>(
        &self,
        s: &'a StoredStream,
        columns: &'a [&'a str],
    ) -> impl Iterator<Item = Result<RecordBatch, ExportError>> + 'a {
        let from = self.from_s;
        let to = self.to_s;
        s.files
            .iter()
            // Files wholly outside the time range are not opened.
            .filter(move |f| {
                let before = matches!((f.entry.last_time_s, from), (Some(l), Some(a)) if l < a);
                let after = matches!((f.entry.first_time_s, to), (Some(b), Some(z)) if b > z);
                !(before || after)
            })
            .flat_map(move |f| match read_columns(&f.path, columns) {
                Ok(reader) => reader,
                Err(e) => Box::new(std::iter::once(Err(e))),
            })
            .map(move |b| b.map_err(|e| ExportError::Stream(s.stream_id.clone(), e)))
    }

    /// `batch`'s rows whose time (column `at`, seconds) lies in the range asked for.
    fn in_time(&self, batch: &RecordBatch, at: usize) -> Result<RecordBatch, ExportError> {
        if self.from_s.is_none() && self.to_s.is_none() {
            return Ok(batch.clone());
        }
        let Some(t) = batch.column(at).as_primitive_opt::<Float64Type>() else {
            return Ok(batch.clone());
        };
        let keep: BooleanArray = t
            .iter()
            .map(|v| {
                Some(v.is_some_and(|v| {
                    self.from_s.is_none_or(|a| v >= a) && self.to_s.is_none_or(|z| v < z)
                }))
            })
            .collect();
        filter_record_batch(batch, &keep).map_err(|e| ExportError::Store(e.to_string()))
    }
}

/// A stream's schema-level metadata `key` (`pipelines::stream::keys`), as its manifest holds it.
fn meta<'a>(s: &'a StoredStream, key: &str) -> Option<&'a str> {
    s.schema.as_ref()?.metadata.get(key).map(String::as_str)
}

/// A stream's sampling rate (Hz) from its manifest, checked as every source checks one
/// (`pipelines::stream::parse_rate`); an error names the stream.
fn rate_of(s: &StoredStream) -> Result<f64, ExportError> {
    let text = s
        .sampling_hz
        .as_deref()
        .ok_or_else(|| ExportError::Stream(s.stream_id.clone(), "no sampling rate".into()))?;
    parse_rate(text)
        .map_err(|e| ExportError::Stream(s.stream_id.clone(), format!("sampling rate {text}: {e}")))
}

fn rows(s: &StoredStream) -> u64 {
    s.files.iter().map(|f| f.entry.rows).sum()
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, String>>>;

/// One Parquet file's `columns`, batch by batch, in the order asked for (the store's projected
/// reader keeps the file's order).
fn read_columns(path: &Path, columns: &[&str]) -> Result<Batches, String> {
    let (schema, reader) = open_parquet_columns(path, columns)?;
    let mut file_order: Vec<usize> = Vec::with_capacity(columns.len());
    for c in columns {
        file_order.push(schema.index_of(c).map_err(|e| e.to_string())?);
    }
    let mut sorted = file_order.clone();
    sorted.sort_unstable();
    let order: Vec<usize> = file_order
        .iter()
        .map(|r| sorted.iter().position(|s| s == r).unwrap_or(0))
        .collect();
    let path = path.to_path_buf();
    Ok(Box::new(reader.map(move |b| {
        b.and_then(|b| b.project(&order))
            .map_err(|e| format!("{}: reading: {e}", path.display()))
    })))
}

/// `batch`'s column `at` as a primitive array of `T`, or an error naming the stream and column.
fn typed<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    at: usize,
    stream: &str,
    name: &str,
) -> Result<&'a PrimitiveArray<T>, ExportError> {
    batch.column(at).as_primitive_opt::<T>().ok_or_else(|| {
        ExportError::Stream(
            stream.to_string(),
            format!(
                "column `{name}` is {}, not {}",
                batch.column(at).data_type(),
                T::DATA_TYPE
            ),
        )
    })
}

/// A failure to read the store, or to write the file (whose name the caller adds).
pub(crate) enum Failed {
    Read(ExportError),
    Write(String),
}

impl From<ExportError> for Failed {
    fn from(e: ExportError) -> Self {
        Failed::Read(e)
    }
}

impl From<rust_hdf5::Hdf5Error> for Failed {
    fn from(e: rust_hdf5::Hdf5Error) -> Self {
        Failed::Write(e.to_string())
    }
}

impl Failed {
    pub(crate) fn at(self, out: &Path) -> ExportError {
        match self {
            Failed::Read(e) => e,
            Failed::Write(e) => ExportError::Write(out.to_path_buf(), e),
        }
    }
}

/// A stream id's last part as an HDF5 object name (`rig.behaviour` → `behaviour`).
fn object_name(stream_id: &str) -> String {
    stream_id
        .rsplit('.')
        .next()
        .unwrap_or("behaviour")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A progress bar over the rows read, on a terminal only.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} rows ({eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    /// No bar (for a second pass over rows already counted).
    fn hidden() -> Self {
        Progress {
            bar: indicatif::ProgressBar::hidden(),
        }
    }

    fn rows(&self, n: u64) {
        self.bar.inc(n);
    }

    fn done(&self, out: &Path) {
        self.bar.finish_and_clear();
        let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "wrote {} ({:.1} MiB)",
            out.display(),
            bytes as f64 / (1 << 20) as f64
        );
    }
}
