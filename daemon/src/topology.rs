//! Runs a [`Plan`]: one thread per component, a bounded inbox per consumer, every output port in
//! the [`Hub`], one edge per configured input, each with its own full-queue policy.
//!
//! Shutdown flows with the data: sources stop, end their ports, transforms finish after their
//! last input and end theirs, sinks drain and flush. Nothing queued is dropped on the way out.
//!
//! A reload ([`Topology::apply`]) changes only what the new config changes. Unchanged components
//! (same type, options and inputs) keep running with their state and queues. A changed producer
//! hands its ports to its new instance, so its consumers never see an end of stream. A changed
//! consumer gets a new inbox: its inputs move there batch-exactly (each batch reaches the old
//! instance or the new one, never both), the old instance drains what it had queued, finishes
//! and exits, and only then does the new one start, so a sink never has two writers. Removed
//! components drain and stop; new ones start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipelines::component::{
    ComponentError, Emitter, Input, Output, Outputs, PortSpec, Shutdown, SinkContext,
    SourceContext, Transform, TransformContext,
};
use pipelines::edge::{Inbox, InboxHandle, Overflow, Recv};
use pipelines::hub::{Edge, Hub};
use pipelines::metrics::{ComponentMetrics, ComponentState, Metrics};
use pipelines::storage::ResumeLookup;
use pipelines::stream::{stream_id_of, Layout};
use tokio::sync::watch;

use crate::supervise;
use neurod::config::{Built, Component, DaemonConfig, InputRef, Kind, Plan};

pub struct Topology {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    daemon: DaemonConfig,
    components: BTreeMap<String, Running>,
    /// Threads of removed components, joined at the end.
    retired: Vec<(String, JoinHandle<()>)>,
    /// Component threads alive; [`Topology::finished`] waits for 0.
    alive: Arc<watch::Sender<usize>>,
    exited: watch::Receiver<usize>,
    /// Set by any component that fails.
    failed: Arc<AtomicBool>,
    /// Where each source of the current plan resumes (what the stores it feeds hold).
    resume: HashMap<String, ResumeLookup>,
}

/// One running component and what a reload needs to rewire it.
struct Running {
    kind: Kind,
    type_name: String,
    options: toml::Table,
    inputs: Vec<InputRef>,
    shutdown: Shutdown,
    thread: JoinHandle<()>,
    /// The consumer's inbox and its edges, one per input in order (empty for sources).
    inbox: Option<InboxHandle>,
    edges: Vec<Arc<Edge>>,
}

impl Running {
    fn same_as(&self, c: &Component) -> bool {
        self.kind == c.kind
            && self.type_name == c.type_name
            && self.options == c.options
            && self.inputs == c.inputs
    }
}

/// Keeps the count of live component threads, however a thread ends.
struct AliveGuard(Arc<watch::Sender<usize>>);

