use super::*;
use crate::imaging::testdata::{frames_batch, python, run_python, thunder_movie, thunder_path};
use crate::stream::{frames_schema, rois_schema, FRAME_INDEX};

/// The inputs of a roi_traces without `labels`: frames, then ROI masks.
const INPUTS: [&str; 2] = ["mc", "sim.rois"];

fn frames_input() -> Input {
    Input::new(0, INPUTS[0])
}

fn rois_input() -> Input {
    Input::new(1, INPUTS[1])
}

fn inputs_for(options: &str) -> Vec<String> {
    let n = if options.contains("labels") { 1 } else { 2 };
    INPUTS[..n].iter().map(|s| s.to_string()).collect()
}

fn build_with(options: &str) -> Result<Box<dyn Transform>, Vec<String>> {
    build(
        &BuildContext {
            id: "traces",
            data_dir: "/tmp".as_ref(),
            inputs: &inputs_for(options),
        },
        toml::from_str(options).unwrap(),
    )
}

fn col<T: Clone + 'static>(b: &RecordBatch, name: &str) -> T {
    b.column(b.schema().index_of(name).unwrap())
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
        .clone()
}

fn concat(out: TransformContext) -> RecordBatch {
    let batches: Vec<RecordBatch> = out.out.batches.into_iter().map(|(_, b)| b).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Somata-like disks, some touching each other or the edge, with label numbers that skip.
fn label_image(h: usize, w: usize) -> Vec<u16> {
    let disks: [(f64, f64, f64, u16); 9] = [
        (10.0, 12.0, 4.0, 1),
        (10.0, 21.0, 4.5, 2),
        (30.0, 30.0, 5.0, 5),
        (31.0, 41.0, 3.5, 7),
        (50.0, 15.0, 4.0, 8),
        (2.0, 50.0, 4.0, 11),
        (55.0, 55.0, 6.0, 12),
        (20.0, 45.0, 3.0, 13),
        (44.0, 30.0, 4.0, 20),
    ];
    let mut img = vec![0u16; h * w];
    for y in 0..h {
        for x in 0..w {
            for &(cy, cx, r, l) in &disks {
                if (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2) <= r * r {
                    img[y * w + x] = l;
                }
            }
        }
    }
    img
}

const PEER: &str = r#"
import sys, numpy as np, tifffile
from scipy.ndimage import distance_transform_edt
movie = tifffile.imread(sys.argv[1]).astype(np.float64)
labels = tifffile.imread(sys.argv[2]).astype(np.int64)
inner, min_pixels, max_r = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
occupied = labels > 0
ids = np.unique(labels[occupied])
T = movie.shape[0]
flat = movie.reshape(T, -1)
f = np.empty((T, len(ids))); fneu = np.empty((T, len(ids)))
for j, k in enumerate(ids):
    mask = labels == k
    f[:, j] = flat[:, mask.ravel()].mean(axis=1)
    # Distance of every pixel to the nearest pixel of this ROI.
    d = distance_transform_edt(~mask).ravel()
    cand = np.flatnonzero((~occupied.ravel()) & (d > inner) & (d <= max_r))
    cand = cand[np.argsort(d[cand], kind="stable")]
    n = min(len(cand), min_pixels)
    if n > 0:
        r = d[cand[n - 1]]
        cand = cand[d[cand] <= r]
    fneu[:, j] = flat[:, cand].mean(axis=1) if len(cand) else np.nan
np.save(sys.argv[6], np.stack([f, fneu]))
np.save(sys.argv[7], ids)
"#;

#[test]
fn traces_of_the_real_movie_equal_numpy_with_a_label_image() {
    let Some((h, w, movie)) = thunder_movie() else {
        return;
    };
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let labels_path = dir.path().join("labels.tif");
    let file = std::fs::File::create(&labels_path).unwrap();
    tiff::encoder::TiffEncoder::new(file)
        .unwrap()
        .write_image::<tiff::encoder::colortype::Gray16>(w as u32, h as u32, &label_image(h, w))
        .unwrap();
    // Small enough an annulus that some reach their size and some are capped.
    let (inner, min_px, max_r) = (2.0, 120, 9.0);
    let (vals, ids) = (dir.path().join("vals.npy"), dir.path().join("ids.npy"));
    run_python(
        &py,
        PEER,
        &[
            thunder_path().to_str().unwrap(),
            labels_path.to_str().unwrap(),
            &inner.to_string(),
            &min_px.to_string(),
            &max_r.to_string(),
            vals.to_str().unwrap(),
            ids.to_str().unwrap(),
        ],
    );
    let want: ndarray::Array3<f64> = ndarray_npy::read_npy(&vals).unwrap();
    let want_ids: ndarray::Array1<i64> = ndarray_npy::read_npy(&ids).unwrap();

    let mut tr = build_with(&format!(
        "labels = {:?}\nneuropil_inner_px = {inner}\nneuropil_min_pixels = {min_px}\nneuropil_max_radius_px = {max_r}",
        labels_path.to_str().unwrap()
    ))
    .unwrap();
    let schema = frames_schema("thunder", "twophoton", h, w, "30");
    let mut out = TransformContext::detached("t");
    for (k, chunk) in movie.chunks(64).enumerate() {
        tr.process(
            &frames_input(),
            frames_batch(&schema, (k * 64) as i64, chunk),
            &mut out,
        )
        .unwrap();
    }
    tr.finish(&mut out).unwrap();
    let got = concat(out);
    let n_rois = want_ids.len();
    assert_eq!(got.num_rows(), movie.len() * n_rois);
    assert_eq!(got.schema().metadata()[keys::STREAM_ID], "thunder.traces");
    assert_eq!(got.schema().metadata()[SOURCE_STREAM_KEY], "thunder");
    let roi: Int32Array = col(&got, ROI);
    let frame: Int64Array = col(&got, FRAME_INDEX);
    let (f, fneu): (Float32Array, Float32Array) = (col(&got, F), col(&got, FNEU));
    for t in 0..movie.len() {
        for j in 0..n_rois {
            let r = t * n_rois + j;
            assert_eq!(i64::from(roi.value(r)), want_ids[j], "ROI number = label");
            assert_eq!(frame.value(r), t as i64);
            for (name, g, e) in [
                ("f", f.value(r), want[[0, t, j]]),
                ("fneu", fneu.value(r), want[[1, t, j]]),
            ] {
                assert!(
                    (f64::from(g) - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "frame {t}, ROI {}: {name} {g} vs numpy {e}",
                    want_ids[j]
                );
            }
        }
    }
}

fn roi_batch(
    sid: &str,
    source: Option<&str>,
    h: usize,
    w: usize,
    rows: &[(i32, i32, i32, f32)],
) -> RecordBatch {
    let s = rois_schema(sid, h, w);
    let mut md = s.metadata().clone();
    if let Some(src) = source {
        md.insert(SOURCE_STREAM_KEY.into(), src.into());
    }
    let s = Arc::new(arrow::datatypes::Schema::new_with_metadata(
        s.fields().clone(),
        md,
    ));
    RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap()
}

#[test]
fn frames_wait_for_their_rois_within_a_bound() {
    let (h, w) = (16, 16);
    let schema = frames_schema("cam", "twophoton", h, w, "30");
    let frame = |k: usize| -> Vec<i16> { (0..h * w).map(|p| (p + 10 * k) as i16).collect() };
    let movie: Vec<Vec<i16>> = (0..10).map(frame).collect();
    let mut tr = build_with("max_held_frames = 4\nneuropil_min_pixels = 8").unwrap();
    let mut out = TransformContext::detached("t");
    tr.process(
        &frames_input(),
        frames_batch(&schema, 0, &movie[..3]),
        &mut out,
    )
    .unwrap();
    let e = tr
        .process(
            &frames_input(),
            frames_batch(&schema, 3, &movie[3..6]),
            &mut out,
        )
        .unwrap_err();
    assert!(e.to_string().contains("3 frames dropped"), "{e}");
    assert!(out.batches.is_empty());
    // ROIs for another stream do not release these frames.
    tr.process(
        &rois_input(),
        roi_batch("other.rois", Some("other"), h, w, &[(0, 1, 1, 1.0)]),
        &mut out,
    )
    .unwrap();
    assert!(out.batches.is_empty());
    // Weighted: pixel (2, 3) = 35 + 10k with weight 3, (2, 4) = 36 + 10k with weight 1.
    tr.process(
        &rois_input(),
        roi_batch(
            "cam.rois",
            Some("cam"),
            h,
            w,
            &[(4, 2, 3, 3.0), (4, 2, 4, 1.0)],
        ),
        &mut out,
    )
    .unwrap();
    tr.process(
        &frames_input(),
        frames_batch(&schema, 6, &movie[6..]),
        &mut out,
    )
    .unwrap();
    let got = concat(out);
    let frames: Int64Array = col(&got, FRAME_INDEX);
    assert_eq!(
        frames.values(),
        &[3, 4, 5, 6, 7, 8, 9],
        "0..3 dropped, the rest in order"
    );
    let f: Float32Array = col(&got, F);
    for (i, k) in (3..10).enumerate() {
        assert_eq!(
            f.value(i),
            0.75 * (35 + 10 * k) as f32 + 0.25 * (36 + 10 * k) as f32
        );
    }
    assert!(tr.finish(&mut TransformContext::detached("t")).is_ok());
}

/// Frames still held at the end are lost: one error names every stream and its count, in the
/// order the streams came.
#[test]
fn frames_never_given_rois_are_named_per_stream_at_the_end() {
    let (h, w) = (8, 8);
    let movie: Vec<Vec<i16>> = (0..3).map(|_| vec![1i16; h * w]).collect();
    let mut tr = build_with("max_held_frames = 10").unwrap();
    let mut out = TransformContext::detached("t");
    for (id, n) in [("zeta", 3), ("alpha", 2), ("zeta", 1)] {
        let schema = frames_schema(id, "twophoton", h, w, "30");
        let first = if id == "zeta" && n == 1 { 3 } else { 0 };
        tr.process(
            &frames_input(),
            frames_batch(&schema, first, &movie[..n]),
            &mut out,
        )
        .unwrap();
    }
    let e = tr.finish(&mut out).unwrap_err();
    assert_eq!(
        e.to_string(),
        "frames that never got ROIs, not traced: `zeta`: 4, `alpha`: 2"
    );
    assert!(out.batches.is_empty());
}

#[test]
fn bad_rois_and_options_are_named() {
    let e = build_with("labels = \"/nonexistent/labels.tif\"")
        .err()
        .unwrap();
    assert!(
        e[0].contains("traces") && e[0].contains("labels.tif"),
        "{e:?}"
    );
    let e = build_with("neuropil_max_radius_px = 1\nneuropil_inner_px = 2")
        .err()
        .unwrap();
    assert!(e[0].contains("neuropil_max_radius_px"), "{e:?}");
    let mut tr = build_with("").unwrap();
    let e = tr
        .process(
            &rois_input(),
            roi_batch("r", None, 8, 8, &[(0, 8, 0, 1.0)]),
            &mut TransformContext::detached("t"),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("`r`") && e.to_string().contains("outside"),
        "{e}"
    );
    let schema = frames_schema("cam", "twophoton", 8, 8, "30");
    tr.process(
        &frames_input(),
        frames_batch(&schema, 0, &[vec![0; 64]]),
        &mut TransformContext::detached("t"),
    )
    .unwrap();
    let e = tr.finish(&mut TransformContext::detached("t")).unwrap_err();
    assert!(e.to_string().contains("`cam`: 1"), "{e}");
    // Frames on the ROI input are named as such; without `labels` the ROI input is required.
    let e = tr
        .process(
            &rois_input(),
            frames_batch(&schema, 1, &[vec![0; 64]]),
            &mut TransformContext::detached("t"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`sim.rois`") && e.contains("a frames stream"),
        "{e}"
    );
    let e = build(
        &BuildContext {
            id: "traces",
            data_dir: "/tmp".as_ref(),
            inputs: &["mc".into()],
        },
        toml::Table::new(),
    )
    .err()
    .unwrap();
    assert!(
        e[0].contains("ROI masks") && e[0].contains("has 1"),
        "{e:?}"
    );
}

#[test]
fn simulated_rig_to_motion_correct_to_traces_with_the_rigs_rois() {
    use crate::sources::simulated::{Rig, SimulatedOptions};
    let options = SimulatedOptions {
        probes: 0,
        rois: 20,
        frame_size: 96,
        duration_s: 4.0,
        batch_ms: 100,
        ..SimulatedOptions::default()
    };
    let mut rig = Rig::new("sim", &options).unwrap();
    let rois = rig.rois_batch().unwrap().unwrap();
    assert_eq!(
        rois.schema().metadata()[keys::STREAM_ID],
        "sim.twophoton.rois"
    );
    let mut mc = super::super::motion_correct::build(
        &BuildContext {
            id: "mc",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        },
        toml::Table::new(),
    )
    .unwrap();
    let mut tr = build_with("").unwrap();
    let mut registered = TransformContext::detached("t");
    while let Some(window) = rig.next_window(false).unwrap() {
        for (port, b) in window.batches {
            assert_eq!(port, "");
            mc.process(&Input::new(0, "in"), b, &mut registered)
                .unwrap();
        }
    }
    mc.finish(&mut registered).unwrap();
    let mut out = TransformContext::detached("t");
    // The frames reach roi_traces first here: they wait for the masks.
    let (first, rest) = registered.batches.split_at(1);
    tr.process(&frames_input(), first[0].1.clone(), &mut out)
        .unwrap();
    tr.process(&rois_input(), rois, &mut out).unwrap();
    let mut n_frames = first[0].1.num_rows();
    for (_, b) in rest {
        // The rig does not move: registration finds (almost) nothing to correct.
        for name in ["shift_y", "shift_x"] {
            let s: Float32Array = col(b, name);
            assert!(
                s.values().iter().all(|v| v.abs() < 0.25),
                "{name}: {:?}",
                s.values()
            );
        }
        n_frames += b.num_rows();
        tr.process(&frames_input(), b.clone(), &mut out).unwrap();
    }
    tr.finish(&mut out).unwrap();
    assert_eq!(n_frames, 120, "4 s at 30 Hz");
    let got = concat(out);
    assert_eq!(got.num_rows(), 120 * 20);
    assert_eq!(
        got.schema().metadata()[keys::STREAM_ID],
        "sim.twophoton.traces"
    );
    let roi: Int32Array = col(&got, ROI);
    assert_eq!(&roi.values()[..20], &(0..20).collect::<Vec<i32>>()[..]);
    // Somata are brighter than the neuropil around them; masks read with x and y swapped, or
    // off by a row, would land on background instead.
    let (f, fneu): (Float32Array, Float32Array) = (col(&got, F), col(&got, FNEU));
    let brighter = (0..got.num_rows())
        .filter(|&i| f.value(i) > fneu.value(i) + 100.0)
        .count();
    assert!(
        brighter as f64 > 0.95 * got.num_rows() as f64,
        "{brighter} of {}",
        got.num_rows()
    );
}

/// The GPU backend through the transform against the CPU one: 300 random ROIs on 96×80 frames
/// (several workgroups), same F within 1e-5 of the largest |F| (bit-identical on lavapipe), same
/// Fneu and NaNs; each exports its backend. Without an adapter "gpu" is refused by name.
#[test]
fn gpu_backend_agrees_with_the_cpu_and_exports_its_backend() {
    use rand::{Rng, SeedableRng};
    let build_as = |id: &str, backend: &str| {
        build(
            &BuildContext {
                id,
                data_dir: "/tmp".as_ref(),
                inputs: &inputs_for(""),
            },
            toml::from_str(&format!("backend = '{backend}'\nneuropil_min_pixels = 40")).unwrap(),
        )
    };
    let Some(ctx) = kernels::gpu::test_context() else {
        let e = build_as("roi_gpu_none", "gpu").err().unwrap().join("; ");
        assert!(e.contains("no usable GPU adapter"), "{e}");
        return;
    };
    let (h, w) = (96usize, 80usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rows = Vec::new();
    for roi in 0..300 {
        let (cy, cx) = (rng.random_range(0..h as i32), rng.random_range(0..w as i32));
        for _ in 0..rng.random_range(1..12) {
            let (y, x) = (cy + rng.random_range(-2..=2), cx + rng.random_range(-2..=2));
            if (0..h as i32).contains(&y) && (0..w as i32).contains(&x) {
                rows.push((roi, y, x, rng.random_range(0.1..2.0f32)));
            }
        }
    }
    let schema = frames_schema("cam", "twophoton", h, w, "30");
    let movie: Vec<Vec<i16>> = (0..3)
        .map(|_| (0..h * w).map(|_| rng.random()).collect())
        .collect();
    let run = |id: &str, backend: &str| {
        let mut tr = build_as(id, backend).unwrap();
        let mut out = TransformContext::detached("t");
        tr.process(
            &rois_input(),
            roi_batch("cam.rois", Some("cam"), h, w, &rows),
            &mut out,
        )
        .unwrap();
        tr.process(&frames_input(), frames_batch(&schema, 0, &movie), &mut out)
            .unwrap();
        let got = concat(out);
        let text = crate::metrics::Metrics::new().render();
        let b = if backend == "cpu" {
            "cpu"
        } else {
            ctx.backend.as_str()
        };
        assert!(
            text.contains(&format!(
                r#"neurod_kernel_backend{{backend="{b}",component_id="{id}"}} 1"#
            )),
            "{text}"
        );
        let f: Float32Array = col(&got, F);
        let fneu: Float32Array = col(&got, FNEU);
        (f.values().to_vec(), fneu.values().to_vec())
    };
    let (gf, gneu) = run("roi_gpu", "gpu");
    let (cf, cneu) = run("roi_cpu", "cpu");
    assert!(cf.len() > 3 * 250, "{} rows", cf.len());
    assert_eq!(gf.len(), cf.len());
    let scale = cf.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gf.iter().zip(&cf).enumerate() {
        assert!((g - c).abs() <= 1e-5 * scale, "F[{i}]: gpu {g}, cpu {c}");
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&gneu), bits(&cneu), "Fneu: exact sums on both");
}
