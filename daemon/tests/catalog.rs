//! The store catalog through the binary: reversible stream directory names, `neurod ls`, and
//! exactly-once storage of a followed recording across a reload and a `kill -9`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int16Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use common::{
    check_exact, neurod, neurod_json, python, real_ap_meta, sample_bytes, shared_data, wait_for,
    write_meta, Daemon,
};

/// `neurod ls --json` of a directory, parsed.
fn ls_json(dir: &Path) -> Vec<serde_json::Value> {
    use std::ffi::OsStr;
    let args = [
        OsStr::new("ls"),
        OsStr::new("--json"),
        OsStr::new("--data-dir"),
    ];
    let v = neurod_json(&[&args[..], &[dir.as_os_str()]].concat());
    v.as_array().cloned().unwrap_or_default()
}

/// Pushes `batches` batches of 100 samples of a 1-channel continuous stream named `client_id`.
fn push(port: u16, client_id: &str, batches: i64) {
    let mut md = std::collections::HashMap::new();
    md.insert("neurod.sampling_hz".to_string(), "1000".to_string());
    md.insert("neurod.stream_id".to_string(), client_id.to_string());
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("c0", DataType::Int16, false),
        ],
        md,
    ));
    let conn = wait_for(Duration::from_secs(10), "the IPC listener", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let mut w = StreamWriter::try_new(conn, &schema).unwrap();
    for b in 0..batches {
        let idx: ArrayRef = Arc::new(Int64Array::from_iter_values(b * 100..(b + 1) * 100));
        let c0: ArrayRef = Arc::new(Int16Array::from_iter_values((0..100).map(|i| i as i16)));
        w.write(&RecordBatch::try_new(schema.clone(), vec![idx, c0]).unwrap())
            .unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn ids_that_sanitised_alike_are_stored_apart_and_listed_by_ls() {
    let dir = tempfile::tempdir().unwrap();
    let ipc_port = common::free_port();
    let config = format!(
        r#"{}
[sources.ipc]
type = "arrow_ipc"
address = "127.0.0.1:{ipc_port}"
[sinks.store]
type = "store"
inputs = ["ipc"]
flush_interval_s = 0.2
"#,
        common::header()
    );
    let mut d = Daemon::start(dir.path(), &config);
    push(ipc_port, "a/b", 3);
    push(ipc_port, "a_b", 5);
    let rows = r#"neurod_component_received_rows_total{component_id="store""#;
    wait_for(Duration::from_secs(20), "both streams in the store", || {
        d.metric(rows).filter(|v| *v >= 800.0)
    });
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        d.log_text()
    );

    let store = dir.path().join("data/store");
    assert!(store.join("ipc.a%2Fb").is_dir() && store.join("ipc.a_b").is_dir());
    let listed = ls_json(&dir.path().join("data"));
    let got: Vec<(&str, u64, i64)> = listed
        .iter()
        .map(|s| {
            (
                s["stream_id"].as_str().unwrap(),
                s["rows"].as_u64().unwrap(),
                s["last_index"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("ipc.a/b", 300, 299), ("ipc.a_b", 500, 499)]);
    for s in &listed {
        assert_eq!(s["layout"], "continuous");
        assert_eq!(s["sampling_hz"], "1000");
        assert_eq!(s["files"].as_array().unwrap().len(), 1);
    }
    // The same catalog from one store's directory, and as text.
    assert_eq!(ls_json(&store).len(), 2);
    let out = neurod()
        .args(["ls", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ipc.a/b") && text.contains("ipc.a_b"),
        "{text}"
    );
}

/// Appends samples `from..to` to the `.bin` in pieces that split samples, as SpikeGLX does.
fn append_slowly(bin: &Path, from: usize, to: usize) {
    let mut f = std::fs::OpenOptions::new().append(true).open(bin).unwrap();
    for piece in sample_bytes(from, to).chunks(770 * 400 + 17) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn followed_spikeglx_is_stored_exactly_once_across_a_reload_and_a_kill_9() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = "live_g0_t0.imec0";
    let real = real_ap_meta(&data);
    // SpikeGLX has started: a meta without fileSizeBytes and an empty .bin.
    write_meta(dir.path(), name, &real, None);
    let bin = dir.path().join(format!("{name}.ap.bin"));
    std::fs::write(&bin, b"").unwrap();
    let config = format!(
        r#"{}
[sources.live]
type = "spikeglx"
path = "{}"
follow = true
[sinks.store]
type = "store"
inputs = ["live"]
flush_interval_s = 0.2
"#,
        common::header(),
        bin.display()
    );
    let sent = r#"neurod_component_sent_rows_total{component_id="live""#;
    let d = Daemon::start(dir.path(), &config);
    append_slowly(&bin, 0, 8000);
    wait_for(Duration::from_secs(30), "the first part to be sent", || {
        d.metric(sent).filter(|v| *v >= 8000.0)
    });

    // A reload that changes the source restarts it (unchanged components keep running).
    let written = dir.path().join("neurod.toml");
    let changed = std::fs::read_to_string(&written)
        .unwrap()
        .replace("follow = true", "follow = true\npoll_ms = 6");
    std::fs::write(&written, changed).unwrap();
    d.signal("HUP");
    wait_for(Duration::from_secs(30), "the reload", || {
        d.log_text().contains("reloaded").then_some(())
    });
    append_slowly(&bin, 8000, 16000);
    wait_for(
        Duration::from_secs(30),
        "the second part to be sent",
        || d.metric(sent).filter(|v| *v >= 8000.0),
    );
    // Let a few flushes make some of it durable, then crash.
    std::thread::sleep(Duration::from_millis(1000));
    let first_log = d.log_text();
    d.signal("KILL");
    drop(d);

    // Restart (what systemd does); SpikeGLX goes on writing, then completes the meta.
    let mut d = Daemon::start(dir.path(), &config);
    append_slowly(&bin, 16000, 24000);
    write_meta(dir.path(), name, &real, Some(24000));
    let status = d.wait_exit(Duration::from_secs(60));
    let log = d.log_text();
    assert!(status.success(), "{first_log}\n{log}");
    // The restarted source resumes from what is on disk; rows still on their way into the
    // store (the store kept running) are the store's to refuse, so the resume point may be a
    // little before 8000, never after.
    let resumed_at: i64 = first_log
        .split("at sample_index ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the reload resumes:\n{first_log}"));
    assert!(
        first_log.contains(r#"restarted=["live"]"#) && (0..=8000).contains(&resumed_at),
        "the reload restarts the source and resumes where the store stopped:\n{first_log}"
    );
    assert!(log.contains("resuming"), "the restart resumes:\n{log}");
    // Every sample exactly once, with its values.
    let out = check_exact(&py, &dir.path().join("data/store/live"), &bin, 385);
    assert!(out.starts_with("24000 "), "{out}");
    let listed = ls_json(&dir.path().join("data"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["rows"], 24000);
    assert_eq!(listed[0]["last_index"], 23999);
}
