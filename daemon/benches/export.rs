//! Export throughput: `neurod export` of an hour-long simulated session (384-channel spikes,
//! Poisson 5–20 Hz per channel; dF/F of 50 ROIs at 30 Hz; running speed at 100 Hz) and of the
//! simulated rig's raw probe (384 channels at 30 kHz, `NEUROD_EXPORT_BENCH_RAW_S` seconds,
//! default 60: an hour would be 83 GB), written through the storage layer as the store sink
//! writes it and cached in `NEUROD_EXPORT_BENCH_DIR` (default `<target dir>/export-bench-data`).
//! Prints, for temporaldata (whole and `--population predictable`) and NWB (the session; the raw
//! samples), the stored size of the streams the export reads, its time, its throughput in MB/s
//! of stored data and the exported file's size.
//!
//! Run: `cargo bench -p neurod --bench export`.

#[path = "common/session.rs"]
mod session;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use pipelines::storage::layout::stream_dir_name;
use pipelines::stream::keys;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use session::{cached, target_dir, write_raw, write_spikes, StreamStore, SPIKE_SECONDS};

const ROIS: i32 = 50;
const FRAME_HZ: i64 = 30;
const TRACES: &str = "rig.twophoton.traces.dff";
const BEHAVIOUR: &str = "rig.behaviour";
/// Bumped when the data made here change, so that an old cache is made again.
const DATA_VERSION: u32 = 1;

fn data_dir() -> PathBuf {
    std::env::var_os("NEUROD_EXPORT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("export-bench-data"))
}

fn schema(id: &str, kind: &str, rate: &str, fields: Vec<Field>) -> Arc<Schema> {
    let meta = [
        (keys::STREAM_ID, id),
        (keys::STREAM_KIND, kind),
        (keys::SAMPLING_HZ, rate),
        (
            keys::LAYOUT,
            if kind == "traces" { "traces" } else { "table" },
        ),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    Arc::new(Schema::new(fields).with_metadata(meta.into()))
}

/// An hour of dF/F (one row per ROI and frame, a second per batch) and its POYO-SSL labels.
fn write_traces(store: &Path) {
    let s = schema(
        TRACES,
        "traces",
        "30",
        vec![
            Field::new("frame_index", DataType::Int64, false),
            Field::new("time_s", DataType::Float64, false),
            Field::new("roi", DataType::Int32, false),
            Field::new("dff", DataType::Float32, true),
        ],
    );
    let mut rng = SmallRng::seed_from_u64(10);
    let mut out = StreamStore::new(store, TRACES);
    for second in 0..SPIKE_SECONDS {
        let frames = second * FRAME_HZ..(second + 1) * FRAME_HZ;
        let n = (FRAME_HZ * i64::from(ROIS)) as usize;
        let fi: Vec<i64> = frames
            .clone()
            .flat_map(|f| (0..ROIS).map(move |_| f))
            .collect();
        let t: Vec<f64> = fi.iter().map(|&f| f as f64 / FRAME_HZ as f64).collect();
        let roi: Vec<i32> = frames.flat_map(|_| 0..ROIS).collect();
        let dff: Vec<f32> = (0..n).map(|_| rng.random_range(-0.2f32..1.5)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(fi)),
            Arc::new(Float64Array::from(t)),
            Arc::new(Int32Array::from(roi)),
            Arc::new(Float32Array::from(dff)),
        ];
        let batch = RecordBatch::try_new(s.clone(), columns).expect("the traces schema");
        out.write(&batch, second * 30_000);
    }
    out.close();
    let ns = schema(
        &format!("{TRACES}.neurons"),
        "neurons",
        "30",
        vec![
            Field::new("frame_index", DataType::Int64, false),
            Field::new("unit", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("skew", DataType::Float64, false),
            Field::new("excess_kurtosis", DataType::Float64, false),
        ],
    );
    let last = SPIKE_SECONDS * FRAME_HZ - 1;
    let labels: Vec<&str> = (0..ROIS)
        .map(|r| {
            if r % 5 == 0 {
                "unpredictable"
            } else {
                "predictable"
            }
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![last; ROIS as usize])),
        Arc::new(StringArray::from_iter_values(
            (0..ROIS).map(|r| r.to_string()),
        )),
        Arc::new(StringArray::from(labels)),
        Arc::new(Float64Array::from(vec![0.5; ROIS as usize])),
        Arc::new(Float64Array::from(vec![1.0; ROIS as usize])),
    ];
    let mut out = StreamStore::new(store, &format!("{TRACES}.neurons"));
    out.write(
        &RecordBatch::try_new(ns, columns).expect("the neurons schema"),
        0,
    );
    out.close();
}

/// An hour of running speed at 100 Hz.
fn write_behaviour(store: &Path) {
    let s = schema(
        BEHAVIOUR,
        "behaviour",
        "100",
        vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("time_s", DataType::Float64, false),
            Field::new("running_speed_cm_s", DataType::Float32, false),
        ],
    );
    let mut rng = SmallRng::seed_from_u64(11);
    let mut out = StreamStore::new(store, BEHAVIOUR);
    for second in 0..SPIKE_SECONDS {
        let idx: Vec<i64> = (second * 100..(second + 1) * 100).collect();
        let t: Vec<f64> = idx.iter().map(|&i| i as f64 / 100.0).collect();
        let v: Vec<f32> = idx.iter().map(|_| rng.random_range(0.0f32..30.0)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(idx)),
            Arc::new(Float64Array::from(t)),
            Arc::new(Float32Array::from(v)),
        ];
        out.write(
            &RecordBatch::try_new(s.clone(), columns).expect("the behaviour schema"),
            second * 30_000,
        );
    }
    out.close();
}

