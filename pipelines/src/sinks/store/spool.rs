//! The spool: the buffer's overflow on disk, in `<store path>/.spool/` (hidden from dataset
//! readers). `<id>.arrows` is an Arrow IPC stream of one stream's batches, written without
//! fsync; `<id>.taken` notes how many of its first batches the store already has.
//!
//! The [`Spiller`] thread writes batches there while the buffer's memory is over budget; the
//! writer reads them back in order ([`Drain`]) and a file is deleted once its last batch was
//! handed to the store. After `kill -9` (the page cache survives) the next start replays every
//! leftover file past its note before anything new ([`leftovers`]); after a power cut the spool
//! holds what the kernel had written back, read up to the first cut batch.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::buffer::{Buffer, Data, SpoolFile, State};
use crate::metrics::ComponentMetrics;
use crate::storage::{SegmentReader, SegmentWriter, StoreError};

/// A spool file is closed at this size and the next spill starts another, so drained data
/// leaves the disk in steps this big.
pub const SPOOL_FILE_BYTES: u64 = 64 << 20;
/// At most this much is spilled per turn of the lock, so the writer and receiver are not held up.
const SPILL_RUN_BYTES: u64 = 8 << 20;
/// After a failed spill, the spiller waits this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub const SPOOL_DIR: &str = ".spool";
const SUFFIX: &str = "arrows";

pub fn spool_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:09}.{SUFFIX}"))
}

/// Spool files a previous run left, oldest first, each with the batches the store already had
/// (from its note), and the first free id.
pub fn leftovers(dir: &Path) -> io::Result<(Vec<Arc<SpoolFile>>, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    let mut next_id = 0;
    for entry in entries {
        let path = entry?.path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(id) = id else { continue };
        next_id = u64::max(next_id, id.saturating_add(1));
        if path.extension().and_then(|e| e.to_str()) != Some(SUFFIX) {
            continue;
        }
        let taken = std::fs::read(SpoolFile::note_path(&path))
            .ok()
            .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
            .unwrap_or(0);
        files.push((id, path, taken));
    }
    files.sort();
    let files = files
        .into_iter()
        .map(|(id, path, taken)| Arc::new(SpoolFile::new(id, path, taken)))
        .collect();
    Ok((files, next_id))
}

/// The open file a stream spills into.
struct Appender {
    file: Arc<SpoolFile>,
    schema: SchemaRef,
    next_index: u64,
    bytes: u64,
    /// Opened at the first write.
    writer: Option<SegmentWriter>,
}

/// One turn of spilling: a stream's batches with their reserved places.
struct Run {
    stream: String,
    items: Vec<(u64, RecordBatch)>,
}

pub struct Spiller<'a> {
    buffer: &'a Buffer,
    dir: PathBuf,
    next_id: u64,
    appenders: HashMap<String, Appender>,
    metrics: ComponentMetrics,
    /// Failures since the last success; only the first is logged as an error.
    failures: u64,
}

impl<'a> Spiller<'a> {
    pub fn new(buffer: &'a Buffer, dir: PathBuf, next_id: u64, metrics: ComponentMetrics) -> Self {
        Spiller {
            buffer,
            dir,
            next_id,
            appenders: HashMap::new(),
            metrics,
            failures: 0,
        }
    }

    /// Spills while the buffer's memory is over budget, until the buffer closes.
    pub fn run(mut self) {
        loop {
            let mut st = self.buffer.lock();
            let run = loop {
                if st.closed {
                    return;
                }
                // Files of dropped batches are deleted here, off the receiving thread.
                let dead = std::mem::take(&mut st.graveyard);
                if !dead.is_empty() {
                    drop(st);
                    drop(dead);
                    st = self.buffer.lock();
                    continue;
                }
                // A stream whose spool drained starts a new file at its next spill, so the
                // drained one can go.
                let idle: Vec<String> = self
                    .appenders
                    .keys()
                    .filter(|k| {
                        st.streams.get(*k).is_none_or(|q| {
                            q.entries.iter().all(|e| matches!(e.data, Data::Mem(_)))
                        })
                    })
                    .cloned()
                    .collect();
                for k in idle {
                    self.appenders.remove(&k);
                }
                if let Some(run) = self.select(&mut st) {
                    break run;
                }
                st = self.buffer.wait(st, Duration::from_millis(200));
            };
            drop(st);
            if !self.write(run) {
                let st = self.buffer.lock();
                if !st.closed {
                    drop(self.buffer.wait(st, RETRY_AFTER));
                }
            }
        }
    }

