//! Reads one Arrow IPC message off the wire. Every length the peer sends is bounded before it is
//! trusted, and buffers grow only with the bytes that arrive (see the module docs for why arrow's
//! own `StreamReader` is not used).

use std::io::{self, BufRead};
use std::ops::Range;

use arrow::ipc::{root_as_message, Message, MessageHeader};

use std::net::SocketAddr;

use super::connection::Connection;
use super::is_timeout;
use super::receiver::ReceiveError;

/// The flatbuffer header of a message (a schema of thousands of annotated columns is well under 1 MiB).
const MAX_METADATA_BYTES: usize = 64 << 20;
/// One record batch; 256 MiB is 11 s of a 384-channel probe at 30 kHz.
const MAX_BODY_BYTES: usize = 256 << 20;
/// Reads grow a message buffer by at most this much, so memory follows the bytes that arrive,
/// not the lengths the peer claims.
pub(super) const READ_STEP: usize = 64 << 10;
const BODY_RESERVE_LIMIT: usize = 16 << 20;
/// Starts every message of the current IPC stream format.
pub(super) const CONTINUATION_MARKER: [u8; 4] = [0xff; 4];

/// One IPC message off the wire.
pub(super) enum Frame {
    /// A whole message (continuation marker, length, metadata, body) as `StreamDecoder` takes it.
    Message {
        header: MessageHeader,
        bytes: Vec<u8>,
        metadata: Range<usize>,
    },
    /// The end-of-stream marker.
    EndOfStream,
    /// The peer closed the connection between two messages.
    Closed,
    /// Shutdown was requested while waiting.
    Stopped,
}

/// Result of reading an exact number of bytes.
enum Filled {
    Complete,
    /// The peer closed after `got` of the bytes asked for.
    Eof {
        got: usize,
    },
    /// The connection failed after `got` of the bytes asked for.
    Failed {
        got: usize,
        source: io::Error,
    },
    Stopped,
}

impl Connection<'_> {
    /// Reads one framed message, bounding every length before trusting it.
    pub(super) fn read_frame(&mut self) -> Result<Frame, ReceiveError> {
        let mut bytes = self.receiver.messages.take(0);
        match self.fill(&mut bytes, 4) {
            Filled::Complete => {}
            // A close, or a reset, between two messages ends the stream.
            Filled::Eof { got: 0 } => return Ok(Frame::Closed),
            Filled::Failed { got: 0, source } => {
                tracing::debug!(component = %self.receiver.shared.component_id, peer = %self.peer,
                    error = %source, "Arrow IPC connection reset between messages");
                return Ok(Frame::Closed);
            }
            other => return self.cut_short(other, "message header", 4),
        }
        // Streams before Arrow 0.15 start messages with the length itself, without the marker.
        if bytes[..] == CONTINUATION_MARKER {
            bytes.clear();
            match self.fill(&mut bytes, 4) {
                Filled::Complete => {}
                other => return self.cut_short(other, "message header", 4),
            }
        }
        let length = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if length == 0 {
            return Ok(Frame::EndOfStream);
        }
        let metadata_len = usize::try_from(length)
            .ok()
            .filter(|&n| n <= MAX_METADATA_BYTES)
            .ok_or_else(|| ReceiveError::NotIpc {
                peer: self.peer,
                why: format!(
                    "message metadata length {length} (bytes {:02x?}) is outside 1..={MAX_METADATA_BYTES}",
                    &bytes[..]
                ),
            })?;
        // Re-frame in the current format whatever the peer used, for the decoder.
        bytes.clear();
        bytes.extend_from_slice(&CONTINUATION_MARKER);
        bytes.extend_from_slice(&length.to_le_bytes());
        let metadata = bytes.len()..bytes.len() + metadata_len;
        match self.fill(&mut bytes, metadata_len) {
            Filled::Complete => {}
            other => return self.cut_short(other, "metadata", metadata_len),
        }
        let (header, body_len) = check_header(&bytes[metadata.clone()], self.peer)?;
        bytes.reserve_exact(body_len.min(BODY_RESERVE_LIMIT));
        match self.fill(&mut bytes, body_len) {
            Filled::Complete => {}
            other => return self.cut_short(other, "body", body_len),
        }
        Ok(Frame::Message {
            header,
            bytes,
            metadata,
        })
    }

    /// Appends exactly `n` bytes to `out`, growing it only as they arrive.
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) -> Filled {
        let start = out.len();
        let target = start + n;
        while out.len() < target {
            if self.receiver.shared.stop_requested() {
                return Filled::Stopped;
            }
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if is_timeout(&e) => continue,
                Err(source) => {
                    return Filled::Failed {
                        got: out.len() - start,
                        source,
                    }
                }
            };
            if available.is_empty() {
                return Filled::Eof {
                    got: out.len() - start,
                };
            }
            let take = available.len().min(target - out.len());
            out.extend_from_slice(&available[..take]);
            self.reader.consume(take);
        }
        Filled::Complete
    }

    /// What a read that stopped inside a message means.
    fn cut_short(
        &self,
        filled: Filled,
        part: &'static str,
        want: usize,
    ) -> Result<Frame, ReceiveError> {
        match filled {
            // (Never called with `Complete`; reading on would be wrong, so stop.)
            Filled::Complete | Filled::Stopped => Ok(Frame::Stopped),
            Filled::Eof { got } => Err(self.truncated(part, got, want)),
            Filled::Failed { source, .. } => Err(ReceiveError::Io {
                peer: self.peer,
                source,
            }),
        }
    }

    fn truncated(&self, part: &'static str, got: usize, want: usize) -> ReceiveError {
        ReceiveError::Truncated {
            peer: self.peer,
            part,
            got,
            want,
        }
    }
}

