//! No panic on any input: inputs that used to panic are clear errors naming the input, and a
//! component that panics anyway is contained (marked failed, `/healthz` 503, the rest goes on).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{header, http_status, neurod, shared_data, tiff_claiming, wait_for, Daemon};

/// `neurod validate` and `neurod run` on `config` (written into `dir`): both must refuse it with
/// exit 1, naming every string of `expected` on stderr, and neither may panic.
fn refused_by_validate_and_run(dir: &Path, config: &str, expected: &[&str]) {
    let cfg = dir.join("neurod.toml");
    let port = common::free_port().to_string();
    let config = config
        .replace("{dir}", &dir.display().to_string())
        .replace("{port}", &port);
    std::fs::write(&cfg, config).unwrap();
    let validate = neurod()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let run = neurod()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    for (what, out) in [("validate", validate), ("run", run)] {
        check_refused(what, &out, expected);
    }
}

fn check_refused(what: &str, out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "neurod {what}:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "neurod {what} panicked:\n{stderr}"
    );
    for e in expected {
        assert!(
            stderr.contains(e),
            "neurod {what} does not name {e:?}:\n{stderr}"
        );
    }
}

/// A real NP1.0 meta with its `imSampRate` replaced, beside a short `.bin`.
fn spikeglx_with_rate(data: &Path, dir: &Path, rate: &str) -> PathBuf {
    let meta = std::fs::read_to_string(
        data.join("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta"),
    )
    .unwrap();
    let meta: String = meta
        .lines()
        .filter(|l| !l.starts_with("fileSizeBytes=") && !l.starts_with("fileTimeSecs="))
        .map(|l| match l.starts_with("imSampRate=") {
            true => format!("imSampRate={rate}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("rig_g0_t0.imec0.ap.meta"), meta).unwrap();
    let bin = dir.join("rig_g0_t0.imec0.ap.bin");
    std::fs::write(&bin, vec![0u8; 385 * 2 * 100]).unwrap();
    bin
}

#[test]
fn absurd_meta_sampling_rate_is_an_error_naming_the_meta_and_field() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bin = spikeglx_with_rate(&data, dir.path(), "1e-30");
    let config = format!(
        "{}[sources.probe]\ntype = \"spikeglx\"\npath = \"{}\"\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"probe\"]\n",
        header(),
        bin.display()
    );
    refused_by_validate_and_run(
        dir.path(),
        &config,
        &["rig_g0_t0.imec0.ap.meta", "imSampRate", "1e-30"],
    );
}

#[test]
fn out_of_range_durations_are_validation_errors() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bin = spikeglx_with_rate(&data, dir.path(), "30000");
    let tif = data.join("twophoton-thunder/thunder_mouse_500x64x64_int16.tif");
    let config = format!(
        "{}[sources.probe]\ntype = \"spikeglx\"\npath = \"{}\"\nfollow = true\nidle_timeout_s = 1e30\n\
         [sources.scope]\ntype = \"tiff\"\npath = \"{}\"\nrate_hz = 30\nfollow = true\nidle_timeout_s = 1e30\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"probe\", \"scope\"]\nflush_interval_s = 1e30\n",
        header(),
        bin.display(),
        tif.display()
    );
    refused_by_validate_and_run(
        dir.path(),
        &config,
        &[
            "source `probe` (type `spikeglx`): `idle_timeout_s` = 1000000000000000000000000000000",
            "source `scope` (type `tiff`): `idle_timeout_s`",
            "`flush_interval_s`",
        ],
    );
}

#[test]
fn tiff_header_claiming_huge_frames_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.tif");
    std::fs::write(&huge, tiff_claiming(100_000, 100_000)).unwrap();
    let config = format!(
        "{}[sources.scope]\ntype = \"tiff\"\npath = \"{}\"\nrate_hz = 30\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"scope\"]\n",
        header(),
        huge.display()
    );
    refused_by_validate_and_run(dir.path(), &config, &["huge.tif", "100000 × 100000"]);
    let inspect = neurod().arg("inspect").arg(&huge).output().unwrap();
    check_refused("inspect", &inspect, &["huge.tif", "100000 × 100000"]);
}

#[test]
fn a_component_that_panics_is_failed_on_healthz_while_the_others_keep_storing() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[sources.rig]\ntype = \"simulated\"\ntwophoton = false\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"rig\"]\nflush_interval_s = 0.2\n\
         [sinks.doomed]\ntype = \"store\"\ninputs = [\"rig\"]\n",
        header()
    );
    let mut d = Daemon::start_with_env(dir.path(), &config, &[("NEUROD_FAULT_PANIC", "doomed:5")]);

    let body = wait_for(Duration::from_secs(60), "/healthz to answer 503", || {
        http_status(d.port, "/healthz").filter(|(code, _)| *code == 503)
    })
    .1;
    assert!(body.contains("doomed"), "{body}");
    let status: serde_json::Value = serde_json::from_str(&d.get("/status")).unwrap();
    let component = |id: &str| {
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(component("doomed")["state"], "failed", "{status}");
    let last_error = component("doomed")["last_error"].to_string();
    assert!(
        last_error.contains("panicked: NEUROD_FAULT_PANIC"),
        "{last_error}"
    );
    assert_eq!(component("store")["state"], "running", "{status}");
    assert_eq!(component("rig")["state"], "running", "{status}");
    assert_eq!(
        d.metric(r#"neurod_component_errors_total{component_id="doomed",error_type="panic""#),
        Some(1.0)
    );

    // The other store keeps writing its stream after the panic, on disk.
    let stream = dir.path().join("data/store/rig.imec0.ap");
    let before = dir_bytes(&stream);
    wait_for(
        Duration::from_secs(60),
        "the other store to keep growing",
        || (dir_bytes(&stream) > before + 100_000).then_some(()),
    );
    assert!(
        d.log_text().contains("component panicked"),
        "{}",
        d.log_text()
    );

    // It still drains and flushes on SIGTERM, and exits 1 because a component failed.
    d.signal("TERM");
    let exit = d.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(1), "{}", d.log_text());
}

#[test]
fn a_replay_is_not_blocked_by_a_consumer_that_panicked() {
    // At `pace = "max"` the source waits for room in every consumer's queue (nothing is lost):
    // the panicked sink's queue must behave as closed, or the replay would wait forever.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}queue_batches = 2\n[sources.rig]\ntype = \"simulated\"\ntwophoton = false\n\
         pace = \"max\"\nduration_s = 3\n\
         [sinks.store]\ntype = \"store\"\ninputs = [\"rig\"]\n\
         [sinks.doomed]\ntype = \"store\"\ninputs = [\"rig\"]\n",
        header()
    );
    let mut d = Daemon::start_with_env(dir.path(), &config, &[("NEUROD_FAULT_PANIC", "doomed:3")]);
    let exit = d.wait_exit(Duration::from_secs(120));
    let log = d.log_text();
    assert_eq!(exit.code(), Some(1), "a component failed:\n{log}");
    assert!(log.contains("component panicked"), "{log}");
    let rows = parquet_rows(&dir.path().join("data/store/rig.imec0.ap"));
    assert_eq!(
        rows, 90_000,
        "every sample of the 3 s replay is stored:\n{log}"
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn parquet_rows(dir: &Path) -> i64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            let r = SerializedFileReader::new(std::fs::File::open(p).unwrap()).unwrap();
            r.metadata().file_metadata().num_rows()
        })
        .sum()
}
