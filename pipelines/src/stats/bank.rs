//! Moments of many units updated together, one value per unit per step (a frame of ROIs, a bin
//! of channels): structure of arrays, the same formulas as [`Moments::push`] and
//! [`EwMoments::push`], branch-free so that the compiler vectorises across units. A NaN is a
//! missing value: the unit's state is left as it was (the update runs with a zero weight).

use super::{EwMoments, Moments};

/// Exact moments of `len()` units (ALGORITHMS.md §4), one column per state variable.
#[derive(Debug, Clone, Default)]
pub struct MomentsBank {
    /// Counts as f64 (exact to 2^53) so the update needs no conversion.
    n: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    m3: Vec<f64>,
    m4: Vec<f64>,
}

impl MomentsBank {
    pub fn new(units: usize) -> Self {
        let mut b = Self::default();
        b.resize(units);
        b
    }

    pub fn len(&self) -> usize {
        self.n.len()
    }

    pub fn is_empty(&self) -> bool {
        self.n.is_empty()
    }

    /// Grows (new units start empty) or shrinks to `units`.
    pub fn resize(&mut self, units: usize) {
        for v in [
            &mut self.n,
            &mut self.mean,
            &mut self.m2,
            &mut self.m3,
            &mut self.m4,
        ] {
            v.resize(units, 0.0);
        }
    }

    /// Adds `xs[u]` to unit `u` for every unit (`xs.len()` must be `len()`; extra values are
    /// ignored, missing ones leave their units alone).
    #[inline]
    pub fn push(&mut self, xs: &[f64]) {
        let k = self.n.len().min(xs.len());
        let s = (
            &mut self.n[..k],
            &mut self.mean[..k],
            &mut self.m2[..k],
            &mut self.m3[..k],
            &mut self.m4[..k],
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { exact_avx2(s, &xs[..k]) };
            return;
        }
        exact(s, &xs[..k]);
    }

    /// Unit `u`'s moments.
    pub fn get(&self, u: usize) -> Moments {
        Moments {
            n: self.n[u] as u64,
            mean: self.mean[u],
            m2: self.m2[u],
            m3: self.m3[u],
            m4: self.m4[u],
        }
    }
}

/// Exponentially weighted moments of many units sharing one α.
#[derive(Debug, Clone, Default)]
pub struct EwMomentsBank {
    alpha: f64,
    n: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    m3: Vec<f64>,
    m4: Vec<f64>,
}

impl EwMomentsBank {
    pub fn new(units: usize, alpha: f64) -> Self {
        let mut b = EwMomentsBank {
            alpha,
            ..Self::default()
        };
        b.resize(units);
        b
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn len(&self) -> usize {
        self.n.len()
    }

    pub fn is_empty(&self) -> bool {
        self.n.is_empty()
    }

    pub fn resize(&mut self, units: usize) {
        for v in [
            &mut self.n,
            &mut self.mean,
            &mut self.m2,
            &mut self.m3,
            &mut self.m4,
        ] {
            v.resize(units, 0.0);
        }
    }

    /// As [`MomentsBank::push`]. A unit's first value only sets its mean: that is the update
    /// with α = 1, so it needs no branch either.
    #[inline]
    pub fn push(&mut self, xs: &[f64]) {
        let k = self.n.len().min(xs.len());
        let alpha = self.alpha;
        let s = (
            &mut self.n[..k],
            &mut self.mean[..k],
            &mut self.m2[..k],
            &mut self.m3[..k],
            &mut self.m4[..k],
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { ew_avx2(s, &xs[..k], alpha) };
            return;
        }
        ew(s, &xs[..k], alpha);
    }

    pub fn get(&self, u: usize) -> EwMoments {
        EwMoments {
            alpha: self.alpha,
            n: self.n[u] as u64,
            mean: self.mean[u],
            m2: self.m2[u],
            m3: self.m3[u],
            m4: self.m4[u],
        }
    }
}

/// The state columns of a bank, cut to the same length.
type Columns<'a> = (
    &'a mut [f64],
    &'a mut [f64],
    &'a mut [f64],
    &'a mut [f64],
    &'a mut [f64],
);

