//! Two-photon calcium imaging and POYO-SSL neuron selection end to end, as a lab runs it: real
//! Suite2p traces, the real thunder movie (from a TIFF stack and pushed as frames over Arrow
//! IPC) and the simulated rig, through motion correction, ROI traces, dF/F, moments and
//! predictability into the store, read back with pyarrow and checked against numpy and scipy
//! (peers) computed in the same test on the same input.

mod common;

use std::time::Duration;

use common::{header, python, run_python, run_to_end, shared_data, wait_for, Daemon};

/// Helpers shared by the checks: stored tables, traces as (roi × frame) grids, the last neuron
/// table row per unit, the POYO-SSL rule with its hysteresis band, and the routing of trace rows.
const PY_COMMON: &str = r#"
import sys, os, json, numpy as np, pyarrow.dataset as ds, scipy.stats as st

def table(path):
    assert os.path.isdir(path), (path, sorted(os.listdir(os.path.dirname(path))))
    return ds.dataset(path, format="parquet").to_table()

def grid(t, name, rois):
    """Column `name` of a traces table as a (len(rois), frames) array; every (roi, frame) once."""
    fi = t["frame_index"].to_numpy()
    r = t["roi"].to_numpy()
    pos = {roi: i for i, roi in enumerate(rois)}
    assert set(np.unique(r)) == set(rois), (sorted(set(np.unique(r))), rois)
    n_fr = fi.max() + 1
    assert len(fi) == len(rois) * n_fr, (name, len(fi), len(rois), n_fr)
    assert len(set(zip(fi.tolist(), r.tolist()))) == len(fi), "a (frame, roi) twice"
    g = np.full((len(rois), n_fr), np.nan)
    g[[pos[x] for x in r], fi] = t[name].to_numpy()
    return g

def last_rows(t):
    """The row of each unit with the largest frame_index (the latest of equals)."""
    last = {}
    for row in t.to_pylist():
        u = row["unit"]
        if u not in last or row["frame_index"] >= last[u]["frame_index"]:
            last[u] = row
    return last

MAX_SKEW, MAX_KURT, BAND = 3.51, 22.62, 0.05

def rule(s, k):
    return "predictable" if s <= MAX_SKEW and k <= MAX_KURT else "unpredictable"

def in_band(s, k):
    """Hysteresis may hold either label here: the plain rule decides only outside the band."""
    if rule(s, k) == "predictable":
        return not (s <= MAX_SKEW * (1 - BAND) and k <= MAX_KURT * (1 - BAND))
    return not (s > MAX_SKEW * (1 + BAND) or k > MAX_KURT * (1 + BAND))

