//! The stream hub: where every output port of the running daemon lives, who listens to it, and a
//! registry of every stream that has flowed through it.
//!
//! A [`Port`] is one named output of one component (`rig`, `rig.ground_truth`). It belongs to the
//! hub, not to the component's thread: a reload can stop a producer and hand its ports to the new
//! instance without its consumers seeing an end of stream, and a consumer can be moved to a new
//! inbox without losing or repeating a batch. An [`Edge`] joins a port to one consumer's inbox
//! with its own full-queue policy (`block` or `drop_oldest`) and its own dropped-rows counter
//! (`neurod_edge_dropped_rows_total{producer, port, consumer}`).
//!
//! Run-time subscribers ([`Hub::subscribe`]) are edges too, filtered to one stream, always
//! `drop_oldest` into their own bounded queue: a subscriber can never slow the producer or any
//! other consumer. Those that ask for it are evicted at their first overflow (their queue is
//! released and `neurod_subscribers_evicted_total` counts them), so a reader gets every batch in
//! order or is told it was dropped, never a stream with silent holes.
//!
//! Every batch sent through a port updates its stream's entry ([`StreamInfo`]): schema, layout,
//! rate, producer and port, rows and bytes, first and last `sample_index`, `frame_index` and
//! `time_s`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::edge::{Inbox, InboxHandle, Overflow, Recv, Waker};
use crate::metrics::Metrics;

mod ingest;
mod port;
mod registry;

pub use ingest::{Ingest, IngestError, IngestRegistration, IngestStream, Pushed};
use port::EdgeRole;
pub use port::{Edge, Port};
pub use registry::{
    stream_key, ConsumerInfo, FieldInfo, Retention, SchemaInfo, Stream, StreamInfo,
};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments: a panic cannot leave half an update.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The series the hub adds to the daemon's metrics.
pub(crate) struct HubMetrics {
    pub(crate) edge_dropped: IntCounterVec,
    pub(crate) evicted: IntCounterVec,
    pub(crate) subscribers: IntGaugeVec,
}

impl HubMetrics {
    fn register(metrics: &Metrics) -> Self {
        let reg = metrics.registry();
        let edge_dropped = IntCounterVec::new(
            Opts::new(
                "neurod_edge_dropped_rows_total",
                "Rows dropped on one edge because its consumer's queue was full (drop_oldest edges only).",
            ),
            &["producer", "port", "consumer"],
        )
        .expect("valid metric definition");
        let evicted = IntCounterVec::new(
            Opts::new(
                "neurod_subscribers_evicted_total",
                "Run-time subscribers dropped because they fell behind their stream.",
            ),
            &["stream_id", "consumer"],
        )
        .expect("valid metric definition");
        let subscribers = IntGaugeVec::new(
            Opts::new(
                "neurod_stream_subscribers",
                "Run-time subscribers attached to a stream now.",
            ),
            &["stream_id"],
        )
        .expect("valid metric definition");
        for c in [
            Box::new(edge_dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(evicted.clone()),
            Box::new(subscribers.clone()),
        ] {
            // A second hub on the same registry (tests) shares the first one's series.
            let _ = reg.register(c);
        }
        HubMetrics {
            edge_dropped,
            evicted,
            subscribers,
        }
    }
}

/// Every port and stream of the running daemon.
pub struct Hub {
    pub(crate) metrics: HubMetrics,
    pub(crate) ports: Mutex<BTreeMap<(String, String), Arc<Port>>>,
    pub(crate) streams: Mutex<BTreeMap<String, Arc<Stream>>>,
    pub(crate) retention: Mutex<Retention>,
    /// Sources that take pushed streams, by component id (see [`Ingest`]).
    pub(crate) ingest: Mutex<BTreeMap<String, std::sync::Weak<dyn Ingest>>>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("no stream `{0}` (GET /streams lists them)")]
    Unknown(String),
    #[error("stream `{0}` has ended")]
    Ended(String),
}

/// How a run-time subscriber listens.
pub struct SubscribeOptions {
    /// Its queue, in batches.
    pub capacity: usize,
    /// The `consumer` label of its edge (`http`, `flight`, ...).
    pub consumer: String,
    /// Evict it at its first overflow instead of dropping its oldest batches.
    pub evict_on_overflow: bool,
    /// Called after every message queued for it (how an async reader wakes).
    pub waker: Option<Waker>,
}

