//! TEB decoding end to end, as a user runs it: the simulated rig (its running speed is driven by
//! some of probe 0's units) stores probe 0's spike counts (`bin_features`) and the behaviour;
//! `neurod train-teb` trains on the stored streams; `replay` sends them through `teb_decode`.
//! On the bins held out of training, the live predictions beat the target-only model's and the
//! rate is above zero; with the behaviour shifted in time by half the session (the same signal,
//! no longer driven by these spikes), the rate falls to near zero.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float32Array, Float64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::{header, neurod, run_to_end, stored_batches};

/// Seconds of simulated session: 12,000 bins of 20 ms, 2,400 of them for validation.
const SECONDS: f64 = 240.0;
const SPEED: &str = "running_speed_cm_s";
/// The trainer's chronological split: the last fifth validates.
const VALIDATION_FROM_S: f64 = SECONDS * 0.8;

fn record(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
seed = 3
duration_s = {SECONDS}
pace = "max"
twophoton = false

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"

[transforms.features]
type = "bin_features"
inputs = ["rig", "spikes", "spikes.progress"]

[sinks.store]
type = "store"
inputs = ["rig", "features"]
streams = ["*.bins", "*.behaviour"]
"#,
        header()
    );
    run_to_end(dir, &config, Duration::from_secs(1200))
}

/// `neurod train-teb` with the test's (small, quick) sizes; the report.
fn train(dir: &Path, data: &Path, target: &str, out: &Path) -> serde_json::Value {
    let report = dir.join(format!(
        "{}.json",
        out.file_name().unwrap().to_string_lossy()
    ));
    let data = data.to_string_lossy().into_owned();
    let (out_s, report_s) = (out.to_string_lossy(), report.to_string_lossy());
    let args = [
        "train-teb",
        "--data-dir",
        &data,
        "--source",
        "rig.imec0.ap.bins",
        "--source-columns",
        "count_*",
        "--target",
        target,
        "--target-columns",
        SPEED,
        "--out",
        &out_s,
        "--report",
        &report_s,
        "--latent",
        "4",
        "--hidden",
        "32",
        "--epochs",
        "40",
        "--seed",
        "1",
        "--lags",
        "2",
    ];
    let o = neurod().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "train-teb failed");
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// The stored streams replayed through `teb_decode`; its output rows.
fn decode(dir: &Path, data: &Path, model: &Path) -> Vec<RecordBatch> {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"{}
[sources.replay]
type = "replay"
path = "{}"
streams = ["rig.imec0.ap.bins", "rig.behaviour"]
pace = "max"

[transforms.decode]
type = "teb_decode"
inputs = ["replay", "replay"]
model = "{}"
backend = "cpu"

[sinks.decoded]
type = "store"
inputs = ["decode"]
"#,
        header(),
        data.display(),
        model.display()
    );
    let out = run_to_end(dir, &config, Duration::from_secs(600));
    stored_batches(&out.join("decoded").join("rig.behaviour.decode"))
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a Float32Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref()
        .unwrap()
}

/// R² of `predicted` (a column) against `actual_<speed>` over the validation bins, and the
/// mean `rate_nats` there.
fn r2_and_rate(rows: &[RecordBatch], predicted: &str) -> (f64, f64, usize) {
    let (mut pairs, mut rates) = (Vec::new(), Vec::new());
    for b in rows {
        let time: &Float64Array = b
            .column_by_name("time_s")
            .unwrap()
            .as_any()
            .downcast_ref()
            .unwrap();
        let (p, a, r) = (
            column(b, predicted),
            column(b, &format!("actual_{SPEED}")),
            column(b, "rate_nats"),
        );
        for i in 0..b.num_rows() {
            if time.value(i) < VALIDATION_FROM_S {
                continue;
            }
            rates.push(r.value(i) as f64);
            if a.is_valid(i) {
                pairs.push((p.value(i) as f64, a.value(i) as f64));
            }
        }
    }
    let n = pairs.len() as f64;
    let mean = pairs.iter().map(|(_, a)| a).sum::<f64>() / n;
    let sse: f64 = pairs.iter().map(|(p, a)| (p - a).powi(2)).sum();
    let sst: f64 = pairs.iter().map(|(_, a)| (a - mean).powi(2)).sum();
    (
        1.0 - sse / sst,
        rates.iter().sum::<f64>() / rates.len() as f64,
        pairs.len(),
    )
}

/// The stored behaviour with its speed moved by half the session (circularly), as Parquet.
fn shifted_behaviour(data: &Path, path: &Path) {
    let rows = stored_batches(&data.join("store").join("rig.behaviour"));
    let (mut time, mut speed) = (Vec::new(), Vec::new());
    for b in &rows {
        let t: &Float64Array = b
            .column_by_name("time_s")
            .unwrap()
            .as_any()
            .downcast_ref()
            .unwrap();
        time.extend(t.values().iter().copied());
        speed.extend(column(b, SPEED).values().iter().copied());
    }
    let half = speed.len() / 2;
    speed.rotate_left(half);
    let schema = Arc::new(Schema::new(vec![
        Field::new("time_s", DataType::Float64, false),
        Field::new(SPEED, DataType::Float32, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(time)),
        Arc::new(Float32Array::from(speed)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn decoding_the_rig_beats_the_target_only_model_and_a_shifted_behaviour_carries_no_information() {
    let dir = tempfile::tempdir().unwrap();
    let data = record(&dir.path().join("record"));

    let model = dir.path().join("speed");
    let report = train(dir.path(), &data, "rig.behaviour", &model);
    let rows = decode(&dir.path().join("decode"), &data, &model);
    let (r2_full, rate, n) = r2_and_rate(&rows, &format!("predicted_{SPEED}"));
    let (r2_only, _, _) = r2_and_rate(&rows, &format!("target_only_{SPEED}"));
    eprintln!(
        "live, {n} validation bins: R² {r2_full:.4} (target-only {r2_only:.4}), rate {rate:.4} nats/bin; \
         report: rate {} nats/step, R² {} (target-only {})",
        report["rate_nats_per_step"], report["full"]["r2"], report["target_only"]["r2"]
    );
    assert!(n > 2000, "{n} validation bins decoded");
    // The spikes carry what the speed's own past cannot: a clear share of the residual variance.
    assert!(
        1.0 - r2_full < 0.8 * (1.0 - r2_only),
        "live R² {r2_full} vs target-only {r2_only}"
    );
    assert!(rate > 0.05, "live rate {rate} nats/bin");

    let shifted = dir.path().join("shifted.parquet");
    shifted_behaviour(&data, &shifted);
    let shifted_report = train(
        dir.path(),
        &data,
        &shifted.to_string_lossy(),
        &dir.path().join("shifted"),
    );
    let shifted_rate = shifted_report["rate_nats_per_step"].as_f64().unwrap();
    eprintln!("shifted behaviour: rate {shifted_rate} nats/step");
    assert!(
        shifted_rate < 0.02 && shifted_rate < 0.1 * rate,
        "shifted rate {shifted_rate} vs {rate}"
    );
}
