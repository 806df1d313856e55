//! Each input stream's detection runs on a thread of its own, so that one stream's burst of work
//! (the end of calibration: σ over the whole window, then the held-back samples detected) never
//! holds up the others, and several streams use several cores. `spike_detect`'s own thread only
//! checks each batch and hands it to its stream's worker; whatever the workers have finished is
//! emitted on the next call (in order per stream), and `finish` waits for all of them.
//!
//! Each worker's queue holds [`QUEUE_S`] of its stream's data, or [`QUEUE_BYTES`] of it if that is
//! less; a worker that falls further behind than that makes the hand-over wait, so the
//! component's inbox fills and drops as before (with the rows counted), and memory stays bounded.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use arrow::record_batch::RecordBatch;

use crate::batch::Batch;
use prometheus::Histogram;

use super::StreamState;
use crate::component::{ComponentError, Emitter};
use crate::transforms::backend;

/// Seconds of a stream's data its worker's queue holds.
pub(super) const QUEUE_S: f64 = 2.0;

/// Bytes of a stream's batches its worker's queue holds at most. A live 385-channel probe's 2 s
/// are 46 MB, so live probes keep [`QUEUE_S`]; a replay's 100 ms batches (7.7 MB) stop at 8
/// instead of 20, and a wider probe's at as many bytes (the inbox before it is bounded the same
/// way, see `edge::BYTES_PER_BATCH`).
pub(super) const QUEUE_BYTES: usize = 64 << 20;

enum Job {
    /// A checked batch, its first sample, and when `spike_detect` received it.
    Batch(Batch, i64, Instant),
    Finish,
}

/// What a worker did with one job.
struct Done {
    stream: String,
    batches: Vec<(String, RecordBatch)>,
    error: Option<ComponentError>,
}

struct Worker {
    jobs: SyncSender<Job>,
    thread: Option<JoinHandle<()>>,
}

pub(super) struct Workers {
    component: String,
    latency: Histogram,
    by_stream: HashMap<String, Worker>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Jobs handed over and not yet reported done.
    in_flight: usize,
}

impl Workers {
    pub(super) fn new(component: &str, latency: Histogram) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Workers {
            component: component.into(),
            latency,
            by_stream: HashMap::new(),
            done_tx,
            done_rx,
            in_flight: 0,
        }
    }

    /// Starts `stream`'s worker with its state; the size of its first batch (`batch_rows`,
    /// `batch_bytes`) sizes the queue.
    pub(super) fn start(
        &mut self,
        stream: &str,
        mut state: StreamState,
        batch_rows: usize,
        batch_bytes: u64,
    ) -> Result<(), ComponentError> {
        let per_batch_s = batch_rows.max(1) as f64 / state.sampling_hz;
        let by_bytes = QUEUE_BYTES as f64 / batch_bytes.max(1) as f64;
        let capacity = (QUEUE_S / per_batch_s)
            .min(by_bytes)
            .ceil()
            .clamp(4.0, 100_000.0) as usize;
        let (jobs, rx) = mpsc::sync_channel::<Job>(capacity);
        let done = self.done_tx.clone();
        let (component, latency, id) = (
            self.component.clone(),
            self.latency.clone(),
            stream.to_string(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("detect {stream}"))
            .spawn(move || {
                // After a panic the state is not trusted: every later job is reported failed
                // (so `settle` never waits on a job nobody will do).
                let mut broken = false;
                for job in rx {
                    let last = matches!(job, Job::Finish);
                    let mut out = Emitter::default();
                    let error = if broken {
                        Some(lost(&id))
                    } else {
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            match job {
                                Job::Batch(batch, first, arrived) => {
                                    let r = state.process(&batch, first, &mut out);
                                    if let Some(verdict) = state.chain.take_verdict() {
                                        backend::report_verdict(&component, &id, &verdict);
                                    }
                                    latency.observe(arrived.elapsed().as_secs_f64());
                                    r.err()
                                }
                                Job::Finish => state.finish(&mut out).err(),
                            }
                        }));
                        run.unwrap_or_else(|_| {
                            broken = true;
                            tracing::error!(component = %component, stream = %id, "spike detection panicked; the stream's batches are dropped from now on");
                            Some(lost(&id))
                        })
                    };
                    let report = Done {
                        stream: id.clone(),
                        batches: out.batches,
                        error,
                    };
                    if done.send(report).is_err() || last {
                        break;
                    }
                }
            })
            .map_err(|e| {
                ComponentError::Other(format!("stream `{stream}`: cannot start its worker: {e}"))
            })?;
        self.by_stream.insert(
            stream.to_string(),
            Worker {
                jobs,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    /// Hands a checked batch to its stream's worker (waits while that worker's queue is full).
    pub(super) fn send(
        &mut self,
        stream: &str,
        batch: Batch,
        first: i64,
        arrived: Instant,
    ) -> Result<(), ComponentError> {
        let Some(w) = self.by_stream.get(stream) else {
            return Ok(());
        };
        w.jobs
            .send(Job::Batch(batch, first, arrived))
            .map_err(|_| lost(stream))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Emits what the workers have finished so far; the first error is returned, later ones
    /// logged.
    pub(super) fn drain(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        let mut first_error = None;
        while let Ok(done) = self.done_rx.try_recv() {
            self.take(done, out, &mut first_error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits for every job handed over, emitting as [`drain`](Self::drain) does.
    pub(super) fn settle(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        let mut first_error = None;
        while self.in_flight > 0 {
            match self.done_rx.recv() {
                Ok(done) => self.take(done, out, &mut first_error),
                Err(_) => break,
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes and ends `stream`'s worker (its held-back spikes are emitted).
    pub(super) fn finish(&mut self, stream: &str, out: &mut Emitter) -> Result<(), ComponentError> {
        let Some(mut w) = self.by_stream.remove(stream) else {
            return Ok(());
        };
        let sent = w.jobs.send(Job::Finish).is_ok();
        if sent {
            self.in_flight += 1;
        }
        let settled = self.settle(out);
        if let Some(t) = w.thread.take() {
            if t.join().is_err() {
                tracing::error!(component = %self.component, stream = %stream, "detection worker panicked");
                return Err(lost(stream));
            }
        }
        if !sent {
            return Err(lost(stream));
        }
        settled
    }

    fn take(&mut self, done: Done, out: &mut Emitter, first_error: &mut Option<ComponentError>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        out.batches.extend(done.batches);
        if let Some(e) = done.error {
            if first_error.is_some() {
                tracing::warn!(component = %self.component, stream = %done.stream, error = %e, "spike detection failed");
            } else {
                *first_error = Some(e);
            }
        }
    }
}

fn lost(stream: &str) -> ComponentError {
    ComponentError::Other(format!(
        "stream `{stream}`: its detection worker has stopped"
    ))
}
