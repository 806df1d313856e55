//! The registry of streams: what every stream is and how much of it has flowed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arrow::array::{Array, Float64Array, Int64Array};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::lock;
use super::port::Port;
use crate::batch::Batch;
use crate::edge::Overflow;
use crate::stream::{keys, parse_rate, stream_id_of, Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

/// One registered stream.
pub struct Stream {
    /// Its key in the registry (and in `/streams/{key}`): the id, or `id@producer` for a second
    /// producer of the same id.
    key: String,
    id: String,
    producer: String,
    port_name: String,
    port: Weak<Port>,
    stats: Mutex<Option<Stats>>,
    ended: AtomicBool,
    recent: Mutex<Recent>,
}

/// How much of each stream's latest data the hub keeps in memory, so that SQL and subscribers
/// starting in the past see data the store has not flushed yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Seconds of data (by `time_s`, or the index over the stream's rate; by arrival for a
    /// stream with neither).
    pub window_s: f64,
    /// At most this many bytes per stream, whatever the window says: a raw probe (~23 MB/s)
    /// keeps ~2.8 s by default, more than a store's default 1 s flush interval.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            window_s: 10.0,
            max_bytes: 64 << 20,
        }
    }
}

/// Seconds since the hub's clock started, for streams whose data tells no time.
fn arrival_s() -> f64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// The retained batches of one stream, oldest first, each with its end in seconds (if known).
#[derive(Default)]
struct Recent {
    batches: VecDeque<(Batch, Option<f64>, u64)>,
    bytes: u64,
}

impl Recent {
    fn push(&mut self, batch: &Batch, end_s: Option<f64>, bytes: u64, keep: Retention) {
        if keep.max_bytes == 0 || keep.window_s <= 0.0 {
            return self.batches.clear();
        }
        self.batches.push_back((batch.clone(), end_s, bytes));
        self.bytes += bytes;
        // The newest batch always stays, even alone over the budget: a reader sees the latest.
        while self.batches.len() > 1 {
            let Some((_, front_end, front_bytes)) = self.batches.front() else {
                break;
            };
            let too_old = match (front_end, end_s) {
                (Some(a), Some(b)) => b - a > keep.window_s,
                _ => false,
            };
            if !too_old && self.bytes <= keep.max_bytes {
                break;
            }
            self.bytes -= front_bytes;
            self.batches.pop_front();
        }
    }
}

/// Column positions of the indices in one schema.
struct Columns {
    sample_index: Option<usize>,
    frame_index: Option<usize>,
    time_s: Option<usize>,
}

struct Stats {
    schema: SchemaRef,
    columns: Columns,
    batches: u64,
    rows: u64,
    bytes: u64,
    sample_index: Range<i64>,
    frame_index: Range<i64>,
    time_s: Range<f64>,
}

/// First and last value of an index column.
#[derive(Clone, Copy, Default)]
struct Range<T> {
    first: Option<T>,
    last: Option<T>,
}

impl<T: Copy> Range<T> {
    fn update(&mut self, ends: Option<(T, T)>) {
        if let Some((a, b)) = ends {
            self.first.get_or_insert(a);
            self.last = Some(b);
        }
    }
}

fn int_ends(batch: &RecordBatch, col: Option<usize>) -> Option<(i64, i64)> {
    let a = batch.column(col?).as_any().downcast_ref::<Int64Array>()?;
    let n = a.len();
    (n > 0 && a.null_count() == 0).then(|| (a.value(0), a.value(n - 1)))
}

fn float_ends(batch: &RecordBatch, col: Option<usize>) -> Option<(f64, f64)> {
    let a = batch.column(col?).as_any().downcast_ref::<Float64Array>()?;
    let n = a.len();
    (n > 0 && a.null_count() == 0).then(|| (a.value(0), a.value(n - 1)))
}

