//! Arrow Flight and Flight SQL against a running daemon, through the Python examples
//! (pyarrow.flight, adbc_driver_flightsql): a live spike subscription gets every row the store
//! gets, a pushed stream comes back through a past-time `DoGet` without gap or repeat and
//! through Flight SQL exactly as `neurod sql` reads it from disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{header, neurod, python, run_python, wait_for, Daemon};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn run_example(py: &Path, name: &str, args: &[&str]) -> String {
    let script = example(name).display().to_string();
    let mut all = vec![script.as_str()];
    all.extend_from_slice(args);
    common::run_script(py, name, &all)
}

fn address(d: &Daemon) -> String {
    format!("grpc://127.0.0.1:{}", d.flight_port)
}

#[test]
fn a_flight_subscriber_gets_every_spike_the_store_gets_in_order() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
duration_s = 8
pace = "realtime"
twophoton = false

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"
calibration_s = 0.5

[sinks.store]
type = "store"
inputs = ["spikes"]
flush_interval_s = 0.5
"#,
        header()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let stream = "rig.imec0.ap.spikes";
    wait_for(Duration::from_secs(60), "the spike stream", || {
        // Quoted: `<id>.progress` appears first.
        d.get("/streams")
            .contains(&format!("\"{stream}\""))
            .then_some(())
    });
    let addr = address(&d);
    // ListFlights and GetFlightInfo describe it, with its schema and a ticket.
    let listed = run_python(
        &py,
        r#"
import sys, pyarrow.flight as fl
client = fl.connect(sys.argv[1])
paths = [tuple(p.decode() for p in f.descriptor.path) for f in client.list_flights()]
assert (sys.argv[2],) in paths, paths
info = client.get_flight_info(fl.FlightDescriptor.for_path(sys.argv[2]))
assert "sample_index" in info.schema.names and "channel" in info.schema.names, info.schema
assert info.endpoints and info.endpoints[0].ticket.ticket, info
print(len(paths), info.schema.names)
"#,
        &[&addr, stream],
    );
    eprintln!("listed: {listed}");
    let out = dir.path().join("live.arrow");
    let out_s = out.display().to_string();
    run_example(
        &py,
        "flight_subscribe.py",
        &[
            "--address",
            &addr,
            "--stream",
            stream,
            "--seconds",
            "3",
            "--out",
            &out_s,
        ],
    );
    let status = d.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{}", d.log_text());
    let store = dir.path().join("data/store").join(stream);
    let checked = run_python(
        &py,
        r#"
import sys, pyarrow as pa, pyarrow.dataset as ds, pyarrow.compute as pc
live = pa.ipc.open_file(sys.argv[1]).read_all()
assert live.num_rows > 0, "the subscription got no spikes"
stored = ds.dataset(sys.argv[2], format="parquet").to_table()
stored = stored.sort_by([("sample_index", "ascending"), ("channel", "ascending")])
lo, hi = pc.min(live["sample_index"]).as_py(), pc.max(live["sample_index"]).as_py()
# The subscription covers whole batches: the stored rows of its range, in the same order.
mask = pc.and_(pc.greater_equal(stored["sample_index"], lo), pc.less_equal(stored["sample_index"], hi))
want = stored.filter(mask)
got = live.select(want.column_names)
assert got.num_rows == want.num_rows, (got.num_rows, want.num_rows)
for c in ["sample_index", "channel"]:
    assert got[c].to_pylist() == want[c].to_pylist(), c
print(got.num_rows)
"#,
        &[&out.display().to_string(), &store.display().to_string()],
    );
    eprintln!("spikes received live and stored: {checked}");
}

/// A stream pushed with `DoPut`: read from time 0 while it is still arriving (stored, then
/// retained, then live rows), then through Flight SQL, compared with `neurod sql` on disk.
#[test]
fn a_pushed_stream_reads_back_from_the_past_without_gap_and_through_flight_sql() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}
[daemon.sql]
window_s = 30

[sources.ipc]
type = "arrow_ipc"
address = "127.0.0.1:{ipc}"

