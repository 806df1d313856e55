//! `arrow_ipc` source: rigs and scripts (pyarrow, or any Arrow implementation) connect over TCP
//! and push an Arrow IPC *stream*: a schema message, record batches, and optionally the
//! end-of-stream marker. Each connection carries one stream, described by its schema metadata
//! (see [`crate::stream`]), and is renamed `<component id>.<client's neurod.stream_id>`.
//!
//! ```toml
//! [sources.rig]
//! type = "arrow_ipc"
//! address = "127.0.0.1:9760"   # default
//! max_connections = 16         # default
//! token_file = "/etc/neurod/rig.token"  # or token = "..."; required off loopback
//! ```
//!
//! With a token the client's first bytes are one line `AUTH <token>\n`, then the stream
//! (see [`auth`]); without one (loopback only) the connection is the plain stream.
//!
//! While it runs, the source is also the hub's ingest point for its component id: the daemon's
//! Arrow Flight `DoPut` with the descriptor path `["<component id>"]` pushes a stream through
//! the same checks, naming, counters and port as a TCP connection.
//!
//! A malformed stream closes its own connection only (with one `error: ...` line written back
//! to the peer); batches it already delivered stay delivered, other connections go on.
//!
//! The messages are framed here rather than by arrow's `StreamReader`, which trusts the lengths
//! in the stream and allocates them up front: four bytes of garbage can ask it for 2 GiB, and a
//! crafted body length aborts the process. Here lengths are bounded, memory grows only with the
//! bytes that actually arrive, and arrow's `StreamDecoder` decodes each complete message.
//!
//! - [`listener`]: options, the accept loop, the connection limit, what connections share.
//! - [`connection`]: one TCP connection, read message by message.
//! - [`receiver`]: one pushed stream (a TCP connection or an Arrow Flight `DoPut`): decoding,
//!   checking and delivering its batches; the source's ingest point in the hub.
//! - [`framing`]: reading one IPC message off the wire with every length bounded.
//! - [`auth`]: the `AUTH <token>` line of a source with a token.
//! - [`stream_schema`]: what a client's schema says the stream is, and the stream's name.

mod auth;
mod connection;
mod framing;
mod listener;
mod receiver;
mod stream_schema;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpStream};
use std::time::{Duration, Instant};

pub use listener::{build, ArrowIpcSource};

const TYPE_NAME: &str = "arrow_ipc";
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9760";
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// `error_type` of a stream that is not valid Arrow IPC or breaks the stream rules.
const MALFORMED: &str = "malformed_ipc";
const TOO_MANY: &str = "too_many_connections";
const STAGE: &str = "receiving";

/// How long a rejected connection keeps reading (and discarding) before it closes, so that the
/// peer gets the error line: closing a socket with unread input sends a reset, which can destroy
/// the line before the peer reads it.
const ERROR_LINGER: Duration = Duration::from_millis(250);
const REFUSAL_LINGER: Duration = Duration::from_millis(50);

/// Writes `error: <message>` to the peer and closes politely; write errors are ignored (the peer
/// may be gone already).
fn close_with_error(stream: &TcpStream, message: &str, linger: Duration) {
    let line = format!("error: {}\n", message.replace(['\n', '\r'], " "));
    let mut writer = stream;
    let _ = writer.write_all(line.as_bytes());
    let _ = writer.flush();
    let _ = stream.shutdown(NetShutdown::Write);
    let deadline = Instant::now() + linger;
    let mut discard = [0u8; 8192];
    let mut reader = stream;
    while Instant::now() < deadline {
        match reader.read(&mut discard) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
