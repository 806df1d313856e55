//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, `/status` (JSON), `/streams` (the
//! hub's registry, JSON) and `/streams/{id}` (one stream live, as an Arrow IPC stream).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipelines::hub::{Hub, StreamInfo};
use pipelines::metrics::{ComponentState, Metrics};
use serde::Serialize;

use crate::live;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub started: Instant,
    pub data_dir: String,
    /// Queue of each `/streams/{id}` reader, in batches.
    pub subscriber_queue: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/streams", get(streams))
        .route("/streams/{*id}", get(stream))
        .with_state(state)
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
