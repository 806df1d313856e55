//! The TCP side: options, the accept loop, the connection limit, and what the connection
//! threads share with it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::RecordBatch;
use serde::Deserialize;

use super::connection::serve_connection;
use super::receiver::PushPoint;
use super::{
    close_with_error, DEFAULT_ADDRESS, DEFAULT_MAX_CONNECTIONS, REFUSAL_LINGER, STAGE, TOO_MANY,
    TYPE_NAME,
};
use crate::auth::{require_token_off_loopback, resolve_token, Secret};
use crate::component::{
    parse_options, BuildContext, ComponentError, Outputs, PortSpec, Shutdown, Source, SourceContext,
};
use crate::edge::{Closed, Overflow};
use crate::hub::Ingest;
use crate::metrics::ComponentMetrics;
use crate::storage::ResumeLookup;
use crate::stream::Layout;

/// How often the accept loop looks for new connections and for shutdown.
const ACCEPT_POLL: Duration = Duration::from_millis(25);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_address")]
    address: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Required off loopback (see [`super::auth`]).
    token: Option<Secret>,
    token_file: Option<std::path::PathBuf>,
}

fn default_address() -> String {
    DEFAULT_ADDRESS.into()
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// Listens for Arrow IPC streams pushed over TCP.
#[derive(Debug)]
pub struct ArrowIpcSource {
    id: String,
    address: SocketAddr,
    max_connections: usize,
    token: Option<Secret>,
}

/// Checks the options without opening a socket (`neurod validate` runs this).
pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE_NAME, options)?;
    let mut errors = Vec::new();
    let address = match o.address.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(format!(
                "component `{}` (type `{TYPE_NAME}`): address {:?} is not an IP:port socket address ({e})",
                ctx.id, o.address
            ));
            None
        }
    };
    let what = format!("component `{}` (type `{TYPE_NAME}`)", ctx.id);
    let token = resolve_token(&what, o.token, o.token_file.as_deref()).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let exposed =
        require_token_off_loopback(&format!("{what}: address"), &o.address, token.is_some());
    errors.extend(exposed);
    if o.max_connections == 0 {
        errors.push(format!(
            "component `{}` (type `{TYPE_NAME}`): max_connections must be at least 1",
            ctx.id
        ));
    }
    match address {
        Some(address) if errors.is_empty() => Ok(Box::new(
            ArrowIpcSource::new(ctx.id, address, o.max_connections).with_token(token),
        )),
        _ => Err(errors),
    }
}

impl ArrowIpcSource {
    pub fn new(id: &str, address: SocketAddr, max_connections: usize) -> Self {
        ArrowIpcSource {
            id: id.into(),
            address,
            max_connections: max_connections.max(1),
            token: None,
        }
    }

    /// Requires every connection to start with `AUTH <token>` (see [`super::auth`]).
    pub fn with_token(mut self, token: Option<Secret>) -> Self {
        self.token = token;
        self
    }

