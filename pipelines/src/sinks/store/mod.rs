//! The `store` sink: every stream it receives, durably on disk, as Parquet that pyarrow and
//! DataFusion read directly.
//!
//! ```toml
//! [sinks.disk]
//! type = "store"
//! inputs = ["probe0"]
//! flush_interval_s = 1.0        # fsync the live segment this often (the most a crash loses)
//! rotate_s = 300                # seconds of wall time per file
//! rotate_bytes = 1073741824     # or this many segment bytes, whichever comes first
//! zstd_level = 1
//! path = "/data/neurod/disk"    # default: <data_dir>/<component id>
//! buffer_s = 60                 # seconds of data each stream may wait for a slow disk
//! buffer_memory_bytes = 268435456  # held in memory, all streams together; the rest is spooled
//! ```
//!
//! Layout under `path`, one directory per stream (the batch's `neurod.stream_id`, reversibly
//! escaped: see [`crate::storage::layout::stream_dir_name`]), with its `_manifest.json`:
//!
//! ```text
//! <path>/<stream>/part-000000.parquet      finished files, zstd, Arrow schema and all `neurod.*`
//! <path>/<stream>/part-000001.parquet      metadata kept; `pyarrow.dataset.dataset(<path>/<stream>)`
//! <path>/<stream>/_segment-000002.arrows   the live Arrow IPC stream, fsynced every flush interval
//! <path>/<stream>/.part-000001.parquet.tmp a conversion in progress, renamed when complete
//! ```
//!
//! Batches are appended to the live segment as they arrive and the segment is fsynced every
//! `flush_interval_s`, so after `kill -9` or a power cut everything accepted up to the last flush
//! is on disk. A segment is closed when it is `rotate_s` old, reaches `rotate_bytes`, when the
//! stream's schema changes, and at the end of input; a background thread then converts it to the
//! Parquet file of the same number (temporary file, fsync, atomic rename, directory fsync) and
//! deletes it. At start the sink first recovers what a crash left (see [`recover`]): temporary
//! files are deleted and every segment is converted, keeping each complete batch before a cut.
//!
//! The store never writes a `sample_index` (continuous) or `frame_index` (frames) that its
//! stream already holds: rows at or below the largest index stored (on disk at the stream's
//! first batch, then as written) are dropped, counted in `neurod_store_duplicate_rows_total`
//! and logged. A source resuming after a reload or a crash may so start a little early.
//!
//! Receiving and writing are separate threads joined by the input buffer ([`buffer`]): the
//! receiving loop only queues batches, so a disk stalled by other writers, or the whole daemon
//! frozen and resumed, never fills the inbox (whose overflow would drop the oldest batches). Each
//! stream holds up to `buffer_s` seconds of data; past `buffer_memory_bytes` in memory, batches
//! are spilled to `<path>/.spool/` ([`spool`]) and read back in order. Only past `buffer_s` are a
//! stream's oldest batches dropped (`neurod_store_buffer_dropped_rows_total`, logged once per
//! episode). If spilling fails too (a full or broken disk), batches stay in memory, still bounded
//! by `buffer_s`. After `kill -9` the next start stores what the spool held, past each file's note of
//! the batches already stored, before anything new; what was only in memory is lost.
//!
//! A disk error on one stream is counted and logged with the file; that stream keeps the batches
//! it could not write (up to [`stream_writer::MAX_PENDING_BYTES`]) and retries with its next
//! batch, while the other streams go on. A panic in one stream's writer (a bug) costs that
//! stream the batch in hand: it is counted (`error_type="panic"`) and logged with its message, the
//! writer is closed as at the end of input, and a new one takes the stream's next batch.

mod buffer;
mod ingest;
mod spool;
mod stream_writer;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::component::{parse_options, BuildContext, ComponentError, Sink, SinkContext};
use crate::edge::Recv;
use crate::metrics::ComponentMetrics;
use crate::sources::replay::glob_match;
use crate::storage::layout::{stream_dir_name, stream_id_from_dir_name};
pub use crate::storage::{
    convert_segment, convert_segment_with, recover, recover_with, writer_properties, ConvertStats,
    Int16Encoding, ParquetOptions, RecoveryReport, StoreError,
};
use crate::stream::stream_id_of;
use buffer::{Buffer, BufferOptions};
use spool::{Spiller, SPOOL_DIR};
use stream_writer::{Shared, StreamWriter};
use worker::{Converter, FinishedTotals};

pub const TYPE_NAME: &str = "store";
/// A store's inbox holds this many times `queue_batches`: its receiving loop only queues into
/// the buffer, so the inbox fills only while that thread gets no CPU and a source emits a
/// backlog (after a freeze) much faster than real time.
pub const INBOX_FACTOR: usize = 16;
/// Where batches whose schema carries no `neurod.stream_id` are stored.
pub const UNNAMED_STREAM: &str = "unnamed";

