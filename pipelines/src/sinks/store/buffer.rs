//! The store's input buffer: what decouples receiving from writing, so that a disk stalled by
//! other writers (or a daemon frozen and resumed) costs no raw data while the budget lasts.
//!
//! The receiving loop only [`Buffer::push`]es (no disk I/O, so the inbox never fills); the
//! writer thread [`Buffer::pop`]s, oldest arrival first across streams, and writes segments; the
//! spiller thread (see [`super::spool`]) moves batches to spool files on disk while the memory
//! held is over `buffer_memory_bytes`. Each stream keeps its batches in arrival order:
//!
//! ```text
//! front: in memory (next to write) | on disk (spooled, in file order) | in memory (newest)
//! ```
//!
//! A stream holds at most `buffer_s` seconds of data (rows / sampling rate for continuous and
//! frames streams, arrival time for the others); past it the oldest batches are dropped and
//! counted (`neurod_store_buffer_dropped_rows_total`, logged once per episode).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::metrics::{batch_bytes, ComponentMetrics, StoreMetrics};
use crate::stream::{keys, parse_rate, Layout};

/// One spool file: batches of one stream, in order. Shared by the buffer entries it holds, the
/// spiller appending to it and the writer reading it; deleted (with its progress note) when the
/// last holder lets go, which is after its last batch was handed to the store.
pub struct SpoolFile {
    pub id: u64,
    pub path: PathBuf,
    /// Batches at the front of the file already taken (written to the store, or dropped).
    taken: AtomicU64,
    /// The progress note (`<id>.taken`), opened at the first [`Self::persist_taken`].
    note: Mutex<Option<File>>,
    /// Set when the file must outlive this run (it could not be read).
    keep: AtomicBool,
}

impl SpoolFile {
    pub fn new(id: u64, path: PathBuf, taken: u64) -> Self {
        SpoolFile {
            id,
            path,
            taken: AtomicU64::new(taken),
            note: Mutex::new(None),
            keep: AtomicBool::new(false),
        }
    }

    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    pub fn note_path(path: &Path) -> PathBuf {
        path.with_extension("taken")
    }

