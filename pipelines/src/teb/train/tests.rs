//! Training tests: candle's forward pass against the CPU twin, and known answers.

use candle_core::{Device, Tensor};
use kernels::teb::model::{Dims, Hidden};
use kernels::teb::{StepOutput, TebCpu, TebModel};

use super::model::{Net, State};

#[test]
fn candle_forward_matches_the_cpu_twin_over_1000_steps() {
    let dims = Dims {
        source: 13,
        target: 3,
        latent: 5,
        hidden: Hidden {
            target_lstm: 9,
            source_lstm: 11,
            source_mlp: 7,
        },
    };
    let model = TebModel::random(dims, 42);
    let net = Net::new(dims, &model.weights).unwrap();
    let params = net.params().unwrap().detach();
    let steps = 1000;
    let x: Vec<f32> = (0..steps * dims.source)
        .map(|i| ((i as f32) * 0.37).sin() * 2.0)
        .collect();
    let y: Vec<f32> = (0..steps * dims.target)
        .map(|i| ((i as f32) * 0.11).cos())
        .collect();
    let dev = &Device::Cpu;
    let xt = Tensor::from_slice(&x, (steps, 1, dims.source), dev).unwrap();
    let yt = Tensor::from_slice(&y, (steps, 1, dims.target), dev).unwrap();
    let mut keep = vec![1f32; steps];
    keep[0] = 0.0;
    let keep = Tensor::from_vec(keep, (steps, 1, 1), dev).unwrap();
    let mut ty = State::zeros(1, dims.hidden.target_lstm).unwrap();
    let mut sx = State::zeros(1, dims.hidden.source_lstm).unwrap();
    let prior = params.target(&yt, &keep, &mut ty).unwrap();
    let (mu_x, delta) = params.source(&xt, &keep, &prior, &mut sx).unwrap();
    let rate: Vec<f32> = super::model::kl_rate(&mu_x, &delta, &prior.logvar)
        .unwrap()
        .to_vec1()
        .unwrap();
    let (full, _) = params
        .decode(&(&prior.mu + &mu_x).unwrap(), &prior.logvar)
        .unwrap();
    let (only, _) = params.decode(&prior.mu, &prior.logvar).unwrap();
    let full: Vec<Vec<f32>> = full.to_vec2().unwrap();
    let only: Vec<Vec<f32>> = only.to_vec2().unwrap();

    let mut cpu = TebCpu::new(&model);
    let mut out = StepOutput::for_model(&model);
    let mut worst = 0f32;
    for t in 0..steps {
        cpu.step(
            &x[t * dims.source..(t + 1) * dims.source],
            &y[t * dims.target..(t + 1) * dims.target],
            &mut out,
        );
        worst = worst.max((out.rate_nats - rate[t]).abs());
        for j in 0..dims.target {
            worst = worst.max((out.prediction[j] - full[t][j]).abs());
            worst = worst.max((out.target_only[j] - only[t][j]).abs());
        }
    }
    assert!(worst < 1e-4, "largest difference {worst}");
    assert!(
        rate.iter().any(|r| *r > 1e-3),
        "random weights carry a rate"
    );
}

// ---- known answers (ALGORITHMS.md §6) ----

use kernels::teb::model::StreamColumns;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::{train, validate, TrainOptions};
use crate::teb::data::Aligned;

/// TE(X → Y) of x_t = 0.7x_{t−1} + ε, y_t = 0.3y_{t−1} + 0.5x_{t−2} + η, from ALGORITHMS.md §6
/// (the documented value of a 10⁶-step, 30–40-lag fit).
const DOCUMENTED_TE: f64 = 0.164;

#[derive(Clone, Copy)]
enum Drive {
    Linear(f64),
    Square(f64),
}

/// `n` bins of the recipe's process, with a gap (a missing bin) every `gap_every` bins.
fn process(n: usize, drive: Drive, seed: u64, gap_every: usize) -> Aligned {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut noise = || -> f64 { StandardNormal.sample(&mut rng) };
    let burn = 100;
    let (mut x, mut y) = (vec![0f64; n + burn], vec![0f64; n + burn]);
    for t in 2..n + burn {
        x[t] = 0.7 * x[t - 1] + noise();
        let d = match drive {
            Drive::Linear(c) => c * x[t - 2],
            Drive::Square(c) => c * (x[t - 2] * x[t - 2] - 1.0),
        };
        y[t] = 0.3 * y[t - 1] + d + noise();
    }
    let mut bin_index = Vec::with_capacity(n);
    let mut b = 1000i64;
    for t in 0..n {
        if gap_every > 0 && t > 0 && t % gap_every == 0 {
            b += 1; // the bin in between is missing
        }
        bin_index.push(b);
        b += 1;
    }
    Aligned {
        source: StreamColumns {
            stream_id: "sim.x".into(),
            columns: vec!["x".into()],
        },
        target: StreamColumns {
            stream_id: "sim.y".into(),
            columns: vec!["y".into()],
        },
        bin_s: 0.01,
        bin_index,
        x: x[burn..].iter().map(|&v| v as f32).collect(),
        // An offset and scale: the model must normalise.
        y: y[burn..].iter().map(|&v| (3.0 * v + 10.0) as f32).collect(),
    }
}

