//! The daemon end to end, as a lab runs it: real recordings and the simulated rig into the
//! store, read back with pyarrow (a peer), under crashes, bad input and reloads.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{
    check_exact, python, real_ap_meta, sample_bytes, shared_data, wait_for, write_meta, Daemon,
};

fn oe_config(data: &Path) -> String {
    format!(
        r#"
[daemon]
data_dir = "{{dir}}/data"
listen = "127.0.0.1:{{port}}"

[sources.oe16]
type = "openephys"
path = "{}"
pace = "max"

[sources.probeb]
type = "openephys"
path = "{}"
stream = "ProbeB"
pace = "max"

[sinks.store]
type = "store"
inputs = ["oe16", "probeb"]
"#,
        data.join("openephys-16ch-40khz/experiment1/recording1")
            .display(),
        data.join("openephys-np2-snippets/Record Node 101/experiment1/recording1")
            .display()
    )
}

#[test]
fn open_ephys_recordings_round_trip_bit_exact_through_the_store_and_pyarrow() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &oe_config(&data));
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "finite replays must end with exit 0:\n{}",
        d.log_text()
    );

    let store = dir.path().join("data/store");
    let out = check_exact(
        &py,
        &store.join("oe16"),
        &data.join("openephys-16ch-40khz/experiment1/recording1/continuous/File_Reader-100.example_data/continuous.dat"),
        16,
    );
    assert_eq!(out.trim(), "133120 40000.0");
    let out = check_exact(
        &py,
        &store.join("probeb"),
        &data.join("openephys-np2-snippets/Record Node 101/experiment1/recording1/continuous/Neuropix-PXI-100.ProbeB/continuous.dat"),
        384,
    );
    assert!(out.starts_with("100 "), "{out}");
}

/// Writes a SpikeGLX pair from a real NP1.0 meta with `samples` samples of 385 channels
/// (value = f(sample, channel)), the meta claiming `claimed_samples` (None: still acquiring).
fn write_spikeglx(
    dir: &Path,
    name: &str,
    samples: usize,
    claimed: Option<usize>,
) -> (std::path::PathBuf, Vec<u8>) {
    let data = shared_data().unwrap();
    let meta = real_ap_meta(&data);
    let bytes = sample_bytes(0, samples);
    let bin = dir.join(format!("{name}.ap.bin"));
    std::fs::write(&bin, &bytes).unwrap();
    write_meta(dir, name, &meta, claimed);
    (bin, bytes)
}

#[test]
fn truncated_bin_gives_a_clear_error_while_another_stream_keeps_flowing() {
    let (Some(_), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 3000 samples claimed, 2000.5 on disk: cut in the middle of a sample.
    let (bin, mut bytes) = write_spikeglx(dir.path(), "cut_g0_t0.imec0", 2001, Some(3000));
    bytes.truncate(2000 * 770 + 301);
    std::fs::write(&bin, &bytes).unwrap();
    let config = format!(
        r#"
[daemon]
data_dir = "{{dir}}/data"
listen = "127.0.0.1:{{port}}"
[sources.cut]
type = "spikeglx"
path = "{}"
pace = "max"
[sources.rig]
type = "simulated"
duration_s = 4
twophoton = false
[sinks.store]
type = "store"
inputs = ["cut", "rig"]
"#,
        bin.display()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let errors = r#"neurod_component_errors_total{component_id="cut",error_type="truncated_file""#;
    wait_for(Duration::from_secs(20), "the truncation error", || {
        d.metric(errors).filter(|v| *v >= 1.0)
    });
    let rows = r#"neurod_component_sent_rows_total{component_id="rig""#;
    let before = d.metric(rows).unwrap_or(0.0);
    wait_for(
        Duration::from_secs(10),
        "the simulated rig to keep flowing",
        || d.metric(rows).filter(|v| *v > before + 1000.0),
    );
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", d.log_text());
    let log = d.log_text();
    assert!(
        log.contains("cut_g0_t0.imec0.ap.bin"),
        "error must name the file:\n{log}"
    );
    // Everything whole that was on disk is stored, exactly.
    let whole = dir.path().join("whole.bin");
    std::fs::write(&whole, &bytes[..2000 * 770]).unwrap();
    let out = check_exact(&py, &dir.path().join("data/store/cut"), &whole, 385);
    assert_eq!(out.trim(), "2000 30000.390639481");
}

#[test]
fn follow_mode_picks_up_data_appended_while_it_runs() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = "live_g0_t0.imec0";
    let (bin, _) = write_spikeglx(dir.path(), name, 0, None);
    let config = format!(
        r#"
[daemon]
data_dir = "{{dir}}/data"
listen = "127.0.0.1:{{port}}"
[sources.live]
type = "spikeglx"
path = "{}"
follow = true
[sinks.store]
type = "store"
inputs = ["live"]
flush_interval_s = 0.2
"#,
        bin.display()
    );
    let mut d = Daemon::start(dir.path(), &config);
    // Append 6000 samples in pieces that split samples, as a writer flushing buffers does.
    let all = sample_bytes(0, 6000);
    let mut f = std::fs::OpenOptions::new().append(true).open(&bin).unwrap();
    for piece in all.chunks(770 * 333 + 17) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let rows = r#"neurod_component_sent_rows_total{component_id="live""#;
    wait_for(
        Duration::from_secs(20),
        "appended samples to arrive",
        || d.metric(rows).filter(|v| *v >= 6000.0),
    );
    // SpikeGLX finishes a file by rewriting its meta with fileSizeBytes: following ends.
    write_meta(dir.path(), name, &real_ap_meta(&data), Some(6000));
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", d.log_text());
    let out = check_exact(&py, &dir.path().join("data/store/live"), &bin, 385);
    assert!(out.starts_with("6000 "), "{out}");
}

#[test]
fn transforms_pass_by_the_layouts_they_do_not_take() {
    // The rig's one port carries a probe, frames and a behaviour table; spike_detect takes only
    // the probe and motion_correct only the frames, and neither may reject the rest.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
duration_s = 1
pace = "max"
frame_size = 64
rois = 5

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"
calibration_s = 0.5

[transforms.mc]
type = "motion_correct"
inputs = ["rig"]
reference_frames = 5

[sinks.store]
type = "store"
inputs = ["spikes", "mc"]
"#,
        common::header()
    );
    let store = common::run_to_end(dir.path(), &config, Duration::from_secs(60)).join("store");
    // run_to_end also requires that no batch was rejected.
    for stream in ["rig.imec0.ap.spikes", "rig.twophoton"] {
        assert!(
            store.join(stream).is_dir(),
            "{stream} not stored; store has {:?}",
            std::fs::read_dir(&store)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                .unwrap_or_default()
        );
    }
}
