//! `neurod export` of the main job's data (config.toml, shortened), compared value by value with
//! the stored files read by pyarrow: as temporaldata (loaded by `temporaldata` from pip: spike
//! times, unit indices and amplitudes, the units' POYO-SSL labels, dF/F, running speed; a
//! `--population predictable` export holds exactly the predictable neurons) and as NWB (read by
//! pynwb, passed by nwbinspector, raw samples bit for bit). Then the same for real recordings:
//! an Open Ephys recording through spike detection, and a Suite2p session.

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

/// An NWB export against the stored streams it came from (each id, or `-` where the session has
/// none): nwbinspector finds nothing CRITICAL or BEST_PRACTICE_VIOLATION, pynwb reads it, the
/// raw samples are bit for bit the stored ones, each unit's spike times are its channel's stored
/// spikes, dF/F and the ROIs' labels and masks are the stored ones, behaviour likewise.
const CHECK_NWB: &str = r#"
import sys, numpy as np, pyarrow.dataset as ds
from pynwb import NWBHDF5IO
from nwbinspector import inspect_nwbfile, Importance

data, path, raw_id, spikes_id, traces_id, rois_id, behaviour = sys.argv[1:8]

def table(name):
    return ds.dataset(f"{data}/store/{name}", format="parquet").to_table()

bad = [m for m in inspect_nwbfile(nwbfile_path=path)
       if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]
assert not bad, "\n".join(f"{m.importance.name} {m.check_function_name}: {m.message}" for m in bad)

# The schema is cached in the file, as DANDI expects.
assert NWBHDF5IO.get_namespaces(path)["core"] == "2.11.0"
with NWBHDF5IO(path, "r") as io:
    f = io.read()
    assert f.subject.species == "Mus musculus" and f.subject.subject_id == "m1"
    names = []
    if raw_id != "-":
        # Every stored sample, bit for bit, at the stored rate, with the probe's gain.
        raw = table(raw_id)
        meta = raw.schema
        names = [n for n in raw.column_names
                 if (meta.field(n).metadata or {}).get(b"neurod.channel_kind") in (b"ap", b"lf")]
        es = f.acquisition[raw_id]
        assert es.data.dtype == np.int16 and es.data.shape == (raw.num_rows, len(names)), es.data.shape
        want = np.stack([raw[n].to_numpy() for n in names], axis=1)
        assert np.array_equal(es.data[:], want)
        rate = float(meta.metadata[b"neurod.sampling_hz"])
        assert es.rate == rate and es.starting_time == raw["sample_index"][0].as_py() / rate
        gains = {float(meta.field(n).metadata[b"neurod.uv_per_bit"]) for n in names}
        if len(gains) == 1:
            assert abs(es.conversion - gains.pop() * 1e-6) < 1e-15, es.conversion
        assert es.data.compression is not None and es.data.chunks is not None
        # Electrodes: the probe's channels and geometry, in data's column order.
        el = es.electrodes.to_dataframe()
        assert list(el["channel_name"]) == names
        for i, n in enumerate(names):
            md = meta.field(n).metadata
            if b"neurod.x_um" in md:
                assert el["rel_x"].iloc[i] == float(md[b"neurod.x_um"])
                assert el["rel_y"].iloc[i] == float(md[b"neurod.y_um"])
    spikes = 0
    if spikes_id != "-":
        # Each channel a unit, with its stored spikes exactly, in time order.
        s = table(spikes_id)
        ch, t, amp = (s[c].to_numpy() for c in ("channel", "time_s", "amplitude_uv"))
        units = f.units
        if names:
            assert len(units) == len(names), (len(units), len(names))
        for u in range(len(units)):
            c = units["channel"][u]
            assert np.array_equal(units["spike_times"][u], np.sort(t[ch == c])), u
            assert np.array_equal(np.sort(units["amplitude_uv"][u]), np.sort(amp[ch == c]))
            if names:
                assert units["electrodes"][u]["channel_name"].iloc[0] == names[c]
            spikes += len(units["spike_times"][u])
        assert spikes == len(t) > 0, (spikes, len(t))
    rois = []
    if traces_id != "-":
        # Every ROI with its last label (and mask); dF/F frames × ROIs exactly.
        dff = table(traces_id)
        fi, roi = dff["frame_index"].to_numpy(), dff["roi"].to_numpy()
        rrs = f.processing["ophys"]["DfOverF"][traces_id]
        ps = rrs.rois.table
        rois = list(ps.id[:])
        assert rois == sorted(set(roi.tolist())), rois
        grid = np.full((fi.max() - fi.min() + 1, len(rois)), np.nan, dtype=np.float32)
        grid[fi - fi.min(), [rois.index(x) for x in roi]] = dff["dff"].to_numpy()
        assert np.array_equal(rrs.data[:], grid, equal_nan=True)
        assert list(rrs.rois.data[:]) == list(range(len(rois)))
        last = {}
        for row in table(f"{traces_id}.neurons").to_pylist():
            u = int(row["unit"])
            if u not in last or row["frame_index"] >= last[u]["frame_index"]:
                last[u] = row
        assert list(ps["label"][:]) == [last[i]["label"] for i in rois]
        if rois_id != "-":
            m = table(rois_id)
            r = m["roi"].to_numpy()
            for k, i in enumerate(rois):
                pm = np.array([tuple(p) for p in ps["pixel_mask"][k]]).reshape(-1, 3)
                sel = r == i
                assert np.array_equal(pm[:, 0], m["x"].to_numpy()[sel]), i
                assert np.array_equal(pm[:, 1], m["y"].to_numpy()[sel]), i
                assert np.allclose(pm[:, 2], m["weight"].to_numpy()[sel]), i
    if behaviour != "-":
        stream, column = behaviour.split(":")
        b = table(stream)
        ts = f.processing["behavior"]["BehavioralTimeSeries"][column]
        assert np.array_equal(ts.data[:], b[column].to_numpy())
        bt = b["time_s"].to_numpy()
        assert np.allclose(ts.starting_time + np.arange(len(bt)) / ts.rate, bt, atol=1e-9)
