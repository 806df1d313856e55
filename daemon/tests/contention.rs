//! The raw record survives contention: a disk loaded by another process's fsync'd writes, and the
//! daemon frozen (SIGSTOP) and resumed, cost no raw sample (the store's input buffer rides them out).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use common::{header, wait_for, Daemon};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const BUFFERED_S: &str =
    r#"neurod_store_buffered_seconds{component_id="store",stream_id="rig.imec0.ap"}"#;

fn rig_config() -> String {
    format!(
        r#"{}
[sources.rig]
type = "simulated"
probes = 1
pace = "realtime"
twophoton = false
# 1 ms batches: the store's inbox (256 batches) alone would ride out only 0.256 s of stall.
batch_ms = 1
[sinks.store]
type = "store"
inputs = ["rig"]
flush_interval_s = 0.2
"#,
        header()
    )
}

/// On the disk the build lives on, not a tmpfs `/tmp`, so that the fsyncs compete for real.
fn disk_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Another process that writes and fsyncs 256 MiB files in `dir` for `seconds`.
fn disk_loader(dir: &Path, seconds: u64) -> Child {
    let script = format!(
        "end=$(( $(date +%s) + {seconds} )); while [ $(date +%s) -lt $end ]; do \
         dd if=/dev/zero of=load.bin bs=1M count=256 conv=fsync 2>/dev/null; rm -f load.bin; done"
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn parquet_files(stream_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(stream_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "_manifest.json")
        .collect();
    files.sort();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "after a clean stop only Parquet files (and the manifest) remain: {}",
            f.display()
        );
    }
    files
}

/// Every `sample_index` of a stream, in file order.
fn sample_indices(stream_dir: &Path) -> Vec<i64> {
    let mut all = Vec::new();
    for f in parquet_files(stream_dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = b
                .column_by_name("sample_index")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            all.extend(col.values().iter().copied());
        }
    }
    all
}

/// Stops the daemon cleanly and checks that the AP stream is whole: sample_index 0, 1, 2, ...
/// with no gap or repeat, at least `min_s` seconds of it, and no row dropped anywhere.
fn stop_and_check(mut d: Daemon, dir: &Path, min_s: f64) {
    let metrics = d.get("/metrics");
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        d.log_text()
    );
    for series in [
        r#"neurod_component_dropped_rows_total{component_id="store""#,
        r#"neurod_store_buffer_dropped_rows_total{component_id="store""#,
    ] {
        assert_eq!(
            common::metric_value(&metrics, series).unwrap_or(0.0),
            0.0,
            "{series}\n{}",
            d.log_text()
        );
    }
    let idx = sample_indices(&dir.join("data/store/rig.imec0.ap"));
    let n = idx.len();
    assert!(
        n as f64 >= min_s * 30_000.0,
        "only {n} samples stored; log:\n{}",
        d.log_text()
    );
    if let Some(bad) = (0..n).find(|&i| idx[i] != i as i64) {
        panic!(
            "sample_index is not 0..{n}: at position {bad} found {} (neighbours {:?})",
            idx[bad],
            &idx[bad.saturating_sub(2)..(bad + 3).min(n)]
        );
    }
}

/// The AP samples the source has sent so far.
fn sent_rows(d: &Daemon) -> f64 {
    d.metric(r#"neurod_component_sent_rows_total{component_id="rig""#)
        .unwrap_or(0.0)
}

/// One fault at a time: the two tests measure different faults, not their sum.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The daemon on a fresh store, once the rig has sent a second of data.
fn start_rig() -> (tempfile::TempDir, Daemon) {
    let dir = disk_tempdir();
    let d = Daemon::start(dir.path(), &rig_config());
    wait_for(Duration::from_secs(30), "the rig to start", || {
        (sent_rows(&d) > 30_000.0).then_some(())
    });
    (dir, d)
}

#[test]
fn competing_fsynced_writes_cost_no_raw_sample() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, d) = start_rig();
    let load_dir = disk_tempdir();
    let mut loader = disk_loader(load_dir.path(), 15);
    let t = Instant::now();
    // The most the buffer held while the disk was loaded, for the log.
    let mut peak = (0.0f64, 0.0f64);
    let status = loop {
        if let Some(s) = loader.try_wait().unwrap() {
            break s;
        }
        let m = d.get("/metrics");
        let held = |series: &str| common::metric_value(&m, series).unwrap_or(0.0);
        peak.0 = peak.0.max(held(BUFFERED_S));
        let spooled: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("neurod_store_buffered_bytes{") && l.contains("medium=\"disk\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        peak.1 = peak.1.max(spooled);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the disk loader failed");
    eprintln!(
        "disk loaded for {:.1} s; the AP buffer peaked at {:.2} s of data, {:.0} MB spooled at most",
        t.elapsed().as_secs_f64(),
        peak.0,
        peak.1 / 1e6
    );
    // Let the buffer drain what the load held back.
    std::thread::sleep(Duration::from_secs(2));
    stop_and_check(d, dir.path(), 10.0);
}

#[test]
fn a_daemon_frozen_for_ten_seconds_stores_every_raw_sample() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, d) = start_rig();
    d.signal("STOP");
    std::thread::sleep(Duration::from_secs(10));
    d.signal("CONT");
    // The realtime source emits the ten seconds it owes at once; wait until it has sent them.
    // (Its lag alone is not enough: read just after the resume, it can still be the value from
    // before the freeze, and a stop then would end the rig halfway through what it owes.)
    let before = sent_rows(&d);
    wait_for(Duration::from_secs(45), "the rig to catch up", || {
        let lag = d.metric(r#"neurod_source_lag_seconds{component_id="rig""#)?;
        (lag < 0.5 && sent_rows(&d) >= before + 10.0 * 30_000.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop_and_check(d, dir.path(), 11.0);
}