def close(got, want, rel, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    err = np.abs(got - want) / np.maximum(np.abs(want), 1e-12)
    assert (err <= rel).all(), (what, float(err.max()), got[err > rel][:5], want[err > rel][:5])
    return float(err.max())

def check_neurons(neurons, values, rois, min_n, strict):
    """The final neuron table against scipy on `values` (rois × frames); returns the labels."""
    last = last_rows(neurons)
    assert sorted(last) == sorted(str(r) for r in rois), (sorted(last), rois)
    s_want = st.skew(values, axis=1)
    k_want = st.kurtosis(values, axis=1)
    s_got = [last[str(r)]["skew"] for r in rois]
    k_got = [last[str(r)]["excess_kurtosis"] for r in rois]
    for r in rois:
        assert last[str(r)]["n"] == values.shape[1], (r, last[str(r)]["n"])
    es = close(s_got, s_want, 1e-6, "skew")
    ek = close(k_got, k_want, 1e-6, "excess kurtosis")
    labels = {}
    for i, r in enumerate(rois):
        got = last[str(r)]["label"]
        if values.shape[1] < min_n:
            assert got == "unlabelled", (r, got)
        elif in_band(s_want[i], k_want[i]):
            assert not strict, f"roi {r} sits in the hysteresis band: {s_want[i]} {k_want[i]}"
            assert got in ("predictable", "unpredictable"), (r, got)
        else:
            assert got == rule(s_want[i], k_want[i]), (r, got, s_want[i], k_want[i])
        labels[r] = got
    return labels, s_want, k_want, es, ek

def check_routing(base, neurons, moments, rois, n_fr, f_grid):
    """Every trace row left once, on the port of the label its ROI had when the row was routed:
    the labels of the first moments table covering its frame."""
    tables = np.unique(moments["frame_index"].to_numpy())
    history = {}
    for row in neurons.to_pylist():
        if row["label"] != "unlabelled" and row["labelled_since_frame"] is not None:
            history.setdefault(int(row["unit"]), []).append(
                (row["labelled_since_frame"], row["label"]))
    for h in history.values():
        h.sort(key=lambda x: x[0])
    def label_at(roi, frame):
        i = np.searchsorted(tables, frame)
        t = tables[i] if i < len(tables) else np.iinfo(np.int64).max
        label = "unlabelled"
        for since, l in history.get(roi, []):
            if since <= t:
                label = l
        return label
    pos = {roi: i for i, roi in enumerate(rois)}
    seen, counts = set(), {}
    for port in ["predictable", "unpredictable", "unlabelled"]:
        path = f"{base}.{port}"
        if not os.path.isdir(path):
            counts[port] = 0
            continue
        t = table(path)
        fi, r, f = (t[c].to_numpy() for c in ["frame_index", "roi", "f"])
        for a, b in zip(fi.tolist(), r.tolist()):
            assert label_at(b, a) == port, (port, "roi", b, "frame", a, label_at(b, a))
            seen.add((a, b))
        # The rows are the traces themselves.
        assert (f == f_grid[[pos[x] for x in r], fi]).all(), port
        counts[port] = len(fi)
    assert sum(counts.values()) == len(rois) * n_fr == len(seen), (counts, len(seen))
    return counts
"#;

/// Suite2p replay: neuron table vs scipy on the stored `fc`, labels vs the rule, routing, and a
/// second `moments` on `dff` (in a second store) vs scipy on the stored `dff`.
const CHECK_SUITE2P: &str = r#"
data, plane = sys.argv[1], sys.argv[2]
sid = f"{data}/store/s2p.suite2p-fissa.dff"
F, Fneu = np.load(f"{plane}/F.npy"), np.load(f"{plane}/Fneu.npy")
n_roi, n_fr = F.shape
rois = list(range(n_roi))
dff = table(sid)
f = grid(dff, "f", rois)
assert (f == F).all(), "f is the file's F"
assert (grid(dff, "fneu", rois) == Fneu).all(), "fneu is the file's Fneu"
fc = grid(dff, "fc", rois)
# numpy's float32 F - 0.7*Fneu (what expected_moments.json is) and ours (f64, then Float32)
# differ by float32 rounding only.
want_fc = F - 0.7 * Fneu
assert want_fc.dtype == np.float32
assert np.abs(fc - want_fc).max() <= 1e-6 * np.abs(want_fc).max(), np.abs(fc - want_fc).max()
labels, s, k, es, ek = check_neurons(table(f"{sid}.neurons"), fc, rois, 600, strict=True)
expected = json.load(open(f"{plane}/expected_moments.json"))
ej = close(s, expected["skew"], 1e-6, "scipy on stored fc vs expected_moments.json skew")
close(k, expected["excess_kurtosis"], 1e-6, "... kurtosis")
assert set(labels.values()) == {"predictable", "unpredictable"}, labels
counts = check_routing(sid, table(f"{sid}.neurons"), table(f"{sid}.moments"), rois, n_fr, f)
assert counts["predictable"] > 0 and counts["unpredictable"] > 0, counts
# moments on dff, in the second store.
d = grid(dff, "dff", rois)
assert np.isfinite(d).all()
last = last_rows(table(f"{data}/store_dff/s2p.suite2p-fissa.dff.moments"))
got = lambda c: [last[str(r)][c] for r in rois]
assert got("n") == [n_fr] * n_roi
close(got("mean"), d.mean(axis=1), 1e-6, "dff mean")
close(got("variance"), d.var(axis=1), 1e-6, "dff variance")
ds_ = close(got("skew"), st.skew(d, axis=1), 1e-6, "dff skew")
dk = close(got("excess_kurtosis"), st.kurtosis(d, axis=1), 1e-6, "dff kurtosis")
print(f"{n_roi} ROIs x {n_fr} frames; fc moments rel err skew {es:.1e} kurtosis {ek:.1e} "
      f"(vs expected_moments.json {ej:.1e}); dff moments {ds_:.1e} {dk:.1e}; rows {counts}")
"#;

#[test]
fn suite2p_replay_labels_and_routes_neurons_as_scipy_and_the_poyo_rule_say() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let plane = data.join("suite2p-fissa");
    let dir = tempfile::tempdir().unwrap();
    // ops.npy says fs = 1; the recording was at 30 Hz.
    let config = format!(
        r#"{}
[sources.s2p]
type = "suite2p"
path = "{}"
rate_hz = 30
pace = "max"
batch_frames = 7

[transforms.dff]
type = "dff"
inputs = ["s2p"]

[transforms.moments]
type = "moments"
inputs = ["dff"]
value = "fc"

[transforms.moments_dff]
type = "moments"
inputs = ["dff"]
value = "dff"

[transforms.pred]
type = "predictability"
inputs = ["moments", "dff"]

[sinks.store]
type = "store"
inputs = ["dff", "moments", "pred", "pred.predictable", "pred.unpredictable", "pred.unlabelled"]

# Both moments streams are named `<input>.moments`: the one on dff goes to its own store.
[sinks.store_dff]
type = "store"
inputs = ["moments_dff"]
"#,
        header(),
        plane.display()
    );
    let data_dir = run_to_end(dir.path(), &config, Duration::from_secs(60));
    let out = run_python(
        &py,
        &format!("{PY_COMMON}{CHECK_SUITE2P}"),
        &[data_dir.to_str().unwrap(), plane.to_str().unwrap()],
    );
    eprintln!("{out}");
    neurons_table_is_the_latest_labels(&py, &data_dir);
}

