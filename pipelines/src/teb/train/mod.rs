//! Training a TEB model on the CPU with candle (docs/teb.md, "Training"): a chronological
//! train/validation split, the target-only stage then the source stage, stateful LSTMs by
//! truncated backpropagation, early stopping, the validation report computed by the CPU twin
//! the daemon runs ([`kernels::teb::TebCpu`]), and the linear-Gaussian baseline beside it.

mod baseline;
mod batches;
mod fit;
mod model;
mod report;
#[cfg(test)]
mod tests;

use std::ops::Range;

use kernels::teb::model::{Dims, Hidden, Normalisation, TebConfig, TebModel, FORMAT};
use serde::Serialize;

pub use report::{validate, Fit, Report, Validation};

use super::data::Aligned;

/// Settings of `neurod train-teb`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainOptions {
    /// Latent size L.
    pub latent: usize,
    /// Hidden size of both LSTMs and of the source MLP.
    pub hidden: usize,
    pub seed: u64,
    /// Weight of the reconstruction term: κ = D_out·β (docs/teb.md). A finite κ biases the rate
    /// low by O(1/κ); a large κ weakens the bottleneck against spurious structure.
    pub beta: f64,
    /// Epochs at most, per stage.
    pub max_epochs: usize,
    /// Epochs without a better validation loss before a stage stops.
    pub patience: usize,
    /// Bins per truncated-backpropagation window.
    pub tbptt: usize,
    /// Lanes (contiguous stretches of the training data) trained side by side.
    pub batch: usize,
    pub learning_rate: f64,
    /// The last fraction of the bins, in time, is the validation data.
    pub validation_fraction: f64,
    /// Lags of the linear-Gaussian baseline (capped so it has at most
    /// [`baseline::MAX_COLUMNS`] regressors).
    pub lags: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            latent: 16,
            hidden: 64,
            seed: 0,
            beta: 50.0,
            max_epochs: 100,
            patience: 8,
            tbptt: 32,
            batch: 32,
            learning_rate: 3e-3,
            validation_fraction: 0.2,
            lags: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    /// Stage 1: the target module and the decoder (`κ·NLL_p + KL(p ‖ N(0, I))`).
    TargetOnly,
    /// Stage 2: the source module, the rest frozen (`κ·NLL_q + KL(q ‖ p)`).
    Source,
}

/// Reported after every epoch (a progress bar's data).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub epoch: usize,
    pub max_epochs: usize,
    /// Mean per-step loss over the epoch's training windows.
    pub train_loss: f64,
    pub validation_loss: f64,
}

/// A trained model (ready for [`TebModel::save`]) and its validation report (also in
/// `model.config.report`).
#[derive(Debug, Clone)]
pub struct Trained {
    pub model: TebModel,
    pub report: Report,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training data: {0}")]
    Data(String),
    #[error("training options: {0}")]
    Options(String),
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Trains a TEB model on `data`; `on_epoch` is called after every epoch of either stage.
pub fn train(
    data: &Aligned,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(&Progress),
) -> Result<Trained, TrainError> {
    check_options(opts)?;
    let split = Split::of(data, opts.validation_fraction)?;
    let (dx, dy) = (data.source_dim(), data.target_dim());
    let normalisation = normalisation(data, split.train_bins.clone());
    let xn = normalised(
        &data.x,
        &normalisation.source_mean,
        &normalisation.source_std,
    );
    let yn = normalised(
        &data.y,
        &normalisation.target_mean,
        &normalisation.target_std,
    );
    let dims = Dims {
        source: dx,
        target: dy,
        latent: opts.latent,
        hidden: Hidden {
            target_lstm: opts.hidden,
            source_lstm: opts.hidden,
            source_mlp: opts.hidden,
        },
    };
    let kappa = dy as f64 * opts.beta;

    // PyTorch's default initialisation, then the source head at zero: q = p, rate 0 at start.
    let mut init = TebModel::random(dims, opts.seed).weights;
    init.source_mlp2.weight.fill(0.0);
    init.source_mlp2.bias.fill(0.0);
    let net = model::Net::new(dims, &init)?.with_decoder_mask()?;

    let train_w = batches::windows(&xn, dx, &yn, dy, &split.train, opts.batch, opts.tbptt)?;
    let val_w = batches::windows(&xn, dx, &yn, dy, &split.validation, opts.batch, opts.tbptt)?;
    let mut data_of = fit::StageData {
        train: &train_w,
        validation: &val_w,
        train_priors: None,
        validation_priors: None,
    };
    let stage1 = fit::run_stage(&net, Stage::TargetOnly, &data_of, opts, kappa, on_epoch)?;
    // Stage 2 reads the frozen target module's output, computed once.
    let frozen = net.params()?.detach();
    let hy = dims.hidden.target_lstm;
    let train_priors = fit::priors(&frozen, &train_w, hy)?;
    let val_priors = fit::priors(&frozen, &val_w, hy)?;
    data_of.train_priors = Some(&train_priors);
    data_of.validation_priors = Some(&val_priors);
    let stage2 = fit::run_stage(&net, Stage::Source, &data_of, opts, kappa, on_epoch)?;

    let mut model = TebModel {
        config: TebConfig {
            format: FORMAT,
            source: data.source.clone(),
            target: data.target.clone(),
            bin_s: data.bin_s,
            latent: opts.latent,
            hidden: dims.hidden,
            normalisation,
            training: settings_json(opts, kappa),
            report: serde_json::Value::Null,
        },
        weights: net.export()?,
    };
    let validation = report::validate(&model, data, &split.validation);
    let base = baseline::fit(
        &baseline::Inputs {
            x: &xn,
            dx,
            y: &yn,
            dy,
            target_std: &model.config.normalisation.target_std,
        },
        &split.train,
        &split.validation,
        opts.lags,
    )
    .map_err(TrainError::Data)?;
    let report = Report::new(report::Parts {
        validation,
        baseline: base,
        bin_s: data.bin_s,
        kappa,
        bins_train: split.train_bins.len(),
        bins_validation: split.validation_bins.len(),
        segments_train: split.train.len(),
        segments_validation: split.validation.len(),
        stage1,
        stage2,
    });
    model.config.report = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
    Ok(Trained { model, report })
}

fn check_options(o: &TrainOptions) -> Result<(), TrainError> {
    let positive = [
        ("latent", o.latent),
        ("hidden", o.hidden),
        ("max_epochs", o.max_epochs),
        ("patience", o.patience),
        ("tbptt", o.tbptt),
        ("batch", o.batch),
        ("lags", o.lags),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(TrainError::Options(format!("`{name}` must be at least 1")));
        }
    }
    if !(o.beta.is_finite() && o.beta > 0.0) {
        return Err(TrainError::Options(format!(
            "`beta` is {}: must be > 0",
            o.beta
        )));
    }
    if !(o.learning_rate.is_finite() && o.learning_rate > 0.0) {
        return Err(TrainError::Options(format!(
            "`learning_rate` is {}: must be > 0",
            o.learning_rate
        )));
    }
    if !(o.validation_fraction > 0.0 && o.validation_fraction < 1.0) {
        return Err(TrainError::Options(format!(
            "`validation_fraction` is {}: must be in (0, 1)",
            o.validation_fraction
        )));
    }
    Ok(())
}

