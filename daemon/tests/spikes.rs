//! Spike detection end to end, as a lab runs it: a ground-truth Neuropixels recording (made by
//! SpikeInterface's generator, a peer) replayed by the `spikeglx` source into `spike_detect` and
//! the store, scored with the peers' script against the truth and against SpikeInterface's own
//! detection on the same file, in the same run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{header, python, run_python, run_to_end, shared_data, Daemon};

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools")
}

/// Runs a peers' script; panics with its output if it fails.
fn run_tool(py: &Path, script: &str, args: &[&str]) -> String {
    let t = Instant::now();
    let out = Command::new(py)
        .arg(tools().join(script))
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{script} {args:?}: {:.1} s", t.elapsed().as_secs_f64());
    stdout
}

/// Writes a ground-truth recording (384 AP + SY channels, 30 kHz, 60 units) into `dir`.
fn groundtruth(py: &Path, dir: &Path, seconds: f64, seed: u64, noise_uv: f64) -> PathBuf {
    let gt = dir.join("gt");
    run_tool(
        py,
        "groundtruth.py",
        &[
            gt.to_str().unwrap(),
            "--seconds",
            &seconds.to_string(),
            "--seed",
            &seed.to_string(),
            "--noise-uv",
            &noise_uv.to_string(),
        ],
    );
    gt
}

fn bin_of(gt: &Path) -> PathBuf {
    gt.join("groundtruth_g0_t0.imec0.ap.bin")
}

fn f64_at(v: &serde_json::Value, row: &str, key: &str) -> f64 {
    v[row][key]
        .as_f64()
        .unwrap_or_else(|| panic!("score JSON lacks {row}.{key}: {v}"))
}

