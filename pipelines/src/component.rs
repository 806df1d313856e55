//! The component model: sources produce batches, transforms turn batches into batches, sinks
//! consume them. Each runs on its own thread (acquisition and storage are blocking, CPU- or
//! IO-bound work that must not wait behind an async scheduler) and talks to the others only
//! through bounded [`Inbox`]es.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use arrow::datatypes::SchemaRef;

use crate::batch::Batch;
use crate::edge::{Closed, EdgeSender, Inbox, Overflow};
use crate::hub::{stream_key, Port, Stream};
use crate::metrics::ComponentMetrics;
use crate::storage::ResumeLookup;
use crate::stream::Layout;

/// A component's failure. Per-batch problems are counted and logged by the component itself and
/// do not end it; this is for what does (a source whose file vanished, a sink whose disk is gone).
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{0}")]
    Other(String),
}

impl ComponentError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ComponentError::Io {
            context: context.into(),
            source,
        }
    }
    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        ComponentError::Arrow {
            context: context.into(),
            source,
        }
    }
    /// The `error_type` label for the metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ComponentError::Io { .. } => "io",
            ComponentError::Arrow { .. } => "arrow",
            ComponentError::Other(_) => "other",
        }
    }
}

/// A stop request shared by a topology's components. Sleeping components wake at once.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn trigger(&self) {
        let (lock, cv) = &*self.inner;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
    pub fn is_triggered(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Sleeps up to `d`; returns `true` if shutdown was requested (before or during the sleep).
    pub fn sleep(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + d;
        let mut stop = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*stop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stop = cv
                .wait_timeout(stop, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// A named output of a component. `""` is the default port, which `inputs = ["id"]` refers to;
/// other ports are referred to as `"id.port"` (e.g. `sim.ground_truth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub layouts: Vec<Layout>,
}

impl PortSpec {
    pub fn default_port(layouts: &[Layout]) -> Self {
        PortSpec {
            name: String::new(),
            layouts: layouts.to_vec(),
        }
    }
    pub fn named(name: &str, layouts: &[Layout]) -> Self {
        PortSpec {
            name: name.into(),
            layouts: layouts.to_vec(),
        }
    }
}

/// A component's handle on one of its output ports (see [`crate::hub`]): sends fan out to every
/// edge attached to the port, each under its own full-queue policy, and every batch is counted in
/// the hub's registry of streams.
pub struct Output {
    port: Arc<Port>,
    /// The port's generation when this handle was made: once a reload has handed the port to a
    /// new instance, this handle's end no longer ends the port.
    generation: u64,
    metrics: ComponentMetrics,
    /// Registry entries by schema (batches of one stream share their schema's `Arc`).
    streams: Vec<(SchemaRef, Arc<Stream>)>,
}

impl Output {
    /// An output feeding `senders` directly, all under one policy, outside any hub (tests and
    /// benchmarks that wire a component by hand).
    pub fn new(senders: Vec<EdgeSender>, overflow: Overflow, metrics: ComponentMetrics) -> Self {
        Self::attached(Port::standalone(senders, overflow), metrics)
    }

    /// A handle on a hub's port, for the instance that owns it now.
    pub fn attached(port: Arc<Port>, metrics: ComponentMetrics) -> Self {
        Output {
            generation: port.generation(),
            port,
            metrics,
            streams: Vec::new(),
        }
    }

    /// The hub the port belongs to (none for a port wired by hand).
    pub fn hub(&self) -> Option<Arc<crate::hub::Hub>> {
        self.port.hub()
    }

    /// Whether anyone listens (a configured consumer or a run-time subscriber); a source may
    /// skip producing data for a port nobody reads.
    pub fn has_consumers(&self) -> bool {
        self.port.has_consumers()
    }

    /// True when no configured consumer is left (run-time subscribers never keep a producer
    /// going).
    pub fn is_closed(&self) -> bool {
        self.port.is_closed()
    }

    /// Sends to every consumer. Consumers that have stopped are forgotten; `Closed` once the
    /// last configured one has stopped.
    pub fn send(&mut self, batch: impl Into<Batch>) -> Result<(), Closed> {
        let batch = batch.into();
        let stream = self.stream_of(&batch);
        let listened = self.port.has_consumers();
        if stream.is_none() && !listened {
            return Ok(());
        }
        let bytes = batch.bytes();
        if let Some(s) = &stream {
            let keep = self.port.hub().map(|h| h.retention()).unwrap_or_default();
            s.record(&batch, bytes, keep);
        }
        if !listened {
            return Ok(());
        }
        self.metrics.sent(&batch);
        if self.port.fan_out(&batch, stream.as_ref().map(|s| s.key())) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    fn stream_of(&mut self, batch: &Batch) -> Option<Arc<Stream>> {
        let schema = batch.schema_ref();
        if let Some((_, s)) = self.streams.iter().find(|(k, _)| Arc::ptr_eq(k, schema)) {
            return Some(s.clone());
        }
        let s = self.port.stream_of(stream_key(schema))?;
        // A producer that makes a new schema per batch must not grow this without bound.
        if self.streams.len() >= 64 {
            self.streams.clear();
        }
        self.streams.push((schema.clone(), s.clone()));
        Some(s)
    }

    /// Tells every consumer this port has finished (unless a reload handed it on).
    pub fn end(&mut self) {
        self.port.end(self.generation);
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.end();
    }
}

/// A component's output ports by name.
#[derive(Default)]
pub struct Outputs {
    ports: BTreeMap<String, Output>,
}

impl Outputs {
    pub fn insert(&mut self, port: &str, output: Output) {
        self.ports.insert(port.into(), output);
    }
    /// The default port.
    pub fn main(&mut self) -> &mut Output {
        self.ports
            .get_mut("")
            .expect("every component has a default output port")
    }
    pub fn port(&mut self, name: &str) -> Option<&mut Output> {
        self.ports.get_mut(name)
    }
    /// The hub the default port belongs to (none for ports wired by hand).
    pub fn main_hub(&self) -> Option<Arc<crate::hub::Hub>> {
        self.ports.get("").and_then(Output::hub)
    }
    /// Sends on a port. A port the component did not declare is a bug: it fails debug builds
    /// (every test) and, in release, the batch is dropped, logged and counted, never silently.
    pub fn send_to(&mut self, port: &str, batch: impl Into<Batch>) -> Result<(), Closed> {
        let batch = batch.into();
        if let Some(o) = self.ports.get_mut(port) {
            return o.send(batch);
        }
        debug_assert!(false, "a batch was sent to the undeclared port `{port}`");
        if let Some(o) = self.ports.values().next() {
            let why = format!(
                "a batch of {} rows was sent to the undeclared port `{port}` and dropped",
                batch.num_rows()
            );
            tracing::error!(component = %o.metrics.id(), "{why}");
            o.metrics.error("undeclared_port", "sending", why);
        }
        Ok(())
    }
    /// True when no port has a configured consumer left (every downstream component stopped).
    pub fn all_closed(&self) -> bool {
        self.ports.values().all(|o| o.is_closed())
    }
    pub fn end_all(&mut self) {
        for o in self.ports.values_mut() {
            o.end();
        }
    }
}

pub struct SourceContext {
    pub id: String,
    pub outputs: Outputs,
    pub shutdown: Shutdown,
    pub metrics: ComponentMetrics,
    /// What the stores this source feeds already hold of its streams (resume after a reload or
    /// a crash; a new run for a source that cannot resume).
    pub resume: ResumeLookup,
}

pub struct SinkContext {
    pub id: String,
    pub inbox: Inbox,
    pub shutdown: Shutdown,
    pub metrics: ComponentMetrics,
    /// `<data_dir>`; a sink writes under `<data_dir>/<id>/`.
    pub data_dir: PathBuf,
}

pub trait Source: Send + 'static {
    fn ports(&self) -> Vec<PortSpec>;
    /// The policy of the edges from this source to its configured consumers: `DropOldest` for
    /// live acquisition (it must never wait), `Block` for replays of finished files (lossless).
    fn overflow(&self) -> Overflow;
    /// Runs until the data ends or `ctx.shutdown` fires. Ports are ended by the caller.
    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError>;
}

/// Collects what a transform emits for one input batch.
#[derive(Default)]
pub struct Emitter {
    pub batches: Vec<(String, RecordBatch)>,
}

impl Emitter {
    pub fn emit(&mut self, batch: RecordBatch) {
        self.batches.push((String::new(), batch));
    }
    pub fn emit_to(&mut self, port: &str, batch: RecordBatch) {
        self.batches.push((port.into(), batch));
    }
    /// The ports emitted to that are not among `declared` (for tests: each must be empty).
    pub fn undeclared_ports(&self, declared: &[PortSpec]) -> Vec<String> {
        let mut out: Vec<String> = self
            .batches
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !declared.iter().any(|d| d.name == **p))
            .cloned()
            .collect();
        out.dedup();
        out
    }
}

/// The configured input a batch came from: its position in the transform's `inputs` list and
/// that entry as written (`inputs = ["probe", "det", "det.progress"]`: `det.progress` is input 2).
/// Transforms tell their inputs apart by this, never by the batch's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub index: usize,
    pub name: String,
}