/// The type and body length of one message's metadata, refused unless it is a stream message
/// with a body within bounds.
fn check_header(metadata: &[u8], peer: SocketAddr) -> Result<(MessageHeader, usize), ReceiveError> {
    let message = root_as_message(metadata).map_err(|e| ReceiveError::NotIpc {
        peer,
        why: format!("message metadata is not an Arrow IPC message: {e}"),
    })?;
    let header = message.header_type();
    let body_length = message.bodyLength();
    if !matches!(
        header,
        MessageHeader::Schema | MessageHeader::RecordBatch | MessageHeader::DictionaryBatch
    ) {
        return Err(ReceiveError::NotIpc {
            peer,
            why: format!("unsupported message type {header:?} in a stream"),
        });
    }
    let body_len = usize::try_from(body_length)
        .ok()
        .filter(|&n| n <= MAX_BODY_BYTES)
        .ok_or_else(|| ReceiveError::NotIpc {
            peer,
            why: format!("message body length {body_length} is outside 0..={MAX_BODY_BYTES}"),
        })?;
    check_buffers(&message, body_len).map_err(|why| ReceiveError::NotIpc { peer, why })?;
    Ok((header, body_len))
}

/// Every buffer of a batch must lie within the message's body: arrow's decoder slices them
/// without checking, and panics on one that does not (found by fuzzing).
fn check_buffers(message: &Message, body_len: usize) -> Result<(), String> {
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => return Ok(()),
    };
    let Some(buffers) = batch.and_then(|b| b.buffers()) else {
        return Ok(());
    };
    for (i, b) in buffers.iter().enumerate() {
        let end = b.offset().checked_add(b.length());
        if b.offset() < 0 || b.length() < 0 || end.is_none_or(|e| e as u64 > body_len as u64) {
            return Err(format!(
                "buffer {i} ({} bytes at {}) lies outside the message body of {body_len} bytes",
                b.length(),
                b.offset()
            ));
        }
    }
    Ok(())
}

/// Checks a message that arrived already split into metadata and body (Arrow Flight): the
/// same bounds as on the wire, and a body at least as long as the metadata says (Flight
/// implementations may pad it). Returns the header type and the body length to use.
pub(super) fn check_message(
    metadata: &[u8],
    body_len: usize,
    peer: SocketAddr,
) -> Result<(MessageHeader, usize), ReceiveError> {
    if metadata.is_empty() || metadata.len() > MAX_METADATA_BYTES {
        return Err(ReceiveError::NotIpc {
            peer,
            why: format!(
                "message metadata length {} is outside 1..={MAX_METADATA_BYTES}",
                metadata.len()
            ),
        });
    }
    let (header, want) = check_header(metadata, peer)?;
    if body_len < want {
        return Err(ReceiveError::NotIpc {
            peer,
            why: format!("a message body of {body_len} bytes where its metadata says {want}"),
        });
    }
    Ok((header, want))
}