print("ok", len(names), "channels", spikes, "spikes", len(rois), "rois")
"#;

/// What the NWB export is given that the store does not hold (DANDI asks for it).
const ABOUT: [&str; 8] = [
    "--subject-id",
    "m1",
    "--species",
    "Mus musculus",
    "--age",
    "P90D",
    "--location",
    "VISp",
];

/// `data` exported as NWB to `out`, checked by [`CHECK_NWB`] against the stored streams.
fn check_nwb(py: &Path, data: &Path, out: &Path, ids: [&str; 5]) {
    let st = neurod()
        .args(["export", "--format", "nwb", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(ABOUT)
        .status()
        .expect("neurod export runs");
    assert!(st.success(), "neurod export --format nwb failed");
    let mut args = vec![data.display().to_string(), out.display().to_string()];
    args.extend(ids.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = run_python(py, CHECK_NWB, &args);
    assert!(got.contains("ok"), "{got}");
    eprintln!("{}: {}", out.display(), got.trim());
}

/// The main job's config with a finite, unpaced run (`{dir}` and `{port}` filled by the test
/// daemon).
fn main_job() -> String {
    common::main_job_config()
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
fn exports_of_the_main_job_equal_the_stored_data() {
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
    let ids = stream_ids(&data);
    assert!(
        ids.contains(&"rig.twophoton.rois".to_string()),
        "config.toml stores the ROI masks: {ids:?}"
    );
    check_nwb(
        &py,
        &data,
        &dir.path().join("session.nwb"),
        [
            "rig.imec0.ap",
            "rig.imec0.ap.spikes",
            "rig.twophoton.traces.dff",
            "rig.twophoton.rois",
            "rig.behaviour:running_speed_cm_s",
        ],
    );
}

#[test]
fn an_unknown_stream_or_a_missing_data_dir_is_a_clear_error() {
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
    let out = neurod()
        .args(["export", "--format", "nwb", "--session-start", "yesterday"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("x.nwb"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--session-start yesterday: not an RFC 3339 time"),
        "{err}"
    );
    assert!(!dir.path().join("x.nwb").exists());
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
fn exports_of_a_real_open_ephys_recording_hold_its_samples_and_spikes() {
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
    let raw = ids
        .iter()
        .find(|id| !id.ends_with(".spikes"))
        .unwrap_or_else(|| panic!("no raw stream stored: {ids:?}"));
    let nwb = dir.path().join("oe16.nwb");
    check_nwb(&py, &data, &nwb, [raw, spikes, "-", "-", "-"]);
}

#[test]
fn exports_of_the_suite2p_session_hold_its_traces_labels_and_masks() {
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
inputs = ["s2p.rois", "dff", "moments", "pred", "pred.predictable", "pred.unpredictable"]
"#,
        header(),
        plane.display()
    );
    let data = run_to_end(dir.path(), &config, Duration::from_secs(120));
    let out = dir.path().join("s2p.h5");
    export(&data, &out, &[]);
    check_real(&py, &data, &out, "-", "s2p.suite2p-fissa.dff", 0);
    // Labels as they stood at 10 s (none yet: a label needs 20 s of samples) and at 25 s.
    let early = dir.path().join("s2p-10s.h5");
    export(&data, &early, &["--labels-at", "10"]);
    let at25 = dir.path().join("s2p-25s-predictable.h5");
    export(
        &data,
        &at25,
        &["--labels-at", "25", "--population", "predictable"],
    );
    let got = run_python(
        &py,
        LABELS_AT,
        &[
            &data.display().to_string(),
            &early.display().to_string(),
            &at25.display().to_string(),
        ],
    );
    assert!(got.contains("ok"), "{got}");
    let nwb = dir.path().join("s2p.nwb");
    let (traces, rois) = ("s2p.suite2p-fissa.dff", "s2p.suite2p-fissa.rois");
    check_nwb(&py, &data, &nwb, ["-", "-", traces, rois, "-"]);
}

/// `--labels-at`: the labels of the stored `.neurons` rows up to that time, frame f at f / 30 s.
const LABELS_AT: &str = r#"
import sys, h5py, numpy as np, pyarrow.dataset as ds
from temporaldata import Data

data, early, at25 = sys.argv[1:4]
rows = ds.dataset(f"{data}/store/s2p.suite2p-fissa.dff.neurons", format="parquet").to_table().to_pylist()
with h5py.File(early, "r") as f:
    d = Data.from_hdf5(f, lazy=False)
    assert len(d.units.id) == 23 and set(d.units.label) == {"unlabelled"}, set(d.units.label)
last = {}
for r in rows:
    if r["frame_index"] <= 25 * 30 and (r["unit"] not in last or r["frame_index"] >= last[r["unit"]]["frame_index"]):
        last[r["unit"]] = r
want = sorted(int(u) for u, r in last.items() if r["label"] == "predictable")
with h5py.File(at25, "r") as f:
    d = Data.from_hdf5(f, lazy=False)
    assert sorted(d.units.roi.tolist()) == want, (d.units.roi, want)
assert want
print("ok", want)
"#;

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
