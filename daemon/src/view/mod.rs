//! The web view at `/`: a page (HTML, JavaScript and uPlot, shipped inside the binary) that shows
//! the topology and each stream live, fed by compact JSON endpoints that read the hub's retained
//! batches and decimate them on the server to what a screen shows:
//!
//! - `GET /view/streams`: the streams, each with the role the page draws it in;
//! - `GET /view/probe?stream=&seconds=&channels=&buckets=&from_um=&to_um=` ([`probe`]);
//! - `GET /view/frame?stream=` and `GET /view/traces?stream=&rois=1,2&column=dff` ([`imaging`]);
//! - `GET /view/decoder?stream=` ([`decoder`]);
//!
//! with `/status` (the topology) and `POST /sql` (the neuron table). The data endpoints sit behind
//! the same token, limits and TLS as every other endpoint; the page and its scripts hold no data
//! and are served to anyone, so that a browser can load the page and then ask for the token.

mod decoder;
mod imaging;
mod probe;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipelines::stream::{keys, Layout};
use serde::{Deserialize, Serialize};

use crate::http::AppState;

/// The page and its scripts: no data, no token needed.
pub fn page() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/view/assets/{name}", get(asset))
}

/// The data the page draws, behind the listener's security like every other endpoint.
pub fn data() -> Router<AppState> {
    Router::new()
        .route("/view/streams", get(streams))
        .route("/view/probe", get(probe))
        .route("/view/frame", get(frame))
        .route("/view/traces", get(traces))
        .route("/view/decoder", get(decoder))
}

const INDEX: &str = include_str!("../../assets/view/index.html");

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match name.as_str() {
        "view.js" => (include_str!("../../assets/view/view.js"), "text/javascript"),
        "view.css" => (include_str!("../../assets/view/view.css"), "text/css"),
        "uPlot.iife.min.js" => (
            include_str!("../../assets/view/vendor/uPlot.iife.min.js"),
            "text/javascript",
        ),
        "uPlot.min.css" => (
            include_str!("../../assets/view/vendor/uPlot.min.css"),
            "text/css",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    let kind = format!("{kind}; charset=utf-8");
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

fn unprocessable(why: String) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")).into_response()
}

/// What the page draws a stream as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    Probe,
    Spikes,
    Frames,
    RegisteredFrames,
    Rois,
    /// Traces with `dff` (the page plots those).
    Dff,
    Traces,
    Neurons,
    Decoder,
    Other,
}

