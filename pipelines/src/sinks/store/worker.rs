//! The background converter: turns closed segments into Parquet off the ingest thread, so that
//! ingestion never waits on compression, unless the converter falls behind by more than
//! [`QUEUED_SEGMENTS`], when the sink waits (segments never pile up unbounded).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use crate::component::ComponentError;
use crate::metrics::{ComponentMetrics, StoreMetrics};
use crate::storage::{finish_segment, refresh_manifest, ConvertStats, Finished, ParquetOptions};

/// Closed segments waiting for the converter, beyond the one it is converting.
pub const QUEUED_SEGMENTS: usize = 2;

/// A closed segment to convert.
pub struct Job {
    pub segment: PathBuf,
    pub stream_id: String,
    pub metrics: StoreMetrics,
}

/// Per-stream totals behind the compression-ratio gauge: raw over Parquet bytes of every file
/// this sink finished.
#[derive(Default)]
pub struct FinishedTotals {
    by_stream: HashMap<String, (u64, u64)>,
}

impl FinishedTotals {
    pub fn record(&mut self, stream_id: &str, metrics: &StoreMetrics, stats: &ConvertStats) {
        metrics.files.inc();
        metrics.written_bytes.inc_by(stats.parquet_bytes);
        let (raw, parquet) = self.by_stream.entry(stream_id.to_string()).or_default();
        *raw += stats.raw_bytes;
        *parquet += stats.parquet_bytes;
        metrics
            .compression_ratio
            .set(*raw as f64 / (*parquet).max(1) as f64);
    }
}

pub struct Converter {
    tx: Option<SyncSender<Job>>,
    handle: JoinHandle<Vec<PathBuf>>,
}

impl Converter {
    pub fn spawn(
        opts: ParquetOptions,
        metrics: ComponentMetrics,
        mut totals: FinishedTotals,
    ) -> Result<Self, ComponentError> {
        let (tx, rx) = sync_channel::<Job>(QUEUED_SEGMENTS);
        let handle = std::thread::Builder::new()
            .name(format!("{}-parquet", metrics.id()))
            .spawn(move || {
                let mut failed = Vec::new();
                for job in rx {
                    if let Err(job) = convert(job, &opts, &metrics, &mut totals) {
                        failed.push(job);
                    }
                }
                // Input has ended: one more try for what failed (a disk that was full may have
                // room now). What still fails stays on disk for recovery at the next start.
                failed
                    .into_iter()
                    .filter_map(|job| convert(job, &opts, &metrics, &mut totals).err())
                    .map(|job| job.segment)
                    .collect()
            })
            .map_err(|e| ComponentError::io("starting the Parquet converter thread", e))?;
        Ok(Converter {
            tx: Some(tx),
            handle,
        })
    }

    /// Queues a closed segment, waiting while the converter is [`QUEUED_SEGMENTS`] behind.
    /// Gives the job back if the converter thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Waits for every queued conversion; returns the segments that could not be converted.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ComponentError> {
        drop(self.tx.take());
        self.handle.join().map_err(|_| {
            ComponentError::Other(
                "the Parquet converter thread panicked; its segments are converted at the next start"
                    .into(),
            )
        })
    }
}

/// Rewrites the stream directory's manifest after a file was finished. A failure leaves the
/// manifest behind the files, which readers detect and rebuild from; it is retried with the
/// next file.
fn refresh(job: &Job, metrics: &ComponentMetrics) {
    let Some(dir) = job.segment.parent() else {
        return;
    };
    if let Err(e) = refresh_manifest(dir) {
        metrics.error(e.error_type(), "writing manifest", e.to_string());
        tracing::error!(component = metrics.id(), stream = %job.stream_id, "{e}");
    }
}

fn convert(
    job: Job,
    opts: &ParquetOptions,
    metrics: &ComponentMetrics,
    totals: &mut FinishedTotals,
) -> Result<(), Job> {
    match finish_segment(&job.segment, opts) {
        Ok(Finished::Converted { part, stats }) => {
            if stats.discarded_bytes > 0 {
                tracing::warn!(
                    segment = %job.segment.display(),
                    discarded_bytes = stats.discarded_bytes,
                    "the segment ended in a partial message (a failed write); kept every complete batch"
                );
            }
            tracing::debug!(
                part = %part.display(),
                rows = stats.rows,
                ratio = stats.compression_ratio(),
                "finished a Parquet file"
            );
            totals.record(&job.stream_id, &job.metrics, &stats);
            refresh(&job, metrics);
            Ok(())
        }
        Ok(Finished::Empty { discarded_bytes }) => {
            // Only a write that failed before the first batch leaves one, and the stream writer
            // has logged that failure; a disk full retries (and leaves one) with every batch.
            tracing::debug!(
                segment = %job.segment.display(),
                discarded_bytes,
                "removed a segment without one complete batch"
            );
            Ok(())
        }
        Err(e) => {
            metrics.error(e.error_type(), "converting", e.to_string());
            tracing::error!(
                component = metrics.id(),
                stream = %job.stream_id,
                "{e}; the segment stays and is converted at the end of input or the next start"
            );
            Err(job)
        }
    }
}
