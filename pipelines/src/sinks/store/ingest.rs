//! The writer thread: replays what a killed run left in the spool, then moves batches from the
//! buffer into the streams' segments, flushing every `flush_interval_s`. Only this thread waits
//! on the store's disk.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use super::buffer::{Buffer, Popped, SpoolFile};
use super::spool::Drain;
use super::stream_writer::{Shared, StreamWriter};
use super::Streams;
use crate::fault::panic_message;
use crate::metrics::batch_bytes;
use crate::storage::{SegmentReader, StoreError};

pub struct Writer<'a> {
    pub streams: Streams,
    pub shared: Shared<'a>,
    pub flush_interval: Duration,
}

impl Writer<'_> {
    fn store(&mut self, batch: RecordBatch) {
        let started = Instant::now();
        let rows = batch.num_rows();
        let id = self.streams.writer_for(&batch, self.shared.metrics);
        self.guarded(&id, rows, |stream, shared| {
            stream.metrics().input_bytes.inc_by(batch_bytes(&batch));
            stream.accept(batch, shared);
        });
        self.shared
            .metrics
            .observe_processing(started.elapsed().as_secs_f64());
    }

    /// Runs `work` on stream `id`'s writer. A panic there is a bug, but it must cost no other
    /// stream and nothing that can still be saved: it is logged and counted, the writer is closed
    /// (writing what it held back, and queueing its segment for conversion, if that still works),
    /// the `rows` in hand and whatever the close could not write are counted as dropped, and the
    /// stream's next batch starts a new writer (the whole store no longer stops at one panic).
    fn guarded(&mut self, id: &str, rows: usize, work: impl FnOnce(&mut StreamWriter, &Shared)) {
        let Some(stream) = self.streams.by_id.get_mut(id) else {
            return;
        };
        let shared = &self.shared;
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| work(stream, shared))) else {
            return;
        };
        let m = shared.metrics;
        let message = format!(
            "the store's writer of stream `{id}` panicked: {}",
            panic_message(payload.as_ref())
        );
        m.error("panic", "writing", message.clone());
        let Some(mut broken) = self.streams.by_id.remove(id) else {
            return;
        };
        let unwritten = catch_unwind(AssertUnwindSafe(|| broken.close(shared))).ok();
        let lost = rows as u64 + unwritten.map_or(0, |(_, rows)| rows);
        m.add_dropped_rows(lost as usize);
        tracing::error!(
            component = m.id(),
            stream = %id,
            rows_lost = lost,
            closed = unwritten.is_some(),
            "{message}; a new writer takes the stream's next batch"
        );
    }

    /// Stores the batches of leftover spool files past their notes. Returns the files to delete
    /// once the streams have closed; files that cannot be read stay.
    fn replay(&mut self, files: Vec<Arc<SpoolFile>>) -> Vec<Arc<SpoolFile>> {
        let mut done = Vec::new();
        for file in files {
            let replayed = (|| -> Result<u64, StoreError> {
                let mut reader = SegmentReader::open(&file.path)?;
                let skip = file.taken();
                let mut n = 0;
                for (index, batch) in (0u64..).zip(reader.by_ref()) {
                    if index >= skip {
                        self.store(batch);
                        n += 1;
                        file.mark_taken(index + 1);
                        let _ = file.persist_taken();
                    }
                }
                reader.finish()?;
                Ok(n)
            })();
            match replayed {
                Ok(n) => {
                    tracing::info!(
                        component = self.shared.metrics.id(),
                        file = %file.path.display(),
                        batches = n,
                        "stored the batches a previous run had spooled"
                    );
                    done.push(file);
                }
                Err(StoreError::NoCompleteBatch { .. }) => done.push(file),
                Err(e) => {
                    self.shared
                        .metrics
                        .error(e.error_type(), "recovering", e.to_string());
                    tracing::error!(
                        component = self.shared.metrics.id(),
                        "{e}; the spool file stays for the next start"
                    );
                    file.keep();
                }
            }
        }
        done
    }

    /// Runs until the buffer is closed and drained; returns the batches that could not be
    /// written.
    pub fn run(mut self, buffer: &Buffer, leftovers: Vec<Arc<SpoolFile>>) -> usize {
        if !leftovers.is_empty() {
            let replayed = self.replay(leftovers);
            // Closing makes the replayed batches durable before their spool files go (a batch
            // the disk refused stays pending in its stream and is retried like any other).
            self.close();
            drop(replayed);
        }
        let mut drain = Drain::default();
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            match buffer.pop(next_flush.saturating_duration_since(Instant::now())) {
                Popped::Mem(batch) => self.store(batch),
                Popped::Spooled {
                    batch,
                    file,
                    index,
                    rows,
                } => {
                    let batch = match batch {
                        Some(b) => Ok(b),
                        None => drain.read(&file, index),
                    };
                    match batch {
                        Ok(b) => self.store(b),
                        Err(e) => {
                            let m = self.shared.metrics;
                            m.add_dropped_rows(rows);
                            m.error(e.error_type(), "reading the spool", e.to_string());
                            tracing::error!(component = m.id(), rows, "{e}; these rows are lost");
                        }
                    }
                    drain.done(file, index);
                }
                Popped::Timeout => {}
                Popped::Closed => break,
            }
            // Checked after every batch too, so a busy buffer cannot postpone the flush.
            if Instant::now() >= next_flush {
                let ids: Vec<String> = self.streams.by_id.keys().cloned().collect();
                for id in ids {
                    self.guarded(&id, 0, StreamWriter::tick);
                }
                next_flush = Instant::now() + self.flush_interval;
            }
        }
        self.close()
    }

    fn close(&mut self) -> usize {
        let mut unwritten = 0;
        let ids: Vec<String> = self.streams.by_id.keys().cloned().collect();
        for id in ids {
            self.guarded(&id, 0, |stream, shared| unwritten += stream.close(shared).0);
        }
        unwritten
    }
}
