//! `DoGet` on a stream ticket: a stream live, optionally from a past time.
//!
//! Live: a run-time subscriber of the hub with its own bounded queue (as `GET /streams/{id}`);
//! one that falls behind by a whole queue is dropped and its `DoGet` ends with an error status,
//! never with a silent hole. Each batch is sent as soon as it arrives.
//!
//! From a past time: the subscription is made first, then the stored rows (Parquet files, the
//! live segments), then the hub's retained rows past them (the seam of `sql::table`) are sent;
//! subscription batches are then sent only for their rows past the last row sent, so no row is
//! missing or repeated at either seam. Rows are ordered by `sample_index`, `frame_index` or
//! `time_s`, whichever the stream has. A batch whose columns differ from the ones the `DoGet`
//! started with ends it cleanly (an Arrow stream has one schema); the reader asks again.

use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use futures_util::{Stream, StreamExt};
use pipelines::hub::SubscribeError;
use pipelines::storage;
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::Status;

use super::streams::{blocking, catalog};
use super::FlightState;
use crate::sql::catalog::{table_schema, History};
use crate::sql::rows::{column_range, conform, rows_after, rows_from};
use crate::subscriber::{LiveSubscription, Next};

/// What a `DoGet` ticket asks for: the stream id as plain bytes (live from now), or JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamTicket {
    stream: String,
    /// Start with the rows of this time on (seconds, as the stream's `time_s`).
    #[serde(default)]
    from_time_s: Option<f64>,
}

impl StreamTicket {
    pub(super) fn parse(bytes: &[u8]) -> Result<StreamTicket, Status> {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            Status::invalid_argument("a stream ticket is a stream id or JSON, in UTF-8")
        })?;
        let text = text.trim();
        let ticket = if text.starts_with('{') {
            serde_json::from_str::<StreamTicket>(text).map_err(|e| {
                Status::invalid_argument(format!(
                    "ticket {text:?}: expected {{\"stream\": \"<id>\", \"from_time_s\": <seconds>}}: {e}"
                ))
            })?
        } else {
            StreamTicket {
                stream: text.to_string(),
                from_time_s: None,
            }
        };
        if ticket.stream.is_empty() {
            return Err(Status::invalid_argument("the ticket names no stream"));
        }
        if ticket.from_time_s.is_some_and(|t| !t.is_finite()) {
            return Err(Status::invalid_argument(
                "from_time_s must be a finite number",
            ));
        }
        Ok(ticket)
    }
}

type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;
type BatchResult = Result<RecordBatch, FlightError>;

pub(super) async fn do_get(
    state: &FlightState,
    ticket: StreamTicket,
) -> Result<FlightStream, Status> {
    // Subscribed before anything stored is read, so that no row falls between the two.
    let sub = LiveSubscription::open(&state.hub, &ticket.stream, state.subscriber_queue, "flight");
    let id = ticket.stream.clone();
    let sub = match (sub, ticket.from_time_s) {
        (Ok(s), _) => Some(s),
        // An ended or stored-only stream can still be read from the past.
        (Err(_), Some(_)) => None,
        (Err(e @ SubscribeError::Unknown(_)), None) => {
            return Err(Status::not_found(e.to_string()))
        }
        (Err(e @ SubscribeError::Ended(_)), None) => {
            return Err(Status::failed_precondition(format!(
                "{e}; ask with {{\"stream\": \"{id}\", \"from_time_s\": 0}} for its stored rows"
            )))
        }
    };
    let batches: Pin<Box<dyn Stream<Item = BatchResult> + Send>> = match ticket.from_time_s {
        None => {
            let Some(sub) = sub else {
                return Err(Status::not_found(format!("no stream `{id}`")));
            };
            let Some(schema) = sub.schema() else {
                return Err(Status::unavailable(format!(
                    "stream `{id}` has no schema yet"
                )));
            };
            tracing::info!(stream = %id, "Flight reader attached");
            Box::pin(live(Live::new(sub, schema, false)))
        }
        Some(from) => {
            let history = {
                let state = state.clone();
                let id = id.clone();
                blocking(move || {
                    catalog(&state)?
                        .history(&id, from)
                        .map_err(|e| Status::internal(format!("stream `{id}`: {e}")))
                })
                .await?
            };
            let Some(history) = history else {
                return Err(Status::not_found(format!(
                    "no stream `{id}` (ListFlights lists them)"
                )));
            };
            tracing::info!(stream = %id, from_time_s = from, files = history.files.len(),
                "Flight reader attached, from the past");
            Box::pin(from_past(history, sub))
        }
    };
    let data = FlightDataEncoderBuilder::new()
        .build(batches)
        .map(|r| r.map_err(Status::from));
    Ok(Box::pin(data))
}