impl Hub {
    pub fn new(metrics: &Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            metrics: HubMetrics::register(metrics),
            ports: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(BTreeMap::new()),
            retention: Mutex::new(Retention::default()),
            ingest: Mutex::new(BTreeMap::new()),
        })
    }

    /// How much of each stream's latest data to keep in memory from now on.
    pub fn set_retention(&self, keep: Retention) {
        *lock(&self.retention) = keep;
    }

    pub fn retention(&self) -> Retention {
        *lock(&self.retention)
    }

    /// The schema (with its metadata) of the latest batch of the stream with registry key `id`.
    pub fn schema(&self, id: &str) -> Option<SchemaRef> {
        let s = lock(&self.streams).get(id).cloned();
        s?.schema()
    }

    /// The latest batches of the stream with registry key `id`, oldest first: the last
    /// [`Retention::window_s`] seconds, at most [`Retention::max_bytes`]. Empty if unknown.
    pub fn recent(&self, id: &str) -> Vec<RecordBatch> {
        let s = lock(&self.streams).get(id).cloned();
        s.map(|s| s.recent()).unwrap_or_default()
    }

    /// The port `producer.name` (`name` is `""` for the default port), created on first use.
    pub fn port(self: &Arc<Self>, producer: &str, name: &str) -> Arc<Port> {
        lock(&self.ports)
            .entry((producer.to_string(), name.to_string()))
            .or_insert_with(|| Arc::new(Port::new(producer, name, Some(Arc::downgrade(self)))))
            .clone()
    }

    /// The port if it exists.
    pub fn find_port(&self, producer: &str, name: &str) -> Option<Arc<Port>> {
        lock(&self.ports)
            .get(&(producer.to_string(), name.to_string()))
            .cloned()
    }

    /// The ports of one component.
    pub fn ports_of(&self, producer: &str) -> Vec<Arc<Port>> {
        lock(&self.ports)
            .values()
            .filter(|p| p.producer == producer)
            .cloned()
            .collect()
    }

    /// Ends and forgets a port (its component was removed, or no longer declares it). Its
    /// streams stay listed, as ended.
    pub fn remove_port(&self, port: &Arc<Port>) {
        port.end_now();
        lock(&self.ports).remove(&(port.producer.clone(), port.name.clone()));
    }

    /// Ends and forgets every port (a full restart: the new topology starts afresh).
    pub fn clear_ports(&self) {
        let ports: Vec<Arc<Port>> = std::mem::take(&mut *lock(&self.ports))
            .into_values()
            .collect();
        for p in ports {
            p.end_now();
        }
    }

    /// A configured edge from `port` into `inbox` (input number `tag` of `consumer`). If the
    /// port has already ended, so has the edge.
    pub fn connect(
        &self,
        port: &Arc<Port>,
        consumer: &str,
        inbox: &InboxHandle,
        tag: u32,
        policy: Overflow,
    ) -> Arc<Edge> {
        let edge = self.edge(port, consumer, inbox, tag, policy, EdgeRole::Configured);
        if !port.attach(edge.clone()) {
            edge.sender.finish();
        }
        edge
    }

    /// Moves a consumer's input to a new inbox: batches not yet queued on `old` go to the new
    /// edge, and `old` ends after its last batch, so each batch reaches exactly one of them.
    pub fn reconnect(
        &self,
        old: &Arc<Edge>,
        inbox: &InboxHandle,
        tag: u32,
        policy: Overflow,
    ) -> Arc<Edge> {
        let port = &old.port;
        let edge = self.edge(
            port,
            &old.consumer,
            inbox,
            tag,
            policy,
            EdgeRole::Configured,
        );
        // The successor is set before `old` ends: a producer that still holds `old` and finds it
        // ended follows it here.
        let _ = old.successor.set(edge.clone());
        if !port.replace(old, edge.clone()) {
            edge.sender.finish();
        }
        old.sender.finish();
        edge
    }

    /// Ends a consumer's input: `old` ends after its last queued batch and the port forgets it.
    pub fn disconnect(&self, old: &Arc<Edge>) {
        old.port.detach(old);
        old.sender.finish();
    }

    fn edge(
        &self,
        port: &Arc<Port>,
        consumer: &str,
        inbox: &InboxHandle,
        tag: u32,
        policy: Overflow,
        role: EdgeRole,
    ) -> Arc<Edge> {
        let counter =
            self.metrics
                .edge_dropped
                .with_label_values(&[&port.producer, &port.name, consumer]);
        Arc::new(Edge {
            sender: inbox.sender_tagged(tag, Some(counter)),
            port: port.clone(),
            consumer: consumer.to_string(),
            policy,
            role,
            evicted: AtomicBool::new(false),
            successor: OnceLock::new(),
        })
    }

    /// Listens to one stream (by its registry key) from its next batch on, through a queue of
    /// its own.
    pub fn subscribe(
        &self,
        stream_id: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let stream = lock(&self.streams)
            .get(stream_id)
            .cloned()
            .ok_or_else(|| SubscribeError::Unknown(stream_id.to_string()))?;
        let port = stream
            .port()
            .filter(|_| !stream.ended())
            .ok_or_else(|| SubscribeError::Ended(stream_id.to_string()))?;
        let inbox = Inbox::for_subscriber(options.capacity, options.waker);
        let role = EdgeRole::Subscriber {
            stream: stream_id.to_string(),
            evict_on_overflow: options.evict_on_overflow,
        };
        let edge = self.edge(
            &port,
            &options.consumer,
            &inbox.handle(),
            0,
            Overflow::DropOldest,
            role,
        );
        if !port.attach(edge.clone()) {
            return Err(SubscribeError::Ended(stream_id.to_string()));
        }
        let gauge = self.metrics.subscribers.with_label_values(&[stream_id]);
        gauge.inc();
        Ok(Subscription {
            inbox,
            edge,
            stream,
            gauge,
        })
    }

    /// The registry: every stream seen since the daemon started, by id.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        streams.iter().map(|s| s.info()).collect()
    }

    /// The entry with registry key `id`.
    pub fn stream(&self, id: &str) -> Option<StreamInfo> {
        let s = lock(&self.streams).get(id).cloned();
        s.map(|s| s.info())
    }

    /// The entry of `id` as produced on `port`. Its key is the id; when another live port
    /// already produces that id (a transform that keeps its input's id, such as
    /// `motion_correct`), the key is `id@producer` (`id@producer.port` for a named port).
    fn stream_entry(&self, id: &str, port: &Arc<Port>) -> Arc<Stream> {
        let mut streams = lock(&self.streams);
        let alt = format!("{id}@{}", port.label());
        let on_port = |s: &Arc<Stream>| s.port().is_some_and(|p| Arc::ptr_eq(&p, port));
        for key in [id, alt.as_str()] {
            if let Some(s) = streams.get(key).filter(|s| on_port(s)) {
                return s.clone();
            }
        }
        let taken = streams
            .get(id)
            .and_then(|s| s.port())
            .is_some_and(|p| !p.has_ended());
        let key = if taken { alt } else { id.to_string() };
        let s = Arc::new(Stream::new(key.clone(), id, port));
        lock(&port.streams).push(s.clone());
        streams.insert(key, s.clone());
        s
    }
}

/// A run-time subscription to one stream. Dropping it detaches it.
pub struct Subscription {
    inbox: Inbox,
    edge: Arc<Edge>,
    stream: Arc<Stream>,
    gauge: prometheus::IntGauge,
}

impl Subscription {
    /// The stream's schema as last seen (batches may later carry a changed one).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.stream.schema()
    }
    /// The registry key of the stream.
    pub fn stream_id(&self) -> &str {
        self.stream.key()
    }
    /// The next batch without waiting; `Closed` when the stream has ended (or the subscriber
    /// was evicted: check [`evicted`](Self::evicted)).
    pub fn try_recv(&self) -> Recv {
        self.inbox.try_recv()
    }
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Recv {
        self.inbox.recv_timeout(timeout)
    }
    /// Dropped for falling behind (only with `evict_on_overflow`); counted once.
    pub fn evicted(&self) -> bool {
        self.edge.evicted.load(Ordering::Acquire)
    }
    pub fn dropped_rows(&self) -> u64 {
        self.edge.dropped_rows()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.edge.port.detach(&self.edge);
        self.edge.sender.finish();
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests;
