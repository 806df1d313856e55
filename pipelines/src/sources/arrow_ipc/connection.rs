//! One TCP connection: its messages read off the wire and handed to a [`Receiver`]; a malformed
//! stream closes this connection only.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::framing::{Frame, READ_STEP};
use super::listener::Shared;
use super::receiver::{Delivery, ReceiveError, Receiver};
use super::{close_with_error, ERROR_LINGER, MALFORMED, STAGE};

/// Read timeout of a connection: how soon a silent connection notices shutdown.
const READ_POLL: Duration = Duration::from_millis(100);

/// How a connection ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The peer closed the connection between two messages.
    PeerClosed,
    /// The peer sent the end-of-stream marker.
    EndOfStream,
    /// Shutdown was requested.
    Stopped,
    /// Every consumer has stopped.
    DownstreamGone,
}

pub(super) fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    number: u64,
) {
    // The accepted socket may have inherited the listener's non-blocking mode; reads need a
    // timeout instead, so that a silent peer cannot hold up shutdown.
    let configured = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(READ_POLL)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))));
    let component = shared.component_id.clone();
    if let Err(e) = configured {
        tracing::warn!(component = %component, peer = %peer, error = %e,
            "cannot configure an Arrow IPC connection; dropping it");
        return;
    }
    tracing::debug!(component = %component, peer = %peer, "Arrow IPC connection opened");
    let mut conn = Connection {
        receiver: Receiver::new(shared, peer, number),
        peer,
        reader: BufReader::with_capacity(READ_STEP, &stream),
    };
    if !conn.authorized(&stream) {
        return;
    }
    let outcome = conn.receive();
    let stream_id = conn.receiver.stream_id().unwrap_or_default().to_string();
    let (batches, rows) = (conn.receiver.batches, conn.receiver.rows);
    let shared = conn.receiver.shared.clone();
    drop(conn); // frees the read buffer before a possible linger
    match outcome {
        Ok(ended) => tracing::info!(
            component = %component, peer = %peer, stream = %stream_id,
            batches, rows, ended = ?ended, "Arrow IPC connection closed"
        ),
        Err(e) => {
            let msg = e.to_string();
            shared.metrics.error(MALFORMED, STAGE, msg.clone());
            tracing::warn!(
                component = %component, peer = %peer, stream = %stream_id,
                batches, rows, error = %msg,
                "closing an Arrow IPC connection: malformed stream"
            );
            close_with_error(&stream, &msg, ERROR_LINGER);
        }
    }
}

pub(super) struct Connection<'a> {
    pub(super) receiver: Receiver,
    pub(super) peer: SocketAddr,
    pub(super) reader: BufReader<&'a TcpStream>,
}

impl Connection<'_> {
    fn receive(&mut self) -> Result<Ended, ReceiveError> {
        loop {
            let (header, bytes, metadata) = match self.read_frame()? {
                Frame::Message {
                    header,
                    bytes,
                    metadata,
                } => (header, bytes, metadata),
                Frame::EndOfStream => return Ok(Ended::EndOfStream),
                Frame::Closed => return Ok(Ended::PeerClosed),
                Frame::Stopped => return Ok(Ended::Stopped),
            };
            if self.receiver.message(header, bytes, metadata)? == Delivery::DownstreamGone {
                return Ok(Ended::DownstreamGone);
            }
        }
    }
}
