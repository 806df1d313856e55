//! `neurod train-teb` and what it reads: stored streams of a real (simulated) run loaded as
//! aligned bins; known answers on Parquet files the test writes (ALGORITHMS.md §6).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{header, run_to_end};
use pipelines::teb::load::{load, Request};

/// A short simulated session: probe 0's spikes detected and binned (`bin_features`, 20 ms,
/// stream `rig.imec0.ap.probe.bins`) and the rig's streams (the probe, the behaviour) stored.
/// The data directory.
fn stored_session(dir: &Path) -> PathBuf {
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
seed = 7
duration_s = 4
pace = "max"
twophoton = false

# select_channels takes the probe's AP channels (bin_features would pass the rig's
# behaviour table by on its own): the stored bins are `rig.imec0.ap.probe.bins`.
[transforms.probe]
type = "select_channels"
inputs = ["rig"]
kinds = ["ap"]

[transforms.spikes]
type = "spike_detect"
inputs = ["probe"]
backend = "cpu"
calibration_s = 0.5

[transforms.features]
type = "bin_features"
inputs = ["probe", "spikes", "spikes.progress"]
bin_ms = 20

[sinks.store]
type = "store"
inputs = ["rig", "features"]
"#,
        header()
    );
    run_to_end(dir, &config, Duration::from_secs(300))
}

