//! End-to-end tests: real TCP clients against a running source.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::array::{
    ArrayRef, FixedSizeListArray, Float64Array, Int16Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::ipc::writer::StreamWriter;

use super::stream_schema::accept_schema;
use super::{ArrowIpcSource, TYPE_NAME};
use crate::auth::Secret;
use crate::component::{ComponentError, Output, Outputs, Shutdown, SourceContext};
use crate::edge::{Inbox, Overflow, Recv};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::stream::{keys, ContinuousInfo, Layout, FRAME_INDEX, PIXELS, TIME_S};

const CHANNELS: usize = 4;

struct Harness {
    addr: SocketAddr,
    inbox: Inbox,
    metrics: ComponentMetrics,
    /// The registry `metrics` belongs to, for its rendered series.
    registry: Arc<Metrics>,
    shutdown: Shutdown,
    run: JoinHandle<Result<(), ComponentError>>,
}

fn start(max_connections: usize) -> Harness {
    start_with_token(max_connections, None)
}

fn start_with_token(max_connections: usize, token: Option<Secret>) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Metrics::new();
    let metrics = registry.component("ipc", "source", TYPE_NAME);
    let inbox = Inbox::new(10_000, metrics.clone());
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
    let source = ArrowIpcSource::new("ipc", addr, max_connections).with_token(token);
    let run = std::thread::spawn(move || source.run_on(listener, ctx));
    Harness {
        addr,
        inbox,
        metrics,
        registry,
        shutdown,
        run,
    }
}

impl Harness {
    /// Receives batches until `rows` rows have arrived (or 10 s pass).
    fn collect_rows(&self, rows: usize) -> Vec<RecordBatch> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut n = 0;
        while n < rows && Instant::now() < deadline {
            if let Recv::Data(b) = self.inbox.recv_timeout(Duration::from_millis(50)) {
                n += b.num_rows();
                got.push(b.into_record_batch());
            }
        }
        assert_eq!(n, rows, "rows received before the deadline");
        got
    }

    fn wait_errors(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metrics.errors_total() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(self.metrics.errors_total(), n);
    }

    /// Triggers shutdown and checks that `run` returns within a second.
    fn stop(self) -> Inbox {
        let t = Instant::now();
        self.shutdown.trigger();
        while !self.run.is_finished() {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "run did not return within a second of shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.run.join().unwrap().unwrap();
        self.inbox
    }
}

fn continuous_schema(stream_id: Option<&str>, rate: Option<&str>) -> Arc<Schema> {
    let mut fields = vec![Field::new("sample_index", DataType::Int64, false)];
    for c in 0..CHANNELS {
        fields.push(
            Field::new(format!("AP{c}"), DataType::Int16, false).with_metadata(HashMap::from([(
                keys::CHANNEL_KIND.to_string(),
                "ap".to_string(),
            )])),
        );
    }
    let mut md = HashMap::from([(keys::STREAM_KIND.to_string(), "ap".to_string())]);
    if let Some(id) = stream_id {
        md.insert(keys::STREAM_ID.into(), id.into());
    }
    if let Some(rate) = rate {
        md.insert(keys::SAMPLING_HZ.into(), rate.into());
    }
    Arc::new(Schema::new_with_metadata(fields, md))
}

/// A value per (sample, channel) that differs across both, negative values included.
fn value(sample: i64, channel: usize) -> i16 {
    ((sample * 37 + channel as i64 * 1009) % 65_536 - 32_768) as i16
}