/// SQL's `neurons` table holds the last stored label row of every neuron, as pyarrow reads it.
fn neurons_table_is_the_latest_labels(py: &std::path::Path, data_dir: &std::path::Path) {
    let out = common::neurod()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(data_dir)
        .arg("SELECT stream, unit, label, skew FROM neurons ORDER BY stream, unit")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ours = String::from_utf8(out.stdout).unwrap();
    let code = r#"
t = table(f"{sys.argv[1]}/store/s2p.suite2p-fissa.dff.neurons")
last = t.filter(pc.equal(t["frame_index"], pc.max(t["frame_index"]))).sort_by("unit")
print("stream,unit,label,skew")
for u, l, s in zip(last["unit"].to_pylist(), last["label"].to_pylist(), last["skew"].to_pylist()):
    print(f"s2p.suite2p-fissa.dff.neurons,{u},{l},{s!r}")
"#;
    let theirs = run_python(
        py,
        &format!("{PY_COMMON}import pyarrow.compute as pc\n{code}"),
        &[data_dir.to_str().unwrap()],
    );
    assert!(ours.lines().count() > 10, "{ours}");
    assert_eq!(ours, theirs);
}

/// A label image of `n` discs of radius `r` on the brightest, well separated spots of the
/// movie's mean image (away from the edges, where motion correction repeats pixels).
const WRITE_LABELS: &str = r#"
import sys, numpy as np, tifffile
from scipy.ndimage import gaussian_filter
movie, out, n, r = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mean = gaussian_filter(tifffile.imread(movie).astype(np.float64).mean(axis=0), 2)
h, w = mean.shape
yy, xx = np.mgrid[:h, :w]
labels = np.zeros((h, w), np.int32)
centres = []
for y, x in zip(*np.unravel_index(np.argsort(mean, axis=None)[::-1], mean.shape)):
    if not (r + 6 <= y < h - r - 6 and r + 6 <= x < w - r - 6):
        continue
    if any((y - cy) ** 2 + (x - cx) ** 2 < (4 * r) ** 2 for cy, cx in centres):
        continue
    centres.append((y, x))
    labels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = len(centres)
    if len(centres) == n:
        break