impl AliveGuard {
    fn new(alive: &Arc<watch::Sender<usize>>) -> Self {
        alive.send_modify(|n| *n += 1);
        AliveGuard(alive.clone())
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What a reload did, for the log.
#[derive(Debug, Default)]
pub struct Changes {
    pub unchanged: Vec<String>,
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

/// The policy of the edges a component feeds: a source says whether it is live; inside the
/// daemon nothing is dropped (a transform waits for its consumers, and the pressure reaches the
/// live source's edge, where it is counted).
fn policy_of(built: &Built) -> Overflow {
    match built {
        Built::Source(s) => s.overflow(),
        Built::Transform(_) | Built::Sink(_) => Overflow::Block,
    }
}

fn ports_of(built: &Built) -> Vec<PortSpec> {
    match built {
        Built::Source(s) => s.ports(),
        Built::Transform(t) => t.ports(),
        Built::Sink(_) => Vec::new(),
    }
}

impl Topology {
    pub fn start(plan: Plan, metrics: &Arc<Metrics>, hub: &Arc<Hub>) -> std::io::Result<Topology> {
        std::fs::create_dir_all(&plan.daemon.data_dir)?;
        let (alive, exited) = watch::channel(0);
        let resume = crate::resume::lookups(&plan);
        let mut t = Topology {
            hub: hub.clone(),
            metrics: metrics.clone(),
            daemon: plan.daemon,
            components: BTreeMap::new(),
            retired: Vec::new(),
            alive: Arc::new(alive),
            exited,
            failed: Arc::new(AtomicBool::new(false)),
            resume,
        };
        let policies: HashMap<String, Overflow> = plan
            .components
            .iter()
            .map(|c| (c.id.clone(), policy_of(&c.built)))
            .collect();
        // Every port exists before any edge or thread, so no batch is sent into nothing.
        for c in &plan.components {
            for p in ports_of(&c.built) {
                hub.port(&c.id, &p.name);
            }
        }
        // Every edge too: a source looks at its consumers when it starts (it skips ports nobody
        // reads).
        let mut wired = Vec::new();
        for c in plan.components {
            let inbox = (!c.inputs.is_empty()).then(|| t.new_inbox(&c));
            let edges = match &inbox {
                Some(inbox) => t.connect_all(&c, &inbox.handle(), &policies),
                None => Vec::new(),
            };
            wired.push((c, inbox, edges));
        }
        for (c, inbox, edges) in wired {
            t.launch(c, inbox, edges, None)?;
        }
        Ok(t)
    }

    pub fn daemon(&self) -> &DaemonConfig {
        &self.daemon
    }

    fn new_inbox(&self, c: &Component) -> Inbox {
        // A store moves batches straight into its own buffer; its larger inbox only rides out
        // the moments its receiving thread gets no CPU while a source catches up.
        let cap = if c.type_name == pipelines::sinks::store::TYPE_NAME {
            self.daemon
                .queue_batches
                .saturating_mul(pipelines::sinks::store::INBOX_FACTOR)
        } else {
            self.daemon.queue_batches
        };
        Inbox::new(cap, self.component_metrics(c))
    }

    fn component_metrics(&self, c: &Component) -> ComponentMetrics {
        self.metrics.component(&c.id, c.kind.as_str(), &c.type_name)
    }

    /// Connects every input of `c` to `inbox`.
    fn connect_all(
        &self,
        c: &Component,
        inbox: &InboxHandle,
        policies: &HashMap<String, Overflow>,
    ) -> Vec<Arc<Edge>> {
        c.inputs
            .iter()
            .enumerate()
            .map(|(tag, input)| {
                let port = self.hub.port(&input.component, &input.port);
                let policy = policies
                    .get(&input.component)
                    .copied()
                    .unwrap_or(Overflow::Block);
                self.hub.connect(&port, &c.id, inbox, tag as u32, policy)
            })
            .collect()
    }

    /// Starts a component's thread (after `previous`, the thread of the instance it replaces,
    /// has ended).
    fn launch(
        &mut self,
        c: Component,
        inbox: Option<Inbox>,
        edges: Vec<Arc<Edge>>,
        previous: Option<JoinHandle<()>>,
    ) -> std::io::Result<()> {
        let metrics = self.component_metrics(&c);
        let shutdown = Shutdown::new();
        let outputs = {
            let mut outputs = Outputs::default();
            for p in ports_of(&c.built) {
                let port = self.hub.port(&c.id, &p.name);
                outputs.insert(&p.name, Output::attached(port, metrics.clone()));
            }
            outputs
        };
        let handle = inbox.as_ref().map(Inbox::handle);
        let body: Box<dyn FnOnce() -> bool + Send> = match c.built {
            Built::Source(src) => {
                let ctx = SourceContext {
                    id: c.id.clone(),
                    outputs,
                    shutdown: shutdown.clone(),
                    metrics: metrics.clone(),
                    resume: self.resume.get(&c.id).cloned().unwrap_or_default(),
                };
                Box::new(move || run_source(src, ctx))
            }
            Built::Transform(tr) => {
                let inbox = inbox.ok_or_else(|| missing_inbox(&c.id))?;
                let inputs = c
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Input::new(i, r.to_string()))
                    .collect();
                let ctx = TransformContext::new(&c.id, metrics.clone());
                Box::new(move || run_transform(tr, inbox, inputs, outputs, ctx))
            }
            Built::Sink(sink) => {
                let ctx = SinkContext {
                    id: c.id.clone(),
                    inbox: inbox.ok_or_else(|| missing_inbox(&c.id))?,
                    shutdown: shutdown.clone(),
                    metrics: metrics.clone(),
                    data_dir: self.daemon.data_dir.clone(),
                };
                let metrics = metrics.clone();
                Box::new(move || {
                    metrics.set_state(ComponentState::Running);
                    finish(&metrics, sink.run(ctx))
                })
            }
        };
        let guard = AliveGuard::new(&self.alive);
        let failed = self.failed.clone();
        let thread = std::thread::Builder::new()
            .name(format!("neurod-{}", c.id))
            .spawn(move || {
                let _guard = guard;
                if let Some(p) = previous {
                    // The old instance drains and flushes first: one writer at a time.
                    let _ = p.join();
                }
                if !supervise::run(&metrics, body) {
                    failed.store(true, Ordering::SeqCst);
                }
            })?;
        self.components.insert(
            c.id,
            Running {
                kind: c.kind,
                type_name: c.type_name,
                options: c.options,
                inputs: c.inputs,
                shutdown,
                thread,
                inbox: handle,
                edges,
            },
        );
        Ok(())
    }

    /// Applies a new config: see the module documentation. The daemon settings must be the
    /// running ones (a change there is a full restart, which the caller does).
    pub fn apply(&mut self, plan: Plan) -> std::io::Result<Changes> {
        let mut changes = Changes::default();
        let new_ids: HashSet<String> = plan.components.iter().map(|c| c.id.clone()).collect();
        self.resume = crate::resume::lookups(&plan);
        let policies: HashMap<String, Overflow> = plan
            .components
            .iter()
            .map(|c| (c.id.clone(), policy_of(&c.built)))
            .collect();

        let mut restart = Vec::new();
        let mut add = Vec::new();
        for c in plan.components {
            match self.components.get(&c.id) {
                Some(r) if r.same_as(&c) => changes.unchanged.push(c.id),
                Some(_) => restart.push(c),
                None => add.push(c),
            }
        }
        let removed: Vec<String> = self
            .components
            .keys()
            .filter(|id| !new_ids.contains(*id))
            .cloned()
            .collect();

        // 1. Replaced producers hand their ports to the new instance; ports they no longer
        //    declare, and those of removed components, end.
        for c in &restart {
            let declared: HashSet<String> =
                ports_of(&c.built).into_iter().map(|p| p.name).collect();
            for port in self.hub.ports_of(&c.id) {
                if declared.contains(port.name()) {
                    port.hand_over();
                } else {
                    self.hub.remove_port(&port);
                }
            }
            for name in &declared {
                self.hub.port(&c.id, name);
            }
        }
        for c in &add {
            for p in ports_of(&c.built) {
                self.hub.port(&c.id, &p.name);
            }
        }

        // 2. Unchanged consumers whose producer's policy changed get an edge with the new one.
        for id in &changes.unchanged {
            let Some(r) = self.components.get_mut(id) else {
                continue;
            };
            let Some(inbox) = r.inbox.clone() else {
                continue;
            };
            for (tag, (input, edge)) in r.inputs.iter().zip(r.edges.iter_mut()).enumerate() {
                let policy = policies
                    .get(&input.component)
                    .copied()
                    .unwrap_or(edge.policy());
                if policy != edge.policy() {
                    *edge = self.hub.reconnect(edge, &inbox, tag as u32, policy);
                }
            }
        }

        // 3. Replaced consumers: a new inbox, their inputs moved to it batch-exactly.
        let mut launches = Vec::new();
        for c in restart {
            let Some(old) = self.components.remove(&c.id) else {
                continue;
            };
            if old.type_name != c.type_name || old.kind != c.kind {
                // Other labels: a new set of series (before the new inbox takes them).
                self.metrics.forget_component(&c.id);
            }
            let inbox = (!c.inputs.is_empty()).then(|| self.new_inbox(&c));
            let edges = match &inbox {
                Some(inbox) => self.move_inputs(&c, &old, &inbox.handle(), &policies),
                None => Vec::new(),
            };
            // Sources stop when told; consumers stop when their (moved) inputs have ended.
            old.shutdown.trigger();
            changes.restarted.push(c.id.clone());
            launches.push((c, inbox, edges, Some(old.thread)));
        }
        for c in add {
            let inbox = (!c.inputs.is_empty()).then(|| self.new_inbox(&c));
            let edges = match &inbox {
                Some(inbox) => self.connect_all(&c, &inbox.handle(), &policies),
                None => Vec::new(),
            };
            changes.added.push(c.id.clone());
            launches.push((c, inbox, edges, None));
        }

        // 4. Removed components drain and stop.
        for id in removed {
            let Some(old) = self.components.remove(&id) else {
                continue;
            };
            for e in &old.edges {
                self.hub.disconnect(e);
            }
            old.shutdown.trigger();
            for port in self.hub.ports_of(&id) {
                self.hub.remove_port(&port);
            }
            self.metrics.forget_component(&id);
            self.retired.push((id.clone(), old.thread));
            changes.removed.push(id);
        }

        // 5. New instances start, each after the one it replaces has ended.
        for (c, inbox, edges, previous) in launches {
            self.launch(c, inbox, edges, previous)?;
        }
        Ok(changes)
    }

    /// The inputs of a replaced consumer on its new inbox: an input it had before moves its edge
    /// (nothing lost, nothing twice), a new one connects, one it no longer has ends.
    fn move_inputs(
        &self,
        c: &Component,
        old: &Running,
        inbox: &InboxHandle,
        policies: &HashMap<String, Overflow>,
    ) -> Vec<Arc<Edge>> {
        let mut previous: Vec<Option<(&InputRef, &Arc<Edge>)>> =
            old.inputs.iter().zip(old.edges.iter()).map(Some).collect();
        let edges = c
            .inputs
            .iter()
            .enumerate()
            .map(|(tag, input)| {
                let policy = policies
                    .get(&input.component)
                    .copied()
                    .unwrap_or(Overflow::Block);
                let same = previous
                    .iter_mut()
                    .find(|p| p.is_some_and(|(i, _)| i == input))
                    .and_then(Option::take);
                match same {
                    Some((_, edge)) => self.hub.reconnect(edge, inbox, tag as u32, policy),
                    None => {
                        let port = self.hub.port(&input.component, &input.port);
                        self.hub.connect(&port, &c.id, inbox, tag as u32, policy)
                    }
                }
            })
            .collect();
        for (_, edge) in previous.into_iter().flatten() {
            self.hub.disconnect(edge);
        }
        edges
    }

    /// Asks every source to stop; the rest drains behind them.
    pub fn stop(&self) {
        for r in self.components.values() {
            r.shutdown.trigger();
        }
    }

    /// Resolves when every component has finished.
    pub async fn finished(&mut self) {
        let _ = self.exited.wait_for(|alive| *alive == 0).await;
    }

    /// Joins the threads; true if every component ended without failing.
    pub fn join(self) -> bool {
        let threads = self
            .components
            .into_iter()
            .map(|(id, r)| (id, r.thread))
            .chain(self.retired);
        for (id, t) in threads {
            if t.join().is_err() {
                tracing::error!(component = %id, "component thread panicked");
                self.failed.store(true, Ordering::SeqCst);
            }
        }
        !self.failed.load(Ordering::SeqCst)
    }
}

fn missing_inbox(id: &str) -> std::io::Error {
    std::io::Error::other(format!("component `{id}` has inputs but no inbox"))
}

fn finish(metrics: &ComponentMetrics, result: Result<(), ComponentError>) -> bool {
    match result {
        Ok(()) => {
            metrics.set_state(ComponentState::Finished);
            tracing::info!(component = %metrics.id(), "finished");
            true
        }
        Err(e) => {
            metrics.error(e.error_type(), "running", e.to_string());
            metrics.set_state(ComponentState::Failed);
            tracing::error!(component = %metrics.id(), error = %e, "component failed");
            false
        }
    }
}

fn run_source(src: Box<dyn pipelines::component::Source>, ctx: SourceContext) -> bool {
    let metrics = ctx.metrics.clone();
    metrics.set_state(ComponentState::Running);
    // `run` consumes the context; ports end when its outputs are dropped (unless a reload has
    // handed them to a new instance).
    finish(&metrics, src.run(ctx))
}

fn run_transform(
    mut tr: Box<dyn Transform>,
    inbox: Inbox,
    inputs: Vec<Input>,
    mut outputs: Outputs,
    mut ctx: TransformContext,
) -> bool {
    let metrics = ctx.metrics.clone();
    metrics.set_state(ComponentState::Running);
    // A rig's port carries several layouts (probes, frames, tables); a transform sees only the
    // ones it takes, and each stream passed by is said once.
    let accepts = tr.accepts();
    let input_layouts: Vec<Option<Layout>> =
        (0..inputs.len()).map(|i| tr.input_layout(i)).collect();
    let takes = |tag: usize, layout: Layout| match input_layouts.get(tag).copied().flatten() {
        Some(one) => one == layout,
        None => accepts.contains(&layout),
    };
    let mut passed_by = HashSet::new();
    loop {
        match inbox.recv_input_timeout(Duration::from_millis(200)) {
            (tag, Recv::Data(batch)) => {
                metrics.received(&batch);
                if let Some(layout) =
                    Layout::of(batch.schema_ref()).filter(|l| !takes(tag as usize, *l))
                {
                    let stream = stream_id_of(batch.schema_ref())
                        .unwrap_or("unnamed")
                        .to_string();
                    if passed_by.insert(stream.clone()) {
                        tracing::info!(component = %metrics.id(), %stream, layout = layout.as_str(), "layout not taken by this transform: stream passed by");
                    }
                    continue;
                }
                // Edges are tagged with their input's position when wired, so this always hits.
                let input = inputs
                    .get(tag as usize)
                    .cloned()
                    .unwrap_or_else(|| Input::new(tag as usize, format!("input {tag}")));
                let t = Instant::now();
                if let Err(e) = tr.process_batch(&input, batch, &mut ctx) {
                    metrics.error(e.error_type(), "processing", e.to_string());
                    tracing::warn!(component = %metrics.id(), input = %input.name, error = %e, "batch rejected");
                }
                metrics.observe_processing(t.elapsed().as_secs_f64());
                if !emit(&mut outputs, &mut ctx.out) {
                    break;
                }
            }
            (_, Recv::Timeout) => {}
            (_, Recv::Closed) => {
                if let Err(e) = tr.finish(&mut ctx) {
                    metrics.error(e.error_type(), "finishing", e.to_string());
                }
                emit(&mut outputs, &mut ctx.out);
                break;
            }
        }
    }
    outputs.end_all();
    metrics.set_state(ComponentState::Finished);
    true
}

/// Sends what a transform emitted; false once nobody downstream listens any more.
fn emit(outputs: &mut Outputs, out: &mut Emitter) -> bool {
    for (port, batch) in out.batches.drain(..) {
        let _ = outputs.send_to(&port, batch);
    }
    !outputs.all_closed()
}
