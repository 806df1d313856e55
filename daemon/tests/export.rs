//! `neurod export --format temporaldata` of the main job's data (config.toml, shortened), loaded
//! by `temporaldata` (pip) and compared value by value with the stored files read by pyarrow:
//! spike times, unit indices and amplitudes, the units' POYO-SSL labels, dF/F, running speed; and a
//! `--population predictable` export holds exactly the predictable neurons. Then the same for
//! real recordings: an Open Ephys recording through spike detection, and a Suite2p session.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{header, neurod, python, run_python, run_to_end, shared_data};

const CHECK: &str = r#"
import sys, numpy as np, h5py, pyarrow.dataset as ds
from temporaldata import Data

data, whole, pred = sys.argv[1:4]

def table(path):
    return ds.dataset(path, format="parquet").to_table()

spikes = table(f"{data}/store/rig.imec0.ap.spikes")
dff = table(f"{data}/store/rig.twophoton.traces.dff")
neurons = table(f"{data}/store/rig.twophoton.traces.dff.neurons").to_pylist()
last = {}
for row in neurons:
    u = int(row["unit"])
    if u not in last or row["frame_index"] >= last[u]["frame_index"]:
        last[u] = row
rois = sorted(set(dff["roi"].to_pylist()))
assert sorted(last) == rois, (sorted(last), rois)
fi, r = dff["frame_index"].to_numpy(), dff["roi"].to_numpy()
grid = np.full((fi.max() + 1, len(rois)), np.nan, dtype=np.float32)
grid[fi - fi.min(), [rois.index(x) for x in r]] = dff["dff"].to_numpy()

with h5py.File(whole, "r") as f:
    d = Data.from_hdf5(f, lazy=False)
    # Spikes: every stored spike once, in time order, its channel its unit.
    t = spikes["time_s"].to_numpy()
    order = np.argsort(t, kind="stable")
    assert len(d.spikes) == len(t) > 1000, (len(d.spikes), len(t))
    assert np.array_equal(d.spikes.timestamps, t[order])
    ch = spikes["channel"].to_numpy()[order]
    ids = d.units.id
    assert all(ids[u] == f"rig.imec0.ap/AP{c}" for u, c in zip(d.spikes.unit_index[:5000], ch[:5000]))
    assert np.array_equal(d.units.channel[d.spikes.unit_index], ch)
    assert np.array_equal(d.spikes.amplitude_uv, spikes["amplitude_uv"].to_numpy()[order])
    # Units: 384 channels with their geometry, then every ROI with its last label.
    kind = d.units.kind
    assert (kind == "channel").sum() == 384 and (kind == "roi").sum() == len(rois)
    assert np.isfinite(d.units.x_um[kind == "channel"]).all()
    roi_units = np.flatnonzero(kind == "roi")
    for u in roi_units:
        row = last[int(d.units.roi[u])]
        assert d.units.label[u] == row["label"], (u, d.units.label[u], row["label"])
        assert d.units.skew[u] == row["skew"] and d.units.excess_kurtosis[u] == row["excess_kurtosis"]
    # dF/F: frames × ROIs, the stored values exactly, at the imaging rate.
    traces = d.calcium_traces
    assert traces.sampling_rate == 30.0, traces.sampling_rate
    cols = d.units.trace_index[roi_units]
    assert np.array_equal(traces.df_over_f[:, cols], grid, equal_nan=True)
    assert d.domain.start[0] <= t.min() and d.domain.end[-1] >= t.max()
    # Behaviour: the running speed as a time series, its stored values exactly.
    beh = table(f"{data}/store/rig.behaviour")
    assert np.array_equal(d.behaviour.timestamps, beh["time_s"].to_numpy())
    assert np.array_equal(d.behaviour.running_speed_cm_s, beh["running_speed_cm_s"].to_numpy())
    assert list(d.probes) == ["rig.imec0.ap.spikes: NP1000"], d.probes

with h5py.File(whole, "r") as f:
    # Lazily, a slice holds exactly the stored spikes of that second.
    d = Data.from_hdf5(f, lazy=True)
    s = d.slice(5.0, 6.0)
    want = t[(t >= 5.0) & (t < 6.0)]
    assert np.allclose(s.spikes.timestamps + 5.0, np.sort(want)), (len(s.spikes), len(want))

with h5py.File(pred, "r") as f:
    d = Data.from_hdf5(f, lazy=False)
    want = sorted(u for u, row in last.items() if row["label"] == "predictable")
    assert 0 < len(want) < len(rois), want
    assert sorted(d.units.roi.tolist()) == want, (d.units.roi, want)
    assert set(d.units.label) == {"predictable"}
    assert not hasattr(d, "spikes") or d.spikes is None
    cols = [rois.index(x) for x in d.units.roi]
    assert np.array_equal(d.calcium_traces.df_over_f, grid[:, cols], equal_nan=True)
print("ok", len(t), "spikes", len(rois), "rois", len(want), "predictable")
"#;

/// The main job's config with a finite, unpaced run (`{dir}` and `{port}` filled by the test
/// daemon).
fn main_job() -> String {
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"))
        .expect("the repository's config.toml");
    config
        .replace("data_dir = \"data\"", "data_dir = \"{dir}/data\"")
        .replace(
            "listen = \"127.0.0.1:9750\"",
            "listen = \"127.0.0.1:{port}\"",
        )
        .replace("duration_s = 0 ", "duration_s = 20 ")
        .replace("pace = \"realtime\"", "pace = \"max\"")
}

