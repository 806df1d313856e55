//! SQL over live and stored streams, through the binary: `POST /sql` during a run sees rows
//! from the last second with none missing or doubled at the seam between memory and disk, and
//! `neurod sql` on the stored files agrees with pyarrow computing the same from the Parquet.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{neurod, python, run_python, wait_for, Daemon};

/// POST `body` to `path`; the status code and the response body.
fn http_post(port: u16, path: &str, body: &str, accept: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let code = head[9..12].parse().unwrap();
    // The body may be chunked: undo it for the small bodies these tests read.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(rest)
    } else {
        rest.to_string()
    };
    (code, body)
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The rows of a JSON query result.
fn sql_json(port: u16, query: &str) -> Vec<serde_json::Value> {
    let (code, body) = http_post(port, "/sql", query, "application/json");
    assert_eq!(code, 200, "{query}: {body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn int(v: &serde_json::Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("{key} in {v}"))
}

const CONFIG: &str = r#"
[daemon]
data_dir = "{dir}/data"
listen = "127.0.0.1:{port}"

[daemon.sql]
window_s = 10

[sources.rig]
type = "simulated"
seed = 3
probes = 1
pace = "realtime"
duration_s = 0

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"

# Short files, so that a run holds finished Parquet files, a live segment and rows only in
# memory at once.
[sinks.store]
type = "store"
inputs = ["rig", "spikes"]
flush_interval_s = 0.5
rotate_s = 2
"#;

const RAW: &str = "rig.imec0.ap";
const SPIKES: &str = "rig.imec0.ap.spikes";

/// One look during the run: every raw sample so far exactly once, the newest within a second of
/// the newest the hub has seen.
fn check_live(d: &Daemon) {
    let streams: serde_json::Value = serde_json::from_str(&d.get("/streams")).unwrap();
    let hub_last = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == RAW)
        .and_then(|s| s["last_sample_index"].as_i64())
        .unwrap();
    let rows = sql_json(
        d.port,
        &format!(
            "SELECT count(*) AS n, min(sample_index) AS lo, max(sample_index) AS hi, \
             count(DISTINCT sample_index) AS distinct_n FROM \"{RAW}\""
        ),
    );
    let r = &rows[0];
    let (n, lo, hi, distinct_n) = (
        int(r, "n"),
        int(r, "lo"),
        int(r, "hi"),
        int(r, "distinct_n"),
    );
    assert_eq!(lo, 0, "{r}");
    assert_eq!(n, hi + 1, "a sample missing or doubled at the seam: {r}");
    assert_eq!(distinct_n, n, "{r}");
    assert!(
        hi >= hub_last - 30_000,
        "SQL's newest sample {hi} is over a second behind the hub's {hub_last}"
    );
}

#[test]
fn sql_sees_live_rows_without_gaps_and_stored_rows_match_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), CONFIG);
    let store = dir.path().join("data/store");
    // Wait for a finished file of the raw stream, then look three times as files rotate.
    wait_for(Duration::from_secs(60), "a finished raw file", || {
        let raw = store.join(RAW);
        std::fs::read_dir(raw)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("part-"))
            .then_some(())
    });
    for _ in 0..3 {
        check_live(&d);
        std::thread::sleep(Duration::from_millis(700));
    }
    // The registry and the topology as tables.
    let streams = sql_json(
        d.port,
        "SELECT name, live FROM streams WHERE name IN ('rig.imec0.ap', 'rig.imec0.ap.spikes') ORDER BY name",
    );
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(streams.iter().all(|s| s["live"] == true), "{streams:?}");
    let comps = sql_json(d.port, "SELECT id, state FROM components ORDER BY id");
    let ids: Vec<&str> = comps.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["rig", "spikes", "store"], "{comps:?}");
    // Errors name the problem, with the status that says it.
    let (code, body) = http_post(d.port, "/sql", "SELECT * FROM nosuch", "text/plain");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nosuch"), "{body}");

    d.signal("INT");
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    let Some(py) = python() else {
        return;
    };
    compare_with_pyarrow(&py, &dir.path().join("data"));
}