/// Stored and retained rows, then live ones past them.
fn from_past(
    history: History,
    sub: Option<LiveSubscription>,
) -> impl Stream<Item = BatchResult> + Send {
    let schema = history.schema.clone();
    let order = history.order;
    let start = history.start;
    // Parquet is read on a blocking thread, a few batches ahead of the client.
    let (tx, rx) = mpsc::channel::<BatchResult>(4);
    tokio::task::spawn_blocking(move || read_history(history, &tx));
    let past =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let cut = Arc::new(std::sync::Mutex::new(Cut {
        order,
        start,
        last: None,
    }));
    let past = {
        let cut = cut.clone();
        past.filter_map(move |b| {
            let b = b.and_then(|b| lock(&cut).take(&b));
            async move { b.transpose() }
        })
    };
    let rest = futures_util::stream::once(async move {
        let last = lock(&cut).clone();
        match sub {
            Some(sub) => live(Live::new(sub, schema, true).after(last)).left_stream(),
            None => futures_util::stream::empty().right_stream(),
        }
    })
    .flatten();
    past.chain(rest)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the rows sent so far end: a row is sent only past `last` and from `start` on.
#[derive(Clone, Debug)]
struct Cut {
    order: Option<&'static str>,
    start: Option<(&'static str, f64)>,
    last: Option<f64>,
}

impl Cut {
    /// The rows of `b` to send (`None`: none), noting where they end.
    fn take(&mut self, b: &RecordBatch) -> Result<Option<RecordBatch>, FlightError> {
        let mut b = b.clone();
        if let Some((c, v)) = self.start {
            b = rows_from(&b, c, v).map_err(external)?;
        }
        if let (Some(c), Some(last)) = (self.order, self.last) {
            b = rows_after(&b, c, last).map_err(external)?;
        }
        if b.num_rows() == 0 {
            return Ok(None);
        }
        if let Some(c) = self.order {
            if let (_, Some(hi)) = column_range(&b, c) {
                self.last = Some(self.last.map_or(hi, |l| l.max(hi)));
            }
        }
        Ok(Some(b))
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> FlightError {
    FlightError::ExternalError(Box::new(e))
}

/// Sends the stored files' rows, then the retained batches, in the table's schema.
fn read_history(history: History, tx: &mpsc::Sender<BatchResult>) {
    for path in &history.files {
        let reader = match storage::open_parquet(path) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(external(e)));
                return;
            }
        };
        for b in reader {
            let b = b
                .map_err(FlightError::Arrow)
                .and_then(|b| conform(&b, &history.schema).map_err(external));
            let failed = b.is_err();
            if tx.blocking_send(b).is_err() || failed {
                return;
            }
        }
    }
    for b in history.memory {
        if tx.blocking_send(Ok(b)).is_err() {
            return;
        }
    }
}

/// A live subscription as batches to send.
struct Live {
    sub: LiveSubscription,
    schema: SchemaRef,
    /// Batches are conformed to `schema` (no metadata, nullable columns: the history's schema).
    as_table: bool,
    cut: Option<Cut>,
    done: bool,
}

impl Live {
    fn new(sub: LiveSubscription, schema: SchemaRef, as_table: bool) -> Self {
        Live {
            sub,
            schema,
            as_table,
            cut: None,
            done: false,
        }
    }

    fn after(mut self, cut: Cut) -> Self {
        self.cut = Some(cut);
        self
    }

    /// The next batch to send; `None` once the stream ends (or its schema changes).
    async fn next(&mut self) -> Option<BatchResult> {
        loop {
            if self.done {
                return None;
            }
            let batch = match self.sub.next().await {
                Next::Batch(b) => b,
                Next::Ended => return None,
                Next::Evicted => {
                    self.done = true;
                    let why = format!(
                        "stream `{}`: this reader fell behind by a whole queue and was dropped; ask again",
                        self.sub.stream_id()
                    );
                    return Some(Err(FlightError::Tonic(Box::new(
                        Status::resource_exhausted(why),
                    ))));
                }
            };
            match self.prepare(&batch) {
                Ok(Some(b)) => return Some(Ok(b)),
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn prepare(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>, FlightError> {
        let same = if self.as_table {
            table_schema(batch.schema_ref()).fields() == self.schema.fields()
        } else {
            Arc::ptr_eq(&self.schema, batch.schema_ref()) || *self.schema == *batch.schema()
        };
        if !same {
            tracing::info!(stream = %self.sub.stream_id(), "schema changed: Flight reader ended");
            self.done = true;
            return Ok(None);
        }
        let batch = match &mut self.cut {
            Some(cut) => match cut.take(batch)? {
                Some(b) => b,
                None => return Ok(None),
            },
            None => batch.clone(),
        };
        if self.as_table {
            return conform(&batch, &self.schema).map(Some).map_err(external);
        }
        Ok(Some(batch))
    }
}

fn live(reader: Live) -> impl Stream<Item = BatchResult> + Send {
    futures_util::stream::unfold(
        reader,
        |mut r| async move { r.next().await.map(|b| (b, r)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_an_id_or_json_and_bad_ones_are_refused() {
        let t = StreamTicket::parse(b"rig.imec0.ap.spikes").unwrap();
        assert_eq!(
            (t.stream.as_str(), t.from_time_s),
            ("rig.imec0.ap.spikes", None)
        );
        let t = StreamTicket::parse(br#"{"stream": "a.b", "from_time_s": 12.5}"#).unwrap();
        assert_eq!((t.stream.as_str(), t.from_time_s), ("a.b", Some(12.5)));
        for bad in [
            &b""[..],
            b"\xff\xfe",
            br#"{"stream": "a", "from": 1}"#,
            br#"{"stream": ""}"#,
            br#"{"from_time_s": 1}"#,
        ] {
            let e = StreamTicket::parse(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
    }
}
