//! The validation report. Its TEB figures come from the CPU twin the daemon runs
//! ([`TebCpu`]), stepped over the validation bins as live decoding would step them (state reset
//! at each segment start), so the report is what `teb_decode` will show on the same data.

use std::ops::Range;

use kernels::teb::{StepOutput, TebCpu, TebModel};
use serde::Serialize;

use super::baseline::Baseline;
use super::data_rows;
use super::fit::StageRun;
use crate::teb::data::Aligned;

/// Prediction quality on validation data, raw units, averaged over the target columns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    pub mse: f64,
    pub r2: f64,
}

/// Sums for [`Fit`], one column at a time.
pub struct FitSums {
    n: usize,
    sse: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl FitSums {
    pub fn new(columns: usize) -> Self {
        FitSums {
            n: 0,
            sse: vec![0.0; columns],
            sum: vec![0.0; columns],
            sum_sq: vec![0.0; columns],
        }
    }
    /// One row: `actual` and `predicted`, raw units.
    pub fn add(&mut self, actual: impl Iterator<Item = f64>, predicted: impl Iterator<Item = f64>) {
        self.n += 1;
        for (j, (a, p)) in actual.zip(predicted).enumerate() {
            if let (Some(e), Some(s), Some(q)) = (
                self.sse.get_mut(j),
                self.sum.get_mut(j),
                self.sum_sq.get_mut(j),
            ) {
                *e += (a - p).powi(2);
                *s += a;
                *q += a * a;
            }
        }
    }
    pub fn fit(&self) -> Fit {
        let n = self.n.max(1) as f64;
        let d = self.sse.len().max(1) as f64;
        let mse = self.sse.iter().sum::<f64>() / n / d;
        let r2 = self
            .sse
            .iter()
            .zip(&self.sum)
            .zip(&self.sum_sq)
            .map(|((e, s), q)| {
                let ss_tot = q - s * s / n;
                if ss_tot > 0.0 {
                    1.0 - e / ss_tot
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / d;
        Fit { mse, r2 }
    }
}

/// What the CPU twin gives over the validation bins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Validation {
    /// Mean KL(q ‖ p) per bin, nats, over every validation bin.
    pub rate_nats_per_step: f64,
    /// Over the bins that have a next bin in their segment.
    pub target_only: Fit,
    pub full: Fit,
    pub steps: usize,
}

/// Steps `model` over `segments` of `data` (raw units) as live decoding does.
pub fn validate(model: &TebModel, data: &Aligned, segments: &[Range<usize>]) -> Validation {
    let (dx, dy) = (data.source_dim(), data.target_dim());
    let mut cpu = TebCpu::new(model);
    let mut out = StepOutput::for_model(model);
    let (mut full, mut only) = (FitSums::new(dy), FitSums::new(dy));
    let (mut rate, mut bins) = (0.0f64, 0usize);
    for seg in segments {
        cpu.reset();
        for t in seg.clone() {
            let (Some(x), Some(y)) = (data_rows(&data.x, dx, t), data_rows(&data.y, dy, t)) else {
                continue;
            };
            cpu.step(x, y, &mut out);
            rate += out.rate_nats as f64;
            bins += 1;
            if t + 1 < seg.end {
                if let Some(next) = data_rows(&data.y, dy, t + 1) {
                    let actual = || next.iter().map(|&v| v as f64);
                    full.add(actual(), out.prediction.iter().map(|&v| v as f64));
                    only.add(actual(), out.target_only.iter().map(|&v| v as f64));
                }
            }
        }
    }
    Validation {
        rate_nats_per_step: rate / bins.max(1) as f64,
        target_only: only.fit(),
        full: full.fit(),
        steps: full.n,
    }
}

/// `neurod train-teb`'s report (printed, `--report FILE`, and `model.json`'s `report`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Mean per-bin KL(q ‖ p) on validation data: the estimate of TE(source → target).
    pub rate_nats_per_step: f64,
    pub rate_bits_per_s: f64,
    /// ½ ln(det Σ_restricted / det Σ_full) of the lagged least-squares fits, validation residuals.
    pub linear_gaussian_te_nats_per_step: f64,
    pub target_only: Fit,
    pub full: Fit,
    /// The full (target and source lags) linear baseline.
    pub baseline: Fit,
    pub baseline_lags: usize,
    pub bins_train: usize,
    pub bins_validation: usize,
    pub segments_train: usize,
    pub segments_validation: usize,
    pub epochs_target_only: usize,
    pub epochs_source: usize,
    pub best_epoch_target_only: usize,
    pub best_epoch_source: usize,
    pub validation_loss_target_only: f64,
    pub validation_loss_source: f64,
    /// Mean wall time of an epoch (training pass and validation pass), both stages.
    pub seconds_per_epoch: f64,
    pub train_seconds: f64,
    pub kappa: f64,
    pub note: &'static str,
}

pub(super) struct Parts {
    pub validation: Validation,
    pub baseline: Baseline,
    pub bin_s: f64,
    pub kappa: f64,
    pub bins_train: usize,
    pub bins_validation: usize,
    pub segments_train: usize,
    pub segments_validation: usize,
    pub stage1: StageRun,
    pub stage2: StageRun,
}

const NOTE: &str = "rate_nats_per_step estimates the transfer entropy source -> target per bin; \
it is biased low by a finite kappa (O(1/kappa)), and by model capacity and the amount of data";

impl Report {
    pub(super) fn new(p: Parts) -> Report {
        let rate = p.validation.rate_nats_per_step;
        let (s1, s2) = (&p.stage1, &p.stage2);
        let seconds = s1.seconds + s2.seconds;
        Report {
            rate_nats_per_step: rate,
            rate_bits_per_s: rate / p.bin_s / std::f64::consts::LN_2,
            linear_gaussian_te_nats_per_step: p.baseline.te_nats_per_step,
            target_only: p.validation.target_only,
            full: p.validation.full,
            baseline: p.baseline.full,
            baseline_lags: p.baseline.lags,
            bins_train: p.bins_train,
            bins_validation: p.bins_validation,
            segments_train: p.segments_train,
            segments_validation: p.segments_validation,
            epochs_target_only: s1.epochs,
            epochs_source: s2.epochs,
            best_epoch_target_only: s1.best_epoch,
            best_epoch_source: s2.best_epoch,
            validation_loss_target_only: s1.best_validation_loss,
            validation_loss_source: s2.best_validation_loss,
            seconds_per_epoch: seconds / (s1.epochs + s2.epochs).max(1) as f64,
            train_seconds: seconds,
            kappa: p.kappa,
            note: NOTE,
        }
    }
}
