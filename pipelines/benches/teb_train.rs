//! TEB training time per epoch (issue 8's benchmark): a 384-column source (spike counts of a
//! probe), one target column driven by a few of the units, L = 16, hidden 128, 30,000 bins
//! (24,000 train, 6,000 validation). Prints a markdown table; asserts nothing about time.
//!
//! Run: `cargo bench -p pipelines --bench teb_train`. Env: `NEUROD_BENCH_BINS` (default
//! 30,000), `NEUROD_BENCH_EPOCHS` (default 3 per stage).

use std::time::Instant;

use kernels::teb::model::StreamColumns;
use pipelines::teb::data::Aligned;
use pipelines::teb::train::{train, Progress, Stage, TrainOptions};
use rand::{Rng, SeedableRng};

const SOURCE: usize = 384;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bins = env("NEUROD_BENCH_BINS", 30_000);
    let epochs = env("NEUROD_BENCH_EPOCHS", 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut x = Vec::with_capacity(bins * SOURCE);
    let mut y = Vec::with_capacity(bins);
    let mut speed = 0f32;
    for _ in 0..bins {
        let row: Vec<f32> = (0..SOURCE)
            .map(|_| (rng.random::<f32>() * 4.0).floor())
            .collect();
        // Running speed follows the first eight units with a lag of one bin, plus noise.
        let drive: f32 = row[..8].iter().sum::<f32>() / 8.0;
        y.push(speed + rng.random::<f32>());
        speed = 0.8 * speed + drive;
        x.extend(row);
    }
    let data = Aligned {
        source: StreamColumns {
            stream_id: "bench.probe0.bins".into(),
            columns: (0..SOURCE).map(|i| format!("count_{i}")).collect(),
        },
        target: StreamColumns {
            stream_id: "bench.behaviour".into(),
            columns: vec!["running_speed_cm_s".into()],
        },
        bin_s: 0.02,
        bin_index: (0..bins as i64).collect(),
        x,
        y,
    };
    let opts = TrainOptions {
        latent: 16,
        hidden: 128,
        max_epochs: epochs,
        patience: epochs,
        ..Default::default()
    };
    let mut last = Instant::now();
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let start = Instant::now();
    let trained = train(&data, &opts, &mut |p: &Progress| {
        let i = usize::from(p.stage == Stage::Source);
        times[i].push(last.elapsed().as_secs_f64());
        last = Instant::now();
    });
    let total = start.elapsed().as_secs_f64();
    let trained = match trained {
        Ok(t) => t,
        Err(e) => {
            eprintln!("training failed: {e}");
            std::process::exit(1);
        }
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "TEB training, {SOURCE} source columns, L = 16, hidden 128, {bins} bins, tbptt {}, batch {}, candle on {} threads",
        opts.tbptt,
        opts.batch,
        candle_core::utils::get_num_threads()
    );
    println!("| stage | epochs | seconds per epoch (train + validation) |");
    println!("|---|---|---|");
    println!(
        "| target-only | {} | {:.2} |",
        times[0].len(),
        mean(&times[0])
    );
    println!("| source | {} | {:.2} |", times[1].len(), mean(&times[1]));
    println!(
        "total {total:.1} s (with setup, baseline and the CPU-twin report); report seconds_per_epoch {:.2}",
        trained.report.seconds_per_epoch
    );
}
