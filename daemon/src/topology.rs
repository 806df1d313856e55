//! Runs a [`Plan`]: one thread per component, a bounded inbox per consumer, fan-out per port.
//!
//! Shutdown flows with the data: sources stop, end their ports, transforms finish after their
//! last input and end theirs, sinks drain and flush. Nothing queued is dropped on the way out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipelines::component::{
    Emitter, Output, Outputs, Shutdown, SinkContext, SourceContext, Transform,
};
use pipelines::edge::{EdgeSender, Inbox, Overflow, Recv};
use pipelines::metrics::{ComponentMetrics, ComponentState, Metrics};
use pipelines::stream::{stream_id_of, Layout};
use tokio::sync::watch;

use crate::config::{Built, Component, Plan};

pub struct Topology {
    shutdown: Shutdown,
    threads: Vec<(String, JoinHandle<bool>)>,
    /// Ticks whenever a component thread exits.
    exited: watch::Receiver<usize>,
}

/// Decrements the running count when a component thread ends, however it ends.
struct ExitGuard {
    running: Arc<AtomicUsize>,
    tx: watch::Sender<usize>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let left = self.running.fetch_sub(1, Ordering::SeqCst) - 1;
        self.tx.send_replace(left);
    }
}

impl Topology {
    pub fn start(plan: Plan, metrics: &Arc<Metrics>) -> std::io::Result<Topology> {
        let shutdown = Shutdown::new();
        let cap = plan.daemon.queue_batches;
        let data_dir = plan.daemon.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;

        let cm: HashMap<String, ComponentMetrics> = plan
            .components
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    metrics.component(&c.id, c.kind.as_str(), &c.type_name),
                )
            })
            .collect();

        // One inbox per consumer; each input reference gets its own sender into it.
        let mut inboxes: HashMap<String, Inbox> = HashMap::new();
        let mut senders: HashMap<(String, String), Vec<EdgeSender>> = HashMap::new();
        for c in &plan.components {
            if c.inputs.is_empty() {
                continue;
            }
            // A store moves batches straight into its own buffer; its larger inbox only rides
            // out the moments its receiving thread gets no CPU while a source catches up.
            let cap = if c.type_name == pipelines::sinks::store::TYPE_NAME {
                cap.saturating_mul(pipelines::sinks::store::INBOX_FACTOR)
            } else {
                cap
            };
            let inbox = Inbox::new(cap, cm[&c.id].clone());
            for input in &c.inputs {
                senders
                    .entry((input.component.clone(), input.port.clone()))
                    .or_default()
                    .push(inbox.sender());
            }
            inboxes.insert(c.id.clone(), inbox);
        }

        let resume = crate::resume::lookups(&plan);
        let running = Arc::new(AtomicUsize::new(plan.components.len()));
        let (tx, exited) = watch::channel(plan.components.len());
        let mut threads = Vec::new();
        for Component { id, built, .. } in plan.components {
            let metrics = cm[&id].clone();
            let guard = ExitGuard {
                running: running.clone(),
                tx: tx.clone(),
            };
            let shutdown = shutdown.clone();
            let mut take_outputs = |ports: Vec<pipelines::component::PortSpec>,
                                    overflow: Overflow| {
                let mut outputs = Outputs::default();
                for p in ports {
                    let s = senders
                        .remove(&(id.clone(), p.name.clone()))
                        .unwrap_or_default();
                    outputs.insert(&p.name, Output::new(s, overflow, metrics.clone()));
                }
                outputs
            };
            let name = format!("neurod-{id}");
            let handle = match built {
                Built::Source(src) => {
                    let outputs = take_outputs(src.ports(), src.overflow());
                    let ctx = SourceContext {
                        id: id.clone(),
                        outputs,
                        shutdown,
                        metrics: metrics.clone(),
                        resume: resume.get(&id).cloned().unwrap_or_default(),
                    };
                    std::thread::Builder::new().name(name).spawn(move || {
                        let _g = guard;
                        run_source(src, ctx)
                    })?
                }
                Built::Transform(tr) => {
                    // Inside the daemon nothing is dropped: a transform waits for its consumers,
                    // and the pressure reaches the live source's edge, where it is counted.
                    let outputs = take_outputs(tr.ports(), Overflow::Block);
                    let inbox = inboxes.remove(&id).expect("consumers have inboxes");
                    std::thread::Builder::new().name(name).spawn(move || {
                        let _g = guard;
                        run_transform(tr, inbox, outputs, metrics)
                    })?
                }
                Built::Sink(sink) => {
                    let ctx = SinkContext {
                        id: id.clone(),
                        inbox: inboxes.remove(&id).expect("consumers have inboxes"),
                        shutdown,
                        metrics: metrics.clone(),
                        data_dir: data_dir.clone(),
                    };
                    std::thread::Builder::new().name(name).spawn(move || {
                        let _g = guard;
                        metrics.set_state(ComponentState::Running);
                        finish(&metrics, sink.run(ctx))
                    })?
                }
            };
            threads.push((id, handle));
        }
        // Ports nobody consumes were never taken; dropping their senders is harmless.
        drop(senders);
        Ok(Topology {
            shutdown,
            threads,
            exited,
        })
    }

    /// Asks every source to stop; the rest drains behind them.
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Resolves when every component has finished.
    pub async fn finished(&mut self) {
        let _ = self.exited.wait_for(|left| *left == 0).await;
    }

    /// Joins the threads; true if every component ended without failing.
    pub fn join(self) -> bool {
        let mut ok = true;
        for (id, t) in self.threads {
            match t.join() {
                Ok(true) => {}
                Ok(false) => ok = false,
                Err(_) => {
                    tracing::error!(component = %id, "component thread panicked");
                    ok = false;
                }
            }
        }
        ok
    }
}

