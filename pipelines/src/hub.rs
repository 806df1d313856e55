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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arrow::array::{Array, Float64Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;

use crate::edge::{EdgeSender, Inbox, InboxHandle, Overflow, Recv, SendError, Waker};
use crate::metrics::Metrics;
use crate::stream::{keys, parse_rate, stream_id_of, Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments: a panic cannot leave half an update.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The series the hub adds to the daemon's metrics.
struct HubMetrics {
    edge_dropped: IntCounterVec,
    evicted: IntCounterVec,
    subscribers: IntGaugeVec,
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
    metrics: HubMetrics,
    ports: Mutex<BTreeMap<(String, String), Arc<Port>>>,
    streams: Mutex<BTreeMap<String, Arc<Stream>>>,
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
        })
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
        let ports: Vec<Arc<Port>> = std::mem::take(&mut *lock(&self.ports)).into_values().collect();
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
        let edge = self.edge(port, &old.consumer, inbox, tag, policy, EdgeRole::Configured);
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
        let counter = self
            .metrics
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
            .port
            .upgrade()
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
        let on_port = |s: &Arc<Stream>| s.port.upgrade().is_some_and(|p| Arc::ptr_eq(&p, port));
        for key in [id, alt.as_str()] {
            if let Some(s) = streams.get(key).filter(|s| on_port(s)) {
                return s.clone();
            }
        }
        let taken = streams
            .get(id)
            .and_then(|s| s.port.upgrade())
            .is_some_and(|p| !p.has_ended());
        let key = if taken { alt } else { id.to_string() };
        let s = Arc::new(Stream {
            key: key.clone(),
            id: id.to_string(),
            producer: port.producer.clone(),
            port_name: port.name.clone(),
            port: Arc::downgrade(port),
            stats: Mutex::new(None),
            ended: AtomicBool::new(false),
        });
        lock(&port.streams).push(s.clone());
        streams.insert(key, s.clone());
        s
    }
}

/// What an edge is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EdgeRole {
    /// An input of a configured component: it counts for [`Port::is_closed`].
    Configured,
    /// A run-time subscriber to one stream of the port.
    Subscriber {
        stream: String,
        evict_on_overflow: bool,
    },
}

/// One producer port → one consumer queue.
pub struct Edge {
    sender: EdgeSender,
    port: Arc<Port>,
    consumer: String,
    policy: Overflow,
    role: EdgeRole,
    evicted: AtomicBool,
    /// Where batches go once this edge has ended because a reload moved its consumer.
    successor: OnceLock<Arc<Edge>>,
}

enum Delivery {
    Queued,
    Dropped,
    /// The consumer is gone, or the edge ended with nowhere to forward.
    Gone,
}

impl Edge {
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
    pub fn policy(&self) -> Overflow {
        self.policy
    }
    pub fn dropped_rows(&self) -> u64 {
        self.sender.dropped_rows()
    }
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    fn takes(&self, stream: Option<&str>) -> bool {
        match &self.role {
            EdgeRole::Configured => true,
            EdgeRole::Subscriber { stream: s, .. } => stream == Some(s.as_str()),
        }
    }

    fn deliver(self: &Arc<Edge>, batch: &RecordBatch) -> Delivery {
        let mut edge = self;
        loop {
            match edge.sender.try_send(batch.clone(), edge.policy) {
                Ok(0) => return Delivery::Queued,
                Ok(_) => return Delivery::Dropped,
                Err(SendError::Ended) => match edge.successor.get() {
                    Some(next) => edge = next,
                    None => return Delivery::Gone,
                },
                Err(SendError::Closed) => return Delivery::Gone,
            }
        }
    }
}

/// One named output of one component; see the module documentation.
pub struct Port {
    producer: String,
    name: String,
    hub: Option<Weak<Hub>>,
    edges: Mutex<Arc<Vec<Arc<Edge>>>>,
    /// Configured edges attached now.
    configured: AtomicUsize,
    /// Bumped when a reload hands the port to a new instance of its producer, so that the old
    /// instance's end does not end the stream.
    generation: AtomicU64,
    ended: AtomicBool,
    streams: Mutex<Vec<Arc<Stream>>>,
}

impl Port {
    fn new(producer: &str, name: &str, hub: Option<Weak<Hub>>) -> Self {
        Port {
            producer: producer.to_string(),
            name: name.to_string(),
            hub,
            edges: Mutex::new(Arc::new(Vec::new())),
            configured: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        }
    }

    /// A port outside any hub, feeding `senders` with one policy (tests and benchmarks that
    /// wire a component by hand).
    pub fn standalone(senders: Vec<EdgeSender>, policy: Overflow) -> Arc<Port> {
        let port = Arc::new(Port::new("", "", None));
        let edges: Vec<Arc<Edge>> = senders
            .into_iter()
            .map(|sender| {
                Arc::new(Edge {
                    sender,
                    port: port.clone(),
                    consumer: String::new(),
                    policy,
                    role: EdgeRole::Configured,
                    evicted: AtomicBool::new(false),
                    successor: OnceLock::new(),
                })
            })
            .collect();
        port.configured.store(edges.len(), Ordering::Release);
        *lock(&port.edges) = Arc::new(edges);
        port
    }

