//! One connection: its messages decoded by arrow, its schema and batches checked, its batches
//! delivered; a malformed stream closes this connection only.

use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::{root_as_message, MessageHeader};

use super::framing::{Frame, READ_STEP};
use super::listener::Shared;
use super::stream_schema::{accept_schema, AcceptedStream};
use super::{close_with_error, ERROR_LINGER, MALFORMED, STAGE};
use crate::edge::Closed;
use crate::imaging::frames::Frames;
use crate::stream::{sample_span, with_stream_id, Layout, SchemaError};

/// Read timeout of a connection: how soon a silent connection notices shutdown.
const READ_POLL: Duration = Duration::from_millis(100);

/// Why a connection was closed against the peer's will. Every variant names the peer.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReceiveError {
    #[error("peer {peer}: not an Arrow IPC stream: {why}")]
    NotIpc { peer: SocketAddr, why: String },
    #[error("peer {peer}: the stream ended in the middle of a message ({got} of {want} bytes of its {part})")]
    Truncated {
        peer: SocketAddr,
        part: &'static str,
        got: usize,
        want: usize,
    },
    #[error("peer {peer}: the connection failed in the middle of a message: {source}")]
    Io {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("peer {peer}: invalid Arrow IPC message: {source}")]
    Decode {
        peer: SocketAddr,
        #[source]
        source: ArrowError,
    },
    #[error("peer {peer}: schema rejected: {source}")]
    Schema {
        peer: SocketAddr,
        #[source]
        source: SchemaError,
    },
    #[error("peer {peer}: batch rejected: {why}")]
    Batch { peer: SocketAddr, why: String },
    #[error("peer {peer}: the Arrow decoder could not handle this input ({what})")]
    DecoderPanicked { peer: SocketAddr, what: String },
}

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

pub(super) fn serve_connection(shared: &Shared, stream: TcpStream, peer: SocketAddr, number: u64) {
    // The accepted socket may have inherited the listener's non-blocking mode; reads need a
    // timeout instead, so that a silent peer cannot hold up shutdown.
    let configured = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(READ_POLL)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))));
    if let Err(e) = configured {
        tracing::warn!(component = %shared.component_id, peer = %peer, error = %e,
            "cannot configure an Arrow IPC connection; dropping it");
        return;
    }
    tracing::debug!(component = %shared.component_id, peer = %peer, "Arrow IPC connection opened");
    let mut conn = Connection {
        shared,
        peer,
        number,
        reader: BufReader::with_capacity(READ_STEP, &stream),
        stream_id: None,
        batches: 0,
        rows: 0,
    };
    if !conn.authorized(&stream) {
        return;
    }
    let outcome = conn.receive();
    let stream_id = conn.stream_id.take().unwrap_or_default();
    let (batches, rows) = (conn.batches, conn.rows);
    drop(conn); // frees the read buffer before a possible linger
    match outcome {
        Ok(ended) => tracing::info!(
            component = %shared.component_id, peer = %peer, stream = %stream_id,
            batches, rows, ended = ?ended, "Arrow IPC connection closed"
        ),
        Err(e) => {
            let msg = e.to_string();
            shared.metrics.error(MALFORMED, STAGE, msg.clone());
            tracing::warn!(
                component = %shared.component_id, peer = %peer, stream = %stream_id,
                batches, rows, error = %msg,
                "closing an Arrow IPC connection: malformed stream"
            );
            close_with_error(&stream, &msg, ERROR_LINGER);
        }
    }
}

pub(super) struct Connection<'a> {
    pub(super) shared: &'a Shared,
    pub(super) peer: SocketAddr,
    number: u64,
    pub(super) reader: BufReader<&'a TcpStream>,
    stream_id: Option<String>,
    batches: u64,
    rows: u64,
}

