//! One pushed stream, whatever carries it (a TCP connection, or an Arrow Flight `DoPut` through
//! the hub's ingest point): its IPC messages decoded by arrow, its schema and batches checked,
//! its batches renamed and delivered on the source's port.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::{root_as_message, MessageHeader};

use super::framing::CONTINUATION_MARKER;
use super::listener::Shared;
use super::stream_schema::{accept_schema, AcceptedStream};
use super::{MALFORMED, STAGE};
use crate::buffer_pool::BufferPool;
use crate::edge::Closed;
use crate::hub::{Ingest, IngestError, IngestStream, Pushed};
use crate::imaging::frames::Frames;
use crate::stream::{sample_span, with_stream_id, Layout, SchemaError};

/// Why a stream was refused. Every variant names the peer.
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
        source: std::io::Error,
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

/// What one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    Sent,
    DownstreamGone,
}

/// The state of one pushed stream.
pub(super) struct Receiver {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    number: u64,
    decoder: StreamDecoder,
    accepted: Option<AcceptedStream>,
    pub(super) batches: u64,
    pub(super) rows: u64,
    /// Message buffers: a decoded batch points into its message's, which comes back here when
    /// the batch's last user drops it (a fresh one per message left a sixth of a TCP ingest
    /// run to the kernel zeroing pages).
    pub(super) messages: Arc<BufferPool<u8>>,
}

impl Receiver {
    pub(super) fn new(shared: Arc<Shared>, peer: SocketAddr, number: u64) -> Self {
        Receiver {
            shared,
            peer,
            number,
            decoder: StreamDecoder::new(),
            accepted: None,
            batches: 0,
            rows: 0,
            messages: BufferPool::new(),
        }
    }

    pub(super) fn stream_id(&self) -> Option<&str> {
        self.accepted.as_ref().map(|s| s.stream_id.as_str())
    }

    /// One complete IPC message in its encapsulated form (`bytes`: continuation marker, length,
    /// metadata at `metadata`, body), whose header type the caller has read and bounded.
    pub(super) fn message(
        &mut self,
        header: MessageHeader,
        bytes: Vec<u8>,
        metadata: std::ops::Range<usize>,
    ) -> Result<Delivery, ReceiveError> {
        match (header, &self.accepted) {
            (MessageHeader::Schema, None) => {
                let meta = bytes.get(metadata).unwrap_or_default();
                self.accepted = Some(self.accept_schema(meta)?);
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
        let mut buffer = self.messages.share(bytes);
        while !buffer.is_empty() {
            let decoder = &mut self.decoder;
            let decoded =
                guarded(self.peer, || decoder.decode(&mut buffer))?.map_err(|source| {
                    ReceiveError::Decode {
                        peer: self.peer,
                        source,
                    }
                })?;
            let Some(batch) = decoded else {
                continue;
            };
            if self.deliver(batch)? == Delivery::DownstreamGone {
                return Ok(Delivery::DownstreamGone);
            }
        }
        Ok(Delivery::Sent)
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
        let schema = guarded(self.peer, || arrow::ipc::convert::fb_to_schema(fb_schema))?;
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

    fn deliver(&mut self, batch: RecordBatch) -> Result<Delivery, ReceiveError> {
        let started = Instant::now();
        self.shared
            .metrics
            .count_received(batch.num_rows(), crate::metrics::batch_bytes(&batch));
        let Some(stream) = self.accepted.as_mut() else {
            return Ok(Delivery::Sent);
        };
        if batch.num_rows() == 0 {
            return Ok(Delivery::Sent);
        }
        let peer = self.peer;
        let bad_batch = |why: String| ReceiveError::Batch { peer, why };
        if stream.layout == Layout::Continuous {
            let span = sample_span(&batch, stream.next_sample_index).map_err(bad_batch)?;
            stream.next_sample_index = Some(span.end);
        }
        let rows = batch.num_rows();
        let batch = RecordBatch::try_new(stream.schema.clone(), batch.columns().to_vec())
            .map_err(|source| ReceiveError::Decode { peer, source })?;
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

/// Runs arrow's decoding, turning a panic into an error: arrow-ipc panics on some schemas
/// that are valid flatbuffers but not valid Arrow (a decimal precision over 255, a list
/// without a child), and a peer must not be able to kill a thread that holds data.
fn guarded<T>(peer: SocketAddr, f: impl FnOnce() -> T) -> Result<T, ReceiveError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| ReceiveError::DecoderPanicked {
        peer,
        what: crate::fault::panic_message(payload.as_ref()),
    })
}

/// The source's ingest point in the hub: streams pushed through another front end (Arrow
/// Flight `DoPut`) take the same path as a TCP connection's.
pub(super) struct PushPoint {
    pub(super) shared: Arc<Shared>,
}

impl Ingest for PushPoint {
    fn open(&self, peer: SocketAddr) -> Result<Box<dyn IngestStream>, IngestError> {
        if self.shared.stop_requested() {
            return Err(IngestError::Unavailable(format!(
                "component `{}` is stopping",
                self.shared.component_id
            )));
        }
        let number = self.shared.next_number();
        tracing::debug!(component = %self.shared.component_id, peer = %peer, "Arrow stream pushed");
        Ok(Box::new(Pushes(Receiver::new(
            self.shared.clone(),
            peer,
            number,
        ))))
    }
}

struct Pushes(Receiver);

impl IngestStream for Pushes {
    fn message(&mut self, metadata: &[u8], body: &[u8]) -> Result<Pushed, IngestError> {
        let r = &mut self.0;
        if r.shared.stop_requested() {
            return Ok(Pushed::Stopped);
        }
        let outcome = super::framing::check_message(metadata, body.len(), r.peer).and_then(
            |(header, body_len)| {
                let body = body.get(..body_len).unwrap_or(body);
                // The encapsulated form the decoder reads: marker, length, metadata, body.
                let len = i32::try_from(metadata.len()).unwrap_or(i32::MAX);
                let mut bytes = r.messages.take(0);
                bytes.reserve(8 + metadata.len() + body.len());
                bytes.extend_from_slice(&CONTINUATION_MARKER);
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(metadata);
                bytes.extend_from_slice(body);
                r.message(header, bytes, 8..8 + metadata.len())
            },
        );
        match outcome {
            Ok(Delivery::Sent) => Ok(Pushed::Taken),
            Ok(Delivery::DownstreamGone) => Ok(Pushed::Stopped),
            Err(e) => {
                let msg = e.to_string();
                r.shared.metrics.error(MALFORMED, STAGE, msg.clone());
                tracing::warn!(
                    component = %r.shared.component_id, peer = %r.peer,
                    stream = r.stream_id().unwrap_or_default(), error = %msg,
                    "refusing a pushed Arrow stream: malformed stream"
                );
                Err(IngestError::Rejected(msg))
            }
        }
    }

    fn stream_id(&self) -> Option<&str> {
        self.0.stream_id()
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        let r = &self.0;
        tracing::info!(
            component = %r.shared.component_id, peer = %r.peer,
            stream = r.stream_id().unwrap_or_default(), batches = r.batches, rows = r.rows,
            "pushed Arrow stream closed"
        );
    }
}