assert len(centres) == n, centres
np.save(out, labels)
print(centres)
"#;

/// TIFF → motion_correct → roi_traces: `f` vs numpy's ROI means of the stored registered
/// frames; the neuron table vs scipy on the stored `dff`; labels and routing.
const CHECK_TIFF: &str = r#"
data, labels_path, min_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
labels = np.load(labels_path)
rois = sorted(int(x) for x in np.unique(labels) if x > 0)
mc = table(f"{data}/store/scope").sort_by("frame_index")
n_fr = mc.num_rows
assert (mc["frame_index"].to_numpy() == np.arange(n_fr)).all()
assert mc.schema.metadata[b"neurod.layout"] == b"frames"
px = mc["pixels"].combine_chunks().flatten().to_numpy().reshape(n_fr, -1).astype(np.float64)
assert px.shape[1] == labels.size
sy, sx = mc["shift_y"].to_numpy(), mc["shift_x"].to_numpy()
assert np.isfinite(sy).all() and np.isfinite(sx).all()
want_f = np.stack([px[:, labels.ravel() == k].mean(axis=1) for k in rois])
sid = f"{data}/store/scope.traces.dff"
dff = table(sid)
f = grid(dff, "f", rois)
ef = close(f, want_f, 1e-4, "ROI means of the registered frames")
assert np.isfinite(grid(dff, "fneu", rois)).all()
d = grid(dff, "dff", rois)
neurons = table(f"{sid}.neurons")
labels_, s, k, es, ek = check_neurons(neurons, d, rois, min_n, strict=False)
counts = check_routing(sid, neurons, table(f"{sid}.moments"), rois, n_fr, f)
print(f"{len(rois)} ROIs x {n_fr} frames; shifts y {sy.min():.2f}..{sy.max():.2f} x "
      f"{sx.min():.2f}..{sx.max():.2f}; f rel err {ef:.1e}; moments rel err {es:.1e} {ek:.1e}; "
      f"skew {np.round(s, 2)}, kurtosis {np.round(k, 2)}; labels {labels_}; rows {counts}")
"#;

#[test]
fn tiff_stack_with_a_label_image_gives_traces_and_neurons_that_numpy_and_scipy_agree_with() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let movie = data.join("twophoton-thunder/thunder_mouse_500x64x64_int16.tif");
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.npy");
    let centres = run_python(
        &py,
        WRITE_LABELS,
        &[movie.to_str().unwrap(), labels.to_str().unwrap(), "5", "3"],
    );
    eprintln!("ROI centres (y, x): {}", centres.trim());
    let min_samples = 100;
    let config = format!(
        r#"{}
[sources.scope]
type = "tiff"
path = "{}"
rate_hz = 30
pace = "max"
batch_frames = 8

[transforms.mc]
type = "motion_correct"
inputs = ["scope"]
reference_frames = 20

[transforms.traces]
type = "roi_traces"
inputs = ["mc"]
labels = "{}"

[transforms.dff]
type = "dff"
inputs = ["traces"]

[transforms.moments]
type = "moments"
inputs = ["dff"]
value = "dff"

[transforms.pred]
type = "predictability"
inputs = ["moments", "dff"]
min_samples = {min_samples}

[sinks.store]
type = "store"
inputs = ["mc", "dff", "moments", "pred", "pred.predictable", "pred.unpredictable", "pred.unlabelled"]
"#,
        header(),
        movie.display(),
        labels.display()
    );
    let data_dir = run_to_end(dir.path(), &config, Duration::from_secs(60));
    let out = run_python(
        &py,
        &format!("{PY_COMMON}{CHECK_TIFF}"),
        &[
            data_dir.to_str().unwrap(),
            labels.to_str().unwrap(),
            &min_samples.to_string(),
        ],
    );
    eprintln!("{out}");
}