impl Stream {
    pub(super) fn new(key: String, id: &str, port: &Arc<Port>) -> Self {
        Stream {
            key,
            id: id.to_string(),
            producer: port.producer().to_string(),
            port_name: port.name().to_string(),
            port: Arc::downgrade(port),
            stats: Mutex::new(None),
            ended: AtomicBool::new(false),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Its producer's port, while that exists.
    pub(super) fn port(&self) -> Option<Arc<Port>> {
        self.port.upgrade()
    }

    /// The schema of its latest batch.
    pub fn schema(&self) -> Option<SchemaRef> {
        lock(&self.stats).as_ref().map(|s| s.schema.clone())
    }

    /// Marks it ended (its port ended).
    pub(super) fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The retained batches, oldest first (see [`Retention`]).
    pub fn recent(&self) -> Vec<RecordBatch> {
        let batches: Vec<Batch> = lock(&self.recent)
            .batches
            .iter()
            .map(|(b, _, _)| b.clone())
            .collect();
        // Columns not built yet are built here, outside the lock the producer takes.
        let columns: Vec<RecordBatch> = batches.iter().map(|b| b.record_batch().clone()).collect();
        // From now on the retention keeps those batches as columns only, so that a stream that
        // is read while retained holds its data once, not as samples and columns both.
        let mut recent = lock(&self.recent);
        let mut next = batches.iter();
        for (kept, _, _) in recent.batches.iter_mut() {
            // Both lists run oldest first; the producer may have dropped some old ones since.
            if let Some(read) = next.by_ref().find(|b| b.ptr_eq(kept)) {
                if let Some(lighter) = read.columns_only() {
                    *kept = lighter;
                }
            }
        }
        columns
    }

    /// How many retained batches still hold samples as a source read them (see `recent`).
    #[cfg(test)]
    pub(crate) fn retained_as_samples(&self) -> usize {
        lock(&self.recent)
            .batches
            .iter()
            .filter(|(b, _, _)| b.sample_rows().is_some())
            .count()
    }

    /// Counts one batch of `bytes` Arrow bytes and retains it.
    pub(crate) fn record(&self, batch: &Batch, bytes: u64, keep: Retention) {
        // A stream whose batches tell no time (tables without `time_s` or a rate: moments,
        // labels, progress) is windowed by arrival; otherwise each such stream kept its whole
        // byte budget, which a 30-minute soak showed as 400 MB of growth.
        let end_s = self
            .record_stats(batch, bytes)
            .or_else(|| Some(arrival_s()));
        lock(&self.recent).push(batch, end_s, bytes, keep);
    }

    /// Updates the statistics; returns the batch's end in seconds, if its schema tells.
    fn record_stats(&self, batch: &Batch, bytes: u64) -> Option<f64> {
        self.ended.store(false, Ordering::Release);
        let mut guard = lock(&self.stats);
        let schema = batch.schema_ref();
        let stats = guard.get_or_insert_with(|| Stats {
            schema: schema.clone(),
            columns: Columns::of(schema),
            batches: 0,
            rows: 0,
            bytes: 0,
            sample_index: Range::default(),
            frame_index: Range::default(),
            time_s: Range::default(),
        });
        if !Arc::ptr_eq(&stats.schema, schema) {
            stats.schema = schema.clone();
            stats.columns = Columns::of(schema);
        }
        stats.batches += 1;
        stats.rows += batch.num_rows() as u64;
        stats.bytes += bytes;
        let c = &stats.columns;
        let (s, f, t) = if batch.sample_rows().is_some() {
            // Samples as a source read them: their indices are known without the columns.
            (batch.sample_index_ends(), None, None)
        } else {
            let b = batch.record_batch();
            (
                int_ends(b, c.sample_index),
                int_ends(b, c.frame_index),
                float_ends(b, c.time_s),
            )
        };
        stats.sample_index.update(s);
        stats.frame_index.update(f);
        stats.time_s.update(t);
        let rate = || {
            let md = stats.schema.metadata();
            md.get(keys::SAMPLING_HZ).and_then(|t| parse_rate(t).ok())
        };
        match (t, s.or(f)) {
            (Some((_, end)), _) => Some(end),
            (None, Some((_, end))) => rate().filter(|r| *r > 0.0).map(|r| end as f64 / r),
            _ => None,
        }
    }

    pub(super) fn info(&self) -> StreamInfo {
        let consumers = self
            .port
            .upgrade()
            .map(|p| p.consumers(&self.key))
            .unwrap_or_default();
        let guard = lock(&self.stats);
        let mut info = StreamInfo {
            key: self.key.clone(),
            id: self.id.clone(),
            producer: self.producer.clone(),
            port: self.port_name.clone(),
            ended: self.ended(),
            layout: None,
            kind: None,
            rate_hz: None,
            batches: 0,
            rows: 0,
            bytes: 0,
            first_sample_index: None,
            last_sample_index: None,
            first_frame_index: None,
            last_frame_index: None,
            first_time_s: None,
            last_time_s: None,
            consumers,
            schema: None,
        };
        if let Some(s) = guard.as_ref() {
            let md = s.schema.metadata();
            info.layout = Layout::of(&s.schema);
            info.kind = md.get(keys::STREAM_KIND).cloned();
            info.rate_hz = md.get(keys::SAMPLING_HZ).and_then(|t| parse_rate(t).ok());
            info.batches = s.batches;
            info.rows = s.rows;
            info.bytes = s.bytes;
            (info.first_sample_index, info.last_sample_index) =
                (s.sample_index.first, s.sample_index.last);
            (info.first_frame_index, info.last_frame_index) =
                (s.frame_index.first, s.frame_index.last);
            (info.first_time_s, info.last_time_s) = (s.time_s.first, s.time_s.last);
            info.schema = Some(SchemaInfo::of(&s.schema));
        }
        info
    }
}

impl Columns {
    fn of(schema: &SchemaRef) -> Self {
        Columns {
            sample_index: schema.index_of(SAMPLE_INDEX).ok(),
            frame_index: schema.index_of(FRAME_INDEX).ok(),
            time_s: schema.index_of(TIME_S).ok(),
        }
    }
}

/// The stream id of a batch, as the registry keys it.
pub fn stream_key(schema: &Schema) -> &str {
    stream_id_of(schema).unwrap_or("unnamed")
}

/// One entry of `GET /streams`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// Where to subscribe: `/streams/{key}`. The id, or `id@producer` when two components emit
    /// the same id (a transform that keeps its input's id).
    pub key: String,
    /// `neurod.stream_id` of its batches.
    pub id: String,
    /// The component and output port that produce it (`""`: the default port).
    pub producer: String,
    pub port: String,
    /// Its producer has finished (or was removed); a restarted producer resumes the entry.
    pub ended: bool,
    pub layout: Option<Layout>,
    /// `neurod.stream_kind` (`ap`, `lf`, `twophoton`, ...).
    pub kind: Option<String>,
    /// Sampling rate, or frame rate for frames and traces (`neurod.sampling_hz`).
    pub rate_hz: Option<f64>,
    pub batches: u64,
    pub rows: u64,
    /// Arrow bytes of the batches.
    pub bytes: u64,
    pub first_sample_index: Option<i64>,
    pub last_sample_index: Option<i64>,
    pub first_frame_index: Option<i64>,
    pub last_frame_index: Option<i64>,
    pub first_time_s: Option<f64>,
    pub last_time_s: Option<f64>,
    /// Who listens on its port: configured consumers and run-time subscribers.
    pub consumers: Vec<ConsumerInfo>,
    pub schema: Option<SchemaInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerInfo {
    pub consumer: String,
    pub policy: Overflow,
    pub subscriber: bool,
    pub dropped_rows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchemaInfo {
    pub fields: Vec<FieldInfo>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl SchemaInfo {
    fn of(schema: &SchemaRef) -> Self {
        SchemaInfo {
            fields: schema
                .fields()
                .iter()
                .map(|f| FieldInfo {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                    metadata: f.metadata().clone().into_iter().collect(),
                })
                .collect(),
            metadata: schema.metadata().clone().into_iter().collect(),
        }
    }
}