fn finish(
    metrics: &ComponentMetrics,
    result: Result<(), pipelines::component::ComponentError>,
) -> bool {
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
    // `run` consumes the context; ports end when its outputs are dropped (EdgeSender::drop).
    finish(&metrics, src.run(ctx))
}

fn run_transform(
    mut tr: Box<dyn Transform>,
    inbox: Inbox,
    mut outputs: Outputs,
    metrics: ComponentMetrics,
) -> bool {
    metrics.set_state(ComponentState::Running);
    let mut out = Emitter::default();
    // A rig's port carries several layouts (probes, frames, tables); a transform sees only the
    // ones it takes, and each stream passed by is said once.
    let accepts = tr.accepts();
    let mut passed_by = std::collections::HashSet::new();
    loop {
        match inbox.recv_timeout(Duration::from_millis(200)) {
            Recv::Data(batch) => {
                metrics.received(&batch);
                if let Some(layout) = Layout::of(&batch.schema()).filter(|l| !accepts.contains(l)) {
                    let stream = stream_id_of(&batch.schema())
                        .unwrap_or("unnamed")
                        .to_string();
                    if passed_by.insert(stream.clone()) {
                        tracing::info!(component = %metrics.id(), %stream, layout = layout.as_str(), "layout not taken by this transform: stream passed by");
                    }
                    continue;
                }
                let t = Instant::now();
                if let Err(e) = tr.process(batch, &mut out) {
                    metrics.error(e.error_type(), "processing", e.to_string());
                    tracing::warn!(component = %metrics.id(), error = %e, "batch rejected");
                }
                metrics.observe_processing(t.elapsed().as_secs_f64());
                if !emit(&mut outputs, &mut out) {
                    break;
                }
            }
            Recv::Timeout => {}
            Recv::Closed => {
                if let Err(e) = tr.finish(&mut out) {
                    metrics.error(e.error_type(), "finishing", e.to_string());
                }
                emit(&mut outputs, &mut out);
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
