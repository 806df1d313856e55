//! Fuzzing of what arrives over the network (see `fuzz/mod.rs` for the harness): Arrow IPC
//! streams pushed to the `arrow_ipc` source over TCP, SQL queries (the text of `POST /sql` and
//! of Flight SQL's `CommandStatementQuery`) and Arrow Flight requests (tickets, descriptors and
//! Flight SQL commands). Servers answer on their own threads, so allocations are counted for the
//! whole process, and the targets run one after another in one test.

mod common;
mod fuzz;

use std::io::{Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int16Array, Int64Array, RecordBatch};
use arrow::ipc::writer::StreamWriter;
use fuzz::{alloc_bound, fuzz, Counting, Scope};
use pipelines::component::{Output, Outputs, Shutdown, SourceContext};
use pipelines::edge::{Inbox, Overflow, Recv};
use pipelines::metrics::Metrics;
use pipelines::sources::arrow_ipc::ArrowIpcSource;
use pipelines::sources::simulated::ap_stream_info;

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn network_inputs() {
    arrow_ipc_over_tcp();
    let dir = tempfile::tempdir().unwrap();
    let data = small_store(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    sql_queries(&rt, &data);
    flight_requests(&rt, &data);
    flight_do_put(&rt);
}

/// A valid stream as a rig pushes it: schema with the stream's metadata, then `batches` batches.
fn ipc_stream(stream_id: &str, channels: usize, batches: usize) -> Vec<u8> {
    // The simulated rig's probe description, cut to `channels` channels.
    let mut info = ap_stream_info(stream_id);
    info.channels.truncate(channels);
    let schema = info.schema();
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
    for b in 0..batches {
        let rows = 16;
        let first = (b * rows) as i64;
        let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(
            Int64Array::from_iter_values(first..first + rows as i64),
        )];
        for c in 0..channels {
            columns.push(Arc::new(Int16Array::from_iter_values(
                (0..rows).map(|r| (r * 31 + c * 7) as i16),
            )));
        }
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

/// Each input is one TCP connection's bytes; the source must answer or close it, deliver what
/// was valid, and go on taking connections.
fn arrow_ipc_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Metrics::new();
    let metrics = registry.component("ipc", "source", "arrow_ipc");
    let inbox = Inbox::new(100_000, metrics.clone());
    let mut outputs = Outputs::default();
    outputs.insert(
        "",
        Output::new(vec![inbox.sender()], Overflow::DropOldest, metrics.clone()),
    );
    let shutdown = Shutdown::new();
    let ctx = SourceContext {
        id: "ipc".into(),
        outputs,
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        resume: Default::default(),
    };
    let source = ArrowIpcSource::new("ipc", addr, 4);
    let run = std::thread::spawn(move || source.run_on(listener, ctx));
    // The source runs arrow's decoder under `catch_unwind` (see `receiver::guarded`).
    fuzz::contained_panics_from(&["/arrow-"]);
    let seeds = vec![
        ipc_stream("probe", 4, 3),
        ipc_stream("other", 1, 1),
        ipc_stream("probe", 16, 2),
    ];
    fuzz(
        "arrow_ipc_tcp",
        seeds,
        Scope::Process,
        alloc_bound,
        |bytes| {
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            // The source may close early (an error line): what it did not read is its choice.
            let _ = conn.write_all(bytes);
            let _ = conn.shutdown(NetShutdown::Write);
            let mut answer = Vec::new();
            let _ = conn.take(64 << 10).read_to_end(&mut answer);
            while let Recv::Data(_) = inbox.try_recv() {}
            assert!(!run.is_finished(), "the source stopped");
        },
    );
    shutdown.trigger();
    run.join().unwrap().unwrap();
}

/// A store written by the daemon itself: one second of the simulated rig.
fn small_store(dir: &Path) -> std::path::PathBuf {
    let config = format!(
        "{}[sources.rig]\ntype = \"simulated\"\npace = \"max\"\nduration_s = 1\n\
         [transforms.spikes]\ntype = \"spike_detect\"\ninputs = [\"rig\"]\nbackend = \"cpu\"\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"rig\", \"spikes\"]\n",
        common::header()
    );
    common::run_to_end(dir, &config, Duration::from_secs(120))
}

/// Tight limits, so that the fuzzer sees them work: each query ends within them or errors.
fn limits() -> neurod::sql::SqlLimits {
    neurod::sql::SqlLimits {
        max_rows: 10_000,
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(1),
    }
}

/// What one query may allocate: the harness's bound, plus the operators' memory limit and what
/// DataFusion holds outside it (record batches in flight, the plan) a few times over.
fn sql_bound(n: usize) -> i64 {
    alloc_bound(n) + 4 * limits().memory_bytes as i64
}

fn queries() -> Vec<Vec<u8>> {
    [
        "SELECT 41 + 1 AS answer",
        "SELECT name, live FROM streams ORDER BY name",
        "SELECT id, state FROM components ORDER BY id",
        "SELECT sample_index, ch0, ch3 FROM \"rig.imec0.ap\" WHERE sample_index < 1000",
        "SELECT channel, count(*) AS n, avg(amplitude_uv) FROM \"rig.imec0.ap.spikes\" GROUP BY channel ORDER BY n DESC LIMIT 5",
        "SELECT value FROM generate_series(1, 5000) ORDER BY value DESC LIMIT 3 OFFSET 7",
        "SELECT a.value FROM generate_series(1, 100) a JOIN generate_series(1, 100) b ON a.value = b.value",
        "WITH t AS (SELECT sample_index % 30000 AS s FROM \"rig.imec0.ap\") SELECT s, count(*) FROM t GROUP BY s HAVING count(*) > 0 LIMIT 10",
        "SELECT * FROM nosuch",
    ]
    .iter()
    .map(|q| q.as_bytes().to_vec())
    .collect()
}

/// Query text as `POST /sql` and Flight SQL pass it to the engine.
fn sql_queries(rt: &tokio::runtime::Runtime, data: &Path) {
    let engine = neurod::sql::SqlEngine::new(data.to_path_buf(), None, limits()).unwrap();
    fuzz("sql_query", queries(), Scope::Process, sql_bound, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = rt.block_on(engine.query(&text));
    });
}

