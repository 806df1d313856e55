//! Two-photon imaging benchmark: frames per second on one core through `motion_correct` and
//! `roi_traces` for 512×512 frames with 1,000 ROIs. Prints a markdown table; asserts nothing
//! about time (target: 200 frames/s for the two together).
//!
//! Data: the simulated rig's two-photon movie (512×512, 1,000 somata, its own ROI masks from the
//! `rois` port), each frame moved by a random sub-pixel shift within ±8 px so that registration
//! has work to do. Frames go in batches of 10 (a third of a second at 30 Hz); the reference
//! (first 30 frames) is made before timing starts.
//! Run: `cargo bench -p pipelines --bench imaging`. Env: `NEUROD_BENCH_FRAMES` (default 300)
//! frames timed.

use std::time::Instant;

use arrow::array::{Array, FixedSizeListArray, Float32Array, Int16Array};
use arrow::record_batch::RecordBatch;
use pipelines::component::{BuildContext, Input, TransformContext};
use pipelines::imaging::registration::{shift_bilinear, to_i16, Params, Registration};
use pipelines::sources::simulated::{Rig, SimulatedOptions};
use pipelines::transforms::{motion_correct, roi_traces};
use rand::{Rng, SeedableRng};

const SIZE: usize = 512;
const ROIS: u32 = 1000;
const BATCH: usize = 10;

/// Pins this thread to CPU 0: the figure is for one core.
fn pin_to_one_core() -> bool {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn ctx(id: &str) -> BuildContext<'_> {
    BuildContext {
        id,
        data_dir: "/tmp".as_ref(),
        inputs: &[],
    }
}