/// Runs the baseline alone on `data` with the trainer's split and normalisation.
fn baseline_of(data: &Aligned, lags: usize) -> super::baseline::Baseline {
    let split = super::Split::of(data, 0.2).unwrap();
    let norm = super::normalisation(data, split.train_bins.clone());
    let x = super::normalised(&data.x, &norm.source_mean, &norm.source_std);
    let y = super::normalised(&data.y, &norm.target_mean, &norm.target_std);
    let inputs = super::baseline::Inputs {
        x: &x,
        dx: 1,
        y: &y,
        dy: 1,
        target_std: &norm.target_std,
    };
    super::baseline::fit(&inputs, &split.train, &split.validation, lags).unwrap()
}

#[test]
fn linear_baseline_finds_the_documented_transfer_entropy_within_5_percent() {
    let data = process(100_000, Drive::Linear(0.5), 1, 20_000);
    let b = baseline_of(&data, 30);
    assert_eq!(b.lags, 30);
    let err = (b.te_nats_per_step - DOCUMENTED_TE).abs() / DOCUMENTED_TE;
    assert!(
        err < 0.05,
        "baseline TE {} vs {DOCUMENTED_TE}",
        b.te_nats_per_step
    );
    // The full model's residual is η (variance 1, ×3² in raw units): mse ≈ 9.
    assert!((b.full.mse - 9.0).abs() < 0.5, "mse {}", b.full.mse);
}

/// Small model, sized for a test on a loaded 2-core box (each run well under a minute).
fn test_options() -> TrainOptions {
    TrainOptions {
        latent: 4,
        hidden: 16,
        max_epochs: 100,
        lags: 30,
        ..Default::default()
    }
}

fn trained(data: &Aligned) -> super::Trained {
    let mut epochs = 0;
    let t = train(data, &test_options(), &mut |_| epochs += 1).unwrap();
    assert_eq!(
        epochs,
        t.report.epochs_target_only + t.report.epochs_source,
        "on_epoch is called once per epoch"
    );
    eprintln!("{}", serde_json::to_string_pretty(&t.report).unwrap());
    t
}

#[test]
fn teb_rate_is_within_25_percent_of_the_documented_transfer_entropy() {
    let t = trained(&process(30_000, Drive::Linear(0.5), 2, 10_000));
    let r = &t.report;
    let err = (r.rate_nats_per_step - DOCUMENTED_TE).abs() / DOCUMENTED_TE;
    assert!(
        err < 0.25,
        "rate {} vs {DOCUMENTED_TE}",
        r.rate_nats_per_step
    );
    assert!(r.full.r2 > r.target_only.r2 + 0.1, "{r:?}");
    let bits = r.rate_nats_per_step / 0.01 / std::f64::consts::LN_2;
    assert!((r.rate_bits_per_s - bits).abs() < 1e-9);
    assert_eq!((r.bins_train, r.bins_validation), (24_000, 6_000));
    assert_eq!((r.segments_train, r.segments_validation), (3, 1));
}

#[test]
fn without_coupling_the_teb_rate_stays_under_a_hundredth_of_a_nat() {
    let t = trained(&process(20_000, Drive::Linear(0.0), 3, 10_000));
    assert!(t.report.rate_nats_per_step < 0.01, "{:?}", t.report);
    assert!(t.report.linear_gaussian_te_nats_per_step.abs() < 0.01);
}

#[test]
fn a_squared_drive_gives_a_rate_the_linear_baseline_misses_and_the_saved_model_reproduces_it() {
    let data = process(20_000, Drive::Square(0.5), 4, 10_000);
    let t = trained(&data);
    let r = &t.report;
    assert!(r.rate_nats_per_step > 0.1, "{r:?}");
    assert!(r.linear_gaussian_te_nats_per_step.abs() < 0.02, "{r:?}");
    assert!(r.full.r2 > r.baseline.r2 + 0.1, "{r:?}");

    let dir = tempfile::tempdir().unwrap();
    t.model.save(dir.path()).unwrap();
    let loaded = TebModel::load(dir.path()).unwrap();
    assert!(
        loaded.weights == t.model.weights,
        "weights differ after a reload"
    );
    let rate_in_file = loaded.config.report["rate_nats_per_step"].as_f64().unwrap();
    assert!((rate_in_file - r.rate_nats_per_step).abs() < 1e-12);
    assert_eq!(loaded.config.training["beta"], 50.0);
    let split = super::Split::of(&data, 0.2).unwrap();
    let v = validate(&loaded, &data, &split.validation);
    assert_eq!(v.rate_nats_per_step, r.rate_nats_per_step);
    assert_eq!((v.full, v.target_only), (r.full, r.target_only));
}