fn default_flush_interval_s() -> f64 {
    1.0
}
fn default_rotate_s() -> f64 {
    300.0
}
fn default_rotate_bytes() -> u64 {
    1 << 30
}
/// Level 1: raw Int16 columns are delta-bit-packed before zstd sees them, and on them level 3
/// gains 0 % (the real Open Ephys recording) to 1.7 % (the simulated probe) over level 1, while
/// a 385-channel probe's store ran at 4.5× real time on one core with level 3 and 6.1× with
/// level 1 (`cargo bench -p pipelines --bench ingest_store`); event and trace tables are small
/// beside raw samples.
fn default_zstd_level() -> i32 {
    1
}
fn default_buffer_s() -> f64 {
    60.0
}
fn default_buffer_memory_bytes() -> u64 {
    256 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreOptions {
    #[serde(default = "default_flush_interval_s")]
    flush_interval_s: f64,
    #[serde(default = "default_rotate_s")]
    rotate_s: f64,
    #[serde(default = "default_rotate_bytes")]
    rotate_bytes: u64,
    #[serde(default = "default_zstd_level")]
    zstd_level: i32,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default = "default_buffer_s")]
    buffer_s: f64,
    #[serde(default = "default_buffer_memory_bytes")]
    buffer_memory_bytes: u64,
    /// Stream ids or globs (`*`, `?`) to store; the others on the inputs are passed over.
    #[serde(default)]
    streams: Option<Vec<String>>,
}

pub struct StoreSink {
    dir: PathBuf,
    flush_interval: Duration,
    rotate_after: Duration,
    rotate_bytes: u64,
    parquet: ParquetOptions,
    buffer: BufferOptions,
    /// Empty: every stream.
    streams: Vec<String>,
}

