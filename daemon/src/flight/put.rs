//! `DoPut`: an Arrow stream pushed from a rig into a running `arrow_ipc` source, named by the
//! descriptor path `["<component id>"]`. The source's ingest point (see
//! `pipelines::sources::arrow_ipc`) checks, renames (`<component id>.<client's
//! neurod.stream_id>`), counts and delivers every message exactly as for its TCP connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;

use arrow_flight::{FlightData, PutResult};
use futures_util::{Stream, StreamExt};
use pipelines::hub::{IngestError, IngestStream, Pushed};
use tonic::{Request, Status, Streaming};

use super::FlightState;

type PutStream = Pin<Box<dyn Stream<Item = Result<PutResult, Status>> + Send + 'static>>;

pub(super) async fn do_put(
    state: &FlightState,
    request: Request<Streaming<FlightData>>,
) -> Result<PutStream, Status> {
    let peer = request
        .remote_addr()
        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut messages = request.into_inner();
    let Some(first) = messages.next().await else {
        return Err(Status::invalid_argument("DoPut: the stream is empty"));
    };
    let first = first?;
    let component = match first.flight_descriptor.as_ref().map(|d| d.path.as_slice()) {
        Some([id]) if !id.is_empty() => id.clone(),
        other => {
            return Err(Status::invalid_argument(format!(
                "DoPut: the descriptor path names the arrow_ipc source to push into, \
                 [\"<component id>\"]; got {other:?}"
            )))
        }
    };
    let Some(point) = state.hub.ingest(&component) else {
        return Err(Status::not_found(format!(
            "DoPut: no running arrow_ipc source `{component}` (sources taking pushed streams: {:?})",
            state.hub.ingest_points()
        )));
    };
    let mut session = point.open(peer).map_err(|e| status(&component, e))?;
    let mut next = Some(first);
    let mut batches = 0u64;
    loop {
        let data = match next.take() {
            Some(d) => d,
            None => match messages.next().await {
                Some(d) => d?,
                None => break,
            },
        };
        // A message with only app_metadata carries no Arrow data.
        if data.data_header.is_empty() {
            continue;
        }
        // Decoding is CPU work: off the async threads.
        let (s, pushed) = tokio::task::spawn_blocking(move || {
            let pushed = session.message(&data.data_header, &data.data_body);
            (session, pushed)
        })
        .await
        .map_err(|e| Status::internal(format!("DoPut into `{component}`: {e}")))?;
        session = s;
        match pushed.map_err(|e| status(&component, e))? {
            Pushed::Taken => batches += 1,
            Pushed::Stopped => {
                return Err(Status::unavailable(format!(
                    "DoPut into `{component}`: the source has stopped or nothing reads it"
                )))
            }
        }
    }
    tracing::debug!(component = %component, stream = stream_id(session.as_ref()), messages = batches,
        "DoPut finished");
    Ok(Box::pin(futures_util::stream::empty()))
}

fn stream_id(s: &dyn IngestStream) -> &str {
    s.stream_id().unwrap_or_default()
}

fn status(component: &str, e: IngestError) -> Status {
    match e {
        IngestError::Rejected(m) => {
            Status::invalid_argument(format!("DoPut into `{component}`: {m}"))
        }
        IngestError::Unavailable(m) => {
            Status::unavailable(format!("DoPut into `{component}`: {m}"))
        }
    }
}