/// A gRPC channel to the Flight server at `url`.
fn connect(rt: &tokio::runtime::Runtime, url: String) -> tonic::transport::Channel {
    rt.block_on(async {
        tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap()
    })
}

/// Flight calls with fuzzed payloads, against the daemon's Flight service on a loopback port:
/// `DoGet` tickets, `GetFlightInfo` descriptors (paths, and commands: Flight SQL's protobuf
/// messages), `DoAction` bodies. The first input byte picks the call.
fn flight_requests(rt: &tokio::runtime::Runtime, data: &Path) {
    use arrow_flight::sql::{Any, CommandGetTables, CommandStatementQuery, ProstMessageExt};
    use arrow_flight::{Action, FlightClient, FlightDescriptor, Ticket};
    use futures_util::StreamExt;
    use prost::Message;

    let registry = Metrics::new();
    let hub = pipelines::hub::Hub::new(&registry);
    let live = neurod::sql::Live {
        hub: hub.clone(),
        metrics: registry.clone(),
    };
    let state = neurod::flight::FlightState {
        hub,
        sql: neurod::sql::SqlEngine::new(data.to_path_buf(), Some(live), limits()).unwrap(),
        data_dir: data.to_path_buf(),
        subscriber_queue: 16,
    };
    let security = neurod::security::Security {
        token: None,
        tls: None,
        max_request_bytes: 1 << 20,
        max_concurrent_requests: 16,
    };
    let listener = rt.block_on(neurod::flight::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(neurod::flight::server(listener, state, &security).unwrap());
    let channel = connect(rt, url);

    let command = |m: Any| m.encode_to_vec();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut seed = |call: u8, payload: &[u8]| {
        let mut s = vec![call];
        s.extend_from_slice(payload);
        seeds.push(s);
    };
    seed(0, b"rig.imec0.ap");
    seed(0, br#"{"stream": "rig.imec0.ap", "from_time_s": 0.5}"#);
    seed(0, br#"{"stream": "rig.imec0.ap.spikes", "from_time_s": 0}"#);
    seed(1, b"rig.imec0.ap.spikes");
    seed(
        2,
        &command(
            CommandStatementQuery {
                query: "SELECT count(*) FROM \"rig.imec0.ap.spikes\"".into(),
                transaction_id: None,
            }
            .as_any(),
        ),
    );
    seed(2, &command(CommandGetTables::default().as_any()));
    seed(3, b"CreatePreparedStatement");

    fuzz(
        "flight_request",
        seeds,
        Scope::Process,
        sql_bound,
        |bytes| {
            let Some((&call, payload)) = bytes.split_first() else {
                return;
            };
            let mut client = FlightClient::new(channel.clone());
            let payload = payload.to_vec();
            // A live stream never ends: what comes within the first half second is enough.
            let first_answers = async move {
                match call % 4 {
                    0 => {
                        if let Ok(mut s) = client.do_get(Ticket::new(payload)).await {
                            while let Some(Ok(_)) = s.next().await {}
                        }
                    }
                    1 => {
                        let path = String::from_utf8_lossy(&payload).into_owned();
                        let _ = client
                            .get_flight_info(FlightDescriptor::new_path(vec![path]))
                            .await;
                    }
                    2 => {
                        if let Ok(info) = client
                            .get_flight_info(FlightDescriptor::new_cmd(payload))
                            .await
                        {
                            for e in info.endpoint {
                                if let Some(t) = e.ticket {
                                    if let Ok(mut s) = client.do_get(t).await {
                                        while let Some(Ok(_)) = s.next().await {}
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        let (kind, body) = payload.split_at(payload.len().min(24));
                        let action = Action::new(String::from_utf8_lossy(kind), body.to_vec());
                        if let Ok(mut s) = client.do_action(action).await {
                            while let Some(Ok(_)) = s.next().await {}
                        }
                    }
                }
            };
            let _ = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(500), first_answers).await
            });
            // The service still answers.
            let mut check = FlightClient::new(channel.clone());
            rt.block_on(async {
                let listed = tokio::time::timeout(Duration::from_secs(5), async {
                    check.list_flights(vec![]).await.map(|s| s.count())
                });
                assert!(listed.await.is_ok(), "Flight stopped answering");
            });
        },
    );
}

/// Flight `DoPut` into a daemon's `arrow_ipc` source: the messages of a pushed stream, each
/// framed in the input as `u32 header length, header, u32 body length, body` (lengths cut to
/// what the input holds), so that mutations reach the headers, the bodies and their split.
fn put_messages(bytes: &[u8]) -> Vec<arrow_flight::FlightData> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let take = |rest: &mut &[u8]| -> Vec<u8> {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            *rest = &[];
            return Vec::new();
        };
        let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
        let (part, tail) = tail.split_at(n);
        *rest = tail;
        part.to_vec()
    };
    while !rest.is_empty() && out.len() < 64 {
        let header = take(&mut rest);
        let body = take(&mut rest);
        out.push(
            arrow_flight::FlightData::new()
                .with_data_header(header)
                .with_data_body(body),
        );
    }
    out
}

fn framed(messages: &[arrow_flight::FlightData]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        for part in [&m.data_header, &m.data_body] {
            out.extend((part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn flight_do_put(rt: &tokio::runtime::Runtime) {
    use arrow_flight::{FlightClient, FlightDescriptor};
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[sources.pushed]\ntype = \"arrow_ipc\"\naddress = \"127.0.0.1:{}\"\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"pushed\"]\n",
        common::header(),
        common::free_port()
    );
    // Without a backtrace for the decoder panics it contains: symbolizing one makes the process
    // hold its debug information (~170 MB here), which is the test build's, not the input's.
    let d = common::Daemon::start_with_env(dir.path(), &config, &[("RUST_BACKTRACE", "0")]);
    let pid = d.child.id();
    let url = format!("http://127.0.0.1:{}", d.flight_port);
    let channel = connect(rt, url);
    let seeds: Vec<Vec<u8>> = [("probe", 4, 3), ("other", 1, 1)]
        .iter()
        .map(|&(id, channels, batches)| {
            let bytes = ipc_stream(id, channels, batches);
            let mut reader = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None).unwrap();
            let schema = reader.schema();
            let batches: Vec<RecordBatch> = reader.by_ref().map(Result::unwrap).collect();
            framed(&arrow_flight::utils::batches_to_flight_data(&schema, batches).unwrap())
        })
        .collect();
    let log_seen = std::cell::Cell::new(0usize);
    // The daemon's own panics are in its log (its hook logs each): arrow's decoder's are
    // contained by the source (counted), any other fails the input.
    fuzz(
        "flight_do_put",
        seeds,
        Scope::Daemon(pid),
        alloc_bound,
        |bytes| {
            let mut messages = put_messages(bytes);
            if let Some(first) = messages.first_mut() {
                first.flight_descriptor = Some(FlightDescriptor::new_path(vec!["pushed".into()]));
            }
            let mut client = FlightClient::new(channel.clone());
            let put = async move {
                let input = futures_util::stream::iter(messages.into_iter().map(Ok));
                if let Ok(mut answers) = client.do_put(input).await {
                    while let Some(Ok(_)) = answers.next().await {}
                }
            };
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), put).await });
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let new = &log[log_seen.get().min(log.len())..];
            for line in new.lines().filter(|l| l.contains("panicked")) {
                if line.contains("/arrow-") {
                    fuzz::count_contained(1);
                } else {
                    panic!("the daemon panicked: {line}");
                }
            }
            log_seen.set(log.len());
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "the daemon died"
            );
        },
    );
    drop(d);
}