impl Connection<'_> {
    fn receive(&mut self) -> Result<Ended, ReceiveError> {
        let mut decoder = StreamDecoder::new();
        let mut accepted: Option<AcceptedStream> = None;
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
            match (header, &accepted) {
                (MessageHeader::Schema, None) => {
                    let stream = self.accept_schema(&bytes[metadata])?;
                    self.stream_id = Some(stream.stream_id.clone());
                    accepted = Some(stream);
                }
                (MessageHeader::Schema, Some(_)) => {
                    return Err(ReceiveError::NotIpc {
                        peer: self.peer,
                        why: "a second schema message (one connection carries one stream)".into(),
                    })
                }
                (other, None) => {
                    return Err(ReceiveError::NotIpc {
                        peer: self.peer,
                        why: format!("the first message must be the schema, got {other:?}"),
                    })
                }
                (_, Some(_)) => {}
            }
            // The decoder keeps dictionaries and the schema; it finishes a body-less message
            // (the schema) only when the next bytes arrive, which is why the schema was checked
            // above from the message itself.
            let mut buffer = Buffer::from_vec(bytes);
            while !buffer.is_empty() {
                let decoded = self
                    .guarded(|| decoder.decode(&mut buffer))?
                    .map_err(|source| ReceiveError::Decode {
                        peer: self.peer,
                        source,
                    })?;
                let (Some(batch), Some(stream)) = (decoded, accepted.as_mut()) else {
                    continue;
                };
                if self.deliver(stream, batch)? == Delivery::DownstreamGone {
                    return Ok(Ended::DownstreamGone);
                }
            }
        }
    }

    /// Runs arrow's decoding, turning a panic into an error: arrow-ipc panics on some schemas
    /// that are valid flatbuffers but not valid Arrow (a decimal precision over 255, a list
    /// without a child), and a peer must not be able to kill a thread that holds data.
    fn guarded<T>(&self, f: impl FnOnce() -> T) -> Result<T, ReceiveError> {
        catch_unwind(AssertUnwindSafe(f)).map_err(|payload| ReceiveError::DecoderPanicked {
            peer: self.peer,
            what: crate::fault::panic_message(payload.as_ref()),
        })
    }

    fn accept_schema(&self, metadata: &[u8]) -> Result<AcceptedStream, ReceiveError> {
        let not_schema = |why: String| ReceiveError::NotIpc {
            peer: self.peer,
            why,
        };
        let message = root_as_message(metadata).map_err(|e| not_schema(e.to_string()))?;
        let fb_schema = message
            .header_as_schema()
            .ok_or_else(|| not_schema("the schema message has no schema".into()))?;
        let schema = self.guarded(|| arrow::ipc::convert::fb_to_schema(fb_schema))?;
        let mut stream =
            accept_schema(&self.shared.component_id, self.number, &schema).map_err(|source| {
                ReceiveError::Schema {
                    peer: self.peer,
                    source,
                }
            })?;
        let run_id = self.shared.run_id(&stream.stream_id);
        if run_id != stream.stream_id {
            stream.schema = with_stream_id(&stream.schema, &run_id);
            stream.stream_id = run_id;
        }
        tracing::info!(
            component = %self.shared.component_id, peer = %self.peer, stream = %stream.stream_id,
            layout = stream.layout.as_str(), columns = schema.fields().len(),
            "receiving an Arrow IPC stream"
        );
        Ok(stream)
    }

    fn deliver(
        &mut self,
        stream: &mut AcceptedStream,
        batch: RecordBatch,
    ) -> Result<Delivery, ReceiveError> {
        let started = Instant::now();
        self.shared.metrics.received(&batch);
        if batch.num_rows() == 0 {
            return Ok(Delivery::Sent);
        }
        let bad_batch = |why: String| ReceiveError::Batch {
            peer: self.peer,
            why,
        };
        if stream.layout == Layout::Continuous {
            let span = sample_span(&batch, stream.next_sample_index).map_err(bad_batch)?;
            stream.next_sample_index = Some(span.end);
        }
        let rows = batch.num_rows();
        let batch = RecordBatch::try_new(stream.schema.clone(), batch.columns().to_vec()).map_err(
            |source| ReceiveError::Decode {
                peer: self.peer,
                source,
            },
        )?;
        if stream.layout == Layout::Frames {
            // Nulls or short pixel buffers, as the transforms would find them.
            Frames::of(&batch, &stream.stream_id).map_err(|e| bad_batch(e.to_string()))?;
        }
        let sent = self.shared.send(batch);
        self.shared
            .metrics
            .observe_processing(started.elapsed().as_secs_f64());
        self.batches += 1;
        self.rows += rows as u64;
        Ok(match sent {
            Ok(()) => Delivery::Sent,
            Err(Closed) => Delivery::DownstreamGone,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    DownstreamGone,
}
