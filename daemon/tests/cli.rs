//! `neurod validate` and `neurod inspect`, as a user runs them.

mod common;

use common::{neurod, shared_data};

/// `neurod inspect --json PATH`, which must succeed, parsed.
fn inspect_json(path: &std::path::Path) -> serde_json::Value {
    use std::ffi::OsStr;
    common::neurod_json(&[
        OsStr::new("inspect"),
        OsStr::new("--json"),
        path.as_os_str(),
    ])
}

#[test]
fn validate_lists_every_problem_of_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broken.toml");
    std::fs::write(
        &cfg,
        r#"
        [daemon]
        listen = "127.0.0.1:9750"
        colour = "blue"

        [sources.probe0]
        type = "spikeglx"
        path = "/nonexistent/run_g0_t0.imec0.ap.bin"

        [sources.rig]
        type = "simulated"
        seeed = 3

        [sources.cam]
        type = "webcam"

        [sources.rig2]
        type = "simulated"

        [transforms.ap]
        type = "select_channels"
        inputs = ["ap2"]
        kinds = ["ap"]

        [transforms.ap2]
        type = "select_channels"
        inputs = ["ap"]
        kinds = ["ap"]

        [transforms.frames_only]
        type = "select_channels"
        inputs = ["rig2.ground_truth"]
        kinds = ["ap"]

        [sinks.store]
        type = "store"
        inputs = ["nothing_here"]
        "#,
    )
    .unwrap();
    let err = common::validate_errors(&cfg);
    for needle in [
        "colour",                 // unknown key in [daemon]
        "/nonexistent/run_g0_t0", // missing file
        "seeed",                  // unknown key in a component
        "unknown type `webcam`",  // unknown component type
        "cycle",                  // ap -> ap2 -> ap
        "`nothing_here` names no component",
        "accepts continuous streams, but input `rig2.ground_truth` produces events",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn validate_accepts_the_shipped_config() {
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let out = neurod()
        .arg("validate")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 sources, 6 transforms, 3 sinks"));
}

#[test]
fn inspect_json_describes_a_real_neuropixels_meta() {
    let Some(data) = shared_data() else { return };
    let meta = data.join("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta");
    let v = inspect_json(&meta);
    // Exact rate from the meta, not rounded to 30 kHz.
    assert_eq!(v["sampling_hz"].as_f64(), Some(30000.390639481));
    assert_eq!(v["saved_channels"].as_u64(), Some(385));
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 385);
    assert_eq!(chans[0]["name"], "AP0");
    assert_eq!(chans[0]["kind"], "ap");
    assert_eq!(chans[384]["kind"], "sync");
    assert_eq!(chans[1]["x_um"].as_f64(), Some(48.0)); // NP1.0 checkerboard
    assert_eq!(chans[2]["y_um"].as_f64(), Some(20.0));
    assert_eq!(chans[0]["uv_per_bit"].as_f64(), Some(2.34375));
    assert!(v["duration_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn inspect_says_growing_for_a_meta_written_while_acquiring() {
    let Some(data) = shared_data() else { return };
    let meta = data.join(
        "spikeglx-meta/ibl-neuropixel/sampleNP2.4_4shanks_while_acquiring_incomplete.ap.meta",
    );
    let v = inspect_json(&meta);
    assert!(v["duration_s"].is_null());
    let text = neurod().arg("inspect").arg(&meta).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("growing"));
}

#[test]
fn inspect_describes_an_open_ephys_recording() {
    let Some(data) = shared_data() else { return };
    let rec = data.join("openephys-16ch-40khz/experiment1/recording1");
    let v = inspect_json(&rec);
    assert_eq!(v["sampling_hz"].as_f64(), Some(40000.0));
    assert_eq!(v["saved_channels"].as_u64(), Some(16));
    assert_eq!(v["duration_s"].as_f64(), Some(133120.0 / 40000.0));
    assert_eq!(v["channels"][0]["name"], "CH1");
}

#[test]
fn inspect_of_a_corrupt_meta_names_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("bad_g0_t0.imec0.ap.meta");
    std::fs::write(&meta, "nSavedChans=abc\ntypeThis=imec\n").unwrap();
    let out = neurod().arg("inspect").arg(&meta).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_g0_t0.imec0.ap.meta"), "{err}");
    assert!(
        err.contains("nSavedChans") || err.contains("imSampRate"),
        "{err}"
    );
}

#[test]
fn inspect_json_gives_suite2p_roi_moments_equal_to_scipy() {
    let Some(data) = shared_data() else { return };
    let plane = data.join("suite2p-fissa");
    let v = inspect_json(&plane);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plane.join("expected_moments.json")).unwrap())
            .unwrap();
    assert_eq!(v["roi_count"], 23);
    assert_eq!(v["frames"], 864);
    assert_eq!(v["height"], 176);
    assert_eq!(v["width"], 156);
    let rois = v["rois"].as_array().unwrap();
    assert_eq!(rois.len(), 23);
    for (i, roi) in rois.iter().enumerate() {
        assert_eq!(roi["index"], i);
        for key in ["skew", "excess_kurtosis"] {
            let got = roi[key].as_f64().unwrap();
            let want = expected[key][i].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs(),
                "ROI {i} {key}: {got} vs scipy {want}"
            );
        }
        let predictable = expected["skew"][i].as_f64().unwrap() <= 3.51
            && expected["excess_kurtosis"][i].as_f64().unwrap() <= 22.62;
        let label = if predictable {
            "predictable"
        } else {
            "unpredictable"
        };
        assert_eq!(roi["label"], label, "ROI {i}");
        assert!(roi["iscell"].is_boolean() && roi["npix"].as_u64().unwrap() > 0);
    }
    let text = neurod().arg("inspect").arg(&plane).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("POYO-SSL"));
}

#[test]
fn inspect_describes_a_tiff_stack_and_names_a_corrupt_one() {
    let Some(data) = shared_data() else { return };
    let tif = data.join("twophoton-thunder/thunder_mouse_500x64x64_int16.tif");
    let v = inspect_json(&tif);
    assert_eq!(v["frames"], 500);
    assert_eq!(v["height"], 64);
    assert_eq!(v["width"], 64);
    assert_eq!(v["dtype"], "int16");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tif");
    std::fs::write(&bad, b"II*\0not a tiff at all").unwrap();
    let out = neurod().arg("inspect").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.tif"));
}

#[test]
fn validate_names_missing_suite2p_and_tiff_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("imaging.toml");
    std::fs::write(
        &cfg,
        r#"
        [sources.s2p]
        type = "suite2p"
        path = "/nonexistent/suite2p/plane0"

        [sources.scope]
        type = "tiff"
        path = "/nonexistent/session1"
        rate_hz = 30.0

        [sinks.store]
        type = "store"
        inputs = ["s2p", "s2p.rois", "scope"]
        "#,
    )
    .unwrap();
    let err = common::validate_errors(&cfg);
    assert!(
        err.contains("s2p") && err.contains("/nonexistent/suite2p/plane0"),
        "{err}"
    );
    assert!(
        err.contains("scope") && err.contains("/nonexistent/session1"),
        "{err}"
    );
}