    pub fn producer(&self) -> &str {
        &self.producer
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `producer` or `producer.port`, as inputs name it.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.producer.clone()
        } else {
            format!("{}.{}", self.producer, self.name)
        }
    }

    pub(crate) fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.as_ref().and_then(Weak::upgrade)
    }

    pub fn edges(&self) -> Arc<Vec<Arc<Edge>>> {
        lock(&self.edges).clone()
    }

    /// Anyone listening, configured consumers or run-time subscribers.
    pub fn has_consumers(&self) -> bool {
        !lock(&self.edges).is_empty()
    }

    /// No configured consumer is attached (they all stopped, or there never was one). Run-time
    /// subscribers do not count: they never keep a producer going, nor stop it.
    pub fn is_closed(&self) -> bool {
        self.configured.load(Ordering::Acquire) == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Hands the port to a new instance of its producer: the old instance's end (with the old
    /// generation) no longer ends the port. Returns the new generation.
    pub fn hand_over(&self) -> u64 {
        let _edges = lock(&self.edges);
        self.ended.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<Arc<Edge>>)) {
        let mut edges = lock(&self.edges);
        let mut v: Vec<Arc<Edge>> = edges.as_ref().clone();
        f(&mut v);
        let configured = v.iter().filter(|e| e.role == EdgeRole::Configured).count();
        self.configured.store(configured, Ordering::Release);
        *edges = Arc::new(v);
    }

    /// Adds an edge; false (and nothing added) if the port has ended.
    fn attach(&self, edge: Arc<Edge>) -> bool {
        let mut added = false;
        self.edit(|v| {
            if !self.ended.load(Ordering::Acquire) {
                v.push(edge);
                added = true;
            }
        });
        added
    }

    fn detach(&self, edge: &Arc<Edge>) {
        self.edit(|v| v.retain(|e| !Arc::ptr_eq(e, edge)));
    }

    fn replace(&self, old: &Arc<Edge>, new: Arc<Edge>) -> bool {
        let mut placed = false;
        self.edit(|v| {
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            match v.iter().position(|e| Arc::ptr_eq(e, old)) {
                Some(i) => v[i] = new,
                None => v.push(new),
            }
            placed = true;
        });
        placed
    }

    /// Ends the port if `generation` is still its own: every consumer sees the end after the
    /// last batch, and its streams are marked ended.
    pub fn end(&self, generation: u64) {
        let edges = {
            let mut edges = lock(&self.edges);
            if self.generation() != generation || self.ended.swap(true, Ordering::AcqRel) {
                return;
            }
            self.configured.store(0, Ordering::Release);
            std::mem::take(&mut *edges)
        };
        for e in edges.iter() {
            e.sender.finish();
        }
        for s in lock(&self.streams).iter() {
            s.ended.store(true, Ordering::Release);
        }
    }

    /// Ends the port whatever its generation.
    pub fn end_now(&self) {
        self.end(self.generation());
    }

    /// Evicts a run-time subscriber that fell behind.
    fn evict(&self, edge: &Arc<Edge>) {
        self.detach(edge);
        if edge.evicted.swap(true, Ordering::AcqRel) {
            return;
        }
        edge.sender.evict();
        if let (Some(hub), EdgeRole::Subscriber { stream, .. }) = (self.hub(), &edge.role) {
            hub.metrics
                .evicted
                .with_label_values(&[stream, &edge.consumer])
                .inc();
            tracing::warn!(
                stream = %stream,
                consumer = %edge.consumer,
                "a run-time subscriber fell behind and was dropped"
            );
        }
    }

    /// Fans a batch out to every edge that takes `stream`. `Err(Closed)`-like `false` when the
    /// last configured consumer turned out to be gone.
    pub(crate) fn fan_out(&self, batch: &RecordBatch, stream: Option<&str>) -> bool {
        let edges = self.edges();
        let mut gone = false;
        for e in edges.iter().filter(|e| e.takes(stream)) {
            match e.deliver(batch) {
                Delivery::Queued => {}
                Delivery::Dropped => {
                    if matches!(
                        e.role,
                        EdgeRole::Subscriber {
                            evict_on_overflow: true,
                            ..
                        }
                    ) {
                        self.evict(e);
                    }
                }
                Delivery::Gone => {
                    self.detach(e);
                    gone |= e.role == EdgeRole::Configured;
                }
            }
        }
        !(gone && self.is_closed())
    }

    fn consumers(&self, stream_key: &str) -> Vec<ConsumerInfo> {
        self.edges()
            .iter()
            .filter(|e| e.takes(Some(stream_key)))
            .map(|e| ConsumerInfo {
                consumer: e.consumer.clone(),
                policy: e.policy,
                subscriber: e.role != EdgeRole::Configured,
                dropped_rows: e.dropped_rows(),
            })
            .collect()
    }

    /// The registry entry of the stream a batch belongs to (None outside a hub).
    pub(crate) fn stream_of(self: &Arc<Self>, id: &str) -> Option<Arc<Stream>> {
        Some(self.hub()?.stream_entry(id, self))
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
        lock(&self.stream.stats).as_ref().map(|s| s.schema.clone())
    }
    /// The registry key of the stream.
    pub fn stream_id(&self) -> &str {
        &self.stream.key
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
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Counts one batch of `bytes` Arrow bytes.
    pub(crate) fn record(&self, batch: &RecordBatch, bytes: u64) {
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
        let (s, f, t) = (
            int_ends(batch, c.sample_index),
            int_ends(batch, c.frame_index),
            float_ends(batch, c.time_s),
        );
        stats.sample_index.update(s);
        stats.frame_index.update(f);
        stats.time_s.update(t);
    }

    fn info(&self) -> StreamInfo {
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
            info.rate_hz = md
                .get(keys::SAMPLING_HZ)
                .and_then(|t| parse_rate(t).ok());
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
pub fn stream_key(batch: &RecordBatch) -> &str {
    stream_id_of(batch.schema_ref()).unwrap_or("unnamed")
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

#[cfg(test)]
mod tests;