/// One ground-truth run: ours must match or beat SpikeInterface's recall and precision.
fn detect_and_score(seconds: f64, seed: u64, noise_uv: f64) {
    let (Some(_), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gt = groundtruth(&py, dir.path(), seconds, seed, noise_uv);
    let config = format!(
        r#"{}
[sources.gt]
type = "spikeglx"
path = "{}"
pace = "max"

[transforms.det]
type = "spike_detect"
inputs = ["gt"]

[sinks.store]
type = "store"
inputs = ["det"]
"#,
        header(),
        bin_of(&gt).display()
    );
    let store = run_to_end(dir.path(), &config, Duration::from_secs(300)).join("store");
    let spikes = store.join("gt.spikes");
    assert!(
        spikes.is_dir(),
        "no spikes stream stored under {}",
        store.display()
    );
    let json = dir.path().join("score.json");
    let printed = run_tool(
        &py,
        "score_spikes.py",
        &[
            gt.to_str().unwrap(),
            spikes.to_str().unwrap(),
            "--peer",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (ours_r, ours_p) = (
        f64_at(&v, "detections", "recall"),
        f64_at(&v, "detections", "precision"),
    );
    let (si_r, si_p) = (
        f64_at(&v, "spikeinterface", "recall"),
        f64_at(&v, "spikeinterface", "precision"),
    );
    eprintln!(
        "seed {seed}, noise {noise_uv} µV, {seconds} s: neurod recall {ours_r} precision {ours_p}; SpikeInterface recall {si_r} precision {si_p}\n{printed}"
    );
    assert!(
        ours_r >= si_r,
        "recall {ours_r} below SpikeInterface's {si_r}:\n{printed}"
    );
    assert!(
        ours_p >= si_p,
        "precision {ours_p} below SpikeInterface's {si_p}:\n{printed}"
    );
    // And not by detecting next to nothing or everything.
    assert!(ours_r > 0.5 && ours_p > 0.5, "{printed}");
}

#[test]
fn matches_or_beats_spikeinterface_at_10_uv_noise() {
    detect_and_score(5.0, 11, 10.0);
}

#[test]
fn matches_or_beats_spikeinterface_at_15_uv_noise() {
    detect_and_score(5.0, 12, 15.0);
}

#[test]
fn matches_or_beats_spikeinterface_at_6_uv_noise() {
    detect_and_score(5.0, 13, 6.0);
}

/// Spikes stored from two replays of one file cut into 1 ms and 37 ms batches: equal, row for
/// row; and the bins of one: counts add up to its spikes, channel by channel, power is positive
/// everywhere. (numpy and pyarrow only: the peers have no pandas.)
const CHECK_SAME_AND_BINS: &str = r#"
import sys, json, numpy as np, pyarrow.dataset as ds
store, seconds = sys.argv[1], float(sys.argv[2])
def table(name, key):
    return ds.dataset(f"{store}/{name}", format="parquet").to_table().sort_by(key)
a = table("a.spikes", [("sample_index", "ascending"), ("channel", "ascending")])
b = table("b.spikes", [("sample_index", "ascending"), ("channel", "ascending")])
assert a.num_rows > 100, a.num_rows
for col in ["sample_index", "time_s", "channel", "amplitude_uv", "threshold_uv"]:
    x, y = a.column(col).to_numpy(), b.column(col).to_numpy()
    assert len(x) == len(y) and (x == y).all(), (col, len(x), len(y))
md = a.schema.metadata
assert md[b"neurod.layout"] == b"events" and float(md[b"neurod.sampling_hz"]) == 30000.0, md
assert md[b"neurod.source_stream"] == b"a", md
assert a.schema.field("channel").type == "int32" and a.schema.field("amplitude_uv").type == "float"
ch = a.column("channel").to_numpy()
assert ch.min() >= 0 and ch.max() < 384, "never the sync channel"
bins = table("a.bins", [("bin_start_sample", "ascending")])
start = bins.column("bin_start_sample").to_numpy()
assert (start == np.arange(bins.num_rows) * 600).all(), start[:5]
assert bins.num_rows == int(np.ceil(seconds * 30000 / 600)), bins.num_rows
def block(prefix):
    names = [n for n in bins.column_names if n.startswith(prefix)]
    return np.stack([bins.column(n).to_numpy() for n in names], axis=1)
counts, power = block("count_"), block("power_")
assert counts.shape[1] == 384 and power.shape[1] == 384, (counts.shape, power.shape)
assert counts.dtype == np.uint16 and power.dtype == np.float32, (counts.dtype, power.dtype)
assert int(counts.sum()) == a.num_rows, (int(counts.sum()), a.num_rows)
per_channel = np.bincount(ch, minlength=384)
assert (counts.sum(axis=0) == per_channel).all(), "counts land on their channel"
assert (power > 0).all(), "power > 0 in every bin and channel"
print(json.dumps(dict(spikes=a.num_rows, bins=bins.num_rows, median_power_uv2=float(np.median(power)))))
"#;

#[test]
fn stored_spikes_do_not_depend_on_batch_size_and_bins_add_up() {
    let (Some(_), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let seconds = 4.0;
    let gt = groundtruth(&py, dir.path(), seconds, 21, 10.0);
    let bin = bin_of(&gt);
    let config = format!(
        r#"{}
[sources.a]
type = "spikeglx"
path = "{bin}"
pace = "max"
batch_ms = 1

[sources.b]
type = "spikeglx"
path = "{bin}"
pace = "max"
batch_ms = 37

[transforms.det_a]
type = "spike_detect"
inputs = ["a"]
backend = "cpu"

[transforms.det_b]
type = "spike_detect"
inputs = ["b"]
backend = "cpu"

[transforms.bins]
type = "bin_features"
inputs = ["a", "det_a", "det_a.progress"]

[sinks.store]
type = "store"
inputs = ["det_a", "det_b", "bins"]
"#,
        header(),
        bin = bin.display()
    );
    let store = run_to_end(dir.path(), &config, Duration::from_secs(300)).join("store");
    let out = run_python(
        &py,
        CHECK_SAME_AND_BINS,
        &[store.to_str().unwrap(), &seconds.to_string()],
    );
    eprintln!("{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // 60 units at 8 Hz for 4 s: about 1900 true spikes.
    let n = v["spikes"].as_u64().unwrap();
    assert!((1000..4000).contains(&n), "{out}");
    // 10 µV of white noise band-passed to 300-6000 Hz keeps about 38% of its power.
    let p = v["median_power_uv2"].as_f64().unwrap();
    assert!((15.0..80.0).contains(&p), "{out}");
}

#[test]
fn backend_in_use_and_latency_are_on_metrics() {
    let (Some(data), Some(_)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}
[sources.oe16]
type = "openephys"
path = "{}"
pace = "realtime"

[transforms.det]
type = "spike_detect"
inputs = ["oe16"]
calibration_s = 0.5

[sinks.store]
type = "store"
inputs = ["det"]
"#,
        header(),
        data.join("openephys-16ch-40khz/experiment1/recording1")
            .display()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let count = r#"neurod_spike_detect_latency_seconds_count{component_id="det"}"#;
    common::wait_for(Duration::from_secs(20), "latency observations", || {
        d.metric(count).filter(|v| *v >= 50.0)
    });
    let text = d.get("/metrics");
    let backend = ["gpu", "lavapipe", "cpu"].into_iter().find(|b| {
        text.contains(&format!(
            r#"neurod_kernel_backend{{backend="{b}",component_id="det"}} 1"#
        ))
    });
    let backend = backend.unwrap_or_else(|| panic!("no backend gauge:\n{text}"));
    let status: serde_json::Value = serde_json::from_str(&d.get("/status")).unwrap();
    assert_eq!(status["backend"]["det"], backend, "{status}");
    assert!(
        d.log_text().contains("spike detection running"),
        "the backend choice is logged:\n{}",
        d.log_text()
    );
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", d.log_text());
}
