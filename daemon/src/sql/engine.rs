//! The SQL session: which tables exist, the limits every query runs under, and running one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, SchemaProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{
    CacheManager, CacheManagerConfig, FileMetadataCache,
};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use futures_util::StreamExt;
use pipelines::hub::Hub;
use pipelines::metrics::Metrics;

use super::catalog::StreamSchema;
use super::system;

/// The catalog and schema every table lives in (`neurod.public."rig.spikes"`), as Flight SQL
/// clients list them.
pub const CATALOG: &str = "neurod";
pub const SCHEMA: &str = "public";

/// What one query may use. Each limit, when reached, ends the query with an error saying which.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SqlLimits {
    /// Rows in a result.
    pub max_rows: usize,
    /// Memory of the operators that hold data (sorts, aggregations, joins).
    pub memory_bytes: usize,
    /// Wall-clock time, planning included.
    pub timeout: Duration,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            max_rows: 1_000_000,
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The running daemon's state that SQL reads: the hub (streams in memory, the registry) and
/// the metrics (components and their counters).
#[derive(Clone)]
pub struct Live {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

/// Why a query failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SqlError {
    /// The query is not valid SQL, or names a table or column that does not exist.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the result has more than {limit} rows (the per-query row limit): add a LIMIT or aggregate"
    )]
    TooManyRows { limit: usize },
    #[error(
        "the query needs more than {limit_mb} MiB of memory (the per-query memory limit): {detail}"
    )]
    Memory { limit_mb: usize, detail: String },
    #[error("the query ran longer than {0:?} (the per-query timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

impl SqlError {
    /// The HTTP status that says the same.
    pub fn http_status(&self) -> u16 {
        match self {
            SqlError::Invalid(_) => 400,
            SqlError::TooManyRows { .. } | SqlError::Memory { .. } => 413,
            SqlError::Timeout(_) => 504,
            SqlError::Failed(_) => 500,
        }
    }

    fn from_datafusion(e: DataFusionError, limits: &SqlLimits) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(detail) => SqlError::Memory {
                limit_mb: limits.memory_bytes >> 20,
                detail: detail.clone(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => SqlError::Invalid(e.to_string()),
            _ => SqlError::Failed(e.to_string()),
        }
    }
}

/// A whole result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Runs SQL over the stores under a data directory and, in a running daemon, the hub.
///
/// Queries run on a runtime of their own, so that a long query never delays the HTTP and
/// Flight servers (metrics scrapes, live subscribers).
#[derive(Clone)]
pub struct SqlEngine {
    inner: Arc<Inner>,
}

struct Inner {
    /// Parquet footers and page indexes of the files read so far, shared by every query's
    /// session (each has its own memory pool), so that a query does not parse them again.
    footers: Arc<FileMetadataCache>,
    data_dir: PathBuf,
    live: Option<Live>,
    limits: SqlLimits,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime; this does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Threads that execute queries: two, so that a scan and its aggregation overlap.
const QUERY_THREADS: usize = 2;

impl SqlEngine {
    pub fn new(data_dir: PathBuf, live: Option<Live>, limits: SqlLimits) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(QUERY_THREADS)
            .enable_all()
            .thread_name("neurod-sql")
            .build()?;
        let footers = CacheManager::try_new(&CacheManagerConfig::default())
            .map_err(std::io::Error::other)?
            .get_file_metadata_cache();
        Ok(SqlEngine {
            inner: Arc::new(Inner {
                footers,
                data_dir,
                live,
                limits,
                runtime: Some(runtime),
            }),
        })
    }

