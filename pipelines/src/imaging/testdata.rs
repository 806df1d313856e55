//! Test inputs shared by the imaging tests: the real movie and the Python peers.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float64Array, Int16Array, Int64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;

/// The real two-photon movie of `../shared/data/twophoton-thunder` (500 frames of 64×64 Int16).
pub fn thunder_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/twophoton-thunder/thunder_mouse_500x64x64_int16.tif"
    ))
}

/// The movie's frames (height, width, frames), read with the `tiff` crate; `None`, said
/// loudly, when it is absent (a failure under CI).
pub fn thunder_movie() -> Option<(usize, usize, Vec<Vec<i16>>)> {
    use tiff::decoder::{Decoder, DecodingResult};
    let path = thunder_path();
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{}: {e} (required under CI)",
                path.display()
            );
            eprintln!(
                "\n!!!!! SKIPPED: real movie {} is missing: {e} !!!!!\n",
                path.display()
            );
            return None;
        }
    };
    let mut dec = Decoder::new(std::io::BufReader::new(file)).expect("a TIFF");
    let (w, h) = dec.dimensions().expect("dimensions");
    let mut frames = Vec::new();
    loop {
        match dec.read_image().expect("a page") {
            DecodingResult::I16(v) => frames.push(v),
            DecodingResult::U16(v) => frames.push(v.into_iter().map(|x| x as i16).collect()),
            other => panic!("unexpected pixel type {:?}", std::mem::discriminant(&other)),
        }
        if !dec.more_images() {
            break;
        }
        dec.next_image().expect("next page");
    }
    Some((h as usize, w as usize, frames))
}

/// `NEUROD_PYTHON` (with numpy, scipy, tifffile); `None`, said loudly, without it.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("NEUROD_PYTHON") {
        Some(p) if std::path::Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs scripts/test.sh, which sets NEUROD_PYTHON"
            );
            eprintln!("\n!!!!! SKIPPED: NEUROD_PYTHON not set (run scripts/test.sh) !!!!!\n");
            None
        }
    }
}

/// Runs a Python snippet with arguments; panics with its output if it fails.
pub fn run_python(py: &std::path::Path, code: &str, args: &[&str]) {
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frames `first..first + frames.len()` as one batch of `schema` (a frames schema), at 30 Hz.
pub fn frames_batch(schema: &SchemaRef, first: i64, frames: &[Vec<i16>]) -> RecordBatch {
    let n = frames.len();
    let px = frames.first().map_or(0, Vec::len);
    let values: Vec<i16> = frames.iter().flatten().copied().collect();
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Int16, false)),
        px as i32,
        Arc::new(Int16Array::from(values)),
        None,
    )
    .unwrap();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + n as i64)) as ArrayRef,
            Arc::new(Float64Array::from_iter_values(
                (first..first + n as i64).map(|k| k as f64 / 30.0),
            )),
            Arc::new(list),
        ],
    )
    .unwrap()
}