#[derive(Debug, Serialize)]
struct ViewStream {
    key: String,
    id: String,
    producer: String,
    role: Role,
    layout: Option<Layout>,
    kind: Option<String>,
    rate_hz: Option<f64>,
    rows: u64,
    ended: bool,
    /// For spikes: the key of the probe stream they were detected on.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

fn role_of(schema: &arrow::datatypes::Schema) -> Role {
    let meta = schema.metadata();
    let has = |name: &str| schema.field_with_name(name).is_ok();
    match Layout::of(schema) {
        Some(Layout::Continuous)
            if schema.fields().iter().any(|f| {
                f.metadata()
                    .get(keys::CHANNEL_KIND)
                    .and_then(|k| pipelines::stream::ChannelKind::parse(k))
                    .is_some_and(|k| k.is_electrode())
            }) =>
        {
            Role::Probe
        }
        Some(Layout::Events)
            if meta.contains_key(pipelines::transforms::spike_detect::SOURCE_STREAM_KEY)
                && has("amplitude_uv") =>
        {
            Role::Spikes
        }
        Some(Layout::Frames) if has("shift_y") => Role::RegisteredFrames,
        Some(Layout::Frames) => Role::Frames,
        Some(Layout::Rois) => Role::Rois,
        Some(Layout::Traces) if has("dff") => Role::Dff,
        Some(Layout::Traces) => Role::Traces,
        _ if meta.get(keys::STREAM_KIND).is_some_and(|k| k == "neurons") => Role::Neurons,
        _ if meta.contains_key("neurod.teb.model") => Role::Decoder,
        _ => Role::Other,
    }
}

fn view_streams(s: &AppState) -> Vec<ViewStream> {
    let infos = s.hub.streams();
    let key_of_id: HashMap<String, String> = infos
        .iter()
        .map(|i| (i.id.clone(), i.key.clone()))
        .collect();
    infos
        .into_iter()
        .map(|i| {
            let schema = s.hub.schema(&i.key);
            let role = schema.as_deref().map_or(Role::Other, role_of);
            let source = schema
                .as_deref()
                .filter(|_| role == Role::Spikes)
                .and_then(|sc| {
                    sc.metadata()
                        .get(pipelines::transforms::spike_detect::SOURCE_STREAM_KEY)
                })
                .and_then(|id| key_of_id.get(id).cloned());
            ViewStream {
                key: i.key,
                id: i.id,
                producer: i.producer,
                role,
                layout: i.layout,
                kind: i.kind,
                rate_hz: i.rate_hz,
                rows: i.rows,
                ended: i.ended,
                source,
            }
        })
        .collect()
}

async fn streams(State(s): State<AppState>) -> impl IntoResponse {
    Json(view_streams(&s))
}

async fn probe(State(s): State<AppState>, Query(q): Query<probe::ProbeQuery>) -> Response {
    let Some(schema) = s.hub.schema(&q.stream) else {
        return not_found(format!("no stream `{}`", q.stream));
    };
    let batches = s.hub.recent(&q.stream);
    let spikes: Vec<_> = view_streams(&s)
        .into_iter()
        .filter(|v| v.role == Role::Spikes && v.source.as_deref() == Some(q.stream.as_str()))
        .flat_map(|v| s.hub.recent(&v.key))
        .collect();
    match probe::probe_view(&q, &schema, &batches, &spikes) {
        Ok(v) => Json(v).into_response(),
        Err(why) => unprocessable(format!("{}: {why}", q.stream)),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    stream: String,
}

/// Each neuron's label (unit → label) from SQL's `neurons` table; empty if there is none yet.
async fn labels(s: &AppState) -> HashMap<String, String> {
    let Ok(result) = s.sql.query("SELECT unit, label FROM neurons").await else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for b in &result.batches {
        use arrow::array::AsArray;
        let (Some(unit), Some(label)) = (
            b.column_by_name("unit")
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name("label")
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            continue;
        };
        for (u, l) in unit.iter().zip(label.iter()) {
            if let (Some(u), Some(l)) = (u, l) {
                out.insert(u.to_string(), l.to_string());
            }
        }
    }
    out
}

async fn frame(State(s): State<AppState>, Query(q): Query<StreamQuery>) -> Response {
    if s.hub.schema(&q.stream).is_none() {
        return not_found(format!("no stream `{}`", q.stream));
    }
    let batches = s.hub.recent(&q.stream);
    // The ROIs of this field of view: `<frames id>.rois` (the rig's), else the only ones.
    let streams = view_streams(&s);
    let frames_id = streams
        .iter()
        .find(|v| v.key == q.stream)
        .map(|v| v.id.clone())
        .unwrap_or_default();
    let rois_of: Vec<&ViewStream> = streams.iter().filter(|v| v.role == Role::Rois).collect();
    let rois = rois_of
        .iter()
        .find(|v| v.id == format!("{frames_id}.rois"))
        .or(rois_of.first().filter(|_| rois_of.len() == 1))
        .map(|v| s.hub.recent(&v.key))
        .unwrap_or_default();
    let labels = labels(&s).await;
    match imaging::frame_view(&q.stream, &batches, &rois, &labels) {
        Ok(v) => Json(v).into_response(),
        Err(why) => unprocessable(format!("{}: {why}", q.stream)),
    }
}

#[derive(Deserialize)]
struct TracesQuery {
    stream: String,
    /// Comma-separated ROI indices.
    rois: String,
    #[serde(default = "default_column")]
    column: String,
}

fn default_column() -> String {
    "dff".into()
}

async fn traces(State(s): State<AppState>, Query(q): Query<TracesQuery>) -> Response {
    if s.hub.schema(&q.stream).is_none() {
        return not_found(format!("no stream `{}`", q.stream));
    }
    let rois: Result<Vec<i32>, _> = q
        .rois
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.trim().parse::<i32>())
        .collect();
    let Ok(rois) = rois else {
        return unprocessable(format!("rois `{}`: expected numbers like 1,2,3", q.rois));
    };
    let batches = s.hub.recent(&q.stream);
    match imaging::traces_view(&q.stream, &batches, &rois, &q.column) {
        Ok(v) => Json(v).into_response(),
        Err(why) => unprocessable(format!("{}: {why}", q.stream)),
    }
}

async fn decoder(State(s): State<AppState>, Query(q): Query<StreamQuery>) -> Response {
    if s.hub.schema(&q.stream).is_none() {
        return not_found(format!("no stream `{}`", q.stream));
    }
    match decoder::decoder_view(&q.stream, &s.hub.recent(&q.stream)) {
        Ok(v) => Json(v).into_response(),
        Err(why) => unprocessable(format!("{}: {why}", q.stream)),
    }
}