    pub fn limits(&self) -> SqlLimits {
        self.inner.limits
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    pub fn live(&self) -> Option<&Live> {
        self.inner.live.as_ref()
    }

    /// A session holding every table as of now.
    pub async fn session(&self) -> Result<SessionContext, SqlError> {
        let limits = self.inner.limits;
        // No spilling: on a rig the disk belongs to the recording, so a query over its memory
        // limit fails (saying so) rather than writing temporary files.
        let no_spill = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
        let caches = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.inner.footers.clone()));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .with_disk_manager_builder(no_spill)
            .with_cache_manager(caches)
            .build_arc()
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(QUERY_THREADS)
            // Stream tables spread their files over the threads themselves, by pages
            // (`split`); DataFusion's own split, by bytes, would undo that.
            .with_repartition_file_scans(false);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let streams = StreamSchema::new(&self.inner.data_dir, self.inner.live.as_ref())
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        let streams = Arc::new(streams);
        system::register(&streams, self.inner.live.as_ref())
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        let catalog = MemoryCatalogProvider::new();
        let streams_schema: Arc<dyn SchemaProvider> = streams.clone();
        catalog
            .register_schema(SCHEMA, streams_schema)
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        let neurons = system::neurons_sql(&streams).map_err(|e| SqlError::Failed(e.to_string()))?;
        let view = ctx
            .state()
            .create_logical_plan(&neurons)
            .await
            .map_err(|e| SqlError::Failed(format!("the neurons view: {e}")))?;
        streams
            .register_table(
                "neurons".into(),
                Arc::new(ViewTable::new(view, Some(neurons))),
            )
            .map_err(|e| SqlError::Failed(e.to_string()))?;
        Ok(ctx)
    }

    /// The schema of a query's result, without running it.
    pub async fn schema_of(&self, sql: &str) -> Result<SchemaRef, SqlError> {
        let sql = sql.to_string();
        let engine = self.clone();
        self.on_query_runtime(async move {
            let df = engine.plan(&sql).await?;
            Ok(Arc::new(df.schema().as_arrow().clone()))
        })
        .await
    }

    /// Runs a query to its end and returns the whole result, within the limits.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let (schema, mut stream) = self.stream(sql).await?;
        let mut batches = Vec::new();
        while let Some(b) = stream.next().await {
            batches.push(b.map_err(|e| sql_error(e, &self.inner.limits))?);
        }
        Ok(QueryResult { schema, batches })
    }

    /// Runs a query, handing out its result batch by batch as it is computed; the row limit and
    /// the timeout end the stream with an error.
    pub async fn stream(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), SqlError> {
        let limits = self.inner.limits;
        let deadline = Instant::now() + limits.timeout;
        let sql = sql.to_string();
        let engine = self.clone();
        let planned = self.on_query_runtime(async move {
            let df = engine.plan(&sql).await?;
            df.execute_stream()
                .await
                .map_err(|e| SqlError::from_datafusion(e, &engine.inner.limits))
        });
        let stream = tokio::time::timeout(limits.timeout, planned)
            .await
            .map_err(|_| SqlError::Timeout(limits.timeout))??;
        let schema = stream.schema();
        Ok((schema.clone(), self.limited(schema, stream, deadline)))
    }

    async fn plan(&self, sql: &str) -> Result<DataFrame, SqlError> {
        let ctx = self.session().await?;
        ctx.sql(sql)
            .await
            .map_err(|e| SqlError::from_datafusion(e, &self.inner.limits))
    }

    /// Polls `stream` on the query runtime, counting rows and watching the clock.
    fn limited(
        &self,
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        deadline: Instant,
    ) -> SendableRecordBatchStream {
        let limits = self.inner.limits;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let task = async move {
            let mut stream = stream;
            let mut rows = 0usize;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let next = match tokio::time::timeout(left, stream.next()).await {
                    Ok(Some(Ok(b))) => {
                        rows += b.num_rows();
                        if rows > limits.max_rows {
                            Err(SqlError::TooManyRows {
                                limit: limits.max_rows,
                            })
                        } else {
                            Ok(b)
                        }
                    }
                    Ok(Some(Err(e))) => Err(SqlError::from_datafusion(e, &limits)),
                    Ok(None) => break,
                    Err(_) => Err(SqlError::Timeout(limits.timeout)),
                };
                let stop = next.is_err();
                let next = next.map_err(|e| DataFusionError::External(Box::new(e)));
                if tx.send(next).await.is_err() || stop {
                    break;
                }
            }
        };
        if let Some(rt) = &self.inner.runtime {
            rt.spawn(task);
        }
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, out))
    }

    async fn on_query_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, SqlError>> + Send + 'static,
    ) -> Result<T, SqlError> {
        let Some(rt) = &self.inner.runtime else {
            return work.await;
        };
        rt.spawn(work)
            .await
            .map_err(|e| SqlError::Failed(format!("query task failed: {e}")))?
    }

    /// Runs `work` to its end from outside any runtime (the command line).
    pub fn block_on<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        match &self.inner.runtime {
            Some(rt) => rt.block_on(work),
            None => Err(SqlError::Failed("the query runtime has stopped".into())),
        }
    }
}

