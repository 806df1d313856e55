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

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use pipelines::hub::Hub;
use pipelines::storage::{self, SegmentReader, StoreError, StoredStream};
use pipelines::stream::{stream_id_of, SAMPLE_INDEX, TIME_S};

use super::catalog::external;
use super::rows::{column_range, conform, max_opt, may_hold, mentions, rows_after, Bounds, Order};
use super::split;

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable").field("id", &self.id).finish()
    }
}

/// Reads of at least this many columns besides the filtered ones filter rows as they decode
/// them (see `parquet_exec`).
const WIDE_READ_COLUMNS: usize = 16;

/// One stream: stored files, then the hub's newer rows.
pub(super) struct StreamTable {
    pub(super) id: String,
    /// The table as queries see it: `columns`, plus `time_s` where it is derived.
    pub(super) schema: SchemaRef,
    /// The stream's own columns (stored and in memory).
    pub(super) columns: SchemaRef,
    /// Continuous streams carry no `time_s` column; their table derives it as
    /// `sample_index / sampling_hz` (the store's own rule for their files' time bounds), so that
    /// `WHERE time_s BETWEEN a AND b` works on raw data too and prunes by `sample_index`.
    pub(super) time_rate: Option<f64>,
    pub(super) stored: Option<StoredStream>,
    /// The hub and the stream's key in it.
    pub(super) hub: Option<(Arc<Hub>, String)>,
}

/// What a scan reads, fixed when it is planned.
pub(super) struct Snapshot {
    pub(super) files: Vec<PathBuf>,
    /// Complete batches of live segments and the hub's newer rows.
    pub(super) memory: Vec<RecordBatch>,
}

impl StreamTable {
    /// The stored files and batches that may hold rows within `bounds`, then the hub's rows
    /// past the stored ones.
    pub(super) fn snapshot(
        &self,
        order: Order,
        bounds: &Bounds,
        time: &Bounds,
    ) -> Result<Snapshot> {
        let mut snap = Snapshot {
            files: Vec::new(),
            memory: Vec::new(),
        };
        let mut stored_last: Option<f64> = None;
        let mut any_stored = false;
        if let Some(listed) = &self.stored {
            // The session's listing, read moments ago; a segment converted (and removed) since
            // is a Parquet file when the directory is read again.
            let mut current = listed.clone();
            let mut tries = 0;
            let part = loop {
                match self.stored_part(&current, order, bounds, time) {
                    Err(e) if is_not_found(&e) && tries < 5 => {
                        tries += 1;
                        current = self.reread(listed)?;
                    }
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
        current: &StoredStream,
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
        for b in segment_batches(current, &self.id)? {
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

    async fn parquet_exec(
        &self,
        state: &dyn Session,
        files: &[PathBuf],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        limits: &[(&str, &Bounds)],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut source = ParquetSource::new(self.columns.clone());
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.columns.as_ref().clone())?;
            // Wide reads decode the predicate's columns first and the others only where it
            // holds, instead of every row being decoded and then copied by the filter above
            // (a second of 386 columns: 14 % faster); narrow ones gain nothing from the extra
            // pass (the last minute of spikes: 6 % slower with it).
            let read = projection.map_or(self.columns.fields().len(), Vec::len);
            let wide = read >= WIDE_READ_COLUMNS + predicate.column_refs().len();
            source = source
                .with_predicate(state.create_physical_expr(predicate, &df_schema)?)
                .with_pushdown_filters(wide);
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
        let groups = split::file_groups(state, partitioned, limits, partitions).await?;
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

pub(super) fn is_not_found(e: &DataFusionError) -> bool {
    let DataFusionError::External(inner) = e else {
        return false;
    };
    matches!(
        inner.downcast_ref::<StoreError>(),
        Some(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
    )
}

/// The complete batches of a stream's live segments (a segment converted meanwhile is skipped:
/// the caller's reread found its Parquet file only if it came after; see `reread`).
pub(super) fn segment_batches(stored: &StoredStream, id: &str) -> Result<Vec<RecordBatch>> {
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
            Some(rate) => {
                self.scan_with_time(state, rate, projection, filters, limit)
                    .await
            }
            None => {
                self.scan_columns(state, projection, filters, limit, Bounds::default())
                    .await
            }
        }
    }
}

impl StreamTable {
    /// A scan of a table whose `time_s` is derived: the stream's columns (with `sample_index`
    /// if `time_s` is wanted), `time_s` bounds turned into `sample_index` bounds, then
    /// `time_s` computed.
    async fn scan_with_time(
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
        let plan = self
            .scan_columns(state, Some(&inner), &own, limit, by_time)
            .await?;
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
    async fn scan_columns(
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
            let mut limits = vec![(TIME_S, &time)];
            if let Some(c) = order.column() {
                limits.insert(0, (c, &bounds));
            }
            let exec = self
                .parquet_exec(state, &snap.files, projection, filters, limit, &limits)
                .await?;
            inputs.push(exec);
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
