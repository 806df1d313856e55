//! Ports and edges: how a batch leaves a component and reaches each consumer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::batch::Batch;

use super::registry::{ConsumerInfo, Stream};
use super::{lock, Hub};
use crate::edge::{EdgeSender, Overflow, SendError};

/// What an edge is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EdgeRole {
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
    pub(super) sender: EdgeSender,
    pub(super) port: Arc<Port>,
    pub(super) consumer: String,
    pub(super) policy: Overflow,
    pub(super) role: EdgeRole,
    pub(super) evicted: AtomicBool,
    /// Where batches go once this edge has ended because a reload moved its consumer.
    pub(super) successor: OnceLock<Arc<Edge>>,
}

pub(super) enum Delivery {
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

    pub(super) fn takes(&self, stream: Option<&str>) -> bool {
        match &self.role {
            EdgeRole::Configured => true,
            EdgeRole::Subscriber { stream: s, .. } => stream == Some(s.as_str()),
        }
    }

    pub(super) fn deliver(self: &Arc<Edge>, batch: &Batch) -> Delivery {
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
    pub(super) producer: String,
    pub(super) name: String,
    pub(super) hub: Option<Weak<Hub>>,
    pub(super) edges: Mutex<Arc<Vec<Arc<Edge>>>>,
    /// Configured edges attached now.
    pub(super) configured: AtomicUsize,
    /// Bumped when a reload hands the port to a new instance of its producer, so that the old
    /// instance's end does not end the stream.
    pub(super) generation: AtomicU64,
    pub(super) ended: AtomicBool,
    pub(super) streams: Mutex<Vec<Arc<Stream>>>,
}

impl Port {
    pub(super) fn new(producer: &str, name: &str, hub: Option<Weak<Hub>>) -> Self {
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

    pub(super) fn edit(&self, f: impl FnOnce(&mut Vec<Arc<Edge>>)) {
        let mut edges = lock(&self.edges);
        let mut v: Vec<Arc<Edge>> = edges.as_ref().clone();
        f(&mut v);
        let configured = v.iter().filter(|e| e.role == EdgeRole::Configured).count();
        self.configured.store(configured, Ordering::Release);
        *edges = Arc::new(v);
    }

    /// Adds an edge; false (and nothing added) if the port has ended.
    pub(super) fn attach(&self, edge: Arc<Edge>) -> bool {
        let mut added = false;
        self.edit(|v| {
            if !self.ended.load(Ordering::Acquire) {
                v.push(edge);
                added = true;
            }
        });
        added
    }

    pub(super) fn detach(&self, edge: &Arc<Edge>) {
        self.edit(|v| v.retain(|e| !Arc::ptr_eq(e, edge)));
    }

    pub(super) fn replace(&self, old: &Arc<Edge>, new: Arc<Edge>) -> bool {
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
            s.set_ended();
        }
    }

    /// Ends the port whatever its generation.
    pub fn end_now(&self) {
        self.end(self.generation());
    }

    /// Evicts a run-time subscriber that fell behind.
    pub(super) fn evict(&self, edge: &Arc<Edge>) {
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
    pub(crate) fn fan_out(&self, batch: &Batch, stream: Option<&str>) -> bool {
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

    pub(super) fn consumers(&self, stream_key: &str) -> Vec<ConsumerInfo> {
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
