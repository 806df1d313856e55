//! The tables that describe the daemon rather than a stream: `streams` (every stream, live and
//! stored), `components` (the topology and its counters, in a running daemon) and `neurons`
//! (the latest POYO-SSL label of every neuron).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::Result;
use serde::Serialize;

use super::catalog::StreamSchema;
use super::engine::Live;
use pipelines::transforms::predictability::NEURONS_SUFFIX;

/// The stream kind (`neurod.stream_kind`) of the `predictability` transform's label tables.
const NEURONS_KIND: &str = "neurons";

/// The table listing every stream (built when a query names it: it reads every stream's
/// directory).
pub(crate) const STREAMS: &str = "streams";

/// Adds the `components` table to `schema` (`streams` is built when named, `neurons` is a
/// view, see [`neurons_sql`]; a stream of one of these names is hidden by them).
pub(crate) fn register(schema: &Arc<StreamSchema>, live: Option<&Live>) -> Result<()> {
    schema.register_table("components".into(), components_table(live)?)?;
    Ok(())
}

fn mem_table<T: Serialize>(schema: SchemaRef, rows: &[T]) -> Result<Arc<dyn TableProvider>> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(rows)?;
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn fields(list: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        list.iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

#[derive(Serialize)]
struct StreamRow {
    name: String,
    stream_id: String,
    layout: Option<String>,
    kind: Option<String>,
    rate_hz: Option<f64>,
    live: bool,
    ended: Option<bool>,
    producer: Option<String>,
    port: Option<String>,
    live_rows: Option<u64>,
    live_bytes: Option<u64>,
    stored_rows: Option<u64>,
    stored_bytes: Option<u64>,
    stored_files: Option<u64>,
    store_dir: Option<String>,
    first_time_s: Option<f64>,
    last_time_s: Option<f64>,
}

pub(crate) fn streams_table(
    schema: &StreamSchema,
    live: Option<&Live>,
) -> Result<Arc<dyn TableProvider>> {
    use DataType::*;
    let out = fields(&[
        ("name", Utf8),
        ("stream_id", Utf8),
        ("layout", Utf8),
        ("kind", Utf8),
        ("rate_hz", Float64),
        ("live", Boolean),
        ("ended", Boolean),
        ("producer", Utf8),
        ("port", Utf8),
        ("live_rows", UInt64),
        ("live_bytes", UInt64),
        ("stored_rows", UInt64),
        ("stored_bytes", UInt64),
        ("stored_files", UInt64),
        ("store_dir", Utf8),
        ("first_time_s", Float64),
        ("last_time_s", Float64),
    ]);
    let mut rows = Vec::new();
    for (name, stored, key) in schema.entries()? {
        let info = live.zip(key).and_then(|(l, k)| l.hub.stream(&k));
        let mut row = StreamRow {
            name: name.clone(),
            stream_id: name,
            layout: stored.as_ref().and_then(|s| s.layout.clone()),
            kind: stored.as_ref().and_then(|s| {
                let md = &s.schema.as_ref()?.metadata;
                md.get(pipelines::stream::keys::STREAM_KIND).cloned()
            }),
            rate_hz: stored
                .as_ref()
                .and_then(|s| s.sampling_hz.as_deref())
                .and_then(|t| pipelines::stream::parse_rate(t).ok()),
            live: info.is_some(),
            ended: None,
            producer: None,
            port: None,
            live_rows: None,
            live_bytes: None,
            stored_rows: stored.as_ref().map(|s| s.rows()),
            stored_bytes: stored.as_ref().map(|s| s.bytes()),
            stored_files: stored.as_ref().map(|s| s.files.len() as u64),
            store_dir: stored.as_ref().map(|s| s.dir.display().to_string()),
            first_time_s: stored.as_ref().and_then(|s| s.first_time_s()),
            last_time_s: stored.as_ref().and_then(|s| s.last_time_s()),
        };
        if let Some(i) = info {
            row.stream_id = i.id;
            row.layout = i.layout.map(|l| l.as_str().to_string()).or(row.layout);
            row.kind = i.kind.or(row.kind);
            row.rate_hz = i.rate_hz.or(row.rate_hz);
            row.ended = Some(i.ended);
            row.producer = Some(i.producer);
            row.port = Some(i.port);
            row.live_rows = Some(i.rows);
            row.live_bytes = Some(i.bytes);
            row.first_time_s = row.first_time_s.or(i.first_time_s);
            row.last_time_s = match (row.last_time_s, i.last_time_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        rows.push(row);
    }
    mem_table(out, &rows)
}

#[derive(Serialize)]
struct ComponentRow {
    id: String,
    kind: String,
    #[serde(rename = "type")]
    type_name: String,
    state: String,
    last_error: Option<String>,
    degraded: Option<String>,
    received_rows: u64,
    sent_rows: u64,
    dropped_rows: u64,
    errors: u64,
    queue_fill_ratio: f64,
    lag_seconds: f64,
    uptime_s: f64,
    received_rows_per_s: f64,
    sent_rows_per_s: f64,
}

fn components_table(live: Option<&Live>) -> Result<Arc<dyn TableProvider>> {
    use DataType::*;
    let out = fields(&[
        ("id", Utf8),
        ("kind", Utf8),
        ("type", Utf8),
        ("state", Utf8),
        ("last_error", Utf8),
        ("degraded", Utf8),
        ("received_rows", UInt64),
        ("sent_rows", UInt64),
        ("dropped_rows", UInt64),
        ("errors", UInt64),
        ("queue_fill_ratio", Float64),
        ("lag_seconds", Float64),
        ("uptime_s", Float64),
        ("received_rows_per_s", Float64),
        ("sent_rows_per_s", Float64),
    ]);
    let statuses = live.map(|l| l.metrics.statuses()).unwrap_or_default();
    let rows: Vec<ComponentRow> = statuses
        .into_iter()
        .map(|c| ComponentRow {
            state: serde_json::to_value(c.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            degraded: (!c.degraded.is_empty()).then(|| c.degraded.join("; ")),
            id: c.id,
            kind: c.kind,
            type_name: c.type_name,
            last_error: c.last_error,
            received_rows: c.received_rows,
            sent_rows: c.sent_rows,
            dropped_rows: c.dropped_rows,
            errors: c.errors,
            queue_fill_ratio: c.queue_fill_ratio,
            lag_seconds: c.lag_seconds,
            uptime_s: c.uptime_s,
            received_rows_per_s: c.received_rows_per_s,
            sent_rows_per_s: c.sent_rows_per_s,
        })
        .collect();
    mem_table(out, &rows)
}

/// The columns of `predictability`'s label tables.
const NEURON_COLUMNS: &str =
    "frame_index, unit, \"group\", n, skew, excess_kurtosis, label, labelled_since_frame";

/// The `neurons` view: the latest row of every neuron of every label table
/// (`<source>.neurons`), with the table's name in `stream`, so it is as fresh as they are.
pub(crate) fn neurons_sql(schema: &StreamSchema) -> Result<String> {
    // `predictability` names them `<source>.neurons`: only those directories are read.
    let mut selects = Vec::new();
    for name in schema.names().filter(|n| n.ends_with(NEURONS_SUFFIX)) {
        if schema.kind(name)?.as_deref() != Some(NEURONS_KIND) {
            continue;
        }
        // A label table gets a row per neuron whose label changed: each neuron's latest row
        // is its current state (the rows of the latest frame hold only the latest changes).
        let q = quote_ident(name);
        selects.push(format!(
            "SELECT '{lit}' AS stream, {NEURON_COLUMNS} FROM (SELECT t.*, row_number() OVER \
             (PARTITION BY t.unit ORDER BY t.frame_index DESC) AS latest FROM {q} t) \
             WHERE latest = 1",
            lit = name.replace('\'', "''")
        ));
    }
    if selects.is_empty() {
        return Ok(
            "SELECT CAST(NULL AS VARCHAR) AS stream, CAST(NULL AS BIGINT) AS frame_index, \
         CAST(NULL AS VARCHAR) AS unit, CAST(NULL AS VARCHAR) AS \"group\", \
         CAST(NULL AS BIGINT) AS n, CAST(NULL AS DOUBLE) AS skew, \
         CAST(NULL AS DOUBLE) AS excess_kurtosis, CAST(NULL AS VARCHAR) AS label, \
         CAST(NULL AS BIGINT) AS labelled_since_frame WHERE false"
                .to_string(),
        );
    }
    Ok(selects.join(" UNION ALL "))
}

/// `name` as an SQL identifier, quoted (stream ids hold dots).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
