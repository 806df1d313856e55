use super::*;
use crate::imaging::testdata::{frames_batch, python, run_python, thunder_movie, thunder_path};
use crate::stream::{frames_schema, keys};

fn build_with(options: &str) -> Box<dyn Transform> {
    build(
        &BuildContext {
            id: "mc",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        },
        toml::from_str(options).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Runs the movie through in batches of `per_batch`; every output batch, concatenated.
fn run(
    tr: &mut Box<dyn Transform>,
    schema: &SchemaRef,
    movie: &[Vec<i16>],
    per_batch: usize,
) -> RecordBatch {
    let mut out = TransformContext::detached("t");
    for (k, chunk) in movie.chunks(per_batch).enumerate() {
        tr.process(
            &Input::new(0, "in"),
            frames_batch(schema, (k * per_batch) as i64, chunk),
            &mut out,
        )
        .unwrap();
    }
    tr.finish(&mut out).unwrap();
    let batches: Vec<RecordBatch> = out.out.batches.into_iter().map(|(_, b)| b).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn col<T: Clone + 'static>(b: &RecordBatch, name: &str) -> T {
    b.column(b.schema().index_of(name).unwrap())
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
        .clone()
}

/// Shifts applied to frame k ≥ 30 (the first 30 make the reference): whole and sub-pixel, both
/// signs, up to 5 px.
fn applied(k: usize) -> (f64, f64) {
    const S: [(f64, f64); 10] = [
        (3.0, -2.0),
        (-4.3, 1.7),
        (0.5, -0.5),
        (2.25, -3.75),
        (-1.1, 0.4),
        (0.0, 0.0),
        (5.0, 5.0),
        (-0.3, -0.7),
        (-5.0, 2.0),
        (1.6, 4.2),
    ];
    if k < 30 {
        (0.0, 0.0)
    } else {
        S[k % S.len()]
    }
}

const SHIFT_SCRIPT: &str = r#"
import sys, json, numpy as np, tifffile
from scipy.ndimage import shift
movie = tifffile.imread(sys.argv[1]).astype(np.float64)
shifts = json.loads(sys.argv[2])
out = np.empty(movie.shape, np.int16)
for k, f in enumerate(movie):
    # Content moved by (dy, dx): out(y, x) = f(y - dy, x - dx), cubic spline, edges repeated.
    g = shift(f, shifts[k], order=3, mode='nearest')
    out[k] = np.clip(np.rint(g), -32768, 32767).astype(np.int16)
np.save(sys.argv[3], out)
"#;

#[test]
fn recovers_known_shifts_of_the_real_movie_within_a_tenth_of_a_pixel() {
    let Some((h, w, movie)) = thunder_movie() else {
        return;
    };
    let Some(py) = python() else {
        return;
    };
    // The peer moves the frames: scipy.ndimage.shift (cubic spline) on the same TIFF.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("shifted.npy");
    let shifts: Vec<[f64; 2]> = (0..movie.len()).map(|k| applied(k).into()).collect();
    run_python(
        &py,
        SHIFT_SCRIPT,
        &[
            thunder_path().to_str().unwrap(),
            &serde_json::to_string(&shifts).unwrap(),
            npy.to_str().unwrap(),
        ],
    );
    let shifted: ndarray::Array3<i16> = ndarray_npy::read_npy(&npy).unwrap();
    assert_eq!(shifted.dim(), (movie.len(), h, w));
    let shifted: Vec<Vec<i16>> = shifted
        .outer_iter()
        .map(|f| f.iter().copied().collect())
        .collect();

    let schema = frames_schema("thunder", "twophoton", h, w, "30");
    let options = "reference_frames = 30\nmax_shift_px = 8";
    let base = run(&mut build_with(options), &schema, &movie, 25);
    let moved = run(&mut build_with(options), &schema, &shifted, 25);
    assert_eq!(moved.num_rows(), movie.len(), "no frame lost");
    let index: Int64Array = col(&moved, FRAME_INDEX);
    assert!(index
        .values()
        .iter()
        .enumerate()
        .all(|(k, &i)| i == k as i64));
    assert_eq!(moved.schema().metadata()[keys::STREAM_ID], "thunder");

    // The movie moves a little by itself (±0.2 px): the known shift is what the shifted copy's
    // estimate adds to the original's.
    let (y0, x0): (Float32Array, Float32Array) = (col(&base, SHIFT_Y), col(&base, SHIFT_X));
    let (y1, x1): (Float32Array, Float32Array) = (col(&moved, SHIFT_Y), col(&moved, SHIFT_X));
    let mut worst = 0f64;
    for k in 0..movie.len() {
        let (dy, dx) = applied(k);
        let ey = f64::from(y1.value(k) - y0.value(k)) - dy;
        let ex = f64::from(x1.value(k) - x0.value(k)) - dx;
        worst = worst.max(ey.abs()).max(ex.abs());
        assert!(
            ey.abs() < 0.1 && ex.abs() < 0.1,
            "frame {k}: shifted by ({dy}, {dx}), found ({}, {}) over the original's ({}, {})",
            y1.value(k),
            x1.value(k),
            y0.value(k),
            x0.value(k)
        );
        // And in absolute terms, the movie's own motion aside.
        assert!(
            (f64::from(y1.value(k)) - dy).abs() < 0.5 && (f64::from(x1.value(k)) - dx).abs() < 0.5
        );
    }
    eprintln!("largest error over {} frames: {worst:.3} px", movie.len());

    // The registered frames line up with the registered originals: away from the edges the
    // difference is interpolation and rounding, far below what the shift made it.
    let px = |b: &RecordBatch, k: usize| -> Vec<i16> {
        let l: FixedSizeListArray = col(b, PIXELS);
        let v = l.value(k);
        v.as_any()
            .downcast_ref::<Int16Array>()
            .unwrap()
            .values()
            .to_vec()
    };
    let interior_mad = |a: &[i16], b: &[i16]| -> f64 {
        let mut s = 0.0;
        let mut n = 0.0;
        for y in 8..h - 8 {
            for x in 8..w - 8 {
                s += (f64::from(a[y * w + x]) - f64::from(b[y * w + x])).abs();
                n += 1.0;
            }
        }
        s / n
    };
    for k in [30usize, 36, 38] {
        let before = interior_mad(&shifted[k], &movie[k]);
        let after = interior_mad(&px(&moved, k), &px(&base, k));
        assert!(
            after < 0.35 * before,
            "frame {k}: {after} after, {before} before"
        );
    }
}

#[test]
fn frames_are_held_until_the_reference_exists_then_all_leave() {
    let (h, w) = (32, 32);
    let schema = frames_schema("s", "twophoton", h, w, "30");
    let frame = |k: usize| -> Vec<i16> {
        (0..h * w)
            .map(|p| (100 + (p * 7 + k) % 50) as i16)
            .collect()
    };
    let movie: Vec<Vec<i16>> = (0..7).map(frame).collect();
    let mut tr = build_with("reference_frames = 5");
    let mut out = TransformContext::detached("t");
    tr.process(
        &Input::new(0, "in"),
        frames_batch(&schema, 0, &movie[..3]),
        &mut out,
    )
    .unwrap();
    assert!(out.batches.is_empty(), "3 of 5 reference frames: held");
    tr.process(
        &Input::new(0, "in"),
        frames_batch(&schema, 3, &movie[3..6]),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.batches.len(), 1);
    assert_eq!(
        out.batches[0].1.num_rows(),
        6,
        "the held frames and the batch that completed the reference"
    );
    tr.process(
        &Input::new(0, "in"),
        frames_batch(&schema, 6, &movie[6..]),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.batches[1].1.num_rows(), 1);

    // A stream that ends early is registered against what it had.
    let mut tr = build_with("reference_frames = 50");
    let mut out = TransformContext::detached("t");
    tr.process(
        &Input::new(0, "in"),
        frames_batch(&schema, 0, &movie),
        &mut out,
    )
    .unwrap();
    assert!(out.batches.is_empty());
    tr.finish(&mut out).unwrap();
    assert_eq!(out.batches[0].1.num_rows(), 7);
}

#[test]
fn bad_input_and_options_are_named() {
    let mut tr = build_with("");
    let not_frames = crate::stream::traces_schema("t", "30", &["f"]);
    let b = RecordBatch::new_empty(not_frames);
    let e = tr
        .process(
            &Input::new(0, "in"),
            b,
            &mut TransformContext::detached("t"),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("`t`") && e.to_string().contains("frames"),
        "{e}"
    );
    // Metadata that disagrees with the frames.
    let schema = frames_schema("s", "twophoton", 8, 8, "30");
    let lying = Arc::new(Schema::new_with_metadata(
        schema.fields().clone(),
        [
            (keys::STREAM_ID.to_string(), "s".to_string()),
            (keys::LAYOUT.to_string(), "frames".to_string()),
            (keys::HEIGHT.to_string(), "9".to_string()),
            (keys::WIDTH.to_string(), "8".to_string()),
        ]
        .into(),
    ));
    let b = frames_batch(&schema, 0, &[vec![0i16; 64]]);
    let b = RecordBatch::try_new(lying, b.columns().to_vec()).unwrap();
    let e = tr
        .process(
            &Input::new(0, "in"),
            b,
            &mut TransformContext::detached("t"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("9×8"), "{e}");
    let e = build(
        &BuildContext {
            id: "mc",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        },
        toml::from_str("reference_frames = 0\nmax_shift_px = 0").unwrap(),
    )
    .err()
    .unwrap();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("mc") && e[0].contains("reference_frames"),
        "{e:?}"
    );
}