    /// The address `run` listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves connections on a listener bound by the caller (tests bind port 0 and read the
    /// port back). Returns after `ctx.shutdown` fires, or once every consumer has stopped, when
    /// every connection thread has finished.
    pub fn run_on(self, listener: TcpListener, ctx: SourceContext) -> Result<(), ComponentError> {
        let local = listener.local_addr().map_err(|e| {
            ComponentError::io(format!("component `{}`: listener address", self.id), e)
        })?;
        // Non-blocking accept, polled, so that shutdown is noticed within ACCEPT_POLL.
        listener.set_nonblocking(true).map_err(|e| {
            ComponentError::io(
                format!("component `{}`: making {local} non-blocking", self.id),
                e,
            )
        })?;
        // Live data arrives in real time: nothing to lag behind unless clients send timing.
        ctx.metrics.set_lag(0.0);
        tracing::info!(component = %self.id, address = %local, "listening for Arrow IPC streams");
        let shared = Arc::new(Shared {
            component_id: self.id.clone(),
            outputs: Mutex::new(ctx.outputs),
            metrics: ctx.metrics,
            shutdown: ctx.shutdown,
            downstream_gone: AtomicBool::new(false),
            next_number: AtomicU64::new(0),
            resume: ctx.resume,
            runs: Mutex::new(HashMap::new()),
            token: self.token.clone(),
        });
        // Flight `DoPut` finds this source through the hub while it runs.
        let hub = lock(&shared.outputs).main_hub();
        let point: Arc<dyn Ingest> = Arc::new(PushPoint {
            shared: shared.clone(),
        });
        let registration = hub.map(|h| h.register_ingest(&self.id, &point));
        let mut connections: Vec<JoinHandle<()>> = Vec::new();
        while !shared.stop_requested() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    reap_finished(&mut connections, &shared);
                    if connections.len() >= self.max_connections {
                        refuse_over_limit(&shared, &stream, peer, self.max_connections);
                        continue;
                    }
                    let number = shared.next_number();
                    let conn_shared = shared.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("neurod-{}-ipc{number}", self.id))
                        .spawn(move || serve_connection(conn_shared, stream, peer, number));
                    match spawned {
                        Ok(handle) => connections.push(handle),
                        Err(e) => tracing::error!(
                            component = %self.id, peer = %peer, error = %e,
                            "cannot start a thread for an Arrow IPC connection; dropping it"
                        ),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_for_connection(&listener, ACCEPT_POLL);
                }
                Err(e) => {
                    // Out of file descriptors, a peer that reset before accept: the listener
                    // itself is fine, so keep serving.
                    tracing::warn!(component = %self.id, error = %e, "accept failed");
                    shared.shutdown.sleep(ACCEPT_POLL * 4);
                }
            }
        }
        for handle in connections {
            if handle.join().is_err() {
                tracing::error!(component = %self.id, "an Arrow IPC connection thread panicked");
            }
        }
        drop(registration);
        // A pushed stream still open holds `shared`: the ports end now all the same.
        *lock(&shared.outputs) = Outputs::default();
        tracing::info!(component = %self.id, "stopped listening for Arrow IPC streams");
        Ok(())
    }
}

impl Source for ArrowIpcSource {
    fn ports(&self) -> Vec<PortSpec> {
        // The layout is the client's choice, known only when its schema arrives.
        vec![PortSpec::default_port(&[
            Layout::Continuous,
            Layout::Frames,
            Layout::Events,
            Layout::Table,
        ])]
    }

    fn overflow(&self) -> Overflow {
        Overflow::DropOldest
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let listener = TcpListener::bind(self.address).map_err(|e| {
            ComponentError::io(
                format!("component `{}`: cannot listen on {}", self.id, self.address),
                e,
            )
        })?;
        self.run_on(listener, ctx)
    }
}

/// What the connection threads share with the accept loop.
pub(super) struct Shared {
    pub(super) component_id: String,
    /// Every connection feeds the one default port; sends never block (`DropOldest`), so the
    /// lock is held only for the fan-out.
    outputs: Mutex<Outputs>,
    /// Numbers the streams, TCP and pushed alike (a stream without an id is named by it).
    next_number: AtomicU64,
    pub(super) metrics: ComponentMetrics,
    shutdown: Shutdown,
    /// Set when the last consumer has stopped: nobody reads what we receive any more.
    downstream_gone: AtomicBool,
    resume: ResumeLookup,
    /// The id each stream got in this run (see [`Shared::run_id`]).
    runs: Mutex<HashMap<String, String>>,
    pub(super) token: Option<Secret>,
}

impl Shared {
    /// A client's indices are its own: it cannot resume where the store stopped. A stream id
    /// the stores already hold from an earlier run of the daemon starts a new run instead
    /// (`<id>-run2`, ...), so nothing it sends is refused as already held; reconnections within
    /// this run keep the id they got.
    pub(super) fn run_id(&self, stream_id: &str) -> String {
        let mut runs = lock(&self.runs);
        runs.entry(stream_id.to_string())
            .or_insert_with(|| self.resume.new_run_prefix(stream_id, &[String::new()]))
            .clone()
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.downstream_gone.load(Ordering::Relaxed) || self.shutdown.is_triggered()
    }

