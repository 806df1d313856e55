//! The writer thread: replays what a killed run left in the spool, then moves batches from the
//! buffer into the streams' segments, flushing every `flush_interval_s`. Only this thread waits
//! on the store's disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use super::buffer::{Buffer, Popped, SpoolFile};
use super::spool::Drain;
use super::stream_writer::Shared;
use super::Streams;
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
        let stream = self.streams.get(&batch, self.shared.metrics);
        stream.metrics().input_bytes.inc_by(batch_bytes(&batch));
        stream.accept(batch, &self.shared);
        self.shared
            .metrics
            .observe_processing(started.elapsed().as_secs_f64());
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
                for stream in self.streams.by_id.values_mut() {
                    stream.tick(&self.shared);
                }
                next_flush = Instant::now() + self.flush_interval;
            }
        }
        self.close()
    }

    fn close(&mut self) -> usize {
        self.streams
            .by_id
            .values_mut()
            .map(|s| s.close(&self.shared))
            .sum()
    }
}
