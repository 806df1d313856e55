//! `ListFlights` / `GetFlightInfo`: what each stream is, for plain Flight clients.

use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use tonic::Status;

use super::FlightState;
use crate::sql::catalog::StreamSchema;

/// One `FlightInfo` per stream the hub or the stores know, by id.
pub(super) async fn list(state: &FlightState) -> Result<Vec<FlightInfo>, Status> {
    let state = state.clone();
    blocking(move || {
        let streams = catalog(&state)?;
        let mut out = Vec::new();
        let names: Vec<String> = streams.names().cloned().collect();
        for name in names {
            // A stream without a readable schema yet (no complete batch) is left out.
            if let Some(info) = describe(&state, &streams, &name)? {
                out.push(info);
            }
        }
        Ok(out)
    })
    .await
}

/// The `FlightInfo` of stream `id`.
pub(super) async fn info(state: &FlightState, id: &str) -> Result<FlightInfo, Status> {
    let state = state.clone();
    let id = id.to_string();
    blocking(move || {
        let streams = catalog(&state)?;
        describe(&state, &streams, &id)?
            .ok_or_else(|| Status::not_found(format!("no stream `{id}` (ListFlights lists them)")))
    })
    .await
}

/// Every stream now: the stores under the data directory and the hub's registry.
pub(super) fn catalog(state: &FlightState) -> Result<StreamSchema, Status> {
    StreamSchema::new(&state.data_dir, state.sql.live()).map_err(|e| {
        Status::internal(format!(
            "cannot list the streams under {}: {e}",
            state.data_dir.display()
        ))
    })
}

fn describe(
    state: &FlightState,
    streams: &StreamSchema,
    id: &str,
) -> Result<Option<FlightInfo>, Status> {
    let Some(schema) = streams
        .stream_schema(id)
        .map_err(|e| Status::internal(format!("stream `{id}`: {e}")))?
    else {
        return Ok(None);
    };
    let stored = streams
        .stored(id)
        .map_err(|e| Status::internal(format!("stream `{id}`: {e}")))?;
    // Rows that flowed through the daemon since it started, else what the store holds.
    let total = match state.hub.stream(id) {
        Some(live) => Some(live.rows),
        None => stored.map(|s| s.rows()),
    };
    let ticket = serde_json::json!({ "stream": id }).to_string();
    let info = FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| Status::internal(format!("stream `{id}`: cannot encode its schema: {e}")))?
        .with_descriptor(FlightDescriptor::new_path(vec![id.to_string()]))
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_ordered(true)
        .with_total_records(total.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    Ok(Some(info))
}

/// Runs file-system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("a Flight task failed: {e}")))?
}
