//! `GET /streams/{id}`: one stream live, from its next batch on, as an Arrow IPC stream in a
//! chunked HTTP response (`application/vnd.apache.arrow.stream`), so that
//! `pyarrow.ipc.open_stream(urllib.request.urlopen(url))` reads it.
//!
//! The reader is a run-time subscriber of the hub: its own bounded queue, never waited for. A
//! reader that falls behind by a whole queue is dropped: its queue is released, it is counted in
//! `neurod_subscribers_evicted_total`, and its response is cut short (no end-of-stream marker),
//! so it sees an error rather than a stream with a silent hole. When the stream ends, the
//! end-of-stream marker is sent and the response completes. A batch whose schema differs from
//! the one the response started with ends the response cleanly (an Arrow IPC stream has one
//! schema); the reader reconnects to get the new one.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use neurod::subscriber::{LiveSubscription, Next};
use pipelines::hub::{Hub, SubscribeError};

pub const CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// The response to `GET /streams/{id}`.
pub fn respond(hub: &Hub, id: &str, queue: usize) -> Response {
    let sub = match LiveSubscription::open(hub, id, queue, "http") {
        Ok(s) => s,
        Err(e) => {
            let code = match e {
                SubscribeError::Unknown(_) => StatusCode::NOT_FOUND,
                SubscribeError::Ended(_) => StatusCode::GONE,
            };
            return (code, format!("{e}\n")).into_response();
        }
    };
    let Some(schema) = sub.schema() else {
        // Registered streams have had a batch; this cannot happen, but must not panic.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "stream has no schema yet\n",
        )
            .into_response();
    };
    let reader = match Reader::new(sub, schema) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    tracing::info!(stream = %id, "live reader attached");
    let body = futures_util::stream::unfold(reader, Reader::next);
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

struct Reader {
    sub: LiveSubscription,
    writer: StreamWriter<Vec<u8>>,
    schema: SchemaRef,
    /// Encoded bytes not yet handed to the response (the schema message at first).
    pending: Vec<u8>,
    done: bool,
}

type Chunk = Result<Bytes, std::io::Error>;

impl Reader {
    fn new(sub: LiveSubscription, schema: SchemaRef) -> Result<Self, arrow::error::ArrowError> {
        let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
        let pending = std::mem::take(writer.get_mut());
        Ok(Reader {
            sub,
            writer,
            schema,
            pending,
            done: false,
        })
    }

    /// The next chunk of the response; `None` once it is complete.
    async fn next(mut self) -> Option<(Chunk, Self)> {
        if !self.pending.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.pending));
            return Some((Ok(chunk), self));
        }
        if self.done {
            return None;
        }
        let chunk = match self.sub.next().await {
            Next::Batch(batch) => self.encode(&batch),
            Next::Ended => {
                self.done = true;
                self.finish()
            }
            Next::Evicted => {
                self.done = true;
                let why = format!(
                    "stream `{}`: this reader fell behind and was dropped",
                    self.sub.stream_id()
                );
                Err(std::io::Error::other(why))
            }
        };
        Some((chunk, self))
    }

    fn encode(&mut self, batch: &RecordBatch) -> Chunk {
        let same = Arc::ptr_eq(&self.schema, batch.schema_ref()) || *self.schema == *batch.schema();
        if !same {
            tracing::info!(stream = %self.sub.stream_id(), "schema changed: live response ended");
            self.done = true;
            return self.finish();
        }
        self.writer.write(batch).map_err(std::io::Error::other)?;
        Ok(Bytes::from(std::mem::take(self.writer.get_mut())))
    }

    /// The end-of-stream marker.
    fn finish(&mut self) -> Chunk {
        self.writer.finish().map_err(std::io::Error::other)?;
        Ok(Bytes::from(std::mem::take(self.writer.get_mut())))
    }
}