/// The exact update across units (ALGORITHMS.md §4, M4 before M3 before M2). Written once,
/// compiled twice: for the baseline target and, behind a runtime check, for AVX2 (4 units per
/// instruction). No FMA: Rust never fuses `a * b + c`, so both give the same bits.
#[inline(always)]
fn exact((n, mean, m2, m3, m4): Columns, xs: &[f64]) {
    let k = xs.len();
    let (n, mean, m2, m3, m4) = (
        &mut n[..k],
        &mut mean[..k],
        &mut m2[..k],
        &mut m3[..k],
        &mut m4[..k],
    );
    for u in 0..k {
        let x = xs[u];
        let valid = !x.is_nan();
        // A missing value becomes the mean with no weight: every increment is then zero.
        let x = if valid { x } else { mean[u] };
        let n1 = n[u];
        let nn = n1 + if valid { 1.0 } else { 0.0 };
        let d = x - mean[u];
        let dn = d / nn.max(1.0);
        let dn2 = dn * dn;
        let t1 = d * dn * n1;
        let (a2, a3) = (m2[u], m3[u]);
        mean[u] += dn;
        m4[u] += t1 * dn2 * (nn * nn - 3.0 * nn + 3.0) + 6.0 * dn2 * a2 - 4.0 * dn * a3;
        m3[u] += t1 * dn * (nn - 2.0) - 3.0 * dn * a2;
        m2[u] += t1;
        n[u] = nn;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exact_avx2(s: Columns, xs: &[f64]) {
    exact(s, xs)
}

/// The exponentially weighted update across units; α = 1 for a unit's first value (it only sets
/// the mean), 0 for a missing one.
#[inline(always)]
fn ew((n, mean, m2, m3, m4): Columns, xs: &[f64], alpha: f64) {
    let k = xs.len();
    let (n, mean, m2, m3, m4) = (
        &mut n[..k],
        &mut mean[..k],
        &mut m2[..k],
        &mut m3[..k],
        &mut m4[..k],
    );
    for u in 0..k {
        let x = xs[u];
        let valid = !x.is_nan();
        let x = if valid { x } else { mean[u] };
        let a0 = if n[u] == 0.0 { 1.0 } else { alpha };
        let a = if valid { a0 } else { 0.0 };
        let b = 1.0 - a;
        let d = x - mean[u];
        let d2 = d * d;
        let (a2, a3) = (m2[u], m3[u]);
        m4[u] =
            b * m4[u] + a * b * (1.0 - 3.0 * a + 3.0 * a * a) * d2 * d2 + 6.0 * a * a * b * d2 * a2
                - 4.0 * a * b * d * a3;
        m3[u] = b * a3 + a * b * (1.0 - 2.0 * a) * d2 * d - 3.0 * a * b * d * a2;
        m2[u] = b * a2 + a * b * d2;
        mean[u] += a * d;
        n[u] += if valid { 1.0 } else { 0.0 };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ew_avx2(s: Columns, xs: &[f64], alpha: f64) {
    ew(s, xs, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bank's formulas are the scalar ones (which are checked against scipy): same bits,
    /// missing values skipped.
    #[test]
    fn bank_equals_the_scalar_updates_and_skips_missing_values() {
        let xs: Vec<[f64; 3]> = (0..500)
            .map(|i| {
                let t = i as f64;
                [
                    (t * 0.37).sin() * 3.0 + (t * 0.011).cos(),
                    if i % 7 == 3 {
                        f64::NAN
                    } else {
                        (t * 1.3).sin().powi(3) * 9.0
                    },
                    ((i * 7919) % 101) as f64,
                ]
            })
            .collect();
        let mut bank = MomentsBank::new(3);
        let mut ew = EwMomentsBank::new(3, 0.05);
        let mut scalar = [Moments::default(); 3];
        let mut ew_scalar = [EwMoments::with_alpha(0.05); 3];
        for row in &xs {
            bank.push(row);
            ew.push(row);
            for u in 0..3 {
                if !row[u].is_nan() {
                    scalar[u].push(row[u]);
                    ew_scalar[u].push(row[u]);
                }
            }
        }
        for u in 0..3 {
            assert_eq!(bank.get(u), scalar[u], "unit {u}");
            let (a, b) = (ew.get(u), ew_scalar[u]);
            assert_eq!(a.n, b.n);
            for (p, q) in [(a.mean, b.mean), (a.m2, b.m2), (a.m3, b.m3), (a.m4, b.m4)] {
                assert!(
                    (p - q).abs() <= 1e-12 * q.abs().max(1.0),
                    "unit {u}: {p} {q}"
                );
            }
        }
        assert_eq!(bank.get(1).n, 500 - 71);
    }
}
