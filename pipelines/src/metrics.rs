//! Prometheus metrics and component status. Names follow Prometheus conventions
//! (`neurod_..._total` counters, base units); every per-component series carries `component_id`.
//!
//! Components get a [`ComponentMetrics`] with their label values bound once, so the hot path
//! increments a pre-resolved counter and never hashes labels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;

const COMPONENT_LABELS: &[&str] = &["component_id", "component_kind", "component_type"];

/// Lifecycle of a component, reported by `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Starting,
    Running,
    Finished,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub id: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub state: ComponentState,
    pub last_error: Option<String>,
    /// Parts that do not work while the component runs on (a store's stream on a full disk),
    /// each with its reason; `/healthz` names them.
    pub degraded: Vec<String>,
    pub received_rows: u64,
    pub sent_rows: u64,
    pub dropped_rows: u64,
    pub errors: u64,
    pub queue_fill_ratio: f64,
    pub lag_seconds: f64,
    pub uptime_s: f64,
    /// Average since start, over `uptime_s`; a scraper computes windowed rates from the counters.
    pub sent_rows_per_s: f64,
    pub received_rows_per_s: f64,
}

pub struct Metrics {
    registry: Registry,
    received_batches: IntCounterVec,
    received_rows: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_batches: IntCounterVec,
    sent_rows: IntCounterVec,
    sent_bytes: IntCounterVec,
    errors: IntCounterVec,
    dropped_rows: IntCounterVec,
    queue_fill: GaugeVec,
    queue_capacity: IntGaugeVec,
    processing: HistogramVec,
    lag: GaugeVec,
    store_written_bytes: IntCounterVec,
    store_input_bytes: IntCounterVec,
    store_compression_ratio: GaugeVec,
    store_files: IntCounterVec,
    store_buffered_seconds: GaugeVec,
    store_buffered_bytes: GaugeVec,
    store_buffer_dropped_rows: IntCounterVec,
    store_duplicate_rows: IntCounterVec,
    components: Mutex<BTreeMap<String, ComponentMetrics>>,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let reg = Registry::new();
        #[cfg(target_os = "linux")]
        {
            // process_resident_memory_bytes, cpu seconds, open fds: the standard process series.
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = reg.register(Box::new(pc));
        }
        let l = COMPONENT_LABELS;
        let processing = HistogramVec::new(
            HistogramOpts::new(
                "neurod_component_processing_seconds",
                "Time a component spent on one batch.",
            )
            .buckets(vec![
                1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                2.5e-2, 0.1, 0.5, 1.0,
            ]),
            l,
        )
        .expect("valid metric definition");
        reg.register(Box::new(processing.clone()))
            .expect("metric registered once");
        let queue_capacity = IntGaugeVec::new(
            Opts::new(
                "neurod_component_queue_capacity_batches",
                "Capacity of the component's input queue, in batches.",
            ),
            l,
        )
        .expect("valid metric definition");
        reg.register(Box::new(queue_capacity.clone()))
            .expect("metric registered once");
        let store_l = &["component_id", "stream_id"];
        Arc::new(Metrics {
            received_batches: counter(&reg, "neurod_component_received_batches_total", "Batches received.", l),
            received_rows: counter(&reg, "neurod_component_received_rows_total", "Rows received.", l),
            received_bytes: counter(&reg, "neurod_component_received_bytes_total", "Arrow bytes received.", l),
            sent_batches: counter(&reg, "neurod_component_sent_batches_total", "Batches sent.", l),
            sent_rows: counter(&reg, "neurod_component_sent_rows_total", "Rows sent.", l),
            sent_bytes: counter(&reg, "neurod_component_sent_bytes_total", "Arrow bytes sent.", l),
            errors: counter(
                &reg,
                "neurod_component_errors_total",
                "Errors, by type and stage.",
                &["component_id", "error_type", "stage"],
            ),
            dropped_rows: counter(
                &reg,
                "neurod_component_dropped_rows_total",
                "Rows of live data dropped because a consumer fell behind.",
                l,
            ),
            queue_fill: gauge(&reg, "neurod_component_queue_fill_ratio", "Input queue fill, 0 to 1: the fuller of its message and byte bounds.", l),
            queue_capacity,
            processing,
            lag: gauge(
                &reg,
                "neurod_source_lag_seconds",
                "How far the newest emitted sample is behind real time (live sources) or behind the paced schedule (replays).",
                l,
            ),
            store_written_bytes: counter(
                &reg,
                "neurod_store_written_bytes_total",
                "Bytes written to disk by the store (segments and Parquet).",
                store_l,
            ),
            store_input_bytes: counter(
                &reg,
                "neurod_store_input_bytes_total",
                "Arrow bytes of the data stored (the values of every column: Int16 samples at 2 bytes, sample_index at 8).",
                store_l,
            ),
            store_compression_ratio: gauge(
                &reg,
                "neurod_store_compression_ratio",
                "Arrow bytes over Parquet bytes, over the files the store has finished.",
                store_l,
            ),
            store_files: counter(&reg, "neurod_store_files_total", "Parquet files finished.", store_l),
            store_buffered_seconds: gauge(&reg, "neurod_store_buffered_seconds", "Seconds of data waiting in the store's input buffer (memory and spool).", store_l),
            store_buffered_bytes: gauge(
                &reg,
                "neurod_store_buffered_bytes",
                "Arrow bytes waiting in the store's input buffer, by medium (memory, disk).",
                &["component_id", "stream_id", "medium"],
            ),
            store_buffer_dropped_rows: counter(
                &reg,
                "neurod_store_buffer_dropped_rows_total",
                "Rows the store dropped because a stream's buffer budget (buffer_s) was spent.",
                store_l,
            ),
            store_duplicate_rows: counter(
                &reg,
                "neurod_store_duplicate_rows_total",
                "Rows not written because the stream already holds their sample_index/frame_index.",
                store_l,
            ),
            registry: reg,
            components: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handles for one component, created once per id (a second call returns the same series).
    pub fn component(self: &Arc<Self>, id: &str, kind: &str, type_name: &str) -> ComponentMetrics {
        let mut comps = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = comps.get(id) {
            return c.clone();
        }
        let v = [id, kind, type_name];
        let c = ComponentMetrics {
            id: id.into(),
            kind: kind.into(),
            type_name: type_name.into(),
            received_batches: self.received_batches.with_label_values(&v),
            received_rows: self.received_rows.with_label_values(&v),
            received_bytes: self.received_bytes.with_label_values(&v),
            sent_batches: self.sent_batches.with_label_values(&v),
            sent_rows: self.sent_rows.with_label_values(&v),
            sent_bytes: self.sent_bytes.with_label_values(&v),
            dropped_rows: self.dropped_rows.with_label_values(&v),
            queue_fill: self.queue_fill.with_label_values(&v),
            queue_capacity: self.queue_capacity.with_label_values(&v),
            processing: self.processing.with_label_values(&v),
            lag: self.lag.with_label_values(&v),
            status: Arc::new(Mutex::new(StatusCell {
                state: ComponentState::Starting,
                last_error: None,
                errors: 0,
                started: Instant::now(),
                degraded: BTreeMap::new(),
            })),
            metrics: self.clone(),
        };
        comps.insert(id.into(), c.clone());
        c
    }

    /// Forgets the components of a topology that was replaced (reload), so /status shows the new one.
    /// Their counters stay in the registry: Prometheus counters must not go backwards.
    pub fn clear_components(&self) {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets one component (removed, or replaced by one of another type, by a reload).
    pub fn forget_component(&self, id: &str) {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn statuses(&self) -> Vec<ComponentStatus> {
        let comps = self.components.lock().unwrap_or_else(|e| e.into_inner());
        comps.values().map(ComponentMetrics::status).collect()
    }

    /// Prometheus text exposition of everything registered, [`shared_registry`] included.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(shared_registry().gather());
        if enc.encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Per-stream store series.
    pub fn store(&self, component_id: &str, stream_id: &str) -> StoreMetrics {
        let v = [component_id, stream_id];
        StoreMetrics {
            written_bytes: self.store_written_bytes.with_label_values(&v),
            input_bytes: self.store_input_bytes.with_label_values(&v),
            compression_ratio: self.store_compression_ratio.with_label_values(&v),
            files: self.store_files.with_label_values(&v),
            buffered_seconds: self.store_buffered_seconds.with_label_values(&v),
            buffered_memory_bytes: self.store_buffered_bytes.with_label_values(&[
                component_id,
                stream_id,
                "memory",
            ]),
            buffered_disk_bytes: self.store_buffered_bytes.with_label_values(&[
                component_id,
                stream_id,
                "disk",
            ]),
            buffer_dropped_rows: self.store_buffer_dropped_rows.with_label_values(&v),
            duplicate_rows: self.store_duplicate_rows.with_label_values(&v),
        }
    }
}

/// Process-wide series of components built without a [`ComponentMetrics`] (transforms get none):
/// they register here once, with a `component_id` label, and every [`Metrics::render`] shows them.
pub fn shared_registry() -> &'static Registry {
    static SHARED: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    SHARED.get_or_init(Registry::new)
}

/// Records the compute backend (`gpu`, `lavapipe`, `cpu`) a component's kernels run on: the
/// gauge `neurod_kernel_backend{backend, component_id}` (1 for the one in use, 0 for the others)
/// and the map `/status` shows.
pub fn record_kernel_backend(component_id: &str, backend: &'static str) {
    static GAUGE: std::sync::OnceLock<IntGaugeVec> = std::sync::OnceLock::new();
    let gauge = GAUGE.get_or_init(|| {
        let g = IntGaugeVec::new(
            Opts::new(
                "neurod_kernel_backend",
                "1 for the compute backend a component's kernels run on (gpu, lavapipe or cpu).",
            ),
            &["backend", "component_id"],
        )
        .expect("valid metric definition");
        if let Err(e) = shared_registry().register(Box::new(g.clone())) {
            tracing::warn!(error = %e, "neurod_kernel_backend not registered");
        }
        g
    });
    for b in ["gpu", "lavapipe", "cpu"] {
        gauge
            .with_label_values(&[b, component_id])
            .set(i64::from(b == backend));
    }
    kernel_backend_map()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(component_id.to_string(), backend);
}

/// The backend of every component that has recorded one, by component id.
pub fn kernel_backends() -> BTreeMap<String, &'static str> {
    kernel_backend_map()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn kernel_backend_map() -> &'static Mutex<BTreeMap<String, &'static str>> {
    static MAP: std::sync::OnceLock<Mutex<BTreeMap<String, &'static str>>> =
        std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
}

struct StatusCell {
    state: ComponentState,
    last_error: Option<String>,
    errors: u64,
    started: Instant,
    /// What works only in part, by what (a store's stream), with the reason.
    degraded: BTreeMap<String, String>,
}

/// One component's series, labels resolved.
#[derive(Clone)]
pub struct ComponentMetrics {
    id: String,
    kind: String,
    type_name: String,
    received_batches: IntCounter,
    received_rows: IntCounter,
    received_bytes: IntCounter,
    sent_batches: IntCounter,
    sent_rows: IntCounter,
    sent_bytes: IntCounter,
    dropped_rows: IntCounter,
    queue_fill: Gauge,
    queue_capacity: IntGauge,
    processing: Histogram,
    lag: Gauge,
    status: Arc<Mutex<StatusCell>>,
    metrics: Arc<Metrics>,
}

/// Bytes of the values of a batch: each array's own slice, so that arrays sharing one allocation
/// (the channels of a de-interleaved raw batch, a batch read from IPC) are not counted once per
/// column, as `get_buffer_memory_size` would. A primitive column whose field is not nullable
/// (every channel of a raw stream) is sized from the schema and the row count alone: the batch
/// is counted several times on its way, and asking each of 385 arrays cost 2 % of an end-to-end
/// detection run.
pub fn batch_bytes(batch: &RecordBatch) -> u64 {
    let rows = batch.num_rows();
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, c)| match field.data_type().primitive_width() {
            Some(width) if !field.is_nullable() || c.nulls().is_none() => (rows * width) as u64,
            _ => c.to_data().get_slice_memory_size().unwrap_or(0) as u64,
        })
        .sum()
}

impl ComponentMetrics {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn received(&self, batch: &crate::batch::Batch) {
        self.count_received(batch.num_rows(), batch.bytes());
    }
    /// A batch of `rows` and `bytes` ([`batch_bytes`]) received.
    pub fn count_received(&self, rows: usize, bytes: u64) {
        crate::fault::tick(&self.id);
        crate::fault::slow_tick();
        self.received_batches.inc();
        self.received_rows.inc_by(rows as u64);
        self.received_bytes.inc_by(bytes);
    }
    pub fn sent(&self, batch: &crate::batch::Batch) {
        crate::fault::tick(&self.id);
        self.sent_batches.inc();
        self.sent_rows.inc_by(batch.num_rows() as u64);
        self.sent_bytes.inc_by(batch.bytes());
    }
    pub fn add_dropped_rows(&self, rows: usize) {
        self.dropped_rows.inc_by(rows as u64);
    }
    pub fn dropped_rows(&self) -> u64 {
        self.dropped_rows.get()
    }
    pub fn sent_rows(&self) -> u64 {
        self.sent_rows.get()
    }
    pub fn received_rows(&self) -> u64 {
        self.received_rows.get()
    }
    /// The inbox's fill: the fuller of its two bounds, messages and bytes.
    pub fn set_queue_fill(&self, len: usize, capacity: usize, bytes: usize, max_bytes: usize) {
        self.queue_capacity.set(capacity as i64);
        let fill =
            (len as f64 / capacity.max(1) as f64).max(bytes as f64 / max_bytes.max(1) as f64);
        // One batch over the byte bound is let in alone (see `edge`): still "full".
        self.queue_fill.set(fill.min(1.0));
    }
    pub fn observe_processing(&self, seconds: f64) {
        self.processing.observe(seconds);
    }
    pub fn set_lag(&self, seconds: f64) {
        self.lag.set(seconds);
    }
    /// Counts an error and remembers it for `/status`. The caller logs it (with the input named).
    pub fn error(&self, error_type: &str, stage: &str, message: impl Into<String>) {
        self.metrics
            .errors
            .with_label_values(&[&self.id, error_type, stage])
            .inc();
        self.with_status(|s| {
            s.errors += 1;
            s.last_error = Some(message.into());
        });
    }
    /// Marks `what` as not working (`Some(reason)`) or working again (`None`).
    pub fn set_degraded(&self, what: &str, reason: Option<String>) {
        self.with_status(|s| match reason {
            Some(r) => {
                s.degraded.insert(what.to_string(), r);
            }
            None => {
                s.degraded.remove(what);
            }
        });
    }
    pub fn errors_total(&self) -> u64 {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).errors
    }
    pub fn set_state(&self, state: ComponentState) {
        self.with_status(|s| s.state = state);
    }
    pub fn store(&self, stream_id: &str) -> StoreMetrics {
        self.metrics.store(&self.id, stream_id)
    }
    fn with_status(&self, f: impl FnOnce(&mut StatusCell)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }
    pub fn status(&self) -> ComponentStatus {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let uptime = s.started.elapsed().as_secs_f64();
        let rate = |v: u64| if uptime > 0.0 { v as f64 / uptime } else { 0.0 };
        ComponentStatus {
            id: self.id.clone(),
            kind: self.kind.clone(),
            type_name: self.type_name.clone(),
            state: s.state,
            last_error: s.last_error.clone(),
            degraded: s
                .degraded
                .iter()
                .map(|(what, why)| format!("{what}: {why}"))
                .collect(),
            received_rows: self.received_rows.get(),
            sent_rows: self.sent_rows.get(),
            dropped_rows: self.dropped_rows.get(),
            errors: s.errors,
            queue_fill_ratio: self.queue_fill.get(),
            lag_seconds: self.lag.get(),
            uptime_s: uptime,
            sent_rows_per_s: rate(self.sent_rows.get()),
            received_rows_per_s: rate(self.received_rows.get()),
        }
    }
}