impl Input {
    pub fn new(index: usize, name: impl Into<String>) -> Self {
        Input {
            index,
            name: name.into(),
        }
    }

    /// For a transform whose inputs have roles by position: this input's role among `roles`
    /// (each with the layout its input carries), once the batch's layout is checked against it.
    /// The error names the input and the stream.
    pub fn role<R: Copy>(
        &self,
        roles: &[(R, Layout)],
        schema: &arrow::datatypes::Schema,
    ) -> Result<R, ComponentError> {
        let stream = crate::stream::stream_id_of(schema).unwrap_or("unnamed");
        let bad = |why: String| {
            ComponentError::Other(format!("input `{}`, stream `{stream}`: {why}", self.name))
        };
        let (role, expected) = roles
            .get(self.index)
            .copied()
            .ok_or_else(|| bad(format!("only {} inputs are taken", roles.len())))?;
        match Layout::of(schema) {
            Some(l) if l != expected => Err(bad(format!(
                "a {} stream where {} was expected",
                l.as_str(),
                expected.as_str()
            ))),
            _ => Ok(role),
        }
    }
}

/// What a transform has besides the batch: its id, its own metrics (for counters of its own)
/// and the [`Emitter`] its output goes to (the context derefs to it: `ctx.emit(batch)`).
pub struct TransformContext {
    pub id: String,
    pub metrics: ComponentMetrics,
    pub out: Emitter,
}