    pub fn mark_taken(&self, upto: u64) {
        self.taken.fetch_max(upto, Ordering::Relaxed);
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Writes how many batches were taken into the progress note (no fsync: the note and the
    /// spool matter after `kill -9`, when the page cache survives, not after a power cut), so a
    /// restart replays only what the store does not have.
    pub fn persist_taken(&self) -> std::io::Result<()> {
        let mut note = self.note.lock().unwrap_or_else(|e| e.into_inner());
        if note.is_none() {
            *note = Some(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(Self::note_path(&self.path))?,
            );
        }
        match note.as_ref() {
            Some(f) => f.write_all_at(&self.taken().to_le_bytes(), 0),
            None => Ok(()),
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        // Best effort: a file left behind is replayed from its note at the next start.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(Self::note_path(&self.path));
    }
}

/// Where a buffered batch is.
pub enum Data {
    Mem(RecordBatch),
    /// Being written to `file` at `index` by the spiller; still readable from memory.
    Spilling {
        batch: RecordBatch,
        file: Arc<SpoolFile>,
        index: u64,
    },
    Disk {
        file: Arc<SpoolFile>,
        index: u64,
    },
}

impl Data {
    pub fn in_memory(&self) -> bool {
        !matches!(self, Data::Disk { .. })
    }
}

pub struct Entry {
    /// Arrival order over every stream of the sink.
    pub seq: u64,
    pub rows: usize,
    pub bytes: u64,
    /// Seconds of data, when the stream has a sampling rate that counts its rows.
    pub span_s: Option<f64>,
    pub arrived: Instant,
    pub data: Data,
}

/// The seconds of data in a batch: rows / rate for continuous and frames streams (one row per
/// sample or frame); `None` for the others, which are timed by arrival.
pub fn span_s(batch: &RecordBatch) -> Option<f64> {
    let schema = batch.schema_ref();
    match Layout::of(schema) {
        None | Some(Layout::Continuous) | Some(Layout::Frames) => {}
        Some(_) => return None,
    }
    let rate = parse_rate(schema.metadata().get(keys::SAMPLING_HZ)?).ok()?;
    Some(batch.num_rows() as f64 / rate)
}

/// One stream's queue.
pub struct StreamQueue {
    pub entries: VecDeque<Entry>,
    data_s: f64,
    pub mem_bytes: u64,
    disk_bytes: u64,
    metrics: StoreMetrics,
    /// Rows dropped since the budget was last exceeded (logged at the start and the end).
    dropping: Option<u64>,
}

impl StreamQueue {
    fn new(metrics: StoreMetrics) -> Self {
        StreamQueue {
            entries: VecDeque::new(),
            data_s: 0.0,
            mem_bytes: 0,
            disk_bytes: 0,
            metrics,
            dropping: None,
        }
    }

    /// Seconds of data held: the sum of the spans, or the age of the oldest batch if it has none.
    fn buffered_s(&self, now: Instant) -> f64 {
        let age = match self.entries.front() {
            Some(e) if e.span_s.is_none() => now.saturating_duration_since(e.arrived).as_secs_f64(),
            _ => 0.0,
        };
        self.data_s.max(age)
    }

    fn remove_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.data_s = (self.data_s - e.span_s.unwrap_or(0.0)).max(0.0);
        if self.entries.is_empty() {
            self.data_s = 0.0;
        }
        if e.data.in_memory() {
            self.mem_bytes = self.mem_bytes.saturating_sub(e.bytes);
        } else {
            self.disk_bytes = self.disk_bytes.saturating_sub(e.bytes);
        }
        Some(e)
    }

    /// Moves an entry that the spiller finished writing to the disk count.
    pub fn spilled(&mut self, seq: u64) -> u64 {
        let i = self.entries.partition_point(|e| e.seq < seq);
        let Some(e) = self.entries.get_mut(i).filter(|e| e.seq == seq) else {
            return 0;
        };
        let Data::Spilling { file, index, .. } = &e.data else {
            return 0;
        };
        e.data = Data::Disk {
            file: file.clone(),
            index: *index,
        };
        self.mem_bytes = self.mem_bytes.saturating_sub(e.bytes);
        self.disk_bytes += e.bytes;
        e.bytes
    }

    /// Puts an entry whose spill failed back to plain memory.
    pub fn unspilled(&mut self, seq: u64) {
        let i = self.entries.partition_point(|e| e.seq < seq);
        if let Some(e) = self.entries.get_mut(i).filter(|e| e.seq == seq) {
            if let Data::Spilling { batch, .. } = &e.data {
                e.data = Data::Mem(batch.clone());
            }
        }
    }

    fn publish(&self, now: Instant) {
        self.metrics.buffered_seconds.set(self.buffered_s(now));
        self.metrics
            .buffered_memory_bytes
            .set(self.mem_bytes as f64);
        self.metrics.buffered_disk_bytes.set(self.disk_bytes as f64);
    }
}

pub struct State {
    pub streams: HashMap<String, StreamQueue>,
    /// Bytes of every batch held in memory, all streams together.
    pub memory_bytes: u64,
    next_seq: u64,
    pub closed: bool,
    /// Spool files of dropped batches, released by the spiller so that the receiving thread
    /// never deletes a file.
    pub graveyard: Vec<Arc<SpoolFile>>,
}

/// Settings of the buffer.
#[derive(Debug, Clone)]
pub struct BufferOptions {
    /// Seconds of data each stream may hold before its oldest batches are dropped.
    pub budget_s: f64,
    /// Memory held, all streams together, beyond which batches are spilled to disk.
    pub memory_bytes: u64,
}

pub struct Buffer {
    state: Mutex<State>,
    /// Signalled on every push, pop and close.
    changed: Condvar,
    pub options: BufferOptions,
    metrics: ComponentMetrics,
}

/// A batch handed to the writer.
pub enum Popped {
    Mem(RecordBatch),
    /// Taken from a spool file (from memory when `batch` is set: its spill was in progress).
    Spooled {
        batch: Option<RecordBatch>,
        file: Arc<SpoolFile>,
        index: u64,
        rows: usize,
    },
    Timeout,
    /// Closed and empty.
    Closed,
}

impl Buffer {
    pub fn new(options: BufferOptions, metrics: ComponentMetrics) -> Self {
        Buffer {
            state: Mutex::new(State {
                streams: HashMap::new(),
                memory_bytes: 0,
                next_seq: 0,
                closed: false,
                graveyard: Vec::new(),
            }),
            changed: Condvar::new(),
            options,
            metrics,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation keeps the state consistent between statements that can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on the buffer's condition for up to `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Queues a batch; never waits on I/O. Drops the stream's oldest batches past its budget.
    pub fn push(&self, stream_id: &str, batch: RecordBatch) {
        let now = Instant::now();
        let bytes = batch_bytes(&batch);
        let entry = Entry {
            seq: 0,
            rows: batch.num_rows(),
            bytes,
            span_s: span_s(&batch),
            arrived: now,
            data: Data::Mem(batch),
        };
        let mut dropped: Vec<Entry> = Vec::new();
        let mut guard = self.lock();
        let st = &mut *guard;
        let q = st
            .streams
            .entry(stream_id.to_string())
            .or_insert_with(|| StreamQueue::new(self.metrics.store(stream_id)));
        q.entries.push_back(Entry {
            seq: st.next_seq,
            ..entry
        });
        st.next_seq += 1;
        q.data_s += q.entries.back().and_then(|e| e.span_s).unwrap_or(0.0);
        q.mem_bytes += bytes;
        st.memory_bytes += bytes;
        // The newest batch always stays, even if it alone is longer than the budget.
        while q.entries.len() > 1 && q.buffered_s(now) > self.options.budget_s {
            let Some(old) = q.remove_front() else { break };
            if old.data.in_memory() {
                st.memory_bytes = st.memory_bytes.saturating_sub(old.bytes);
            }
            dropped.push(old);
        }
        let rows: usize = dropped.iter().map(|e| e.rows).sum();
        let first_drop = rows > 0 && q.dropping.is_none();
        if rows > 0 {
            *q.dropping.get_or_insert(0) += rows as u64;
            q.metrics.buffer_dropped_rows.inc_by(rows as u64);
            // A dropped spooled batch is skipped by the writer and at a restart.
            for e in dropped.drain(..) {
                if let Data::Spilling { file, index, .. } | Data::Disk { file, index } = e.data {
                    file.mark_taken(index + 1);
                    st.graveyard.push(file);
                }
            }
        }
        q.publish(now);
        drop(guard);
        self.changed.notify_all();
        if rows > 0 {
            self.metrics.add_dropped_rows(rows);
        }
        if first_drop {
            let msg = format!(
                "stream `{stream_id}`: the store's buffer holds more than buffer_s = {} s of \
                 data (the disk is too slow or stalled); dropping the oldest batches, counted in \
                 neurod_store_buffer_dropped_rows_total",
                self.options.budget_s
            );
            self.metrics.error("buffer_full", "buffering", msg.clone());
            tracing::error!(component = self.metrics.id(), "{msg}");
        }
    }

    /// Takes the oldest batch over all streams, waiting up to `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Popped {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let oldest = st
                .streams
                .iter()
                .filter_map(|(id, q)| Some((q.entries.front()?.seq, id)))
                .min()
                .map(|(_, id)| id.clone());
            if let Some(id) = oldest {
                let now = Instant::now();
                let st = &mut *st;
                let Some(q) = st.streams.get_mut(&id) else {
                    continue;
                };
                let Some(e) = q.remove_front() else { continue };
                if e.data.in_memory() {
                    st.memory_bytes = st.memory_bytes.saturating_sub(e.bytes);
                }
                let ended = q
                    .dropping
                    .filter(|_| q.buffered_s(now) < self.options.budget_s / 2.0);
                if ended.is_some() {
                    q.dropping = None;
                }
                q.publish(now);
                if let Some(rows) = ended {
                    tracing::warn!(
                        component = self.metrics.id(),
                        stream = %id,
                        dropped_rows = rows,
                        "the store's buffer is back under half its budget"
                    );
                }
                return match e.data {
                    Data::Mem(b) => Popped::Mem(b),
                    Data::Spilling { batch, file, index } => Popped::Spooled {
                        batch: Some(batch),
                        file,
                        index,
                        rows: e.rows,
                    },
                    Data::Disk { file, index } => Popped::Spooled {
                        batch: None,
                        file,
                        index,
                        rows: e.rows,
                    },
                };
            }
            if st.closed {
                return Popped::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Popped::Timeout;
            }
            st = self.wait(st, deadline - now);
        }
    }

    /// No more pushes: the writer drains what is left, the spiller stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
#[path = "buffer_tests.rs"]
mod tests;