fn export(data: &Path, out: &Path, extra: &[&str]) {
    let st = neurod()
        .args(["export", "--format", "temporaldata", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .status()
        .expect("neurod export runs");
    assert!(st.success(), "neurod export {extra:?} failed");
}

#[test]
fn temporaldata_export_of_the_main_job_equals_the_stored_data() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = main_job();
    assert!(
        config.contains("duration_s = 20 "),
        "config.toml changed shape"
    );
    let data = run_to_end(dir.path(), &config, Duration::from_secs(300));
    let whole = dir.path().join("session.h5");
    let pred = dir.path().join("pretraining.h5");
    export(&data, &whole, &[]);
    export(&data, &pred, &["--population", "predictable"]);
    let out = run_python(
        &py,
        CHECK,
        &[
            &data.display().to_string(),
            &whole.display().to_string(),
            &pred.display().to_string(),
        ],
    );
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn an_unknown_stream_or_format_not_built_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = neurod()
        .args(["export", "--format", "temporaldata", "--streams", "nope"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("x.h5"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nope: no such stream stored"), "{err}");
    assert!(!dir.path().join("x.h5").exists());
    let missing = dir.path().join("no-such-dir");
    let out = neurod()
        .args(["export", "--format", "temporaldata", "--data-dir"])
        .arg(&missing)
        .arg("--out")
        .arg(dir.path().join("x.h5"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no-such-dir: no such data directory"), "{err}");
}

/// A real session's export against its stored streams: `spikes` (a spike stream id, or `-`)
/// and `traces` (a dF/F trace stream id, or `-`), each value equal.
const CHECK_REAL: &str = r#"
import sys, numpy as np, h5py, pyarrow.dataset as ds
from temporaldata import Data

data, out, spikes_id, traces_id, channels = sys.argv[1:6]
channels = int(channels)
with h5py.File(out, "r") as f:
    d = Data.from_hdf5(f, lazy=False)
    kind = d.units.kind
    if spikes_id != "-":
        s = ds.dataset(f"{data}/store/{spikes_id}", format="parquet").to_table()
        t = s["time_s"].to_numpy()
        order = np.argsort(t, kind="stable")
        assert len(t) > 0 and np.array_equal(d.spikes.timestamps, t[order]), (len(d.spikes), len(t))
        assert np.array_equal(d.units.channel[d.spikes.unit_index], s["channel"].to_numpy()[order])
        assert (kind == "channel").sum() == channels, ((kind == "channel").sum(), channels)
    if traces_id != "-":
        t = ds.dataset(f"{data}/store/{traces_id}", format="parquet").to_table()
        fi, r = t["frame_index"].to_numpy(), t["roi"].to_numpy()
        rois = sorted(set(r.tolist()))
        grid = np.full((fi.max() - fi.min() + 1, len(rois)), np.nan, dtype=np.float32)
        grid[fi - fi.min(), [rois.index(x) for x in r]] = t["dff"].to_numpy()
        units = np.flatnonzero(kind == "roi")
        assert sorted(d.units.roi[units].tolist()) == rois
        cols = d.units.trace_index[units]
        order = [rois.index(x) for x in d.units.roi[units]]
        assert np.array_equal(d.calcium_traces.df_over_f[:, cols], grid[:, order], equal_nan=True)
        labels = set(d.units.label[units])
        assert labels <= {"predictable", "unpredictable", "unlabelled"}, labels
print("ok")
"#;

fn check_real(py: &Path, data: &Path, out: &Path, spikes: &str, traces: &str, channels: usize) {
    let got = run_python(
        py,
        CHECK_REAL,
        &[
            &data.display().to_string(),
            &out.display().to_string(),
            spikes,
            traces,
            &channels.to_string(),
        ],
    );
    assert!(got.contains("ok"), "{got}");
}

#[test]
fn temporaldata_export_of_a_real_open_ephys_recording_holds_its_spikes() {
    let (Some(shared), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recording = shared.join("openephys-16ch-40khz/experiment1/recording1");
    let config = format!(
        r#"{}
[sources.oe16]
type = "openephys"
path = "{}"
pace = "max"

[transforms.spikes]
type = "spike_detect"
inputs = ["oe16"]
calibration_s = 0.5

[sinks.store]
type = "store"
inputs = ["oe16", "spikes"]
"#,
        header(),
        recording.display()
    );
    let data = run_to_end(dir.path(), &config, Duration::from_secs(120));
    let out = dir.path().join("oe16.h5");
    export(&data, &out, &[]);
    let ids = stream_ids(&data);
    let spikes = ids
        .iter()
        .find(|id| id.ends_with(".spikes"))
        .unwrap_or_else(|| panic!("no spike stream stored: {ids:?}"));
    check_real(&py, &data, &out, spikes, "-", 16);
}

#[test]
fn temporaldata_export_of_the_suite2p_session_holds_its_traces_and_labels() {
    let (Some(shared), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plane = shared.join("suite2p-fissa");
    let config = format!(
        r#"{}
[sources.s2p]
type = "suite2p"
path = "{}"
rate_hz = 30
pace = "max"

[transforms.dff]
type = "dff"
inputs = ["s2p"]

[transforms.moments]
type = "moments"
inputs = ["dff"]

[transforms.pred]
type = "predictability"
inputs = ["moments", "dff"]

[sinks.store]
type = "store"
inputs = ["dff", "moments", "pred", "pred.predictable", "pred.unpredictable"]
"#,
        header(),
        plane.display()
    );
    let data = run_to_end(dir.path(), &config, Duration::from_secs(120));
    let out = dir.path().join("s2p.h5");
    export(&data, &out, &[]);
    check_real(&py, &data, &out, "-", "s2p.suite2p-fissa.dff", 0);
}

/// The stream ids stored under `data/store`.
fn stream_ids(data: &Path) -> Vec<String> {
    let out = neurod()
        .args(["ls", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("neurod ls runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json");
    v.as_array()
        .or_else(|| v["streams"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s["stream_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
