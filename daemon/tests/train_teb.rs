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

# The rig's port also carries the behaviour table, which bin_features refuses on its
# continuous input: select_channels takes the probe alone (its AP channels).
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
}