impl TransformContext {
    pub fn new(id: &str, metrics: ComponentMetrics) -> Self {
        TransformContext {
            id: id.into(),
            metrics,
            out: Emitter::default(),
        }
    }

    /// A context outside a daemon (tests and benchmarks): metrics in a registry of its own.
    pub fn detached(id: &str) -> Self {
        let metrics = crate::metrics::Metrics::new().component(id, "transform", "detached");
        Self::new(id, metrics)
    }
}

impl std::ops::Deref for TransformContext {
    type Target = Emitter;
    fn deref(&self) -> &Emitter {
        &self.out
    }
}

impl std::ops::DerefMut for TransformContext {
    fn deref_mut(&mut self) -> &mut Emitter {
        &mut self.out
    }
}

pub trait Transform: Send + 'static {
    /// Layouts accepted on input (checked by `neurod validate`).
    fn accepts(&self) -> Vec<Layout>;
    /// For a transform whose inputs have roles by position: the one layout input `index` takes.
    /// Other layouts arriving there (a rig's port carries probes, frames and tables together)
    /// are passed by, as layouts outside [`Transform::accepts`] are.
    fn input_layout(&self, _index: usize) -> Option<Layout> {
        None
    }
    fn ports(&self) -> Vec<PortSpec>;
    /// Handles one batch from `input`. An `Err` is counted and logged; the transform keeps
    /// running.
    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        ctx: &mut TransformContext,
    ) -> Result<(), ComponentError>;
    /// [`process`](Self::process) for a batch as it travelled: a transform that can take a
    /// continuous stream's samples as its source read them ([`Batch::sample_rows`]) overrides
    /// this, so that their Arrow columns are not built for it. The default builds them (once,
    /// for every consumer of the batch).
    fn process_batch(
        &mut self,
        input: &Input,
        batch: Batch,
        ctx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.process(input, batch.into_record_batch(), ctx)
    }
    /// Called once after the last input batch.
    fn finish(&mut self, _ctx: &mut TransformContext) -> Result<(), ComponentError> {
        Ok(())
    }
}

pub trait Sink: Send + 'static {
    fn accepts(&self) -> Vec<Layout> {
        vec![
            Layout::Continuous,
            Layout::Frames,
            Layout::Events,
            Layout::Traces,
            Layout::Rois,
            Layout::Table,
        ]
    }
    /// The store directory this sink writes (`<store>/<stream dir>/`), if it is a store:
    /// sources that feed it resume from what it holds.
    fn store_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Drains `ctx.inbox` until it closes, then flushes. Must persist everything received.
    fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ComponentError>;
}

/// What a component builder gets besides its own options.
pub struct BuildContext<'a> {
    pub id: &'a str,
    pub data_dir: &'a Path,
    /// The configured `inputs`, in order (a transform with several inputs gives each position
    /// its role, see [`Input`]); empty for sources.
    pub inputs: &'a [String],
}

/// Deserialises a component's options (everything but `type` and `inputs`), rejecting unknown
/// keys, and names the component in the error.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    id: &str,
    type_name: &str,
    options: toml::Table,
) -> Result<T, Vec<String>> {
    T::deserialize(toml::Value::Table(options)).map_err(|e| {
        vec![format!(
            "component `{id}` (type `{type_name}`): {}",
            e.message()
        )]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_wakes_a_sleeper() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(t.join().unwrap());
        assert!(s.sleep(Duration::from_secs(30)), "already triggered");
    }

    #[test]
    #[should_panic(expected = "undeclared port `nowhere`")]
    fn a_batch_sent_to_an_undeclared_port_fails_tests() {
        let m = crate::metrics::Metrics::new().component("c", "source", "test");
        let mut outputs = Outputs::default();
        outputs.insert("", Output::new(Vec::new(), Overflow::Block, m));
        let schema = Arc::new(arrow::datatypes::Schema::empty());
        let _ = outputs.send_to("nowhere", RecordBatch::new_empty(schema));
    }

    #[test]
    fn unknown_option_is_named() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct O {
            path: String,
        }
        let t: toml::Table = toml::from_str("path = 'x'\npathh = 'y'").unwrap();
        let e = parse_options::<O>("probe0", "spikeglx", t).unwrap_err();
        assert!(e[0].contains("probe0") && e[0].contains("pathh"), "{e:?}");
    }
}