fn main() {
    let pinned = pin_to_one_core();
    let timed: usize = std::env::var("NEUROD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // A pool of distinct moved frames, cycled through.
    let pool = 60usize;
    let options = SimulatedOptions {
        probes: 0,
        rois: ROIS,
        frame_size: SIZE as u32,
        batch_ms: 100,
        ..SimulatedOptions::default()
    };
    let mut rig = Rig::new("sim", &options).expect("rig");
    let rois = rig.rois_batch().expect("two-photon").expect("masks");
    let mut frames: Vec<RecordBatch> = Vec::new();
    while frames.len() < pool {
        let w = rig.next_window(false).expect("window").expect("endless");
        frames.extend(w.batches.into_iter().map(|(_, b)| b));
    }
    frames.truncate(pool);
    let schema = frames[0].schema();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut moved: Vec<Vec<i16>> = Vec::with_capacity(pool);
    // Content moved by (−dy, −dx): what `shift_y`, `shift_x` should say.
    let mut applied: Vec<(f32, f32)> = Vec::with_capacity(pool);
    for (k, b) in frames.iter().enumerate() {
        let l = b
            .column(2)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        let v = l.value(0);
        let px = v.as_any().downcast_ref::<Int16Array>().unwrap().values();
        let mut dst = vec![0i16; SIZE * SIZE];
        let (dy, dx) = if k < 30 {
            (0.0, 0.0)
        } else {
            (rng.random_range(-8.0..8.0), rng.random_range(-8.0..8.0))
        };
        shift_bilinear(px, &mut dst, SIZE, SIZE, dy, dx, f32::from, to_i16);
        moved.push(dst);
        applied.push((-dy, -dx));
    }
    let batch_of = |first: usize| -> RecordBatch {
        let n = BATCH;
        let values: Vec<i16> = (0..n)
            .flat_map(|i| moved[(first + i) % pool].iter().copied())
            .collect();
        let list = FixedSizeListArray::try_new(
            std::sync::Arc::new(arrow::datatypes::Field::new(
                "item",
                arrow::datatypes::DataType::Int16,
                false,
            )),
            (SIZE * SIZE) as i32,
            std::sync::Arc::new(Int16Array::from(values)),
            None,
        )
        .unwrap();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(arrow::array::Int64Array::from_iter_values(
                    first as i64..(first + n) as i64,
                )),
                std::sync::Arc::new(arrow::array::Float64Array::from_iter_values(
                    (first..first + n).map(|k| k as f64 / 30.0),
                )),
                std::sync::Arc::new(list),
            ],
        )
        .unwrap()
    };
    let inputs: Vec<RecordBatch> = (0..timed.div_ceil(BATCH))
        .map(|k| batch_of(30 + k * BATCH))
        .collect();
    let n_timed = inputs.len() * BATCH;

    let mut mc =
        motion_correct::build(&ctx("mc"), toml::from_str("max_shift_px = 12").unwrap()).unwrap();
    let t0 = Instant::now();
    let cpu: toml::Table = toml::from_str("backend = 'cpu'").unwrap();
    // roi_traces' inputs: the registered frames, then the ROI masks.
    let roi_inputs = ["mc".to_string(), "sim.rois".to_string()];
    let (frames_in, rois_in) = (Input::new(0, "mc"), Input::new(1, "sim.rois"));
    let traces_ctx = |id| BuildContext {
        inputs: &roi_inputs,
        ..ctx(id)
    };
    let mut tr = roi_traces::build(&traces_ctx("traces"), cpu).unwrap();
    tr.process(&rois_in, rois.clone(), &mut TransformContext::detached("t"))
        .unwrap();
    // The GPU twin (a hardware GPU, else lavapipe: labelled in the table), when there is one.
    let gpu_backend = kernels::gpu::acquire().map(|c| c.backend.as_str());
    let mut tr_gpu = gpu_backend.map(|_| {
        let gpu: toml::Table = toml::from_str("backend = 'gpu'").unwrap();
        let mut t = roi_traces::build(&traces_ctx("traces_gpu"), gpu).unwrap();
        t.process(&rois_in, rois, &mut TransformContext::detached("t"))
            .unwrap();
        t
    });
    let mut tr_gpu_s = 0.0;
    let rois_s = t0.elapsed().as_secs_f64();
    // The reference: the first 30 (unmoved) frames, untimed.
    let mut warm = TransformContext::detached("t");
    for k in 0..3 {
        mc.process(&Input::new(0, "in"), batch_of(k * BATCH), &mut warm)
            .unwrap();
    }
    assert_eq!(warm.batches.len(), 1, "reference made");

    // Registration alone: the shift estimate (FFTs), the warp.
    let reference: Vec<f32> = moved[0].iter().map(|&v| f32::from(v)).collect();
    let params = Params {
        max_shift: 12,
        smooth_sigma: 1.15,
        taper: 3.45,
    };
    let mut reg = Registration::new(&reference, SIZE, SIZE, params).unwrap();
    let t = Instant::now();
    let mut sink = 0f32;
    for k in 0..n_timed {
        sink += reg.estimate_i16(&moved[k % pool]).dy;
    }
    let estimate_s = t.elapsed().as_secs_f64() / n_timed as f64;
    let mut dst = vec![0i16; SIZE * SIZE];
    let t = Instant::now();
    for k in 0..n_timed {
        shift_bilinear(
            &moved[k % pool],
            &mut dst,
            SIZE,
            SIZE,
            1.3,
            -2.7,
            f32::from,
            to_i16,
        );
    }
    let warp_s = t.elapsed().as_secs_f64() / n_timed as f64;
    std::hint::black_box((sink, &dst));

    // The transforms, batch by batch.
    let (mut mc_s, mut tr_s) = (0.0, 0.0);
    let mut worst_err = 0f32;
    for b in &inputs {
        let mut out = TransformContext::detached("t");
        let t = Instant::now();
        mc.process(&Input::new(0, "in"), b.clone(), &mut out)
            .unwrap();
        mc_s += t.elapsed().as_secs_f64();
        let registered = out.batches.pop().unwrap().1;
        let shifts = |c: usize| {
            registered
                .column(c)
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap()
                .clone()
        };
        let (sy, sx) = (shifts(3), shifts(4));
        let first = registered
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0) as usize;
        for i in 0..sy.len() {
            let (ay, ax) = applied[(first + i) % pool];
            worst_err = worst_err
                .max((sy.value(i) - ay).abs())
                .max((sx.value(i) - ax).abs());
        }
        if let Some(g) = &mut tr_gpu {
            let mut traces = TransformContext::detached("t");
            let t = Instant::now();
            g.process(&frames_in, registered.clone(), &mut traces)
                .unwrap();
            tr_gpu_s += t.elapsed().as_secs_f64();
            std::hint::black_box(traces);
        }
        let mut traces = TransformContext::detached("t");
        let t = Instant::now();
        tr.process(&frames_in, registered, &mut traces).unwrap();
        tr_s += t.elapsed().as_secs_f64();
        std::hint::black_box(traces);
    }
    let per = |s: f64| s / n_timed as f64;
    println!(
        "\n### Two-photon frames, {SIZE}×{SIZE}, {ROIS} ROIs, one core{}\n",
        if pinned {
            " (pinned to CPU 0)"
        } else {
            " (not pinned)"
        }
    );
    println!("| stage | ms / frame | frames / s |");
    println!("|---|---:|---:|");
    let row = |name: &str, s: f64| println!("| {name} | {:.3} | {:.0} |", s * 1e3, 1.0 / s);
    row("shift estimate (phase correlation)", estimate_s);
    row("bilinear warp", warp_s);
    row("`motion_correct` (estimate + warp + Arrow)", per(mc_s));
    row("`roi_traces` (F + neuropil, 1,000 ROIs)", per(tr_s));
    if let Some(b) = gpu_backend {
        row(
            &format!("`roi_traces` on the GPU twin ({b}; not one core)"),
            per(tr_gpu_s),
        );
    }
    row("**both**", per(mc_s + tr_s));
    println!(
        "\n{n_timed} frames timed in batches of {BATCH}; ROI masks and neuropil annuli built once in {:.0} ms; largest shift error {worst_err:.3} px (shifts applied with the bilinear warp, within ±8 px).",
        rois_s * 1e3
    );
}
