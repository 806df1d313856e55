//! Moment updates per second on one core. Prints a markdown table; asserts nothing about time.
//!
//! Rows: the exact (Pébay) and exponentially weighted banks ([`pipelines::stats::MomentsBank`],
//! structure of arrays, one value per unit per frame) over 1,024 units; the scalar
//! [`Moments::push`] one unit after another, for comparison; the `moments` transform on traces
//! batches (Arrow columns in, frame assembly, banks; tables every second); and, when
//! `NEUROD_PYTHON` is set, the two-pass `scipy.stats.skew` + `scipy.stats.kurtosis` on an array
//! of the same size, in that Python, on the same core.
//!
//! Run: `cargo bench -p pipelines --bench moments`. Env: `NEUROD_BENCH_FRAMES` (default 100,000)
//! frames of 1,024 units.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
use arrow::record_batch::RecordBatch;
use pipelines::component::{BuildContext, Input, TransformContext};
use pipelines::registry::build_transform;
use pipelines::stats::{EwMoments, EwMomentsBank, Moments, MomentsBank};
use pipelines::stream::traces_schema;
use rand::{Rng, SeedableRng};

const UNITS: usize = 1024;

fn pin_to_one_core() -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it; pid 0 is this
    // thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn row(name: &str, updates: f64, seconds: f64) {
    println!(
        "| {name} | {:.0} | {:.3} | {:.1} M |",
        updates,
        seconds,
        updates / seconds / 1e6
    );
}

fn main() {
    let frames: usize = std::env::var("NEUROD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pinned = pin_to_one_core();
    // Values drawn once, reused frame after frame with an offset, so the benchmark measures the
    // updates and not the generator; 64 distinct frames keep them in cache, as a live frame is.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let pool: Vec<Vec<f64>> = (0..64)
        .map(|_| {
            (0..UNITS)
                .map(|_| rng.random::<f64>() * 4.0 - 1.0)
                .collect()
        })
        .collect();
    let updates = (frames * UNITS) as f64;

    println!(
        "Moment updates on one core ({}), {UNITS} units × {frames} frames; avx2: {}, avx512f: {}",
        if pinned {
            "pinned to CPU 0"
        } else {
            "not pinned"
        },
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f"),
    );
    println!();
    println!("| what | updates | seconds | updates/s |");
    println!("|---|---:|---:|---:|");

    let mut bank = MomentsBank::new(UNITS);
    let t = Instant::now();
    for i in 0..frames {
        bank.push(&pool[i % 64]);
    }
    row(
        "exact push (MomentsBank)",
        updates,
        t.elapsed().as_secs_f64(),
    );
    black_box(bank.get(7));

    let mut ew = EwMomentsBank::new(UNITS, 1.0 - (-1.0f64 / 30.0 / 10.0).exp());
    let t = Instant::now();
    for i in 0..frames {
        ew.push(&pool[i % 64]);
    }
    row(
        "EW push (EwMomentsBank, τ = 10 s)",
        updates,
        t.elapsed().as_secs_f64(),
    );
    black_box(ew.get(7));

    // The scalar update, unit after unit over the same values (a tenth of the frames).
    let scalar_frames = (frames / 10).max(1);
    let mut ms = vec![Moments::default(); UNITS];
    let t = Instant::now();
    for i in 0..scalar_frames {
        for (m, x) in ms.iter_mut().zip(&pool[i % 64]) {
            m.push(*x);
        }
    }
    row(
        "exact push, scalar Moments (array of structs)",
        (scalar_frames * UNITS) as f64,
        t.elapsed().as_secs_f64(),
    );
    black_box(&ms);
    let mut es = vec![EwMoments::with_alpha(0.003); UNITS];
    let t = Instant::now();
    for i in 0..scalar_frames {
        for (m, x) in es.iter_mut().zip(&pool[i % 64]) {
            m.push(*x);
        }
    }
    row(
        "EW push, scalar EwMoments",
        (scalar_frames * UNITS) as f64,
        t.elapsed().as_secs_f64(),
    );
    black_box(&es);

    // The transform: traces batches of 30 frames (1 s at 30 Hz) × 1,024 ROIs.
    let tr_frames = (frames / 10).max(30);
    let schema = traces_schema("bench", "30", &["dff"]);
    let batches: Vec<RecordBatch> = (0..tr_frames)
        .step_by(30)
        .map(|t0| {
            let rows: Vec<(usize, usize)> = (t0..(t0 + 30).min(tr_frames))
                .flat_map(|t| (0..UNITS).map(move |r| (t, r)))
                .collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|x| x.0 as i64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|x| x.0 as f64 / 30.0),
                )),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|x| x.1 as i32),
                )),
                Arc::new(Float32Array::from_iter_values(
                    rows.iter().map(|x| pool[x.0 % 64][x.1] as f32),
                )),
            ];
            RecordBatch::try_new(schema.clone(), cols).expect("valid batch")
        })
        .collect();
    let mut tr = build_transform(
        "moments",
        &BuildContext {
            id: "m",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        },
        toml::Table::new(),
    )
    .expect("moments builds");
    let mut out = TransformContext::detached("t");
    let t = Instant::now();
    for b in batches {
        tr.process(&Input::new(0, "in"), b, &mut out)
            .expect("batch accepted");
        out.batches.clear();
    }
    tr.finish(&mut out).expect("finish");
    row(
        "`moments` transform on traces (Arrow rows in, tables out)",
        (tr_frames * UNITS) as f64,
        t.elapsed().as_secs_f64(),
    );

    if let Some(py) = std::env::var_os("NEUROD_PYTHON") {
        let n = (frames / 10).max(1);
        let code = format!(
            "import time, numpy as np\nfrom scipy import stats\nx = np.random.default_rng(1).uniform(-1, 3, ({UNITS}, {n}))\nt = time.perf_counter()\nstats.skew(x, axis=1); stats.kurtosis(x, axis=1)\nprint(time.perf_counter() - t)"
        );
        match Command::new(py).args(["-c", &code]).output() {
            Ok(o) if o.status.success() => {
                let s: f64 = String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(f64::NAN);
                row(
                    "scipy.stats.skew + kurtosis, two passes over a whole array",
                    (n * UNITS) as f64,
                    s,
                );
            }
            _ => println!("| scipy | (Python failed) | | |"),
        }
    } else {
        println!("\n(NEUROD_PYTHON not set: no scipy row)");
    }
}
