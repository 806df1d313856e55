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

use crate::security::Security;
use crate::sql::SqlEngine;
use tonic::service::interceptor::InterceptedService;

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

/// The Flight server on `listener`, with `[daemon]`'s token (checked on every call, DoGet and
/// DoPut streams included), TLS and limits: the one place the tonic server is built. An error
/// here (unusable TLS files) is a start-up error; the future serves until the process ends.
pub fn server(
    listener: TcpListener,
    state: FlightState,
    security: &Security,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, String> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?local, tls = security.tls.is_some(), "serving Arrow Flight and Flight SQL");
    let service = FlightServiceServer::new(service::NeurodFlight::new(state))
        // A pushed batch is one message: up to `max_request_bytes`. Results may be bigger
        // (a batch of frames), so what the server sends is not held to it.
        .max_decoding_message_size(security.max_request_bytes)
        .max_encoding_message_size(256 << 20);
    let service = InterceptedService::new(service, security.interceptor());
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(security.max_concurrent_requests);
    if let Some(tls) = security.tonic_tls()? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("Arrow Flight TLS: {e}"))?;
    }
    let incoming = tokio_stream_of(listener);
    Ok(builder.add_service(service).serve_with_incoming(incoming))
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
