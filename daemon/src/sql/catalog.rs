//! The streams a session can query, by table name: the stream directories under the data
//! directory (read when a query names one) and the hub's registry, plus the system tables; and
//! a stream's rows from a past time for Arrow Flight subscribers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use pipelines::hub::Hub;
use pipelines::storage::{self, SegmentReader, StoreError, StoredStream};
use pipelines::stream::{keys, parse_rate, SAMPLE_INDEX, TIME_S};

use super::engine::Live;
use super::rows::{Bounds, Order};
use super::table::StreamTable;

/// Every stream under the data directory and in the hub, by table name (the stream id, or the
/// hub's `id@producer` key for a second producer of an id), plus the system tables.
///
/// A session lists only directory names; a stream's directory is read when a query names its
/// table (or lists them all: `streams`), so a query costs the same however much is stored.
pub(crate) struct StreamSchema {
    streams: BTreeMap<String, Where>,
    live: Option<Live>,
    /// Tables registered by name (the system tables), and stream tables once built.
    tables: Mutex<BTreeMap<String, Arc<dyn TableProvider>>>,
}

/// Where a stream's rows are.
#[derive(Debug, Clone, Default)]
pub(super) struct Where {
    /// The stream directories that hold it, one per store, read when first needed ...
    dirs: Vec<PathBuf>,
    /// ... as the store holding the most rows of it has it.
    stored: OnceLock<Option<StoredStream>>,
    /// Its key in the hub, when the daemon has it.
    live: Option<String>,
}

/// One stream: its table name, what the store holds, its key in the hub.
pub(crate) type Entry = (String, Option<StoredStream>, Option<String>);

impl StreamSchema {
    pub(crate) fn new(data_dir: &Path, live: Option<&Live>) -> Result<Self, StoreError> {
        let mut streams: BTreeMap<String, Where> = BTreeMap::new();
        for dir in storage::catalog::stream_dirs(data_dir)? {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            match name
                .as_deref()
                .and_then(storage::layout::stream_id_from_dir_name)
            {
                Some(id) => streams.entry(id).or_default().dirs.push(dir),
                // A store written before reversible names: its ids are in its files.
                None => {
                    for s in storage::catalog::read_stream_dir(&dir)? {
                        streams
                            .entry(s.stream_id)
                            .or_default()
                            .dirs
                            .push(dir.clone());
                    }
                }
            }
        }
        if let Some(live) = live {
            for info in live.hub.streams() {
                if info.schema.is_some() {
                    let key = info.key;
                    streams.entry(key.clone()).or_default().live = Some(key.clone());
                }
            }
        }
        Ok(StreamSchema {
            streams,
            live: live.cloned(),
            tables: Mutex::new(BTreeMap::new()),
        })
    }

    fn hub(&self) -> Option<&Arc<Hub>> {
        self.live.as_ref().map(|l| &l.hub)
    }

    /// What the store holding the most rows of `name` has of it (two stores of one stream: a
    /// copy kept for another purpose). Read once per session.
    pub(crate) fn stored(&self, name: &str) -> Result<Option<StoredStream>> {
        let Some(w) = self.streams.get(name) else {
            return Ok(None);
        };
        if let Some(s) = w.stored.get() {
            return Ok(s.clone());
        }
        let mut best: Option<StoredStream> = None;
        for dir in &w.dirs {
            for s in storage::catalog::read_stream_dir(dir).map_err(external)? {
                if s.stream_id == name && best.as_ref().is_none_or(|b| rows_held(b) < rows_held(&s))
                {
                    best = Some(s);
                }
            }
        }
        Ok(w.stored.get_or_init(|| best).clone())
    }