    /// Picks what to spill: the stream holding the most memory, from its first in-memory batch
    /// after its spooled ones (or, if none is spooled, from the batch after its head, which the
    /// writer takes next), so the spool holds the stream's batches in order, file after file
    /// (what recovery after a crash relies on), and a burst that arrived before this thread ran
    /// is spilled too. Marks them `Spilling` with their file and index.
    fn select(&mut self, st: &mut State) -> Option<Run> {
        let budget = self.buffer.options.memory_bytes;
        if st.memory_bytes <= budget {
            return None;
        }
        let start_of = |entries: &std::collections::VecDeque<super::buffer::Entry>| match entries
            .iter()
            .rposition(|e| !matches!(e.data, Data::Mem(_)))
        {
            Some(i) => i + 1,
            None => usize::from(entries.len() > 1),
        };
        let (stream, start) = st
            .streams
            .iter()
            .filter_map(|(id, q)| {
                let start = start_of(&q.entries);
                (start < q.entries.len()).then_some((q.mem_bytes, id, start))
            })
            .max()
            .map(|(_, id, start)| (id.clone(), start))?;
        let mut over = st.memory_bytes - budget;
        let q = st.streams.get_mut(&stream)?;
        let mut items = Vec::new();
        let mut run_bytes = 0;
        for e in q.entries.iter_mut().skip(start) {
            if over == 0 || run_bytes >= SPILL_RUN_BYTES {
                break;
            }
            let Data::Mem(batch) = &e.data else { break };
            let fresh = match self.appenders.get(&stream) {
                Some(a) => a.schema != batch.schema() || a.bytes >= SPOOL_FILE_BYTES,
                None => true,
            };
            if fresh && !items.is_empty() {
                break; // the next turn starts the new file
            }
            if fresh {
                let id = self.next_id;
                self.next_id += 1;
                self.appenders.insert(
                    stream.clone(),
                    Appender {
                        file: Arc::new(SpoolFile::new(id, spool_path(&self.dir, id), 0)),
                        schema: batch.schema(),
                        next_index: 0,
                        bytes: 0,
                        writer: None,
                    },
                );
            }
            let a = self.appenders.get_mut(&stream)?;
            let batch = batch.clone();
            e.data = Data::Spilling {
                batch: batch.clone(),
                file: a.file.clone(),
                index: a.next_index,
            };
            a.next_index += 1;
            a.bytes += e.bytes;
            run_bytes += e.bytes;
            over = over.saturating_sub(e.bytes);
            items.push((e.seq, batch));
        }
        (!items.is_empty()).then_some(Run { stream, items })
    }

    /// Writes a run; returns false if the disk failed (the rest stays in memory).
    fn write(&mut self, run: Run) -> bool {
        let Some(a) = self.appenders.get_mut(&run.stream) else {
            return false;
        };
        let mut written = 0;
        let mut failure = None;
        for (_, batch) in &run.items {
            let result = match &mut a.writer {
                Some(w) => w.write(batch).map(drop),
                None => std::fs::create_dir_all(&self.dir)
                    .map_err(|e| StoreError::io(&self.dir, "creating the spool directory", e))
                    .and_then(|()| SegmentWriter::create(&a.file.path, a.schema.clone()))
                    .and_then(|mut w| {
                        let r = w.write(batch).map(drop);
                        a.writer = Some(w);
                        r
                    }),
            };
            match result {
                Ok(()) => written += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut st = self.buffer.lock();
        let mut moved = 0;
        if let Some(q) = st.streams.get_mut(&run.stream) {
            for (i, (seq, _)) in run.items.iter().enumerate() {
                if i < written {
                    moved += q.spilled(*seq);
                } else {
                    q.unspilled(*seq);
                }
            }
        }
        st.memory_bytes = st.memory_bytes.saturating_sub(moved);
        drop(st);
        let Some(e) = failure else {
            if self.failures > 0 {
                tracing::info!(
                    component = self.metrics.id(),
                    failures = self.failures,
                    "spilling to disk works again"
                );
                self.failures = 0;
            }
            return true;
        };
        // The file may end in a cut batch: later spills go to a new one.
        self.appenders.remove(&run.stream);
        self.failures += 1;
        self.metrics
            .error(e.error_type(), "spilling", e.to_string());
        if self.failures == 1 {
            tracing::error!(
                component = self.metrics.id(),
                stream = %run.stream,
                "{e}; the store's buffer keeps the batches in memory (up to buffer_s) and retries"
            );
        }
        false
    }
}

/// The writer's side: reads spooled batches back, in order.
#[derive(Default)]
pub struct Drain {
    readers: Vec<(Arc<SpoolFile>, SegmentReader, u64)>,
}

impl Drain {
    /// Batch `index` of `file`. `None` if it cannot be read (logged and counted by the caller).
    pub fn read(&mut self, file: &Arc<SpoolFile>, index: u64) -> Result<RecordBatch, StoreError> {
        let pos = match self.readers.iter().position(|(f, ..)| f.id == file.id) {
            Some(p) => p,
            None => {
                self.readers
                    .push((file.clone(), SegmentReader::open(&file.path)?, 0));
                self.readers.len() - 1
            }
        };
        let missing = || StoreError::NoCompleteBatch {
            path: file.path.clone(),
            discarded_bytes: 0,
        };
        let (_, reader, next) = self.readers.get_mut(pos).ok_or_else(missing)?;
        // Batches before `index` were taken from memory or dropped: skip them.
        while *next < index {
            reader.next().ok_or_else(missing)?;
            *next += 1;
        }
        let batch = reader.next().ok_or_else(missing)?;
        *next += 1;
        Ok(batch)
    }

    /// The store has `index` of `file`: note it, and close files nobody else holds any more
    /// (which deletes them).
    pub fn done(&mut self, file: Arc<SpoolFile>, index: u64) {
        file.mark_taken(index + 1);
        // Only a restart after `kill -9` needs the note; without it, that restart may store
        // this file's batches twice, which is logged here.
        if let Err(e) = file.persist_taken() {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %file.path.display(), "noting spool progress: {e}");
            }
        }
        drop(file);
        self.readers.retain(|(f, ..)| Arc::strong_count(f) > 1);
    }
}