/// Unwraps the [`SqlError`] a limited stream carries inside a DataFusion error.
pub fn sql_error(e: DataFusionError, limits: &SqlLimits) -> SqlError {
    if let DataFusionError::External(inner) = &e {
        if let Some(s) = inner.downcast_ref::<SqlError>() {
            return s.clone();
        }
    }
    SqlError::from_datafusion(e, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(limits: SqlLimits) -> SqlEngine {
        let dir = std::env::temp_dir().join("neurod-sql-no-data");
        SqlEngine::new(dir, None, limits).unwrap()
    }

    fn run(e: &SqlEngine, sql: &str) -> Result<QueryResult, SqlError> {
        e.block_on(e.query(sql))
    }

    #[test]
    fn each_limit_ends_a_query_with_an_error_saying_which() {
        let small = SqlLimits {
            max_rows: 10,
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
        };
        let e = engine(small);
        let ok = run(&e, "SELECT value FROM generate_series(1, 10)").unwrap();
        assert_eq!(ok.rows(), 10);
        let rows = run(&e, "SELECT value FROM generate_series(1, 11)").unwrap_err();
        assert!(
            matches!(rows, SqlError::TooManyRows { limit: 10 }),
            "{rows}"
        );
        let sort =
            "SELECT value FROM generate_series(1, 5000000) ORDER BY value DESC LIMIT 3 OFFSET 7";
        let mem = run(&e, &sort.replace("LIMIT 3 OFFSET 7", "")).unwrap_err();
        assert!(matches!(mem, SqlError::Memory { limit_mb: 1, .. }), "{mem}");
        assert_eq!(mem.http_status(), 413);
        let slow = engine(SqlLimits {
            timeout: Duration::from_millis(1),
            ..SqlLimits::default()
        });
        let cross =
            "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b";
        let t = run(&slow, cross).unwrap_err();
        assert!(matches!(t, SqlError::Timeout(_)), "{t}");
        assert_eq!(t.http_status(), 504);
        let bad = run(&e, "SELECT nope FROM streams").unwrap_err();
        assert!(matches!(bad, SqlError::Invalid(_)), "{bad}");
        assert!(bad.to_string().contains("nope"), "{bad}");
    }

    #[test]
    fn neurons_holds_every_neurons_latest_label_not_only_the_latest_changes() {
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use pipelines::stream::keys;
        // Unit 0 labelled at frame 100; unit 1 too, then again (flipped) at frame 200.
        let dir = tempfile::tempdir().unwrap();
        let name = "plane0.dff.neurons";
        let stream = dir.path().join("store").join(name);
        std::fs::create_dir_all(&stream).unwrap();
        let meta = std::collections::HashMap::from([
            (keys::STREAM_ID.to_string(), name.to_string()),
            (keys::LAYOUT.to_string(), "table".to_string()),
            (keys::STREAM_KIND.to_string(), "neurons".to_string()),
        ]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("frame_index", DataType::Int64, false),
                Field::new("unit", DataType::Utf8, false),
                Field::new("group", DataType::Utf8, true),
                Field::new("n", DataType::Int64, false),
                Field::new("skew", DataType::Float64, false),
                Field::new("excess_kurtosis", DataType::Float64, false),
                Field::new("label", DataType::Utf8, false),
                Field::new("labelled_since_frame", DataType::Int64, true),
            ],
            meta,
        ));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![100, 100, 200])),
                Arc::new(StringArray::from(vec!["0", "1", "1"])),
                Arc::new(StringArray::from(vec![None::<&str>, None, None])),
                Arc::new(Int64Array::from(vec![600, 600, 1200])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 4.0])),
                Arc::new(Float64Array::from(vec![3.0, 5.0, 30.0])),
                Arc::new(StringArray::from(vec![
                    "predictable",
                    "predictable",
                    "unpredictable",
                ])),
                Arc::new(Int64Array::from(vec![Some(100), Some(100), Some(200)])),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(stream.join("part-000000.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let e = SqlEngine::new(dir.path().to_path_buf(), None, SqlLimits::default()).unwrap();
        let r = run(&e, "SELECT unit, label, skew FROM neurons ORDER BY unit").unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&r.batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 0    | predictable   | 1.0  |"), "{text}");
        assert!(text.contains("| 1    | unpredictable | 4.0  |"), "{text}");
        assert_eq!(r.rows(), 2, "{text}");
    }
}