/// The simulated rig's two-photon path: one neuron row per true ROI, statistics vs scipy on the
/// stored `dff`, labels vs the rule, and the ground truth's bursty ROIs more skewed than its
/// steady ones.
const CHECK_SIMULATED: &str = r#"
data, min_n = sys.argv[1], int(sys.argv[2])
units = table(f"{data}/store/sim.ground_truth_units").to_pylist()
truth = {u["unit"]: u["bursty"] for u in units if u["stream"] == "sim.twophoton"}
rois = sorted(truth)
assert len(rois) == 20, len(rois)
sid = f"{data}/store/sim.twophoton.traces.dff"
dff = table(sid)
d = grid(dff, "dff", rois)
f = grid(dff, "f", rois)
neurons = table(f"{sid}.neurons")
labels, s, k, es, ek = check_neurons(neurons, d, rois, min_n, strict=False)
counts = check_routing(sid, neurons, table(f"{sid}.moments"), rois, d.shape[1], f)
bursty = np.array([truth[r] for r in rois])
assert bursty.any() and (~bursty).any(), bursty
sb, ss = s[bursty].mean(), s[~bursty].mean()
assert sb > ss, ("bursty ROIs should be more skewed", sb, ss)
print(f"{len(rois)} ROIs x {d.shape[1]} frames; moments rel err {es:.1e} {ek:.1e}; mean skew "
      f"bursty {sb:.2f} steady {ss:.2f}; labels {sorted(labels.items())}; rows {counts}")
"#;

#[test]
fn simulated_two_photon_rig_is_classified_end_to_end_and_bursty_rois_are_more_skewed() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let min_samples = 60;
    let config = format!(
        r#"{}
[sources.sim]
type = "simulated"
seed = 3
probes = 0
twophoton = true
rois = 20
frame_size = 96
duration_s = 20
pace = "max"

[transforms.mc]
type = "motion_correct"
inputs = ["sim"]

[transforms.traces]
type = "roi_traces"
inputs = ["mc", "sim.rois"]

[transforms.dff]
type = "dff"
inputs = ["traces"]
window_s = 5

[transforms.moments]
type = "moments"
inputs = ["dff"]
value = "dff"

[transforms.pred]
type = "predictability"
inputs = ["moments", "dff"]
min_samples = {min_samples}

[sinks.store]
type = "store"
inputs = ["sim.ground_truth", "dff", "moments", "pred", "pred.predictable", "pred.unpredictable", "pred.unlabelled"]
"#,
        header()
    );
    let data_dir = run_to_end(dir.path(), &config, Duration::from_secs(60));
    let out = run_python(
        &py,
        &format!("{PY_COMMON}{CHECK_SIMULATED}"),
        &[data_dir.to_str().unwrap(), &min_samples.to_string()],
    );
    eprintln!("{out}");
}

/// Pushes the first `n` frames of the movie twice, as frames streams `base` (as recorded) and
/// `moved` (frames from `ref` on shifted by whole pixels, scipy.ndimage.shift, edges repeated).
const PUSH_FRAMES: &str = r#"
import sys, time, socket, numpy as np, pyarrow as pa, tifffile
from scipy.ndimage import shift
port, movie, n, ref, dy, dx = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
frames = tifffile.imread(movie)[:n]
h, w = frames.shape[1:]
moved = frames.copy()
for k in range(ref, n):
    moved[k] = shift(frames[k], (dy, dx), order=0, mode="nearest")