/// The chronological split: the first bins train, the rest validate; segments are cut at the
/// split point (the recurrent state restarts there).
struct Split {
    train_bins: Range<usize>,
    validation_bins: Range<usize>,
    train: Vec<Range<usize>>,
    validation: Vec<Range<usize>>,
}

/// Fewest bins with a next bin to predict, on either side of the split.
const MIN_STEPS: usize = 10;

impl Split {
    fn of(data: &Aligned, validation_fraction: f64) -> Result<Split, TrainError> {
        let n = data.len();
        let (dx, dy) = (data.source_dim(), data.target_dim());
        if dx == 0 || dy == 0 {
            return Err(TrainError::Data(
                "source and target need a column each".into(),
            ));
        }
        if data.x.len() != n * dx || data.y.len() != n * dy {
            return Err(TrainError::Data(format!(
                "{n} bins but {} source and {} target values for {dx} and {dy} columns",
                data.x.len(),
                data.y.len()
            )));
        }
        if data.bin_index.windows(2).any(|w| w[1] <= w[0]) {
            return Err(TrainError::Data("bin numbers are not increasing".into()));
        }
        for (side, v, cols) in [
            ("source", &data.x, &data.source),
            ("target", &data.y, &data.target),
        ] {
            let d = cols.columns.len();
            if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                let col = cols.columns.get(i % d).map(String::as_str).unwrap_or("?");
                return Err(TrainError::Data(format!(
                    "{side} column `{col}` is not finite at bin {}",
                    data.bin_index.get(i / d).copied().unwrap_or_default()
                )));
            }
        }
        let n_train = ((n as f64) * (1.0 - validation_fraction)).round() as usize;
        let segments = data.segments();
        let split = Split {
            train_bins: 0..n_train,
            validation_bins: n_train..n,
            train: batches::clip(&segments, 0..n_train),
            validation: batches::clip(&segments, n_train..n),
        };
        for (side, segs) in [
            ("training", &split.train),
            ("validation", &split.validation),
        ] {
            let steps: usize = segs.iter().map(|s| s.len().saturating_sub(1)).sum();
            if steps < MIN_STEPS {
                return Err(TrainError::Data(format!(
                    "{steps} {side} bins with a next bin to predict (of {n} bins): need at least {MIN_STEPS}"
                )));
            }
        }
        Ok(split)
    }
}

/// Mean and std of each column over the training bins (std 1 for a constant column, so that
/// column reads as 0 instead of dividing by 0).
fn normalisation(data: &Aligned, train: Range<usize>) -> Normalisation {
    let stats = |v: &[f32], d: usize| {
        let rows = &v[train.start * d..train.end * d];
        let n = train.len().max(1) as f64;
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for row in rows.chunks_exact(d) {
            for (j, &a) in row.iter().enumerate() {
                mean[j] += a as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        for row in rows.chunks_exact(d) {
            for (j, &a) in row.iter().enumerate() {
                sq[j] += (a as f64 - mean[j]).powi(2);
            }
        }
        let std = sq
            .iter()
            .map(|s| {
                let s = (s / n).sqrt() as f32;
                if s.is_finite() && s > 0.0 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    };
    let (source_mean, source_std) = stats(&data.x, data.source_dim());
    let (target_mean, target_std) = stats(&data.y, data.target_dim());
    Normalisation {
        source_mean,
        source_std,
        target_mean,
        target_std,
    }
}

fn normalised(v: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    v.chunks_exact(mean.len())
        .flat_map(|row| row.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s))
        .collect()
}

fn settings_json(opts: &TrainOptions, kappa: f64) -> serde_json::Value {
    let mut v = serde_json::to_value(opts).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("kappa".into(), kappa.into());
        map.insert("trainer".into(), "neurod train-teb (candle, CPU)".into());
    }
    v
}

/// Row `t` of a `bins × d` row-major array.
fn data_rows(v: &[f32], d: usize, t: usize) -> Option<&[f32]> {
    v.get(t * d..(t + 1) * d)
}