/// `neurod sql` on the stored files against pyarrow on the same Parquet files.
fn compare_with_pyarrow(py: &Path, data: &Path) {
    let ours = |query: &str| -> String {
        let out = neurod()
            .args(["sql", "--format", "csv", "--data-dir"])
            .arg(data)
            .arg(query)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let per_channel = ours(&format!(
        "SELECT channel, count(*) AS n, sum(amplitude_uv) AS s FROM \"{SPIKES}\" \
         GROUP BY channel ORDER BY channel"
    ));
    let window = ours(&format!(
        "SELECT count(*) AS n, sum(\"AP0\") AS a0, sum(\"AP200\") AS a200, min(sample_index) AS lo \
         FROM \"{RAW}\" WHERE time_s >= 1.5 AND time_s < 2.5"
    ));
    let code = r#"
import sys, glob, pyarrow.parquet as pq, pyarrow.compute as pc
store = sys.argv[1]
def table(stream):
    files = sorted(glob.glob(f"{store}/{stream}/part-*.parquet"))
    return pq.ParquetDataset(files).read()
sp = table("rig.imec0.ap.spikes")
g = sp.group_by("channel").aggregate([("channel", "count"), ("amplitude_uv", "sum")]).sort_by("channel")
print("channel,n,s")
for c, n, s in zip(g["channel"].to_pylist(), g["channel_count"].to_pylist(), g["amplitude_uv_sum"].to_pylist()):
    print(f"{c},{n},{s!r}")
raw = table("rig.imec0.ap")
t = pc.divide(pc.cast(raw["sample_index"], "float64"), 30000.0)
w = raw.filter(pc.and_(pc.greater_equal(t, 1.5), pc.less(t, 2.5)))
print("---")
print(w.num_rows, pc.sum(w["AP0"]).as_py(), pc.sum(w["AP200"]).as_py(), pc.min(w["sample_index"]).as_py())
"#;
    let store = data.join("store");
    let theirs = run_python(py, code, &[store.to_str().unwrap()]);
    let (their_channels, their_window) = theirs.split_once("---\n").unwrap();
    // Sums of f32 in another order may differ in the last digits: compare counts exactly and
    // sums to 1e-4 relative.
    let parse = |text: &str| -> Vec<(i64, i64, f64)> {
        text.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (parse(&per_channel), parse(their_channels));
    assert!(a.len() > 100, "spikes on most channels: {}", a.len());
    assert_eq!(a.len(), b.len());
    for ((c1, n1, s1), (c2, n2, s2)) in a.iter().zip(&b) {
        assert_eq!((c1, n1), (c2, n2));
        assert!(
            (s1 - s2).abs() <= 1e-4 * s2.abs().max(1.0),
            "{c1}: {s1} vs {s2}"
        );
    }
    let ours_window: Vec<String> = window
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let theirs_window: Vec<String> = their_window
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(ours_window, theirs_window);
    assert_eq!(ours_window[0], "30000", "one second of samples");
}

#[test]
fn row_limit_and_bad_queries_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A small stored run to query.
    let config = CONFIG
        .replace("duration_s = 0", "duration_s = 1")
        .replace("pace = \"realtime\"", "pace = \"max\"");
    common::run_to_end(dir.path(), &config, Duration::from_secs(120));
    let sql = |args: &[&str]| {
        neurod()
            .args(["sql", "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let out = sql(&["--max-rows", "1000", &format!("SELECT * FROM \"{RAW}\"")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 1000 rows"), "{err}");
    let out = sql(&["SELEC 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error:"),
        "{out:?}"
    );
    // Statements from standard input, each printed.
    let mut child = neurod()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("SELECT count(*) AS n FROM \"{RAW}\"; SELECT 1 AS one;").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["n", "30000", "one", "1"],
        "{text}"
    );
}