for name, stack in [("base", frames), ("moved", moved)]:
    schema = pa.schema(
        [pa.field("frame_index", pa.int64(), nullable=False),
         pa.field("time_s", pa.float64(), nullable=False),
         pa.field("pixels", pa.list_(pa.field("item", pa.int16(), nullable=False), h * w),
                  nullable=False)],
        metadata={"neurod.layout": "frames", "neurod.stream_id": name,
                  "neurod.stream_kind": "twophoton", "neurod.sampling_hz": "30",
                  "neurod.height": str(h), "neurod.width": str(w)})
    for attempt in range(100):  # the listener may still be starting
        try:
            sock = socket.create_connection(("127.0.0.1", int(port)))
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    sink = sock.makefile("wb")
    writer = pa.ipc.new_stream(sink, schema)
    for k0 in range(0, n, 5):
        idx = np.arange(k0, min(k0 + 5, n))
        pixels = pa.FixedSizeListArray.from_arrays(
            pa.array(stack[idx].reshape(-1).astype(np.int16)), h * w)
        writer.write_batch(pa.record_batch(
            [pa.array(idx.astype(np.int64)), pa.array(idx / 30.0), pixels], schema=schema))
    writer.close()
    sink.flush()
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(2.0)
    reply = b""
    try:
        while chunk := sock.recv(4096):
            reply += chunk
    except OSError:
        pass
    sock.close()
    assert not reply.startswith(b"error:"), reply
print(h, w)
"#;

const CHECK_SHIFTS: &str = r#"
import sys, numpy as np, pyarrow.dataset as ds
store, n, ref, dy, dx = sys.argv[1], *map(int, sys.argv[2:6])
def shifts(name):
    t = ds.dataset(f"{store}/push.{name}", format="parquet").to_table().sort_by("frame_index")
    assert (t["frame_index"].to_numpy() == np.arange(n)).all(), (name, t.num_rows)
    return t["shift_y"].to_numpy().astype(float), t["shift_x"].to_numpy().astype(float)
(y0, x0), (y1, x1) = shifts("base"), shifts("moved")
# The movie moves a little by itself: the known shift is what the moved copy's estimate adds.
ey, ex = y1[ref:] - y0[ref:] - dy, x1[ref:] - x0[ref:] - dx
worst = max(np.abs(ey).max(), np.abs(ex).max())
assert worst < 0.1, (worst, ey, ex)
print(f"largest error {worst:.3f} px over {n - ref} shifted frames; own motion up to "
      f"{max(np.abs(y0).max(), np.abs(x0).max()):.2f} px")
"#;

#[test]
fn frames_pushed_over_arrow_ipc_are_registered_and_known_shifts_recovered() {
    let (Some(data), Some(py)) = (shared_data(), python()) else {
        return;
    };
    let movie = data.join("twophoton-thunder/thunder_mouse_500x64x64_int16.tif");
    let dir = tempfile::tempdir().unwrap();
    let ipc_port = common::free_port();
    let (n, reference, dy, dx) = (50, 10, 3, -2);
    let config = format!(
        r#"{}
[sources.push]
type = "arrow_ipc"
address = "127.0.0.1:{ipc_port}"

[transforms.mc]
type = "motion_correct"
inputs = ["push"]
reference_frames = {reference}
max_shift_px = 8

[sinks.store]
type = "store"
inputs = ["mc"]
"#,
        header()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let args = [n, reference, dy, dx].map(|v| v.to_string());
    run_python(
        &py,
        PUSH_FRAMES,
        &[
            &ipc_port.to_string(),
            movie.to_str().unwrap(),
            &args[0],
            &args[1],
            &args[2],
            &args[3],
        ],
    );
    // Both streams registered, then SIGTERM drains what is in flight into the store.
    let mc_rows = r#"neurod_component_sent_rows_total{component_id="mc""#;
    wait_for(Duration::from_secs(20), "the registered frames", || {
        d.metric(mc_rows).filter(|v| *v >= 2.0 * n as f64)
    });
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        d.log_text()
    );
    let out = run_python(
        &py,
        CHECK_SHIFTS,
        &[
            dir.path().join("data/store").to_str().unwrap(),
            &args[0],
            &args[1],
            &args[2],
            &args[3],
        ],
    );
    eprintln!("{out}");
}