/// `seconds` of raw samples alone.
fn ensure_raw(root: &Path, seconds: u64) -> PathBuf {
    let data = root.join(format!("v{DATA_VERSION}-raw{seconds}s"));
    cached(&data, &format!("{seconds} s of raw samples"), || {
        let t = Instant::now();
        write_raw(&data.join("store"), seconds);
        println!("raw data: made in {:.0} s", t.elapsed().as_secs_f64());
    });
    data
}

fn ensure_data(root: &Path) -> PathBuf {
    let data = root.join(format!("v{DATA_VERSION}"));
    cached(&data, "an hour-long session", || {
        let store = data.join("store");
        let t = Instant::now();
        write_spikes(&store);
        write_traces(&store);
        write_behaviour(&store);
        println!("data: made in {:.0} s", t.elapsed().as_secs_f64());
    });
    data
}

/// Parquet bytes of the named streams of `store` (all of them with `None`).
fn parquet_bytes(store: &Path, streams: Option<&[&str]>) -> u64 {
    let mut total = 0;
    let Ok(dirs) = std::fs::read_dir(store) else {
        return 0;
    };
    for s in dirs.flatten() {
        let name = s.file_name().to_string_lossy().into_owned();
        if streams.is_some_and(|ids| !ids.iter().any(|id| stream_dir_name(id) == name)) {
            continue;
        }
        if let Ok(files) = std::fs::read_dir(s.path()) {
            for f in files.flatten() {
                if f.path().extension().is_some_and(|x| x == "parquet") {
                    total += f.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    total
}

fn main() {
    // `cargo bench` passes `--bench`; a test harness run (`cargo test --benches`) does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let raw_s = std::env::var("NEUROD_EXPORT_BENCH_RAW_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let data = ensure_data(&data_dir());
    let raw = ensure_raw(&data_dir(), raw_s);
    let store = data.join("store");
    let mb = |b: u64| b as f64 / 1e6;
    let neurons = format!("{TRACES}.neurons");
    let labelled = [TRACES, neurons.as_str()];
    println!(
        "stored: {:.1} MB of Parquet (spikes, dF/F, labels, running speed)",
        mb(parquet_bytes(&store, None))
    );
    println!();
    println!(
        "| {:<26} | {:>10} | {:>9} | {:>14} | {:>12} | {:>17} |",
        "export", "stored MB", "time", "MB/s (stored)", "output MB", "output / stored"
    );
    println!(
        "|{}|",
        [28, 12, 11, 16, 14, 19].map(|n| "-".repeat(n)).join("|")
    );
    let nwb = [
        "--format",
        "nwb",
        "--subject-id",
        "m1",
        "--species",
        "Mus musculus",
        "--age",
        "P90D",
    ];
    let raw_name = format!("nwb, {raw_s} s of raw");
    // What each export reads: everything, or the traces and their labels.
    for (name, from, extra, read) in [
        (
            "temporaldata, whole",
            &data,
            &["--format", "temporaldata"][..],
            None,
        ),
        (
            "temporaldata, predictable",
            &data,
            &["--format", "temporaldata", "--population", "predictable"][..],
            Some(&labelled[..]),
        ),
        ("nwb, whole (no raw)", &data, &nwb[..], None),
        (raw_name.as_str(), &raw, &nwb[..], None),
    ] {
        let stored = parquet_bytes(&from.join("store"), read);
        let out = data.join("export.h5");
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_neurod"))
            .args(["export", "--data-dir"])
            .arg(from)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .status()
            .expect("neurod export runs");
        let secs = t.elapsed().as_secs_f64();
        assert!(status.success(), "neurod export {extra:?} failed");
        let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {:<26} | {:>10.1} | {:>7.2} s | {:>14.1} | {:>12.1} | {:>17.2} |",
            name,
            mb(stored),
            secs,
            mb(stored) / secs,
            mb(written),
            written as f64 / stored as f64
        );
        let _ = std::fs::remove_file(&out);
    }
}