[sinks.store]
type = "store"
inputs = ["ipc"]
flush_interval_s = 0.5
"#,
        header(),
        ipc = common::free_port()
    );
    let d = Daemon::start(dir.path(), &config);
    let addr = address(&d);
    // Rejections name the problem: an unknown source.
    let err = std::process::Command::new(&py)
        .arg(example("flight_put.py"))
        .args(["--address", &addr, "--source", "nope", "--seconds", "0.1"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("nope") && stderr.contains("ipc"),
        "{stderr}"
    );

    // 6 s of 1 kHz, paced: the past-time reader below starts in the middle.
    let rate = 1000;
    let seconds = 6;
    let total = rate * seconds;
    let pusher = std::process::Command::new(&py)
        .arg(example("flight_put.py"))
        .args(["--address", &addr, "--source", "ipc", "--stream-id", "rig1"])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args(["--batch-ms", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stream = "ipc.rig1";
    wait_for(Duration::from_secs(30), "the pushed stream", || {
        // Quoted: `<id>.progress` appears first.
        d.get("/streams")
            .contains(&format!("\"{stream}\""))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let past = dir.path().join("past.arrow");
    let past_s = past.display().to_string();
    // Ends once every pushed row has arrived (or after a generous limit).
    let reader = std::process::Command::new(&py)
        .arg("-c")
        .arg(
            r#"
import json, sys, time, pyarrow as pa, pyarrow.flight as flight
client = flight.connect(sys.argv[1])
r = client.do_get(flight.Ticket(json.dumps({"stream": sys.argv[2], "from_time_s": 0}).encode()))
total, deadline, batches, rows = int(sys.argv[4]), time.monotonic() + 120, [], 0
for chunk in r:
    batches.append(chunk.data); rows += chunk.data.num_rows
    if rows >= total or time.monotonic() > deadline:
        break
with pa.ipc.new_file(sys.argv[3], batches[0].schema) as w:
    for b in batches: w.write_batch(b)
"#,
        )
        .args([addr.as_str(), stream, past_s.as_str(), &total.to_string()])
        .output()
        .unwrap();
    assert!(
        reader.status.success(),
        "{}",
        String::from_utf8_lossy(&reader.stderr)
    );
    let pushed = pusher.wait_with_output().unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let seen = run_python(
        &py,
        r#"
import sys, pyarrow as pa
t = pa.ipc.open_file(sys.argv[1]).read_all()
idx = t["sample_index"].to_pylist()
assert idx == list(range(int(sys.argv[2]))), (len(idx), idx[:3], idx[-3:])
print(len(idx))
"#,
        &[&past_s, &total.to_string()],
    );
    assert_eq!(seen.trim(), total.to_string());

    // Through Flight SQL, once the store holds every row.
    let query = format!("SELECT sample_index, ch0, ch3 FROM \"{stream}\" ORDER BY sample_index");
    let count = format!("SELECT count(*) AS n FROM \"{stream}\"");
    let counted = dir.path().join("count.arrow").display().to_string();
    wait_for(Duration::from_secs(30), "every row stored", || {
        run_example(
            &py,
            "flight_sql_query.py",
            &["--uri", &addr, &count, "--out", &counted],
        );
        let n = run_python(
            &py,
            "import sys, pyarrow as pa; print(pa.ipc.open_file(sys.argv[1]).read_all()['n'][0])",
            &[&counted],
        );
        (n.trim() == total.to_string()).then_some(())
    });
    let via_flight = dir.path().join("sql.arrow").display().to_string();
    run_example(
        &py,
        "flight_sql_query.py",
        &["--uri", &addr, &query, "--out", &via_flight],
    );
    d.signal("TERM");
    let mut d = d;
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    let csv = neurod()
        .args(["sql", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--format", "csv", &query])
        .output()
        .unwrap();
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let csv_path = dir.path().join("sql.csv");
    std::fs::write(&csv_path, &csv.stdout).unwrap();
    let same = run_python(
        &py,
        r#"
import sys, pyarrow as pa, pyarrow.csv as csv
flight_t = pa.ipc.open_file(sys.argv[1]).read_all()
disk = csv.read_csv(sys.argv[2])
assert flight_t.column_names == disk.column_names, (flight_t.column_names, disk.column_names)
assert flight_t.num_rows == disk.num_rows == int(sys.argv[3]), (flight_t.num_rows, disk.num_rows)
for c in flight_t.column_names:
    assert flight_t[c].to_pylist() == disk[c].to_pylist(), c
print(flight_t.num_rows)
"#,
        &[
            &via_flight,
            &csv_path.display().to_string(),
            &total.to_string(),
        ],
    );
    assert_eq!(same.trim(), total.to_string());
}
