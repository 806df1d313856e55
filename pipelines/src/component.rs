//! The component model: sources produce batches, transforms turn batches into batches, sinks
//! consume them. Each runs on its own thread (acquisition and storage are blocking, CPU- or
//! IO-bound work that must not wait behind an async scheduler) and talks to the others only
//! through bounded [`Inbox`]es.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::edge::{Closed, EdgeSender, Inbox, Overflow};
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

/// One output port: fans a batch out to every consumer subscribed to it.
pub struct Output {
    senders: Vec<EdgeSender>,
    overflow: Overflow,
    metrics: ComponentMetrics,
}

impl Output {
    pub fn new(senders: Vec<EdgeSender>, overflow: Overflow, metrics: ComponentMetrics) -> Self {
        Output {
            senders,
            overflow,
            metrics,
        }
    }
    /// Whether anyone listens; a source may skip producing data for a port nobody reads.
    pub fn has_consumers(&self) -> bool {
        !self.senders.is_empty()
    }
    /// Sends to every consumer. Consumers that have stopped are forgotten; `Closed` once none is
    /// left (and there was one to begin with).
    pub fn send(&mut self, batch: RecordBatch) -> Result<(), Closed> {
        if self.senders.is_empty() {
            return Ok(());
        }
        self.metrics.sent(&batch);
        let overflow = self.overflow;
        self.senders
            .retain(|s| s.send(batch.clone(), overflow).is_ok());
        if self.senders.is_empty() {
            Err(Closed)
        } else {
            Ok(())
        }
    }
    /// Tells every consumer this port has finished.
    pub fn end(&mut self) {
        for s in &mut self.senders {
            s.end();
        }
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
    /// Sends on a port; a port nobody declared is a programming error reported as `Closed`.
    pub fn send_to(&mut self, port: &str, batch: RecordBatch) -> Result<(), Closed> {
        match self.ports.get_mut(port) {
            Some(o) => o.send(batch),
            None => Err(Closed),
        }
    }
    /// True when no port has a consumer left (every downstream component stopped).
    pub fn all_closed(&self) -> bool {
        self.ports.values().all(|o| !o.has_consumers())
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
    /// `DropOldest` for live acquisition, `Block` for replays of finished files.
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
}

pub trait Transform: Send + 'static {
    /// Layouts accepted on input (checked by `neurod validate`).
    fn accepts(&self) -> Vec<Layout>;
    fn ports(&self) -> Vec<PortSpec>;
    /// Handles one batch. An `Err` is counted and logged; the transform keeps running.
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), ComponentError>;
    /// Called once after the last input batch.
    fn finish(&mut self, _out: &mut Emitter) -> Result<(), ComponentError> {
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
