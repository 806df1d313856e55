//! One stream's side of the sink: its live segment, rotation, and what it does when the disk
//! fails (keep the batches it could not write, bounded, and retry with the next batch).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::worker::{Converter, Job};
use crate::metrics::{batch_bytes, ComponentMetrics, StoreMetrics};
use crate::storage::layout::{create_dir_durably, next_seq, segment_path, sync_dir};
use crate::storage::{held_index, writer_properties, ParquetOptions, SegmentWriter, StoreError};
use crate::stream::{Layout, FRAME_INDEX, SAMPLE_INDEX};

/// Batches a failing stream keeps in memory for the retry, per stream. Beyond it the oldest are
/// dropped (and counted): a disk that stays broken must not take the daemon's memory with it.
pub const MAX_PENDING_BYTES: u64 = 64 << 20;

/// What every stream shares: the sink's settings, its metrics and the converter.
pub struct Shared<'a> {
    pub rotate_after: Duration,
    pub rotate_bytes: u64,
    pub parquet: &'a ParquetOptions,
    pub metrics: &'a ComponentMetrics,
    pub converter: &'a Converter,
}

pub struct StreamWriter {
    stream_id: String,
    dir: PathBuf,
    metrics: StoreMetrics,
    /// `None` until the directory has been created and scanned.
    next_seq: Option<u64>,
    segment: Option<SegmentWriter>,
    /// Accepted batches not yet in a segment (only after a write failed), oldest first.
    pending: VecDeque<RecordBatch>,
    pending_bytes: u64,
    /// Failures since the last success; only the first is logged as an error.
    failures: u64,
    /// Whether batches have been dropped since the last success (logged once).
    dropping: bool,
    /// Largest index this stream holds (see [`StreamWriter::new_rows`]); `None` until the first
    /// batch with an index has looked at the disk.
    held: Option<Option<i64>>,
    /// Duplicate rows dropped since the last batch that was new, for the log.
    duplicates: u64,
}

fn same_schema(a: &SchemaRef, b: &SchemaRef) -> bool {
    std::sync::Arc::ptr_eq(a, b) || a == b
}

/// A failure that retrying cannot fix: the batch itself cannot be encoded or stored.
fn is_permanent(e: &StoreError) -> bool {
    matches!(e, StoreError::Arrow { .. } | StoreError::Parquet { .. })
}

