//! Flight delivery delay: from a batch leaving a transform (`Output::send` on a hub port) to its
//! arrival, decoded, at an Arrow Flight `DoGet` subscriber over loopback TCP, p50/p90/p99/max.
//!
//! One process: a hub port sends small spike-like batches (64 rows, one timestamp each) at
//! `NEUROD_FLIGHT_BENCH_HZ` batches per second (default 1000, a 1 ms chunk rate) for
//! `NEUROD_FLIGHT_BENCH_S` seconds (default 5); the daemon's own Flight server (`flight::server`,
//! no token, no TLS) serves them; arrow-flight's client subscribes and records, per batch, the
//! monotonic time between the send and the decoded batch in hand. Both ends read one clock.
//! Target: p99 under 1 ms. Run: `cargo bench -p neurod --bench flight_latency`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use arrow_flight::{FlightClient, Ticket};
use futures_util::StreamExt;
use neurod::flight::FlightState;
use neurod::security::Security;
use neurod::sql::{Live, SqlEngine, SqlLimits};
use pipelines::component::Output;
use pipelines::hub::Hub;
use pipelines::metrics::Metrics;

const STREAM: &str = "bench.spikes";
const ROWS: usize = 64;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A batch whose `sent_ns` column holds the time it leaves the producer.
fn batch(schema: &Arc<Schema>, seq: i64, epoch: Instant) -> RecordBatch {
    let sent = epoch.elapsed().as_nanos() as i64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            (0..ROWS as i64).map(|i| seq * 1000 + i),
        )),
        Arc::new(Int32Array::from_iter_values(
            (0..ROWS as i32).map(|i| i % 384),
        )),
        Arc::new(Float32Array::from_iter_values(
            (0..ROWS).map(|i| -60.0 - i as f32),
        )),
        Arc::new(Int64Array::from_value(sent, ROWS)),
    ];
    RecordBatch::try_new(schema.clone(), cols).expect("valid batch")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Subscribes to the stream and returns each batch's delay in µs, until `n` have come.
async fn subscribe(
    addr: std::net::SocketAddr,
    n: i64,
    epoch: Instant,
    ready: std::sync::mpsc::Sender<()>,
) -> Vec<f64> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let mut client = FlightClient::new(channel);
    let mut stream = client.do_get(Ticket::new(STREAM)).await.expect("DoGet");
    let _ = ready.send(());
    let mut delays_us = Vec::with_capacity(n as usize);
    while (delays_us.len() as i64) < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        let Ok(Some(Ok(b))) = next else {
            eprintln!("the subscription ended early: {next:?}");
            break;
        };
        let now = epoch.elapsed().as_nanos() as i64;
        let sent = b.column(3).as_primitive::<Int64Type>().value(0);
        let seq = b.column(0).as_primitive::<Int64Type>().value(0);
        if seq >= 0 {
            delays_us.push((now - sent) as f64 / 1e3);
        }
    }
    delays_us
}

fn main() {
    let hz = env_f64("NEUROD_FLIGHT_BENCH_HZ", 1000.0);
    let seconds = env_f64("NEUROD_FLIGHT_BENCH_S", 5.0);
    let n = (hz * seconds) as i64;
    let md = [
        ("neurod.stream_id".to_string(), STREAM.to_string()),
        ("neurod.layout".to_string(), "events".to_string()),
        ("neurod.sampling_hz".to_string(), "30000".to_string()),
    ]
    .into_iter()
    .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("channel", DataType::Int32, false),
            Field::new("amplitude_uv", DataType::Float32, false),
            Field::new("sent_ns", DataType::Int64, false),
        ],
        md,
    ));
    let metrics = Metrics::new();
    let hub = Hub::new(&metrics);
    let mut out = Output::attached(
        hub.port("spikes", ""),
        metrics.component("spikes", "transform", "spike_detect"),
    );
    let epoch = Instant::now();
    // The stream exists once it has sent a batch.
    out.send(batch(&schema, -1, epoch)).expect("hub port open");

    let data = tempfile::tempdir().expect("temp dir");
    let live = Live {
        hub: hub.clone(),
        metrics: metrics.clone(),
    };
    let sql =
        SqlEngine::new(data.path().into(), Some(live), SqlLimits::default()).expect("query engine");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let security = Security {
        token: None,
        tls: None,
        max_request_bytes: 16 << 20,
        max_concurrent_requests: 64,
    };
    // The server on a one-thread runtime, as in the daemon (which shares it with HTTP).
    let addr = rt.block_on(async {
        let listener = neurod::flight::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = FlightState {
            hub: hub.clone(),
            sql,
            data_dir: data.path().into(),
            subscriber_queue: 4096,
        };
        let server = neurod::flight::server(listener, state, &security).expect("server");
        tokio::spawn(server);
        addr
    });
    // The subscriber on a thread and runtime of its own, as another process would be.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscriber = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(subscribe(addr, n, epoch, ready_tx))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the subscriber attached");

    // The producer, as a transform's thread: a batch every period (sleeping in between).
    let period = Duration::from_secs_f64(1.0 / hz);
    let start = Instant::now();
    for seq in 0..n {
        let due = start + period * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if out.send(batch(&schema, seq, epoch)).is_err() {
            break;
        }
    }
    let mut delays_us = subscriber.join().expect("subscriber thread");
    drop(out);
    delays_us.sort_by(f64::total_cmp);
    let (p50, p90, p99) = (
        percentile(&delays_us, 0.5),
        percentile(&delays_us, 0.9),
        percentile(&delays_us, 0.99),
    );
    let max = delays_us.last().copied().unwrap_or(f64::NAN);
    println!(
        "Flight DoGet delivery over loopback ({addr}): {} batches of {ROWS} rows at {hz} Hz",
        delays_us.len()
    );
    println!("| p50 | p90 | p99 | max | target p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| {p50:.0} µs | {p90:.0} µs | {p99:.0} µs | {max:.0} µs | < 1000 µs: {} |",
        if p99 < 1000.0 { "met" } else { "MISSED" }
    );
}
