//! Streaming central moments up to the fourth (ALGORITHMS.md §4): exact push and Pébay's merge
//! (SAND2008-6212), and an exponentially weighted variant for drifting signals. Skewness and
//! excess kurtosis equal `scipy.stats.skew` / `scipy.stats.kurtosis` with their defaults (biased).

/// Exact moments of every value pushed: n, mean and M_k = Σ (x − mean)^k for k = 2, 3, 4.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl Moments {
    /// Adds one value. M4 before M3 before M2: each update uses the older lower moments.
    #[inline]
    pub fn push(&mut self, x: f64) {
        let n1 = self.n as f64;
        self.n += 1;
        let n = self.n as f64;
        let d = x - self.mean;
        let dn = d / n;
        let dn2 = dn * dn;
        let t1 = d * dn * n1;
        self.mean += dn;
        self.m4 += t1 * dn2 * (n * n - 3.0 * n + 3.0) + 6.0 * dn2 * self.m2 - 4.0 * dn * self.m3;
        self.m3 += t1 * dn * (n - 2.0) - 3.0 * dn * self.m2;
        self.m2 += t1;
    }

    /// The moments of the union of two disjoint samples (all four terms of M4; dropping the last
    /// two, as some public code does, is wrong).
    pub fn merge(&self, b: &Moments) -> Moments {
        if self.n == 0 {
            return *b;
        }
        if b.n == 0 {
            return *self;
        }
        let a = self;
        let (na, nb) = (a.n as f64, b.n as f64);
        let n = na + nb;
        let d = b.mean - a.mean;
        let (d2, d3, d4) = (d * d, d * d * d, d * d * d * d);
        Moments {
            n: a.n + b.n,
            mean: a.mean + d * nb / n,
            m2: a.m2 + b.m2 + d2 * na * nb / n,
            m3: a.m3
                + b.m3
                + d3 * na * nb * (na - nb) / (n * n)
                + 3.0 * d * (na * b.m2 - nb * a.m2) / n,
            m4: a.m4
                + b.m4
                + d4 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
                + 6.0 * d2 * (na * na * b.m2 + nb * nb * a.m2) / (n * n)
                + 4.0 * d * (na * b.m3 - nb * a.m3) / n,
        }
    }

    /// Population variance M2 / n (NaN when empty).
    pub fn variance(&self) -> f64 {
        self.m2 / self.n as f64
    }

    /// g1 = √n · M3 / M2^1.5 (NaN for fewer than two distinct values).
    pub fn skew(&self) -> f64 {
        (self.n as f64).sqrt() * self.m3 / self.m2.powf(1.5)
    }

    /// g2 = n · M4 / M2² − 3 (Fisher's excess kurtosis; NaN for a constant signal).
    pub fn excess_kurtosis(&self) -> f64 {
        self.n as f64 * self.m4 / (self.m2 * self.m2) - 3.0
    }
}

/// Exponentially weighted moments (normalised m2, m3, m4 about an EW mean), for signals whose
/// statistics drift: each new value weighs α = 1 − exp(−Δt/τ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwMoments {
    pub alpha: f64,
    /// Values seen (the effective sample size saturates at (2 − α)/α).
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl EwMoments {
    /// `dt_s` between values, time constant `tau_s`.
    pub fn new(dt_s: f64, tau_s: f64) -> Self {
        Self::with_alpha(1.0 - (-dt_s / tau_s).exp())
    }

    pub fn with_alpha(alpha: f64) -> Self {
        EwMoments {
            alpha,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
        }
    }

    /// Adds one value; the first one only sets the mean.
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
            return;
        }
        let a = self.alpha;
        let b = 1.0 - a;
        let d = x - self.mean;
        let d2 = d * d;
        self.m4 = b * self.m4
            + a * b * (1.0 - 3.0 * a + 3.0 * a * a) * d2 * d2
            + 6.0 * a * a * b * d2 * self.m2
            - 4.0 * a * b * d * self.m3;
        self.m3 = b * self.m3 + a * b * (1.0 - 2.0 * a) * d2 * d - 3.0 * a * b * d * self.m2;
        self.m2 = b * self.m2 + a * b * d2;
        self.mean += a * d;
    }

    /// Effective number of samples behind the estimate: min(n, (2 − α)/α).
    pub fn effective_n(&self) -> f64 {
        (self.n as f64).min((2.0 - self.alpha) / self.alpha)
    }

    pub fn variance(&self) -> f64 {
        self.m2
    }

    pub fn skew(&self) -> f64 {
        self.m3 / self.m2.powf(1.5)
    }

    pub fn excess_kurtosis(&self) -> f64 {
        self.m4 / (self.m2 * self.m2) - 3.0
    }
}