fn continuous_batch(schema: &Arc<Schema>, indices: Vec<i64>) -> RecordBatch {
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in 0..CHANNELS {
        columns.push(Arc::new(Int16Array::from_iter_values(
            indices.iter().map(|&s| value(s, c)),
        )));
    }
    columns.insert(0, Arc::new(Int64Array::from(indices)));
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn ipc_bytes(schema: &Schema, batches: &[RecordBatch], finish: bool) -> Vec<u8> {
    let mut w = StreamWriter::try_new(Vec::new(), schema).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    if finish {
        w.finish().unwrap();
    }
    w.into_inner().unwrap()
}

/// Reads the one line the source writes before closing a connection.
fn read_reply(stream: &TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line
}

fn send_and_read_reply(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(NetShutdown::Write).unwrap();
    read_reply(&s)
}

#[test]
fn good_stream_flows_completely_while_bad_clients_are_rejected() {
    let h = start(16);
    let addr = h.addr;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    const BATCHES: i64 = 20;
    const ROWS: i64 = 100;
    let good = std::thread::spawn(move || {
        let schema = continuous_schema(Some("probe0"), Some("29999.757983"));
        let mut w = StreamWriter::try_new(TcpStream::connect(addr).unwrap(), &schema).unwrap();
        for b in 0..BATCHES {
            if b == BATCHES / 2 {
                // Let the bad clients in while this connection is mid-stream.
                ready_tx.send(()).unwrap();
                resume_rx.recv().unwrap();
            }
            w.write(&continuous_batch(
                &schema,
                (b * ROWS..(b + 1) * ROWS).collect(),
            ))
            .unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap();
    });
    ready_rx.recv().unwrap();

    let garbage = send_and_read_reply(addr, b"GET /metrics HTTP/1.1\r\nHost: neurod\r\n\r\n");
    assert!(
        garbage.starts_with("error: ") && garbage.contains("not an Arrow IPC stream"),
        "{garbage}"
    );

    let schema = continuous_schema(Some("cut"), Some("30000"));
    let schema_only = ipc_bytes(&schema, &[], false);
    let whole = ipc_bytes(
        &schema,
        &[continuous_batch(&schema, (0..50).collect())],
        false,
    );
    let cut = schema_only.len() + (whole.len() - schema_only.len()) / 2;
    let truncated = send_and_read_reply(addr, &whole[..cut]);
    assert!(
        truncated.contains("ended in the middle of a message"),
        "{truncated}"
    );

    let no_rate = continuous_schema(Some("norate"), None);
    let reply = send_and_read_reply(
        addr,
        &ipc_bytes(&no_rate, &[continuous_batch(&no_rate, vec![0, 1])], true),
    );
    assert!(
        reply.starts_with("error: ") && reply.contains("neurod.sampling_hz"),
        "{reply}"
    );
    h.wait_errors(3);
    resume_tx.send(()).unwrap();
    good.join().unwrap();

    let batches = h.collect_rows((BATCHES * ROWS) as usize);
    let mut expected_index = 0i64;
    for b in &batches {
        let md = b.schema_ref().metadata();
        assert_eq!(md[keys::STREAM_ID], "ipc.probe0");
        assert_eq!(md[keys::SAMPLING_HZ], "29999.757983");
        assert_eq!(md[keys::LAYOUT], "continuous");
        assert_eq!(b.schema_ref().field(1).metadata()[keys::CHANNEL_KIND], "ap");
        let idx = b.column(0).as_primitive::<Int64Type>();
        for (row, &s) in idx.values().iter().enumerate() {
            assert_eq!(s, expected_index);
            for c in 0..CHANNELS {
                let ch = b
                    .column(c + 1)
                    .as_primitive::<arrow::datatypes::Int16Type>();
                assert_eq!(ch.value(row), value(s, c), "sample {s} channel {c}");
            }
            expected_index += 1;
        }
    }
    assert_eq!(expected_index, BATCHES * ROWS);
    assert_eq!(h.metrics.sent_rows(), (BATCHES * ROWS) as u64);
    assert_eq!(h.metrics.errors_total(), 3, "only the three bad clients");
    let last = h.metrics.status().last_error.unwrap_or_default();
    assert!(last.contains("peer 127.0.0.1:"), "{last}");
    let inbox = h.stop();
    assert!(
        matches!(inbox.recv_timeout(Duration::from_secs(1)), Recv::Closed),
        "the port ends when run returns"
    );
}

#[test]
fn with_a_token_only_clients_that_send_it_first_get_their_stream_through() {
    let h = start_with_token(16, Some(Secret::new("rig-token-1")));
    let schema = continuous_schema(Some("authed"), Some("30000"));
    let stream = ipc_bytes(
        &schema,
        &[continuous_batch(&schema, (0..10).collect())],
        true,
    );
    let with_line = |line: &[u8]| [line, &stream[..]].concat();

    let reply = send_and_read_reply(h.addr, &stream);
    assert!(
        reply.starts_with("error: ") && reply.contains("unauthorized") && reply.contains("AUTH"),
        "{reply}"
    );
    let reply = send_and_read_reply(h.addr, &with_line(b"AUTH rig-token-2\n"));
    assert!(reply.contains("unauthorized: wrong token"), "{reply}");
    assert!(!reply.contains("rig-token"), "no token echoed: {reply}");
    h.wait_errors(2);
    let series = r#"error_type="unauthorized",stage="receiving"} 2"#;
    assert!(
        h.registry.render().contains(series),
        "{}",
        h.registry.render()
    );

    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(&with_line(b"AUTH rig-token-1\r\n")).unwrap();
    let batches = h.collect_rows(10);
    assert_eq!(
        batches[0].schema_ref().metadata()[keys::STREAM_ID],
        "ipc.authed"
    );
    assert_eq!(
        h.metrics.errors_total(),
        2,
        "the authorized stream is not an error"
    );
    drop(s);
    h.stop();
}

#[test]
fn non_increasing_sample_index_closes_the_connection_keeping_earlier_batches() {
    let h = start(16);
    let schema = continuous_schema(None, Some("30000"));
    // Across batches: 0..10 is delivered, then 5..15 repeats samples.
    let across = [
        continuous_batch(&schema, (0..10).collect()),
        continuous_batch(&schema, (5..15).collect()),
        continuous_batch(&schema, (15..25).collect()),
    ];
    let reply = send_and_read_reply(h.addr, &ipc_bytes(&schema, &across, true));
    assert!(
        reply.contains("batch starts at sample 5, but samples up to 9 were already received"),
        "{reply}"
    );
    let delivered = h.collect_rows(10);
    assert_eq!(
        delivered[0].schema_ref().metadata()[keys::STREAM_ID],
        "ipc.0",
        "no client id: the connection number"
    );
    // Within a batch: a repeated index.
    let within = [continuous_batch(&schema, vec![0, 1, 1, 2])];
    let reply = send_and_read_reply(h.addr, &ipc_bytes(&schema, &within, true));
    assert!(
        reply.contains("must be consecutive: 1 (row 2 of the batch) follows 1"),
        "{reply}"
    );
    h.wait_errors(2);
    assert_eq!(h.metrics.sent_rows(), 10);
    let inbox = h.stop();
    assert!(matches!(
        inbox.recv_timeout(Duration::from_millis(100)),
        Recv::Closed
    ));
}

#[test]
fn shutdown_ends_run_within_a_second_with_silent_and_half_sent_clients() {
    let h = start(16);
    let _silent = TcpStream::connect(h.addr).unwrap();
    let schema = continuous_schema(Some("slow"), Some("30000"));
    let whole = ipc_bytes(
        &schema,
        &[continuous_batch(&schema, (0..100).collect())],
        false,
    );
    let mut half = TcpStream::connect(h.addr).unwrap();
    half.write_all(&whole[..whole.len() - 7]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    h.stop();
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let h = start(1);
    let schema = continuous_schema(Some("first"), Some("30000"));
    let mut first = StreamWriter::try_new(TcpStream::connect(h.addr).unwrap(), &schema).unwrap();
    first
        .write(&continuous_batch(&schema, (0..10).collect()))
        .unwrap();
    first.flush().unwrap();
    h.collect_rows(10);
    let second = TcpStream::connect(h.addr).unwrap();
    let reply = read_reply(&second);
    assert!(
        reply.starts_with("error: ") && reply.contains("max_connections"),
        "{reply}"
    );
    h.wait_errors(1);
    // The first connection is unaffected.
    first
        .write(&continuous_batch(&schema, (10..20).collect()))
        .unwrap();
    first.finish().unwrap();
    let more = h.collect_rows(10);
    assert_eq!(more[0].column(0).as_primitive::<Int64Type>().value(0), 10);
    h.stop();
}

#[test]
fn a_schema_that_makes_arrow_panic_is_a_counted_error() {
    // A decimal precision over 255 is a valid flatbuffer that arrow-ipc's schema
    // conversion unwraps into a panic.
    let schema = Schema::new_with_metadata(
        vec![Field::new("d", DataType::Decimal128(37, 5), false)],
        HashMap::from([(keys::LAYOUT.to_string(), "table".to_string())]),
    );
    let mut bytes = ipc_bytes(&schema, &[], true);
    let at: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [37, 0, 0, 0])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "precision must appear once in {bytes:?}");
    bytes[at[0]..at[0] + 4].copy_from_slice(&300i32.to_le_bytes());
    let h = start(16);
    let reply = send_and_read_reply(h.addr, &bytes);
    assert!(reply.contains("decoder could not handle"), "{reply}");
    h.wait_errors(1);
    h.stop();
}

#[test]
fn a_batch_buffer_outside_the_message_body_is_refused_before_arrow_decodes_it() {
    // Found by fuzzing: arrow's decoder slices buffers without checking them against the body,
    // and panics. 13 rows make the sample_index buffer (offset 0, 104 bytes) unique.
    let schema = continuous_schema(Some("p"), Some("30000"));
    let mut bytes = ipc_bytes(
        &schema,
        &[continuous_batch(&schema, (0..13).collect())],
        true,
    );
    let mut buffer = 0i64.to_le_bytes().to_vec();
    buffer.extend(104i64.to_le_bytes());
    let at: Vec<usize> = bytes
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == buffer.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the buffer must appear once");
    bytes[at[0]..at[0] + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    let h = start(16);
    let reply = send_and_read_reply(h.addr, &bytes);
    // Refused by the framing's own check, not by the guard around arrow's decoder.
    assert!(reply.contains("lies outside the message body"), "{reply}");
    assert!(!reply.contains("decoder could not handle"), "{reply}");
    h.wait_errors(1);
    h.stop();
}

#[test]
fn frames_schema_checks_shape_and_types() {
    let frames = |item: DataType, size: i32, h: &str, w: &str| {
        Schema::new_with_metadata(
            vec![
                Field::new(FRAME_INDEX, DataType::Int64, false),
                Field::new(TIME_S, DataType::Float64, false),
                Field::new(
                    PIXELS,
                    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), size),
                    false,
                ),
            ],
            HashMap::from([
                (keys::LAYOUT.to_string(), "frames".to_string()),
                (keys::HEIGHT.to_string(), h.to_string()),
                (keys::WIDTH.to_string(), w.to_string()),
            ]),
        )
    };
    let ok = accept_schema("cam", 2, &frames(DataType::Int16, 12, "3", "4")).unwrap();
    assert_eq!(ok.layout, Layout::Frames);
    assert_eq!(ok.stream_id, "cam.2");
    let e = accept_schema("cam", 0, &frames(DataType::Int16, 12, "3", "5")).unwrap_err();
    assert!(e.to_string().contains("3×5"), "{e}");
    // What motion_correct and roi_traces would refuse batch after batch is refused here.
    for item in [DataType::UInt16, DataType::Int32] {
        let e = accept_schema("cam", 0, &frames(item, 12, "3", "4")).unwrap_err();
        assert!(e.to_string().contains("FixedSizeList<Int16>"), "{e}");
    }
    let e = accept_schema("cam", 0, &frames(DataType::Int16, 12, "3", "0")).unwrap_err();
    assert!(e.to_string().contains("3 × 0"), "{e}");
    let e = accept_schema(
        "cam",
        0,
        &frames(DataType::Int16, 12, "4294967296", "4294967296"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");

    // Frames go through end to end, with the client's id.
    let mut schema = frames(DataType::Int16, 4, "2", "2");
    schema
        .metadata
        .insert(keys::STREAM_ID.into(), "2p/plane 0".into());
    let schema = Arc::new(schema);
    let pixels = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Int16, false)),
        4,
        Arc::new(Int16Array::from(vec![1, 2, 3, 4, -5, -6, -7, -8])),
        None,
    )
    .unwrap();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![0, 1])),
            Arc::new(Float64Array::from(vec![0.0, 0.033])),
            Arc::new(pixels),
        ],
    )
    .unwrap();
    let h = start(16);
    let reply = send_and_read_reply(
        h.addr,
        &ipc_bytes(&schema, std::slice::from_ref(&batch), true),
    );
    assert_eq!(reply, "", "a valid stream gets no reply");
    let got = h.collect_rows(2);
    assert_eq!(
        got[0].schema_ref().metadata()[keys::STREAM_ID],
        "ipc.2p/plane 0"
    );
    assert_eq!(got[0].columns(), batch.columns());
    assert_eq!(h.metrics.errors_total(), 0);
    h.stop();
}

