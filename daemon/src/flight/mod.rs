//! Arrow Flight and Flight SQL on `[daemon] flight_listen` (default `127.0.0.1:9751`).
//!
//! Plain Flight, by descriptor path or stream ticket:
//! - `ListFlights` / `GetFlightInfo(path = [stream id])`: one `FlightInfo` per stream (the hub's
//!   registry and the stores under the data directory), with its schema, its stored row count
//!   where known, and a ticket.
//! - `DoGet(ticket)`: a stream live from its next batch (ticket: the stream id, or
//!   `{"stream": "<id>"}`), or from a past time (`{"stream": "<id>", "from_time_s": 12.5}`):
//!   stored rows, then the hub's retained rows, then live, with no row missing or repeated at
//!   either seam ([`subscribe`]).
//! - `DoPut(path = [component id])`: a stream pushed into a running `arrow_ipc` source, through
//!   that source's own checks, naming and port ([`put`]).
//!
//! Flight SQL (`CommandStatementQuery`, prepared statements, catalogs, schemas, tables, SQL
//! info) runs queries through [`SqlEngine`] ([`sql`]).

mod put;
mod service;
mod sql;
mod streams;
mod subscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use pipelines::hub::Hub;
use tokio::net::TcpListener;

use crate::sql::SqlEngine;

/// What the Flight service reads and feeds.
#[derive(Clone)]
pub struct FlightState {
    pub hub: Arc<Hub>,
    pub sql: SqlEngine,
    pub data_dir: PathBuf,
    /// Each live reader's own queue, in batches (`[daemon] queue_batches`).
    pub subscriber_queue: usize,
}

/// Binds the Flight listener (so that a taken address fails `neurod run` at startup).
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves Flight and Flight SQL on `listener` until the process ends. The one place the tonic
/// server is built: authentication and TLS are added here.
pub async fn serve(
    listener: TcpListener,
    state: FlightState,
) -> Result<(), tonic::transport::Error> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?local, "serving Arrow Flight and Flight SQL");
    let service = FlightServiceServer::new(service::NeurodFlight::new(state))
        // Query results and big frames: the default 4 MiB limit on decoded messages is too low
        // for a pushed batch of raw samples.
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let incoming = tokio_stream_of(listener);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
}

/// Accepted connections as the stream tonic serves.
fn tokio_stream_of(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, listener))
    })
}