#[test]
fn stored_bins_and_behaviour_load_as_aligned_bins() {
    let dir = tempfile::tempdir().unwrap();
    let data = stored_session(dir.path());
    // By stream id under the data directory, as `neurod ls` lists them.
    let request = Request {
        source: "rig.imec0.ap.probe.bins".into(),
        target: "rig.behaviour".into(),
        data_dir: Some(data.clone()),
        source_columns: vec!["count_*".into()],
        target_columns: Vec::new(),
        bin_s: None,
    };
    let loaded = load(&request).unwrap();
    let a = &loaded.aligned;
    assert!(
        (a.bin_s - 0.02).abs() < 1e-9,
        "the bins' own width: {}",
        a.bin_s
    );
    assert_eq!(a.source.stream_id, "rig.imec0.ap.probe.bins");
    assert_eq!(a.source.columns.len(), 384, "count_AP0..AP383");
    assert!(a.source.columns.iter().all(|c| c.starts_with("count_AP")));
    assert_eq!(a.target.stream_id, "rig.behaviour");
    assert_eq!(a.target.columns, ["running_speed_cm_s"]);
    // 4 s of 20 ms bins, the last possibly partial on either side; no gap inside.
    assert!((195..=200).contains(&a.len()), "{} bins", a.len());
    assert_eq!(a.segments().len(), 1, "{:?}", a.segments());
    assert_eq!(loaded.source.refused, Default::default());
    let spikes: f32 = a.x.iter().sum();
    assert!(spikes > 100.0, "{spikes} threshold crossings in 4 s");
    let speeds = &a.y;
    let spread = speeds.iter().cloned().fold(f32::MIN, f32::max)
        - speeds.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1.0, "running speed varies: {spread} cm/s");

    // The stream directories themselves, and the raw probe on 20 ms bins (streamed: the
    // 385-channel file is read batch by batch, only the selected channels decoded).
    let store = data.join("store");
    let probe = Request {
        source: store.join("rig.imec0.ap").display().to_string(),
        target: store.join("rig.behaviour").display().to_string(),
        source_columns: vec!["AP1?".into()],
        bin_s: Some(0.02),
        ..Request::default()
    };
    let loaded = load(&probe).unwrap();
    assert_eq!(loaded.aligned.source.columns.len(), 10, "AP10..AP19");
    assert_eq!(loaded.source.rows, 4 * 30_000);
    assert_eq!(loaded.aligned.len(), a.len());

    // `neurod train-teb` on the stored ids (a few epochs: this checks the path, not the fit).
    let out = dir.path().join("model");
    let run = common::neurod()
        .args(["train-teb", "--source", "rig.imec0.ap.probe.bins"])
        .args([
            "--source-columns",
            "count_AP1?,count_AP2?",
            "--target",
            "rig.behaviour",
        ])
        .args(["--data-dir".as_ref(), data.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args([
            "--epochs", "2", "--hidden", "8", "--latent", "2", "--lags", "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["source"]["stream_id"], "rig.imec0.ap.probe.bins");
    assert_eq!(
        model["source"]["columns"].as_array().map(Vec::len),
        Some(20)
    );
    assert_eq!(model["source"]["columns"][0], "count_AP10");
    assert_eq!(model["target"]["columns"][0], "running_speed_cm_s");
    assert!((model["bin_s"].as_f64().unwrap() - 0.02).abs() < 1e-9);
}

// ---- `neurod train-teb` on Parquet files the test writes: known answers (ALGORITHMS.md §6) ----

/// TE(X → Y) of x_t = 0.7x_{t−1} + ε, y_t = 0.3y_{t−1} + 0.5x_{t−2} + η (ALGORITHMS.md §6).
const DOCUMENTED_TE: f64 = 0.164;

/// Bins of each known-answer run: enough for the figures, short enough for a 2-core CI box.
const BINS: usize = 20_000;

/// Standard normal draws (SplitMix64 and Box–Muller: reproducible, no dependency).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[derive(Clone, Copy)]
enum Drive {
    Linear(f64),
    Square(f64),
}

/// x and y of the recipe's process, `n` steps after a burn-in.
fn process(n: usize, drive: Drive, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Normal(seed);
    let burn = 200;
    let (mut x, mut y) = (vec![0f64; n + burn], vec![0f64; n + burn]);
    for t in 2..n + burn {
        x[t] = 0.7 * x[t - 1] + rng.sample();
        let d = match drive {
            Drive::Linear(c) => c * x[t - 2],
            Drive::Square(c) => c * (x[t - 2] * x[t - 2] - 1.0),
        };
        y[t] = 0.3 * y[t - 1] + d + rng.sample();
    }
    (x.split_off(burn), y.split_off(burn))
}

/// A `table` Parquet file from elsewhere: `time_s` (10 ms rows) and one column.
fn write_table(path: &Path, name: &str, values: &[f64]) {
    use arrow::array::{ArrayRef, Float64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("time_s", DataType::Float64, false),
        Field::new(name, DataType::Float64, false),
    ]));
    let time: ArrayRef = Arc::new(Float64Array::from_iter_values(
        (0..values.len()).map(|t| t as f64 * 0.01),
    ));
    let v: ArrayRef = Arc::new(Float64Array::from_iter_values(values.iter().copied()));
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), vec![time, v]).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// `neurod train-teb` on the process's x (source) and y (target); its report.
fn train_on(drive: Drive, seed: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = process(BINS, drive, seed);
    let (xp, yp) = (dir.path().join("x.parquet"), dir.path().join("y.parquet"));
    write_table(&xp, "x", &x);
    write_table(&yp, "y", &y);
    let (out, report) = (dir.path().join("model"), dir.path().join("report.json"));
    let t = std::time::Instant::now();
    let run = common::neurod()
        .arg("train-teb")
        .args(["--source".as_ref(), xp.as_os_str()])
        .args(["--target".as_ref(), yp.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--report".as_ref(), report.as_os_str()])
        .args(["--seed", "1"])
        .args(
            std::env::var("TEB_TEST_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}train-teb: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.join("model.json").is_file() && out.join("weights.safetensors").is_file());
    assert!(
        stdout.contains("rate (transfer entropy estimate)"),
        "{stdout}"
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

fn figure(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no `{key}` in {report}"))
}

#[test]
fn coupled_linear_gaussian_processes_give_the_analytic_transfer_entropy() {
    let r = train_on(Drive::Linear(0.5), 11);
    let linear = figure(&r, "linear_gaussian_te_nats_per_step");
    let rate = figure(&r, "rate_nats_per_step");
    eprintln!("linear-Gaussian TE {linear:.4}, TEB rate {rate:.4}, analytic {DOCUMENTED_TE}");
    assert!(
        (linear - DOCUMENTED_TE).abs() < 0.05 * DOCUMENTED_TE,
        "linear-Gaussian TE {linear} vs {DOCUMENTED_TE}"
    );
    assert!(
        (rate - DOCUMENTED_TE).abs() < 0.25 * DOCUMENTED_TE,
        "TEB rate {rate} vs {DOCUMENTED_TE}"
    );
    assert!(
        (figure(&r, "rate_bits_per_s") - rate / 0.01 / std::f64::consts::LN_2).abs()
            < 1e-6 * rate.max(1.0) / 0.01
    );
}

#[test]
fn uncoupled_processes_give_a_rate_near_zero() {
    let r = train_on(Drive::Linear(0.0), 12);
    let rate = figure(&r, "rate_nats_per_step");
    eprintln!(
        "TEB rate {rate:.4}, linear-Gaussian TE {:.4}",
        figure(&r, "linear_gaussian_te_nats_per_step")
    );
    assert!(rate < 0.01, "TEB rate {rate} with no coupling");
}

#[test]
fn a_nonlinear_coupling_is_seen_by_the_teb_and_not_by_the_linear_baseline() {
    let r = train_on(Drive::Square(0.5), 13);
    let rate = figure(&r, "rate_nats_per_step");
    let linear = figure(&r, "linear_gaussian_te_nats_per_step");
    eprintln!("TEB rate {rate:.4}, linear-Gaussian TE {linear:.4}");
    assert!(linear < 0.02, "linear-Gaussian TE {linear}");
    assert!(rate > 0.1, "TEB rate {rate}");
    assert!(rate > 5.0 * linear.max(0.0));
}

#[test]
fn bad_inputs_exit_1_with_one_line_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = process(100, Drive::Linear(0.5), 1);
    let xp = dir.path().join("x.parquet");
    write_table(&xp, "x", &x);
    let yp = dir.path().join("y.parquet");
    write_table(&yp, "y", &y);
    let missing = dir.path().join("nothing.parquet");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec![
                "--source".as_ref(),
                missing.as_os_str(),
                "--target".as_ref(),
                yp.as_os_str(),
            ],
            "nothing.parquet: no such file",
        ),
        (
            vec![
                "--source".as_ref(),
                xp.as_os_str(),
                "--target".as_ref(),
                yp.as_os_str(),
                "--target-columns".as_ref(),
                "speed".as_ref(),
            ],
            "y.parquet: no numeric value column matches `speed`",
        ),
        (
            vec![
                "--source".as_ref(),
                "rig.behaviour".as_ref(),
                "--target".as_ref(),
                yp.as_os_str(),
                "--data-dir".as_ref(),
                dir.path().as_os_str(),
            ],
            "rig.behaviour: no such file, and no stream of that id",
        ),
    ];
    for (args, says) in cases {
        let run = common::neurod()
            .arg("train-teb")
            .args(args)
            .args(["--out".as_ref(), dir.path().join("m").as_os_str()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}