/// Runs `examples/push_ipc.py` against the source with the peers' Python (pyarrow, numpy).
#[test]
fn python_example_pushes_a_stream_the_source_accepts() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/push_ipc.py");
    // The peers' Python from scripts/test.sh; CI must have it, elsewhere a skip says so.
    let Some(python) = std::env::var_os("NEUROD_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs scripts/test.sh, which sets NEUROD_PYTHON"
        );
        eprintln!("SKIPPED: NEUROD_PYTHON not set; {script} not exercised");
        return;
    };
    // With a token, so that the example's AUTH line is exercised too.
    let h = start_with_token(16, Some(Secret::new("py-token")));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("rig.token");
    std::fs::write(&token_file, "py-token\n").unwrap();
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--address", &h.addr.to_string(), "--stream-id", "py rig"])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--seconds", "0.5", "--rate", "30000.5", "--no-pace"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batches = h.collect_rows(15_000);
    let schema = batches[0].schema();
    assert_eq!(schema.fields().len(), 385);
    assert_eq!(schema.metadata()[keys::STREAM_ID], "ipc.py rig");
    let info = ContinuousInfo::from_schema(&schema).unwrap();
    assert_eq!(info.sampling_hz_text, "30000.5");
    assert_eq!(info.channels[0].x_um, Some(43.0));
    assert_eq!(info.channels[383].y_um, Some(20.0 * 191.0));
    assert_eq!(info.channels[7].uv_per_bit, Some(2.34375));
    let mut next = 0;
    for b in &batches {
        for &s in b.column(0).as_primitive::<Int64Type>().values() {
            assert_eq!(s, next);
            next += 1;
        }
    }
    assert_eq!(h.metrics.errors_total(), 0);
    h.stop();
}
