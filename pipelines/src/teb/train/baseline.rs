//! The linear-Gaussian baseline: least squares of `y_t` on `lags` lags of the target alone
//! (restricted) and of target and source (full), fitted on the training bins in closed form;
//! TE = ½ ln(det Σ_restricted / det Σ_full) of the residual covariances on the validation bins
//! (Barnett, Barrett & Seth 2009: for Gaussian processes, transfer entropy = Granger / 2).

use std::ops::Range;

use nalgebra::{DMatrix, DVector};

use super::data_rows;
use super::report::{Fit, FitSums};

/// Most regressors (the normal equations are `k × k`; 384 source columns × 30 lags would be a
/// 11,521² system). Lags are cut to fit, and the report says how many were used.
pub const MAX_COLUMNS: usize = 1024;
/// Rows of the design matrix built at a time.
const CHUNK: usize = 2048;

pub struct Inputs<'a> {
    /// Normalised, `bins × dx`.
    pub x: &'a [f32],
    pub dx: usize,
    /// Normalised, `bins × dy`.
    pub y: &'a [f32],
    pub dy: usize,
    /// To report mse in raw units.
    pub target_std: &'a [f32],
}

#[derive(Debug, Clone)]
pub struct Baseline {
    pub te_nats_per_step: f64,
    /// Validation fit of the full model (raw units).
    pub full: Fit,
    pub lags: usize,
}

/// Design row for target bin `t`: `[1, y_{t−1..t−p}, x_{t−1..t−p}]` (all columns of each lag).
fn design_row(d: &Inputs, t: usize, lags: usize, row: &mut [f64]) {
    row[0] = 1.0;
    let mut k = 1;
    for (v, dim) in [(d.y, d.dy), (d.x, d.dx)] {
        for lag in 1..=lags {
            for &a in data_rows(v, dim, t - lag).unwrap_or_default() {
                row[k] = a as f64;
                k += 1;
            }
        }
    }
}

/// Target bins with `lags` bins of history inside their segment.
fn rows(segments: &[Range<usize>], lags: usize) -> impl Iterator<Item = usize> + '_ {
    segments.iter().flat_map(move |s| (s.start + lags)..s.end)
}

pub fn fit(
    d: &Inputs,
    train: &[Range<usize>],
    validation: &[Range<usize>],
    lags: usize,
) -> Result<Baseline, String> {
    let per_lag = d.dx + d.dy;
    let lags = lags.min(((MAX_COLUMNS - 1) / per_lag).max(1));
    let k = 1 + lags * per_lag;
    let k_restricted = 1 + lags * d.dy;
    let n_train = rows(train, lags).count();
    if n_train <= 2 * k {
        return Err(format!(
            "linear baseline: {n_train} training bins with {lags} lags of history, too few for {k} regressors"
        ));
    }
    if rows(validation, lags).next().is_none() {
        return Err(format!(
            "linear baseline: no validation bin has {lags} lags of history"
        ));
    }
    // Normal equations, accumulated a chunk of rows at a time (nalgebra's blocked product).
    let mut xtx = DMatrix::<f64>::zeros(k, k);
    let mut xty = DMatrix::<f64>::zeros(k, d.dy);
    let train_rows: Vec<usize> = rows(train, lags).collect();
    for chunk in train_rows.chunks(CHUNK) {
        let mut design = DMatrix::<f64>::zeros(chunk.len(), k);
        let mut targets = DMatrix::<f64>::zeros(chunk.len(), d.dy);
        let mut row = vec![0f64; k];
        for (i, &t) in chunk.iter().enumerate() {
            design_row(d, t, lags, &mut row);
            design.row_mut(i).copy_from_slice(&row);
            for (j, &v) in data_rows(d.y, d.dy, t)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                targets[(i, j)] = v as f64;
            }
        }
        let dt = design.transpose();
        xtx.gemm(1.0, &dt, &design, 1.0);
        xty.gemm(1.0, &dt, &targets, 1.0);
    }
    let solve = |n: usize| -> Result<DMatrix<f64>, String> {
        let mut a = xtx.view((0, 0), (n, n)).into_owned();
        // A whisker of ridge: a constant or collinear column must not make the solve fail.
        let ridge = 1e-9 * (a.trace() / n as f64).max(1e-12);
        for i in 0..n {
            a[(i, i)] += ridge;
        }
        let chol = a
            .cholesky()
            .ok_or("linear baseline: the normal equations are singular")?;
        Ok(chol.solve(&xty.rows(0, n).into_owned()))
    };
    let beta_full = solve(k)?;
    let beta_restricted = solve(k_restricted)?;

    let mut cov_full = DMatrix::<f64>::zeros(d.dy, d.dy);
    let mut cov_restricted = DMatrix::<f64>::zeros(d.dy, d.dy);
    let mut sums = FitSums::new(d.dy);
    let mut row = vec![0f64; k];
    for t in rows(validation, lags) {
        design_row(d, t, lags, &mut row);
        let x = DVector::from_column_slice(&row);
        let y: Vec<f64> = data_rows(d.y, d.dy, t)
            .unwrap_or_default()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let y = DVector::from_vec(y);
        let pred_full = beta_full.tr_mul(&x);
        let pred_restricted = beta_restricted.tr_mul(&x.rows(0, k_restricted));
        let e_full = &y - &pred_full;
        let e_restricted = &y - &pred_restricted;
        cov_full += &e_full * e_full.transpose();
        cov_restricted += &e_restricted * e_restricted.transpose();
        let raw = |v: &DVector<f64>| {
            v.iter()
                .zip(d.target_std)
                .map(|(a, s)| a * *s as f64)
                .collect::<Vec<_>>()
        };
        sums.add(raw(&y).into_iter(), raw(&pred_full).into_iter());
    }
    let te = 0.5 * (log_det(cov_restricted)? - log_det(cov_full)?);
    Ok(Baseline {
        te_nats_per_step: te,
        full: sums.fit(),
        lags,
    })
}

/// ln det of a symmetric positive-definite matrix (by Cholesky: 2 Σ ln Lᵢᵢ).
fn log_det(m: DMatrix<f64>) -> Result<f64, String> {
    let chol = m
        .cholesky()
        .ok_or("linear baseline: the validation residuals are degenerate")?;
    Ok(2.0
        * chol
            .l_dirty()
            .diagonal()
            .iter()
            .map(|v| v.ln())
            .sum::<f64>())
}