/// A store's series for one stream.
#[derive(Clone)]
pub struct StoreMetrics {
    pub written_bytes: IntCounter,
    pub input_bytes: IntCounter,
    pub compression_ratio: Gauge,
    pub files: IntCounter,
    pub buffered_seconds: Gauge,
    pub buffered_memory_bytes: Gauge,
    pub buffered_disk_bytes: Gauge,
    pub buffer_dropped_rows: IntCounter,
    pub duplicate_rows: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bytes_counts_each_columns_own_slice() {
        use arrow::array::{ArrayRef, Int16Array, Int32Array, StringArray};
        use arrow::buffer::{Buffer, ScalarBuffer};
        use arrow::datatypes::{DataType, Field, Schema};
        // Two channels sharing one allocation of 8 values (4 each), a nullable column with a
        // null (values and validity bitmap), and strings (offsets and bytes).
        let shared = Buffer::from_vec((0..8i16).collect::<Vec<_>>());
        let a = Int16Array::new(ScalarBuffer::new(shared.clone(), 0, 4), None);
        let b = Int16Array::new(ScalarBuffer::new(shared, 4, 4), None);
        let nullable = Int32Array::from(vec![Some(1), None, Some(3), Some(4)]);
        let text = StringArray::from(vec!["ab", "", "cde", "f"]);
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int16, false),
            Field::new("b", DataType::Int16, false),
            Field::new("n", DataType::Int32, true),
            Field::new("s", DataType::Utf8, false),
        ]);
        let columns: Vec<ArrayRef> =
            vec![Arc::new(a), Arc::new(b), Arc::new(nullable), Arc::new(text)];
        let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        // 4·2 + 4·2, then 4·4 + 1 bitmap byte, then 5 offsets · 4 + 6 bytes.
        assert_eq!(batch_bytes(&batch), 8 + 8 + 17 + 26);
    }

    #[test]
    fn degraded_parts_are_listed_until_they_work_again() {
        let m = Metrics::new();
        let c = m.component("disk", "sink", "store");
        c.set_degraded("a", Some("disk_full: no space".into()));
        c.set_degraded("b", Some("io: broken".into()));
        c.set_degraded("a", None);
        assert_eq!(c.status().degraded, vec!["b: io: broken".to_string()]);
        let full = crate::storage::StoreError::io(
            std::path::Path::new("/x"),
            "writing",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(full.error_type(), "disk_full");
    }

    #[test]
    fn exposition_has_conventional_names_and_labels() {
        let m = Metrics::new();
        let c = m.component("sim", "source", "simulated");
        c.add_dropped_rows(7);
        c.error("truncated_file", "reading", "x.bin: partial sample");
        let text = m.render();
        assert!(
            text.contains(r#"neurod_component_dropped_rows_total{component_id="sim",component_kind="source",component_type="simulated"} 7"#),
            "{text}"
        );
        assert!(text.contains(
            r#"neurod_component_errors_total{component_id="sim",error_type="truncated_file",stage="reading"} 1"#
        ));
        assert_eq!(c.errors_total(), 1);
        assert_eq!(
            c.status().last_error.as_deref(),
            Some("x.bin: partial sample")
        );
    }
}