fn seconds(id: &str, key: &str, value: f64, errors: &mut Vec<String>) -> Duration {
    match crate::limits::seconds(value) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            errors.push(format!(
                "component `{id}` (type `{TYPE_NAME}`): `{key}` must be a positive number of seconds up to {:e}, got {value}",
                crate::limits::MAX_SECONDS
            ));
            Duration::from_secs(1)
        }
    }
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Sink>, Vec<String>> {
    let o: StoreOptions = parse_options(ctx.id, TYPE_NAME, options)?;
    let mut errors = Vec::new();
    let flush_interval = seconds(ctx.id, "flush_interval_s", o.flush_interval_s, &mut errors);
    let rotate_after = seconds(ctx.id, "rotate_s", o.rotate_s, &mut errors);
    let buffer_s = seconds(ctx.id, "buffer_s", o.buffer_s, &mut errors);
    if o.rotate_bytes == 0 {
        errors.push(format!(
            "component `{}` (type `{TYPE_NAME}`): `rotate_bytes` must be positive",
            ctx.id
        ));
    }
    if !(1..=22).contains(&o.zstd_level) {
        errors.push(format!(
            "component `{}` (type `{TYPE_NAME}`): `zstd_level` must be within 1..=22, got {}",
            ctx.id, o.zstd_level
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(StoreSink {
        dir: o.path.unwrap_or_else(|| ctx.data_dir.join(ctx.id)),
        flush_interval,
        rotate_after,
        rotate_bytes: o.rotate_bytes,
        parquet: ParquetOptions {
            zstd_level: o.zstd_level,
            ..ParquetOptions::default()
        },
        buffer: BufferOptions {
            budget_s: buffer_s.as_secs_f64(),
            memory_bytes: o.buffer_memory_bytes,
        },
        streams: o.streams.unwrap_or_default(),
    }))
}

impl StoreSink {
    /// Whether the `streams` option keeps this stream.
    fn keeps(&self, stream_id: &str) -> bool {
        self.streams.is_empty() || self.streams.iter().any(|g| glob_match(g, stream_id))
    }

    /// Converts what a previous run left behind, counting the files it finishes.
    fn recover_at_start(&self, metrics: &ComponentMetrics, totals: &mut FinishedTotals) {
        let report = match recover_with(&self.dir, &self.parquet) {
            Ok(r) => r,
            Err(e) => {
                metrics.error(e.error_type(), "recovering", e.to_string());
                tracing::error!(component = metrics.id(), "{e}");
                return;
            }
        };
        for (segment, _part, stats) in &report.converted {
            let stream_id = stats.stream_id.clone().unwrap_or_else(|| {
                let name = segment
                    .parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                stream_id_from_dir_name(&name).unwrap_or(name)
            });
            totals.record(&stream_id, &metrics.store(&stream_id), stats);
        }
        for e in &report.failed {
            metrics.error(e.error_type(), "recovering", e.to_string());
        }
    }
}

/// The streams of one run, by stream id (each has its own directory: names are reversible).
struct Streams {
    dir: PathBuf,
    by_id: HashMap<String, StreamWriter>,
}

impl Streams {
    /// The batch's stream id, with a writer for that stream made if there was none.
    fn writer_for(&mut self, batch: &RecordBatch, metrics: &ComponentMetrics) -> String {
        let named = stream_id_of(batch.schema_ref());
        let id = named.unwrap_or(UNNAMED_STREAM);
        if !self.by_id.contains_key(id) {
            if named.is_none() {
                tracing::warn!(
                    component = metrics.id(),
                    "batches without `neurod.stream_id` are stored under `{UNNAMED_STREAM}/`"
                );
            }
            let writer = StreamWriter::new(
                id.to_string(),
                self.dir.join(stream_dir_name(id)),
                metrics.store(id),
            );
            self.by_id.insert(id.to_string(), writer);
        }
        id.to_string()
    }
}

impl Sink for StoreSink {
    fn store_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ComponentError> {
        let mut totals = FinishedTotals::default();
        self.recover_at_start(&ctx.metrics, &mut totals);
        let converter = Converter::spawn(self.parquet.clone(), ctx.metrics.clone(), totals)?;
        let shared = Shared {
            rotate_after: self.rotate_after,
            rotate_bytes: self.rotate_bytes,
            parquet: &self.parquet,
            metrics: &ctx.metrics,
            converter: &converter,
        };
        let streams = Streams {
            dir: self.dir.clone(),
            by_id: HashMap::new(),
        };
        let writer = ingest::Writer {
            streams,
            shared,
            flush_interval: self.flush_interval,
        };
        let spool_dir = self.dir.join(SPOOL_DIR);
        let (leftovers, next_spool_id) = spool::leftovers(&spool_dir).unwrap_or_else(|e| {
            let e = StoreError::io(&spool_dir, "listing the spool", e);
            ctx.metrics
                .error(e.error_type(), "recovering", e.to_string());
            tracing::error!(component = ctx.metrics.id(), "{e}");
            (Vec::new(), 0)
        });
        let buffer = Buffer::new(self.buffer.clone(), ctx.metrics.clone());
        let spiller = Spiller::new(&buffer, spool_dir, next_spool_id, ctx.metrics.clone());
        let unwritten = std::thread::scope(|s| {
            // However this closure ends (a panic included), the buffer closes, so the spill and
            // writer threads finish and the scope can end instead of waiting for them forever.
            let _close = CloseOnDrop(&buffer);
            let thread =
                |name: &str| std::thread::Builder::new().name(format!("{}-{name}", ctx.id));
            let spiller = thread("spill")
                .spawn_scoped(s, || spiller.run())
                .map_err(|e| ComponentError::io("starting the spill thread", e))?;
            let writer = thread("write")
                .spawn_scoped(s, || writer.run(&buffer, leftovers))
                .map_err(|e| ComponentError::io("starting the writer thread", e));
            // This loop only moves batches into the buffer, so the inbox never fills while the
            // disk stalls (see `buffer`).
            while let Ok(writer) = &writer {
                match ctx.inbox.recv_timeout(Duration::from_millis(500)) {
                    Recv::Data(batch) => {
                        ctx.metrics.received(&batch);
                        let id = stream_id_of(batch.schema_ref())
                            .unwrap_or(UNNAMED_STREAM)
                            .to_string();
                        if self.keeps(&id) {
                            // Samples as a source read them get their columns here, off the
                            // acquisition thread.
                            buffer.push(&id, batch.into_record_batch());
                        }
                    }
                    Recv::Timeout if writer.is_finished() => break,
                    Recv::Timeout => {}
                    Recv::Closed => break,
                }
            }
            buffer.close();
            let panicked =
                |what: &str| ComponentError::Other(format!("the store's {what} thread panicked"));
            spiller.join().map_err(|_| panicked("spill"))?;
            writer?.join().map_err(|_| panicked("writer"))
        })?;
        let unconverted = converter.finish()?;
        if unwritten == 0 && unconverted.is_empty() {
            return Ok(());
        }
        Err(ComponentError::Other(format!(
            "{}: {unwritten} batches could not be written; {} segments could not be converted \
             and stay for recovery at the next start: {}",
            self.dir.display(),
            unconverted.len(),
            unconverted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Closes the buffer when dropped.
struct CloseOnDrop<'a>(&'a Buffer);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests;
