//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, `/status` (JSON), `/streams` (the
//! hub's registry, JSON), `/streams/{id}` (one stream live, as an Arrow IPC stream) and
//! `POST /sql` (a query over live and stored streams); the web view's data (`crate::view`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pipelines::hub::{Hub, StreamInfo};
use pipelines::metrics::{ComponentState, Metrics};
use serde::Serialize;

use neurod::sql::format::Format;
use neurod::sql::SqlEngine;

use crate::live;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub started: Instant,
    pub data_dir: String,
    /// Queue of each `/streams/{id}` reader, in batches.
    pub subscriber_queue: usize,
    pub sql: SqlEngine,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/streams", get(streams))
        .route("/streams/{*id}", get(stream))
        .route("/sql", post(sql))
        .merge(crate::view::data())
        // Its own fallback, so that the security layers cover unknown paths too once the web
        // view's public page is merged beside this router (see `run`).
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "no such endpoint\n")
}

/// Serves `app` on `listener` in the background, over TLS when `tls` is given.
pub fn spawn(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let Some(config) = tls else {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        return Ok(());
    };
    let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
    let server = axum_server::from_tcp_rustls(listener.into_std()?, config)?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!("HTTPS server stopped: {e}");
        }
    });
    Ok(())
}

#[derive(Serialize)]
struct StreamsBody {
    streams: Vec<StreamInfo>,
}

async fn streams(State(s): State<AppState>) -> impl IntoResponse {
    Json(StreamsBody {
        streams: s.hub.streams(),
    })
}

/// The stream from its next batch on; see [`live`].
async fn stream(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    live::respond(&s.hub, &id, s.subscriber_queue)
}

/// `POST /sql`: the body is the query (plain text, or JSON `{"query": "..."}`); the result comes
/// as JSON, CSV, a text table or an Arrow IPC stream by the `Accept` header.
async fn sql(State(s): State<AppState>, headers: axum::http::HeaderMap, body: String) -> Response {
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(text(header::ACCEPT));
    let query = if text(header::CONTENT_TYPE).is_some_and(|c| c.starts_with("application/json")) {
        match serde_json::from_str::<SqlRequest>(&body) {
            Ok(r) => r.query,
            Err(e) => {
                let why = format!("the body is not JSON like {{\"query\": \"SELECT ...\"}}: {e}\n");
                return (StatusCode::BAD_REQUEST, why).into_response();
            }
        }
    } else {
        body
    };
    let result = match s.sql.query(&query).await {
        Ok(r) => r,
        Err(e) => {
            let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return (code, format!("{e}\n")).into_response();
        }
    };
    match format.write(&result.schema, &result.batches) {
        Ok(bytes) => ([(header::CONTENT_TYPE, format.content_type())], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct SqlRequest {
    query: String,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// 503 naming the failed components if any has failed. Otherwise 200: `ok`, or `degraded`
/// naming each part that does not work while its component runs on (a store's stream on a full
/// disk). Degraded stays 200 because restarting the daemon would not help and would stop every
/// stream that still works; `/status` lists the same under each component's `degraded`.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let statuses = s.metrics.statuses();
    let failed: Vec<&str> = statuses
        .iter()
        .filter(|c| c.state == ComponentState::Failed)
        .map(|c| c.id.as_str())
        .collect();
    let degraded: Vec<String> = statuses
        .iter()
        .flat_map(|c| c.degraded.iter().map(move |d| format!("{} {d}", c.id)))
        .collect();
    if failed.is_empty() && degraded.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else if failed.is_empty() {
        (
            StatusCode::OK,
            format!("degraded: {}\n", degraded.join("; ")),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed components: {}\n", failed.join(", ")),
        )
    }
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    uptime_s: f64,
    data_dir: String,
    /// The compute backend (`gpu`, `lavapipe`, `cpu`) of each component that runs kernels.
    backend: BTreeMap<String, &'static str>,
    components: Vec<pipelines::metrics::ComponentStatus>,
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    Json(StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: s.started.elapsed().as_secs_f64(),
        data_dir: s.data_dir.clone(),
        backend: pipelines::metrics::kernel_backends(),
        components: s.metrics.statuses(),
    })
}