impl StreamWriter {
    pub fn new(stream_id: String, dir: PathBuf, metrics: StoreMetrics) -> Self {
        StreamWriter {
            stream_id,
            dir,
            metrics,
            next_seq: None,
            segment: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            failures: 0,
            dropping: false,
            held: None,
            duplicates: 0,
        }
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Appends a batch to the live segment (after any earlier batches a failure held back).
    pub fn accept(&mut self, batch: RecordBatch, sh: &Shared) {
        #[cfg(test)]
        super::tests::panic_if_doomed(&self.stream_id);
        let Some(batch) = self.new_rows(batch, sh) else {
            return;
        };
        self.pending_bytes += batch_bytes(&batch);
        self.pending.push_back(batch);
        self.write_pending(sh);
        while self.pending_bytes > MAX_PENDING_BYTES {
            let Some(old) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(batch_bytes(&old));
            sh.metrics.add_dropped_rows(old.num_rows());
            let msg = format!(
                "{}: dropped {} rows: more than {MAX_PENDING_BYTES} bytes wait for a failing disk",
                self.dir.display(),
                old.num_rows()
            );
            sh.metrics.error("io", "writing", msg.clone());
            // Once per failure episode: a disk full for hours must not flood the log.
            if !self.dropping {
                self.dropping = true;
                tracing::error!(component = sh.metrics.id(), stream = %self.stream_id, "{msg} (further drops until writing works again are counted, not logged)");
            }
        }
    }

    /// The rows of a continuous or frames batch whose index the stream does not hold yet (each
    /// of their rows has its own `sample_index`/`frame_index`): a source that resumed a little
    /// early, or replays a file again, never stores a row twice. Other layouts pass as they are.
    fn new_rows(&mut self, batch: RecordBatch, sh: &Shared) -> Option<RecordBatch> {
        let column = match Layout::of(batch.schema_ref()) {
            Some(Layout::Continuous) => SAMPLE_INDEX,
            Some(Layout::Frames) => FRAME_INDEX,
            _ => return Some(batch),
        };
        let Some(values) = batch
            .column_by_name(column)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .cloned()
        else {
            return Some(batch);
        };
        let held = match self.held {
            Some(h) => h,
            None => {
                let h = self.held_on_disk(sh);
                self.held = Some(h);
                h
            }
        };
        let newest = values.iter().flatten().max();
        self.held = Some(held.max(newest));
        let Some(held) = held else {
            return Some(batch);
        };
        let keep: BooleanArray = values
            .iter()
            .map(|v| Some(v.is_none_or(|v| v > held)))
            .collect();
        let kept = keep.true_count();
        let dropped = batch.num_rows() - kept;
        if dropped == 0 {
            if self.duplicates > 0 {
                tracing::info!(component = sh.metrics.id(), stream = %self.stream_id, duplicates = self.duplicates, "new rows again after {} already stored rows", self.duplicates);
                self.duplicates = 0;
            }
            return Some(batch);
        }
        self.metrics.duplicate_rows.inc_by(dropped as u64);
        if self.duplicates == 0 {
            tracing::warn!(
                component = sh.metrics.id(),
                stream = %self.stream_id,
                "the stream already holds {column} up to {held}: dropping rows it holds (counted in neurod_store_duplicate_rows_total)"
            );
        }
        self.duplicates += dropped as u64;
        if kept == 0 {
            return None;
        }
        match filter_record_batch(&batch, &keep) {
            Ok(b) => Some(b),
            Err(e) => {
                let e = StoreError::arrow(&self.dir, "dropping duplicate rows", e);
                self.drop_batch(&e, batch.num_rows(), sh);
                None
            }
        }
    }

    /// The largest index stored for this stream before this sink wrote any of it.
    fn held_on_disk(&self, sh: &Shared) -> Option<i64> {
        let store = self.dir.parent().unwrap_or(std::path::Path::new("."));
        held_index(store, &self.stream_id).unwrap_or_else(|e| {
            sh.metrics.error(e.error_type(), "reading the catalog", e.to_string());
            tracing::error!(component = sh.metrics.id(), stream = %self.stream_id, "{e}; rows it may already hold are stored again");
            None
        })
    }

    /// Called every flush interval: makes the segment durable, rotates it when old enough, and
    /// retries batches held back by a failure.
    pub fn tick(&mut self, sh: &Shared) {
        if let Some(seg) = &mut self.segment {
            let synced = seg.sync();
            let old = seg.opened().elapsed() >= sh.rotate_after;
            if let Err(e) = synced {
                self.failed(&e, sh);
                self.rotate(sh);
            } else if old {
                self.rotate(sh);
            }
        }
        if !self.pending.is_empty() {
            self.write_pending(sh);
        }
    }

    /// End of input: a last try for held-back batches, then the segment is closed and queued
    /// for conversion. Returns the batches, and their rows, that could not be written.
    pub fn close(&mut self, sh: &Shared) -> (usize, u64) {
        self.write_pending(sh);
        self.rotate(sh);
        let rows = self.pending.iter().map(|b| b.num_rows() as u64).sum();
        (self.pending.len(), rows)
    }

    fn write_pending(&mut self, sh: &Shared) {
        while let Some(schema) = self.pending.front().map(RecordBatch::schema) {
            if self
                .segment
                .as_ref()
                .is_some_and(|s| !same_schema(s.schema(), &schema))
            {
                self.rotate(sh);
            }
            if self.segment.is_none() {
                match self.open_segment(schema, sh) {
                    Ok(seg) => self.segment = Some(seg),
                    Err(e) if is_permanent(&e) => {
                        self.drop_front(&e, sh);
                        continue;
                    }
                    Err(e) => {
                        self.failed(&e, sh);
                        return;
                    }
                }
            }
            let (Some(seg), Some(batch)) = (self.segment.as_mut(), self.pending.front()) else {
                return;
            };
            let written = seg.write(batch);
            let full = seg.len() >= sh.rotate_bytes;
            let old = seg.opened().elapsed() >= sh.rotate_after;
            match written {
                Ok(n) => {
                    self.metrics.written_bytes.inc_by(n);
                    if let Some(done) = self.pending.pop_front() {
                        self.pending_bytes = self.pending_bytes.saturating_sub(batch_bytes(&done));
                    }
                    self.succeeded(sh);
                    if full || old {
                        self.rotate(sh);
                    }
                }
                Err(e) if is_permanent(&e) => self.drop_front(&e, sh),
                Err(e) => {
                    // The file was cut back to its last complete batch; close it (its batches
                    // get converted) and start a new segment with the next try.
                    self.failed(&e, sh);
                    self.rotate(sh);
                    return;
                }
            }
        }
    }

    fn open_segment(
        &mut self,
        schema: SchemaRef,
        sh: &Shared,
    ) -> Result<SegmentWriter, StoreError> {
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => {
                create_dir_durably(&self.dir)
                    .map_err(|e| StoreError::io(&self.dir, "creating stream directory", e))?;
                next_seq(&self.dir)
                    .map_err(|e| StoreError::io(&self.dir, "listing stream directory", e))?
            }
        };
        // Refuse here, not at conversion, a schema Parquet cannot store.
        let path = segment_path(&self.dir, seq);
        writer_properties(&schema, sh.parquet)
            .map_err(|e| StoreError::parquet(&path, "checking the schema", e))?;
        // A failed create may leave a file behind: never reuse its number.
        self.next_seq = Some(seq + 1);
        let seg = SegmentWriter::create(&path, schema)?;
        sync_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, "syncing directory", e))?;
        self.metrics.written_bytes.inc_by(seg.len());
        Ok(seg)
    }

    /// Closes the live segment and queues it for conversion.
    fn rotate(&mut self, sh: &Shared) {
        let Some(seg) = self.segment.take() else {
            return;
        };
        let path = seg.path().to_path_buf();
        match seg.finish() {
            Ok(n) => self.metrics.written_bytes.inc_by(n),
            // Its complete batches are still there: convert them anyway.
            Err(e) => self.failed(&e, sh),
        }
        let job = Job {
            segment: path,
            stream_id: self.stream_id.clone(),
            metrics: self.metrics.clone(),
        };
        if let Err(job) = sh.converter.submit(job) {
            let msg = format!(
                "{}: the Parquet converter has stopped; the segment is converted at the next start",
                job.segment.display()
            );
            sh.metrics.error("internal", "converting", msg.clone());
            tracing::error!(component = sh.metrics.id(), "{msg}");
        }
    }

    fn drop_front(&mut self, e: &StoreError, sh: &Shared) {
        let rows = self.pending.front().map_or(0, |b| b.num_rows());
        if let Some(b) = self.pending.pop_front() {
            self.pending_bytes = self.pending_bytes.saturating_sub(batch_bytes(&b));
        }
        self.drop_batch(e, rows, sh);
    }

    fn drop_batch(&mut self, e: &StoreError, rows: usize, sh: &Shared) {
        sh.metrics.error(e.error_type(), "writing", e.to_string());
        tracing::error!(
            component = sh.metrics.id(),
            stream = %self.stream_id,
            rows,
            "{e}; this batch cannot be stored and is dropped"
        );
    }

    fn failed(&mut self, e: &StoreError, sh: &Shared) {
        self.failures += 1;
        sh.metrics.error(e.error_type(), "writing", e.to_string());
        sh.metrics
            .set_degraded(&self.stream_id, Some(format!("{}: {e}", e.error_type())));
        if self.failures == 1 {
            tracing::error!(
                component = sh.metrics.id(),
                stream = %self.stream_id,
                "{e}; keeping unwritten batches in memory and retrying with the next batch"
            );
        } else {
            tracing::debug!(component = sh.metrics.id(), stream = %self.stream_id, "{e}");
        }
    }

    fn succeeded(&mut self, sh: &Shared) {
        if self.failures > 0 {
            tracing::info!(
                component = sh.metrics.id(),
                stream = %self.stream_id,
                failures = self.failures,
                "writing works again"
            );
            self.failures = 0;
            self.dropping = false;
            sh.metrics.set_degraded(&self.stream_id, None);
        }
    }
}
