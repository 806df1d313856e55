//! One stream as a table: its stored rows followed by the rows the hub holds that the store
//! has not flushed yet.
//!
//! **The seam.** A stream's rows are ordered by its index column (`sample_index`, else
//! `frame_index`, else `time_s`), and a store writes whole batches, so "stored" is everything up
//! to the largest index the store holds (finished Parquet files and the complete batches of
//! the live segment, read at scan time), and the hub's retained batches contribute only rows
//! past it. Reading the store before the hub, and the hub's window being longer than a store's
//! flush interval, leaves neither a gap nor a row counted twice.
//!
//! **Pruning.** Filters on the index column and `time_s` skip whole files (by the manifest's
//! bounds) and batches; the same filters go to the Parquet reader as a predicate for its row
//! group and page statistics; DataFusion applies them exactly afterwards. Projection reads only
//! the columns asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use pipelines::hub::Hub;
use pipelines::storage::{self, FileEntry, SegmentReader, StoreError, StoredStream};
use pipelines::stream::{keys, parse_rate, stream_id_of, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

use super::engine::Live;

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
struct Where {
    /// The stream directories that hold it, one per store, read when first needed ...
    dirs: Vec<PathBuf>,
    /// ... as the store holding the most rows of it has it.
    stored: OnceLock<Option<StoredStream>>,
    /// Its key in the hub, when the daemon has it.
    live: Option<String>,
}

/// One stream: its table name, what the store holds, its key in the hub.
pub(crate) type Entry = (String, Option<StoredStream>, Option<String>);

/// The stream directories under a data directory (`<data>/<store>/<stream>`) or one store.
fn stream_dirs(data_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let children = |dir: &Path| -> Result<Vec<PathBuf>, StoreError> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| StoreError::io(dir, "listing", e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        out.sort();
        Ok(out)
    };
    if !data_dir.is_dir() {
        return Ok(Vec::new());
    }
    let top = children(data_dir)?;
    if top.iter().any(|d| storage::is_stream_dir(d)) {
        return Ok(top);
    }
    let mut out = Vec::new();
    for store in top {
        out.extend(children(&store)?);
    }
    Ok(out)
}

impl StreamSchema {
    pub(crate) fn new(data_dir: &Path, live: Option<&Live>) -> Result<Self, StoreError> {
        let mut streams: BTreeMap<String, Where> = BTreeMap::new();
        for dir in stream_dirs(data_dir)? {
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
            (Some(hub), Some(key)) => hub.stream(key).and_then(|_| hub_schema(hub, key)),
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

fn rows_held(s: &StoredStream) -> u64 {
    s.rows() + s.segments.len() as u64
}

/// The schema of the stream's latest batch in the hub.
fn hub_schema(hub: &Hub, key: &str) -> Option<SchemaRef> {
    hub.recent(key)
        .last()
        .map(|b| b.schema())
        .or_else(|| hub_registry_schema(hub, key))
}

fn hub_registry_schema(hub: &Hub, key: &str) -> Option<SchemaRef> {
    let info = hub.stream(key)?;
    let fields = info.schema?.fields;
    let fields: Vec<Field> = fields
        .iter()
        .filter_map(|f| {
            let dt: DataType = f.data_type.parse().ok()?;
            Some(Field::new(&f.name, dt, true))
        })
        .collect();
    Some(Arc::new(Schema::new(fields)))
}

/// The Arrow schema of the newest stored file (from the manifest: parsing the footer of a wide
/// raw file took 10 ms a query), or of the oldest segment when nothing is converted yet.
fn stored_schema(stored: &StoredStream) -> Result<Option<SchemaRef>> {
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
fn schema_of_json(json: &storage::SchemaJson) -> Option<Schema> {
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
fn derived_time_rate(schema: &Schema) -> Option<f64> {
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

fn with_time_s(columns: &SchemaRef, rate: Option<f64>) -> SchemaRef {
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

/// Whether an expression refers to `column`.
fn mentions(e: &Expr, column: &str) -> bool {
    e.column_refs().iter().any(|c| c.name == column)
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl std::fmt::Debug for StreamSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSchema")
            .field("streams", &self.streams.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable").field("id", &self.id).finish()
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

/// One stream: stored files, then the hub's newer rows.
struct StreamTable {
    id: String,
    /// The table as queries see it: `columns`, plus `time_s` where it is derived.
    schema: SchemaRef,
    /// The stream's own columns (stored and in memory).
    columns: SchemaRef,
    /// Continuous streams carry no `time_s` column; their table derives it as
    /// `sample_index / sampling_hz` (the store's own rule for their files' time bounds), so that
    /// `WHERE time_s BETWEEN a AND b` works on raw data too and prunes by `sample_index`.
    time_rate: Option<f64>,
    stored: Option<StoredStream>,
    /// The hub and the stream's key in it.
    hub: Option<(Arc<Hub>, String)>,
}

/// The column rows are ordered by, which the seam and pruning use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Index(&'static str),
    Time,
    None,
}

impl Order {
    fn of(schema: &Schema) -> Order {
        for c in [SAMPLE_INDEX, FRAME_INDEX] {
            if schema
                .field_with_name(c)
                .is_ok_and(|f| f.data_type() == &DataType::Int64)
            {
                return Order::Index(c);
            }
        }
        if schema
            .field_with_name(TIME_S)
            .is_ok_and(|f| f.data_type() == &DataType::Float64)
        {
            return Order::Time;
        }
        Order::None
    }

    fn column(self) -> Option<&'static str> {
        match self {
            Order::Index(c) => Some(c),
            Order::Time => Some(TIME_S),
            Order::None => None,
        }
    }

    /// The largest value of the order column in a finished file.
    fn file_last(self, f: &FileEntry) -> Option<f64> {
        match self {
            Order::Index(_) => f.last_index.map(|i| i as f64),
            Order::Time => f.last_time_s,
            Order::None => None,
        }
    }
}

/// Inclusive bounds on one column, from the query's filters; `None`: unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bounds {
    lo: Option<f64>,
    hi: Option<f64>,
}

impl Bounds {
    fn of(filters: &[Expr], column: &str) -> Bounds {
        let mut b = Bounds::default();
        for f in filters {
            b.narrow(f, column);
        }
        b
    }

    fn narrow(&mut self, e: &Expr, column: &str) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.narrow(left, column);
                    self.narrow(right, column);
                    return;
                }
                let (op, value) = match (is_column(left, column), is_column(right, column)) {
                    (true, false) => (Some(*op), number(right)),
                    (false, true) => (op.swap(), number(left)),
                    _ => (None, None),
                };
                if let (Some(op), Some(v)) = (op, value) {
                    match op {
                        Operator::Gt | Operator::GtEq => self.raise(v),
                        Operator::Lt | Operator::LtEq => self.lower(v),
                        Operator::Eq => {
                            self.raise(v);
                            self.lower(v);
                        }
                        _ => {}
                    }
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, column) => {
                if let Some(v) = number(low) {
                    self.raise(v);
                }
                if let Some(v) = number(high) {
                    self.lower(v);
                }
            }
            _ => {}
        }
    }

    fn raise(&mut self, v: f64) {
        self.lo = Some(self.lo.map_or(v, |lo| lo.max(v)));
    }
    fn lower(&mut self, v: f64) {
        self.hi = Some(self.hi.map_or(v, |hi| hi.min(v)));
    }

    /// Whether values in `[first, last]` may pass (unknown ends may).
    fn overlaps(&self, first: Option<f64>, last: Option<f64>) -> bool {
        let below = matches!((last, self.lo), (Some(l), Some(lo)) if l < lo);
        let above = matches!((first, self.hi), (Some(f), Some(hi)) if f > hi);
        !(below || above)
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == name)
}

fn number(e: &Expr) -> Option<f64> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    match v {
        ScalarValue::Int64(Some(x)) => Some(*x as f64),
        ScalarValue::Int32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::UInt64(Some(x)) => Some(*x as f64),
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        _ => None,
    }
}

/// The smallest and largest values of a batch's column (Int64 or Float64), as f64.
pub(crate) fn column_range(batch: &RecordBatch, column: &str) -> (Option<f64>, Option<f64>) {
    let Some(a) = batch.column_by_name(column) else {
        return (None, None);
    };
    if let Some(a) = a.as_primitive_opt::<Int64Type>() {
        let lo = arrow::compute::min(a).map(|v| v as f64);
        let hi = arrow::compute::max(a).map(|v| v as f64);
        return (lo, hi);
    }
    if let Some(a) = a.as_primitive_opt::<Float64Type>() {
        return (arrow::compute::min(a), arrow::compute::max(a));
    }
    (None, None)
}

/// The rows of `batch` whose `column` is greater than `after`.
pub(crate) fn rows_after(batch: &RecordBatch, column: &str, after: f64) -> Result<RecordBatch> {
    rows_past(batch, column, after, false)
}

/// The rows of `batch` whose `column` is at least `from`.
pub(crate) fn rows_from(batch: &RecordBatch, column: &str, from: f64) -> Result<RecordBatch> {
    rows_past(batch, column, from, true)
}

/// The rows of `batch` whose `column` is past `bound` (or equal to it, if `inclusive`).
fn rows_past(
    batch: &RecordBatch,
    column: &str,
    bound: f64,
    inclusive: bool,
) -> Result<RecordBatch> {
    let keeps = |v: f64| v > bound || (inclusive && v == bound);
    let (lo, hi) = column_range(batch, column);
    if lo.is_some_and(keeps) {
        return Ok(batch.clone());
    }
    if hi.is_none_or(|hi| !keeps(hi)) {
        return Ok(batch.slice(0, 0));
    }
    let Some(a) = batch.column_by_name(column) else {
        return Ok(batch.clone());
    };
    let keep: BooleanArray = if let Some(a) = a.as_primitive_opt::<Int64Type>() {
        a.iter().map(|v| v.map(|v| keeps(v as f64))).collect()
    } else if let Some(a) = a.as_primitive_opt::<Float64Type>() {
        a.iter().map(|v| v.map(keeps)).collect()
    } else {
        return Ok(batch.clone());
    };
    Ok(filter_record_batch(batch, &keep)?)
}

/// `batch` with exactly the table's columns and types (by name; a missing column is null).
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
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

/// What a scan reads, fixed when it is planned.
struct Snapshot {
    files: Vec<PathBuf>,
    /// Complete batches of live segments and the hub's newer rows.
    memory: Vec<RecordBatch>,
}

impl StreamTable {
    /// The stored files and batches that may hold rows within `bounds`, then the hub's rows
    /// past the stored ones.
    fn snapshot(&self, order: Order, bounds: &Bounds, time: &Bounds) -> Result<Snapshot> {
        let mut snap = Snapshot {
            files: Vec::new(),
            memory: Vec::new(),
        };
        let mut stored_last: Option<f64> = None;
        let mut any_stored = false;
        if let Some(stored) = &self.stored {
            let mut tries = 0;
            let part = loop {
                // A segment converted (and removed) while we read is a Parquet file on a reread.
                match self.stored_part(stored, order, bounds, time) {
                    Err(e) if is_not_found(&e) && tries < 5 => tries += 1,
                    other => break other?,
                }
            };
            (snap, stored_last, any_stored) = part;
        }
        if let Some((hub, key)) = &self.hub {
            for b in hub.recent(key) {
                let b = match (order.column(), stored_last) {
                    (Some(c), Some(last)) => rows_after(&b, c, last)?,
                    // Without an order, stored rows cannot be told from retained ones: a
                    // stream the store holds is read from the store only.
                    (None, _) if any_stored => continue,
                    _ => b,
                };
                if b.num_rows() > 0 && may_hold(&b, order, bounds, time) {
                    snap.memory.push(conform(&b, &self.columns)?);
                }
            }
        }
        Ok(snap)
    }

    /// The store's part: files and segment batches that may match, the largest order value
    /// stored, and whether anything is stored.
    fn stored_part(
        &self,
        stored: &StoredStream,
        order: Order,
        bounds: &Bounds,
        time: &Bounds,
    ) -> Result<(Snapshot, Option<f64>, bool)> {
        let mut snap = Snapshot {
            files: Vec::new(),
            memory: Vec::new(),
        };
        let mut last: Option<f64> = None;
        let mut any = false;
        let current = self.reread(stored)?;
        for f in &current.files {
            any |= f.entry.rows > 0;
            last = max_opt(last, order.file_last(&f.entry));
            let (first, end) = match order {
                Order::Index(_) => (
                    f.entry.first_index.map(|i| i as f64),
                    f.entry.last_index.map(|i| i as f64),
                ),
                _ => (f.entry.first_time_s, f.entry.last_time_s),
            };
            let time_ok = time.overlaps(f.entry.first_time_s, f.entry.last_time_s);
            if bounds.overlaps(first, end) && time_ok {
                snap.files.push(f.path.clone());
            }
        }
        for b in segment_batches(&current, &self.id)? {
            any |= b.num_rows() > 0;
            if let Some(c) = order.column() {
                last = max_opt(last, column_range(&b, c).1);
            }
            if may_hold(&b, order, bounds, time) {
                snap.memory.push(conform(&b, &self.columns)?);
            }
        }
        Ok((snap, last, any))
    }

    /// The stream's files as they are now (a segment converted since the session listed it
    /// is a Parquet file now).
    fn reread(&self, stored: &StoredStream) -> Result<StoredStream> {
        let found = storage::catalog::read_stream_dir(&stored.dir).map_err(external)?;
        Ok(found
            .into_iter()
            .find(|s| s.stream_id == stored.stream_id)
            .unwrap_or_else(|| StoredStream {
                files: Vec::new(),
                segments: Vec::new(),
                ..stored.clone()
            }))
    }

    fn parquet_exec(
        &self,
        state: &dyn Session,
        files: &[PathBuf],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut source = ParquetSource::new(self.columns.clone());
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.columns.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let mut partitioned = Vec::with_capacity(files.len());
        for path in files {
            // Size and modification time: what the footer cache checks an entry against.
            let meta = std::fs::metadata(path)
                .map_err(|e| external(StoreError::io(path, "reading the size of", e)))?;
            let mut f = PartitionedFile::new(String::new(), meta.len());
            if let Ok(t) = meta.modified() {
                f.object_meta.last_modified = chrono::DateTime::<chrono::Utc>::from(t);
            }
            f.object_meta.location =
                datafusion::object_store::path::Path::from_absolute_path(path).map_err(external)?;
            partitioned.push(f);
        }
        let partitions = state.config().target_partitions().max(1);
        let per_group = partitioned.len().div_ceil(partitions).max(1);
        let groups: Vec<FileGroup> = partitioned
            .chunks(per_group)
            .map(|c| FileGroup::new(c.to_vec()))
            .collect();
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

fn may_hold(b: &RecordBatch, order: Order, bounds: &Bounds, time: &Bounds) -> bool {
    let by_order = match order.column() {
        Some(c) => {
            let (lo, hi) = column_range(b, c);
            bounds.overlaps(lo, hi)
        }
        None => true,
    };
    let (lo, hi) = column_range(b, TIME_S);
    by_order && time.overlaps(lo, hi)
}

fn is_not_found(e: &DataFusionError) -> bool {
    let DataFusionError::External(inner) = e else {
        return false;
    };
    matches!(
        inner.downcast_ref::<StoreError>(),
        Some(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
    )
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The complete batches of a stream's live segments (a segment converted meanwhile is skipped:
/// the caller's reread found its Parquet file only if it came after; see `reread`).
fn segment_batches(stored: &StoredStream, id: &str) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for seg in &stored.segments {
        let reader = match SegmentReader::open(seg) {
            Ok(r) => r,
            Err(StoreError::NoCompleteBatch { .. }) => continue,
            Err(e) => return Err(external(e)),
        };
        if stream_id_of(&reader.schema()).is_some_and(|s| s != id) {
            continue;
        }
        out.extend(reader);
    }
    Ok(out)
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only; DataFusion applies every filter to the rows afterwards.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match self.time_rate {
            Some(rate) => self.scan_with_time(state, rate, projection, filters, limit),
            None => self.scan_columns(state, projection, filters, limit, Bounds::default()),
        }
    }
}

impl StreamTable {
    /// A scan of a table whose `time_s` is derived: the stream's columns (with `sample_index`
    /// if `time_s` is wanted), `time_s` bounds turned into `sample_index` bounds, then
    /// `time_s` computed.
    fn scan_with_time(
        &self,
        state: &dyn Session,
        rate: f64,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let time_at = self.columns.fields().len();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..=time_at).collect(),
        };
        let sample_at = self.columns.index_of(SAMPLE_INDEX)?;
        let mut inner: Vec<usize> = wanted.iter().copied().filter(|&i| i < time_at).collect();
        if wanted.contains(&time_at) && !inner.contains(&sample_at) {
            inner.push(sample_at);
        }
        let time = Bounds::of(filters, TIME_S);
        let by_time = Bounds {
            lo: time.lo.map(|t| (t * rate).floor()),
            hi: time.hi.map(|t| (t * rate).ceil()),
        };
        let own: Vec<Expr> = filters
            .iter()
            .filter(|f| !mentions(f, TIME_S))
            .cloned()
            .chain(by_time.lo.map(|lo| {
                datafusion::prelude::col(SAMPLE_INDEX).gt_eq(datafusion::prelude::lit(lo as i64))
            }))
            .chain(by_time.hi.map(|hi| {
                datafusion::prelude::col(SAMPLE_INDEX).lt_eq(datafusion::prelude::lit(hi as i64))
            }))
            .collect();
        let plan = self.scan_columns(state, Some(&inner), &own, limit, by_time)?;
        let inner_schema = plan.schema();
        let df_schema = DFSchema::try_from(inner_schema.as_ref().clone())?;
        let mut exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> =
            Vec::with_capacity(wanted.len());
        for &i in &wanted {
            if i == time_at {
                let t = datafusion::prelude::cast(
                    datafusion::prelude::col(SAMPLE_INDEX),
                    DataType::Float64,
                ) / datafusion::prelude::lit(rate);
                exprs.push((
                    state.create_physical_expr(t, &df_schema)?,
                    TIME_S.to_string(),
                ));
            } else {
                let name = self.columns.field(i).name();
                let at = inner_schema.index_of(name)?;
                let c = datafusion::physical_expr::expressions::Column::new(name, at);
                exprs.push((Arc::new(c), name.clone()));
            }
        }
        Ok(Arc::new(
            datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, plan)?,
        ))
    }

    /// A scan of the stream's own columns; `extra` narrows the index bounds further.
    fn scan_columns(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        extra: Bounds,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let order = Order::of(&self.columns);
        let mut bounds = match order {
            Order::Index(c) => Bounds::of(filters, c),
            _ => Bounds::default(),
        };
        if let Some(lo) = extra.lo {
            bounds.raise(lo);
        }
        if let Some(hi) = extra.hi {
            bounds.lower(hi);
        }
        let time = Bounds::of(filters, TIME_S);
        let snap = self.snapshot(order, &bounds, &time)?;
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !snap.files.is_empty() {
            inputs.push(self.parquet_exec(state, &snap.files, projection, filters, limit)?);
        }
        if !snap.memory.is_empty() || inputs.is_empty() {
            let exec = MemorySourceConfig::try_new_exec(
                &[snap.memory],
                self.columns.clone(),
                projection.cloned(),
            )?;
            inputs.push(exec);
        }
        UnionExec::try_new(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Expr {
        datafusion::prelude::col(name)
    }

    fn lit(v: f64) -> Expr {
        datafusion::prelude::lit(v)
    }

    #[test]
    fn bounds_come_from_comparisons_ands_and_between() {
        let f = [
            col("time_s")
                .gt_eq(lit(10.0))
                .and(col("time_s").lt(lit(20.0))),
            lit(15.0).gt(col("time_s")),
        ];
        let b = Bounds::of(&f, "time_s");
        assert_eq!((b.lo, b.hi), (Some(10.0), Some(15.0)));
        let between = col("sample_index").between(
            datafusion::prelude::lit(5i64),
            datafusion::prelude::lit(9i64),
        );
        let b = Bounds::of(&[between], "sample_index");
        assert_eq!((b.lo, b.hi), (Some(5.0), Some(9.0)));
        // An OR says nothing certain about either side.
        let or = col("time_s").gt(lit(1.0)).or(col("time_s").lt(lit(0.0)));
        assert_eq!(Bounds::of(&[or], "time_s"), Bounds::default());
        assert!(!b.overlaps(Some(10.0), Some(12.0)));
        assert!(b.overlaps(Some(9.0), Some(12.0)));
        assert!(b.overlaps(None, None));
    }
}
