//! `teb_decode` in the daemon on the simulated rig: spikes → `bin_features` counts as the
//! source and the rig's running speed as the target, decoded by a random model whose columns
//! are the rig's, stored and sent per bin over UDP.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, Float32Array, Int64Array};
use common::{header, rig_model, stored_batches, validate_errors, wait_for, Daemon};
use pipelines::sources::simulated::RUNNING_SPEED_COLUMN;

fn config(model: &Path, udp_port: u16) -> String {
    format!(
        r#"{}
[sources.rig]
type = "simulated"
seed = 5
twophoton = false

[transforms.det]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"
calibration_s = 0.5

[transforms.features]
type = "bin_features"
inputs = ["rig", "det", "det.progress"]

[transforms.decode]
type = "teb_decode"
inputs = ["features", "rig"]
model = "{}"
backend = "cpu"
emit_to = "udp://127.0.0.1:{udp_port}"

[sinks.store]
type = "store"
inputs = ["decode"]
flush_interval_s = 0.5
"#,
        header(),
        model.display()
    )
}

/// Every row of the stored stream: (bin_index, predicted speed, rate_bits_per_s, actual speed).
fn stored(stream_dir: &Path) -> Vec<(i64, f32, f32, Option<f32>)> {
    let mut out = Vec::new();
    for b in stored_batches(stream_dir) {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no {n}"))
                .clone()
        };
        let bins = col("bin_index");
        let bins = bins.as_any().downcast_ref::<Int64Array>().unwrap();
        let f32s = |n: &str| {
            col(n)
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap()
                .clone()
        };
        let pred = f32s(&format!("predicted_{RUNNING_SPEED_COLUMN}"));
        let rate = f32s("rate_bits_per_s");
        let actual = f32s(&format!("actual_{RUNNING_SPEED_COLUMN}"));
        for i in 0..b.num_rows() {
            let a = actual.is_valid(i).then(|| actual.value(i));
            out.push((bins.value(i), pred.value(i), rate.value(i), a));
        }
    }
    out
}

#[test]
fn the_rig_is_decoded_live_stored_and_sent_per_bin() {
    let dir = tempfile::tempdir().unwrap();
    let model = rig_model(dir.path());
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = udp.local_addr().unwrap().port();
    // (bin_index, first prediction, rate_bits_per_s) of every record, read as they come.
    let records: Arc<Mutex<Vec<(i64, f32, f32)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (records, stop) = (records.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = udp.recv(&mut buf) else { continue };
                let d = &buf[..n];
                assert_eq!(&d[..4], b"NTEB");
                assert_eq!(n, 48 + 4, "one target");
                let f32_at = |o: usize| f32::from_le_bytes(d[o..o + 4].try_into().unwrap());
                let bin = i64::from_le_bytes(d[24..32].try_into().unwrap());
                records.lock().unwrap().push((bin, f32_at(48), f32_at(44)));
            }
        })
    };
    let mut d = Daemon::start(dir.path(), &config(&model, port));
    let count = r#"neurod_teb_decode_latency_seconds_count{component_id="decode"}"#;
    wait_for(Duration::from_secs(180), "100 decoded bins", || {
        d.metric(count).filter(|v| *v >= 100.0)
    });
    let text = d.get("/metrics");
    let te = format!(
        r#"neurod_transfer_entropy_bits_per_second{{component_id="decode",model="{}",source="rig.imec0.ap.bins",target="rig.behaviour"}}"#,
        model.display()
    );
    let rate = common::metric_value(&text, &te).unwrap_or_else(|| panic!("{te} not in\n{text}"));
    assert!(rate.is_finite() && rate >= 0.0, "{rate}");
    for want in [
        r#"neurod_kernel_backend{backend="cpu",component_id="decode"} 1"#,
        r#"neurod_teb_decode_latency_seconds_bucket{component_id="decode",le="0.00001"}"#,
        r#"neurod_teb_prediction_squared_error{column="running_speed_cm_s",component_id="decode"}"#,
        r#"neurod_teb_gaps_total{component_id="decode"}"#,
        r#"neurod_teb_model_reloads_total{component_id="decode",outcome="failed"} 0"#,
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    let sent = r#"neurod_teb_records_total{component_id="decode",outcome="sent"}"#;
    assert!(
        common::metric_value(&text, sent).unwrap_or(0.0) >= 100.0,
        "{text}"
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("neurod_teb") || l.starts_with("neurod_transfer"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        d.log_text()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();

    let rows = stored(&dir.path().join("data/store/rig.behaviour.decode"));
    assert!(rows.len() >= 100, "{} rows stored", rows.len());
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "bins in order");
    assert!(rows
        .iter()
        .all(|r| r.1.is_finite() && r.2.is_finite() && r.2 >= 0.0));
    // The behaviour stream is continuous: every row but the last few has its actual speed.
    let joined = rows
        .iter()
        .filter(|r| r.3.is_some_and(f32::is_finite))
        .count();
    assert!(
        joined + 5 >= rows.len(),
        "{joined} of {} rows joined",
        rows.len()
    );
    // Every record the test read is a stored row, field for field.
    let records = records.lock().unwrap();
    assert!(records.len() >= 100, "{} records", records.len());
    let by_bin: std::collections::HashMap<i64, (f32, f32)> =
        rows.iter().map(|r| (r.0, (r.1, r.2))).collect();
    for (bin, pred, rate) in records.iter() {
        assert_eq!(
            by_bin.get(bin),
            Some(&(*pred, *rate)),
            "record of bin {bin}"
        );
    }
}

#[test]
fn validate_names_a_missing_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("neurod.toml");
    let text = config(&dir.path().join("no-model"), 9)
        .replace("{dir}", &dir.path().display().to_string())
        .replace("{port}", "1");
    std::fs::write(&cfg, text).unwrap();
    let err = validate_errors(&cfg);
    assert!(
        err.contains("decode") && err.contains("no-model") && err.contains("not a directory"),
        "{err}"
    );
}