    pub(super) fn next_number(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn send(&self, batch: RecordBatch) -> Result<(), Closed> {
        let mut outputs = lock(&self.outputs);
        // Once the source has stopped its ports are gone: a late pushed batch goes nowhere.
        let sent = match outputs.port("") {
            Some(port) => port.send(batch),
            None => Err(Closed),
        };
        if sent.is_err() {
            self.downstream_gone.store(true, Ordering::Relaxed);
        }
        sent
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a lookup or one send: a panic leaves nothing half done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reap_finished(connections: &mut Vec<JoinHandle<()>>, shared: &Shared) {
    let (finished, running): (Vec<_>, Vec<_>) = connections
        .drain(..)
        .partition(|handle| handle.is_finished());
    *connections = running;
    for handle in finished {
        if handle.join().is_err() {
            tracing::error!(
                component = %shared.component_id,
                "an Arrow IPC connection thread panicked"
            );
        }
    }
}

fn refuse_over_limit(shared: &Shared, stream: &TcpStream, peer: SocketAddr, max: usize) {
    let msg = format!("peer {peer}: refused, already serving {max} connections (max_connections)");
    shared.metrics.error(TOO_MANY, STAGE, msg.clone());
    tracing::warn!(component = %shared.component_id, peer = %peer, "{msg}");
    // The accepted socket may have inherited non-blocking mode; the linger needs timeouts.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    close_with_error(stream, &msg, REFUSAL_LINGER);
}

/// Waits until a connection is pending on `listener`, or `timeout` has passed: a rig that
/// connects is accepted at once, while shutdown is still noticed within `timeout`.
fn wait_for_connection(listener: &TcpListener, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call; the listener outlives it.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    if ready < 0 {
        // EINTR and the like: the caller accepts again, and polls again if nothing is there.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext<'static> {
        BuildContext {
            id: "rig",
            data_dir: std::path::Path::new("/nonexistent"),
            inputs: &[],
        }
    }

    fn parse(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn build_checks_options_without_binding() {
        let ctx = ctx();
        assert!(build(&ctx, parse("")).is_ok());
        let e = build(&ctx, parse("address = 'localhost'")).err().unwrap();
        assert!(e[0].contains("rig") && e[0].contains("localhost"), "{e:?}");
        let e = build(&ctx, parse("max_connections = 0")).err().unwrap();
        assert!(e[0].contains("max_connections"), "{e:?}");
        let e = build(&ctx, parse("adress = '127.0.0.1:1'")).err().unwrap();
        assert!(e[0].contains("adress"), "{e:?}");
        // An address already in use still validates: build opens no socket.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let opts = parse(&format!("address = '{}'", taken.local_addr().unwrap()));
        assert!(build(&ctx, opts).is_ok());
        let o: Options = parse_options("rig", TYPE_NAME, parse("")).unwrap();
        assert_eq!(o.address, "127.0.0.1:9760");
        assert_eq!(o.max_connections, 16);
    }

    #[test]
    fn an_address_off_loopback_needs_a_token() {
        let ctx = ctx();
        let e = build(&ctx, parse("address = '0.0.0.0:9760'"))
            .err()
            .unwrap();
        assert!(e[0].contains("rig") && e[0].contains("token"), "{e:?}");
        assert!(build(&ctx, parse("address = '0.0.0.0:9760'\ntoken = 'abc'")).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rig.token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let opts = format!(
            "address = '0.0.0.0:9760'\ntoken_file = '{}'",
            file.display()
        );
        assert!(build(&ctx, parse(&opts)).is_ok());
        std::fs::write(&file, "").unwrap();
        let e = build(&ctx, parse(&opts)).err().unwrap();
        assert!(
            e[0].contains("rig.token") && e[0].contains("empty"),
            "{e:?}"
        );
    }
}