    /// The table names of the streams.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.streams.keys()
    }

    /// Every stream: its table name, what the store holds, its key in the hub (reads every
    /// stream directory).
    pub(crate) fn entries(&self) -> Result<Vec<Entry>> {
        self.streams
            .iter()
            .map(|(n, w)| Ok((n.clone(), self.stored(n)?, w.live.clone())))
            .collect()
    }

    /// `neurod.stream_kind` of a stream, as its newest stored schema or the hub says.
    pub(crate) fn kind(&self, name: &str) -> Result<Option<String>> {
        let stored = self.stored(name)?.and_then(|s| {
            let md = &s.schema.as_ref()?.metadata;
            md.get(keys::STREAM_KIND).cloned()
        });
        Ok(stored.or_else(|| self.live_kind(name)))
    }

    /// `neurod.stream_kind` of a stream the hub has.
    pub(crate) fn live_kind(&self, name: &str) -> Option<String> {
        let key = self.streams.get(name)?.live.as_ref()?;
        self.hub()?.stream(key)?.kind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<dyn TableProvider>>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .build_stream(name)?
            .map(|(t, _)| Arc::new(t) as Arc<dyn TableProvider>))
    }

    /// The stream's table, and its schema as the hub or the store has it (with metadata).
    fn build_stream(&self, name: &str) -> Result<Option<(StreamTable, SchemaRef)>> {
        let Some(w) = self.streams.get(name) else {
            return Ok(None);
        };
        let live_schema = match (self.hub(), &w.live) {
            (Some(hub), Some(key)) => hub.schema(key),
            _ => None,
        };
        let stored = self.stored(name)?;
        let schema = match (live_schema, &stored) {
            (Some(s), _) => s,
            (None, Some(stored)) => match stored_schema(stored)? {
                Some(s) => s,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let columns = table_schema(&schema);
        let time_rate = derived_time_rate(&schema);
        let table = StreamTable {
            id: name.to_string(),
            schema: with_time_s(&columns, time_rate),
            columns,
            time_rate,
            stored,
            hub: self.hub().cloned().zip(w.live.clone()),
        };
        Ok(Some((table, schema)))
    }

    /// A stream's schema as the hub or the store has it (with its metadata).
    pub(crate) fn stream_schema(&self, name: &str) -> Result<Option<SchemaRef>> {
        Ok(self.build_stream(name)?.map(|(_, s)| s))
    }

    /// A stream's rows from `from_time_s` on, in order, for a reader that starts in the past
    /// (Arrow Flight `DoGet`): the stored files that may hold them, then the live segments'
    /// batches and the hub's retained rows past the stored ones, the same seam as a scan.
    /// `None` for an unknown stream.
    pub(crate) fn history(&self, name: &str, from_time_s: f64) -> Result<Option<History>> {
        let Some((table, original)) = self.build_stream(name)? else {
            return Ok(None);
        };
        // The stream's own columns: a derived `time_s` is the table's, not in its files.
        let order = Order::of(&table.columns);
        let has_time = table
            .columns
            .field_with_name(TIME_S)
            .is_ok_and(|f| f.data_type() == &DataType::Float64);
        let rate = original
            .metadata()
            .get(keys::SAMPLING_HZ)
            .and_then(|r| parse_rate(r).ok());
        // Rows start at `time_s`, or at the sample at that time when only the index says.
        let start = match (has_time, order, rate) {
            (true, _, _) => Some((TIME_S, from_time_s)),
            (false, Order::Index(SAMPLE_INDEX), Some(hz)) => {
                Some((SAMPLE_INDEX, (from_time_s * hz).ceil()))
            }
            _ => None,
        };
        let bound = |c: &str| Bounds {
            lo: start.filter(|(sc, _)| *sc == c).map(|(_, v)| v),
            hi: None,
        };
        let bounds = order.column().map(bound).unwrap_or_default();
        let snap = table.snapshot(order, &bounds, &bound(TIME_S))?;
        Ok(Some(History {
            schema: table.columns.clone(),
            files: snap.files,
            memory: snap.memory,
            order: order.column(),
            start,
        }))
    }
}

pub(super) fn rows_held(s: &StoredStream) -> u64 {
    s.rows() + s.segments.len() as u64
}

/// The Arrow schema of the newest stored file (from the manifest: parsing the footer of a wide
/// raw file took 10 ms a query), or of the oldest segment when nothing is converted yet.
pub(super) fn stored_schema(stored: &StoredStream) -> Result<Option<SchemaRef>> {
    if let Some(s) = stored.schema.as_ref().and_then(schema_of_json) {
        return Ok(Some(Arc::new(s)));
    }
    if let Some(f) = stored.files.last() {
        let reader = storage::open_parquet(&f.path).map_err(external)?;
        return Ok(Some(arrow::record_batch::RecordBatchReader::schema(
            &reader,
        )));
    }
    for seg in &stored.segments {
        match SegmentReader::open(seg) {
            Ok(r) => return Ok(Some(r.schema())),
            Err(StoreError::NoCompleteBatch { .. }) => continue,
            Err(e) => return Err(external(e)),
        }
    }
    Ok(None)
}

/// The Arrow schema a manifest describes; `None` if a type does not parse back.
pub(super) fn schema_of_json(json: &storage::SchemaJson) -> Option<Schema> {
    let fields = json
        .fields
        .iter()
        .map(|f| {
            Some(Field::new(
                &f.name,
                f.data_type.parse::<DataType>().ok()?,
                f.nullable,
            ))
        })
        .collect::<Option<Vec<Field>>>()?;
    let metadata = json.metadata.clone().into_iter().collect();
    Some(Schema::new_with_metadata(fields, metadata))
}

/// A stream's schema as a table: no metadata (files of one stream differ in it) and every
/// column nullable (a column added later is null in older files).
pub(crate) fn table_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The rate a continuous stream's `time_s` is derived from: it has `sample_index`, no `time_s`
/// and a `neurod.sampling_hz`.
pub(super) fn derived_time_rate(schema: &Schema) -> Option<f64> {
    if schema.index_of(TIME_S).is_ok() || schema.index_of(SAMPLE_INDEX).is_err() {
        return None;
    }
    if pipelines::stream::Layout::of(schema) != Some(pipelines::stream::Layout::Continuous) {
        return None;
    }
    let rate = schema
        .metadata()
        .get(pipelines::stream::keys::SAMPLING_HZ)?;
    pipelines::stream::parse_rate(rate)
        .ok()
        .filter(|r| *r > 0.0)
}

pub(super) fn with_time_s(columns: &SchemaRef, rate: Option<f64>) -> SchemaRef {
    if rate.is_none() {
        return columns.clone();
    }
    let mut fields: Vec<Field> = columns
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(TIME_S, DataType::Float64, true));
    Arc::new(Schema::new(fields))
}

pub(super) fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl std::fmt::Debug for StreamSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSchema")
            .field("streams", &self.streams.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[async_trait]
impl SchemaProvider for StreamSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.push(super::system::STREAMS.to_string());
        names.extend(self.streams.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.lock().get(name) {
            return Ok(Some(t.clone()));
        }
        let built = if name == super::system::STREAMS {
            Some(super::system::streams_table(self, self.live.as_ref())?)
        } else {
            self.build(name)?
        };
        if let Some(t) = &built {
            self.lock().insert(name.to_string(), t.clone());
        }
        Ok(built)
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.lock().insert(name, table))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == super::system::STREAMS
            || self.streams.contains_key(name)
            || self.lock().contains_key(name)
    }
}

/// See [`StreamSchema::history`]. Batches are in the table's schema (no metadata, every column
/// nullable); the files' rows must be [`conform`]ed to it.
pub(crate) struct History {
    pub(crate) schema: SchemaRef,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) memory: Vec<RecordBatch>,
    /// The column the rows are ordered by, if any.
    pub(crate) order: Option<&'static str>,
    /// The first rows to send: `column >= value` (`None`: every row).
    pub(crate) start: Option<(&'static str, f64)>,
}
