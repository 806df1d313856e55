//! Causal Butterworth bandpass in second-order sections (the CPU twin of the filter shader).
//!
//! Design: [`butter_bandpass`] reproduces `scipy.signal.butter(order, [low, high],
//! btype="bandpass", fs=fs, output="sos")` step by step (analog prototype → lowpass-to-bandpass →
//! bilinear → `zpk2sos` with scipy's "nearest" pairing), in f64. It is a small port rather than a
//! dependency: the crate that offers this (sci-rs 0.4, checked with `cargo info`) brings nalgebra
//! and a Kalman filter crate along for one function, and what matters here is scipy's exact
//! section order and pole/zero pairing, which the fixture test (`tests/fixtures/butter_sos.json`,
//! scipy 1.17, orders 1–5 on six bands and rates) pins to 1e-9 (measured: 3e-16).
//!
//! Filtering: [`SosFilter`] runs transposed direct form II per section with per-channel f32 state,
//! in exactly the arithmetic order of scipy's `sosfilt` inner loop, so it agrees with `sosfilt` on
//! f32 input and f32 coefficients (bit for bit on the fixture; the test allows 1e-4 of the peak),
//! and gives bit-identical output however the stream is chunked (state is carried between calls).

use crate::chain::KernelError;

/// Second-order sections, scipy's layout: each row is `b0 b1 b2 a0 a1 a2` with `a0 == 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sos {
    pub sections: Vec<[f64; 6]>,
}

/// `scipy.signal.butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")`:
/// `order` sections (a bandpass of order N has 2N poles).
pub fn butter_bandpass(
    order: usize,
    low_hz: f64,
    high_hz: f64,
    fs: f64,
) -> Result<Sos, KernelError> {
    let bad = |problem: String| KernelError::FilterDesign {
        order,
        low_hz,
        high_hz,
        fs,
        problem,
    };
    if order == 0 || order > 32 {
        return Err(bad("order must be between 1 and 32".into()));
    }
    if !(fs.is_finite() && fs > 0.0) {
        return Err(bad("sampling rate must be positive".into()));
    }
    let nyquist = fs / 2.0;
    let wn = [low_hz / nyquist, high_hz / nyquist];
    if !(wn[0] > 0.0 && wn[1] < 1.0 && wn[0] < wn[1]) {
        return Err(bad(format!("need 0 < low < high < fs/2 = {nyquist} Hz")));
    }

    // scipy.signal.buttap: no zeros, poles -exp(iπm/2N) for m = -N+1, -N+3, …, N-1, gain 1.
    let n = order as f64;
    let proto: Vec<C64> = (0..order)
        .map(|i| {
            let m = -(order as f64) + 1.0 + 2.0 * i as f64;
            let theta = std::f64::consts::PI * m / (2.0 * n);
            C64::new(-theta.cos(), -theta.sin())
        })
        .collect();

    // iirfilter: pre-warp with fs = 2 (the digital frequencies are normalised to Nyquist).
    let warped = wn.map(|w| 2.0 * 2.0 * (std::f64::consts::PI * w / 2.0).tan());
    let bw = warped[1] - warped[0];
    let wo = (warped[0] * warped[1]).sqrt();

    // lp2bp_zpk: each prototype pole p → p·bw/2 ± sqrt((p·bw/2)² − wo²); N zeros at the origin.
    let lp: Vec<C64> = proto.iter().map(|p| p.scale(bw).scale(0.5)).collect();
    let roots: Vec<C64> = lp
        .iter()
        .map(|p| (p.square() - C64::real(wo * wo)).sqrt())
        .collect();
    let mut poles: Vec<C64> = lp.iter().zip(&roots).map(|(p, r)| *p + *r).collect();
    poles.extend(lp.iter().zip(&roots).map(|(p, r)| *p - *r));
    let analog_zeros = vec![C64::real(0.0); order];
    let analog_gain = bw.powi(order as i32);

    // bilinear_zpk with fs = 2: s → z = (4 + s)/(4 − s); the N zeros at infinity go to z = −1.
    let fs2 = C64::real(4.0);
    let mut zeros: Vec<C64> = analog_zeros
        .iter()
        .map(|z| (fs2 + *z) / (fs2 - *z))
        .collect();
    zeros.extend(std::iter::repeat_n(
        C64::real(-1.0),
        poles.len() - analog_zeros.len(),
    ));
    let num = analog_zeros
        .iter()
        .fold(C64::real(1.0), |acc, z| acc * (fs2 - *z));
    let den = poles.iter().fold(C64::real(1.0), |acc, p| acc * (fs2 - *p));
    let gain = analog_gain * (num / den).re;
    let digital_poles: Vec<C64> = poles.iter().map(|p| (fs2 + *p) / (fs2 - *p)).collect();

    zpk2sos_nearest(zeros, digital_poles, gain).map_err(bad)
}

/// scipy.signal.zpk2sos(z, p, k, pairing="nearest") for a digital filter.
fn zpk2sos_nearest(z: Vec<C64>, p: Vec<C64>, k: f64) -> Result<Sos, String> {
    let (mut z, mut p) = (z, p);
    if z.is_empty() && p.is_empty() {
        return Ok(Sos {
            sections: vec![[k, 0.0, 0.0, 1.0, 0.0, 0.0]],
        });
    }
    // Same number of poles and zeros, even, padding with ones at the origin.
    while p.len() < z.len() {
        p.push(C64::real(0.0));
    }
    while z.len() < p.len() {
        z.push(C64::real(0.0));
    }
    let n_sections = p.len().div_ceil(2);
    if p.len() % 2 == 1 {
        p.push(C64::real(0.0));
        z.push(C64::real(0.0));
    }
    // One element per conjugate pair (positive imaginary part), then the reals.
    let (zc, zr) = cplxreal(z)?;
    let (pc, pr) = cplxreal(p)?;
    let mut z: Vec<C64> = zc
        .into_iter()
        .chain(zr.into_iter().map(C64::real))
        .collect();
    let mut p: Vec<C64> = pc
        .into_iter()
        .chain(pr.into_iter().map(C64::real))
        .collect();

    // Digital: the "worst" pole is the one closest to the unit circle (first of equals, like argmin).
    fn idx_worst(p: &[C64]) -> usize {
        argmin(p.iter().map(|p| (1.0 - p.abs()).abs()))
    }

    let mut sections = vec![[0.0f64; 6]; n_sections];
    // Built from the last section backwards, so the worst poles end up last.
    for si in (0..n_sections).rev() {
        if p.is_empty() {
            return Err("ran out of poles while pairing sections".into());
        }
        let p1 = p.remove(idx_worst(&p));
        let reals_left = p.iter().filter(|q| q.is_real()).count();
        if p1.is_real() && reals_left == 0 {
            // Special case 1: the last remaining real pole.
            let z1 = take_nearest(&mut z, p1, Which::Real)?;
            sections[si] = single_section(&[z1, C64::real(0.0)], &[p1, C64::real(0.0)]);
        } else if p.len() + 1 == z.len()
            && !p1.is_real()
            && reals_left == 1
            && z.iter().filter(|q| q.is_real()).count() == 1
        {
            // Special case 2: one real pole and one real zero left with equal counts: pair this
            // complex pole with a complex zero.
            let z1 = take_nearest(&mut z, p1, Which::Complex)?;
            sections[si] = single_section(&[z1, z1.conj()], &[p1, p1.conj()]);
        } else {
            let p2 = if p1.is_real() {
                let reals: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_real()).collect();
                let real_poles: Vec<C64> = reals.iter().map(|&i| p[i]).collect();
                p.remove(reals[idx_worst(&real_poles)])
            } else {
                p1.conj()
            };
            if z.is_empty() {
                sections[si] = single_section(&[], &[p1, p2]);
            } else {
                let z1 = take_nearest(&mut z, p1, Which::Any)?;
                if !z1.is_real() {
                    sections[si] = single_section(&[z1, z1.conj()], &[p1, p2]);
                } else if z.is_empty() {
                    sections[si] = single_section(&[z1], &[p1, p2]);
                } else {
                    let z2 = take_nearest(&mut z, p1, Which::Real)?;
                    sections[si] = single_section(&[z1, z2], &[p1, p2]);
                }
            }
        }
    }
    if !(p.is_empty() && z.is_empty()) {
        return Err("poles or zeros left over after pairing".into());
    }
    for b in &mut sections[0][..3] {
        *b *= k;
    }
    Ok(Sos { sections })
}

fn argmin(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, v) in values.enumerate() {
        if v < best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Removes and returns the element of `v` nearest `to` of the requested kind.
fn take_nearest(v: &mut Vec<C64>, to: C64, which: Which) -> Result<C64, String> {
    match nearest_idx(v, to, which) {
        Some(i) => Ok(v.remove(i)),
        None => Err("no zero of the required kind left to pair".into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Real,
    Complex,
    Any,
}

/// scipy's `_nearest_real_complex_idx`: the closest element of the requested kind.
fn nearest_idx(from: &[C64], to: C64, which: Which) -> Option<usize> {
    let mut order: Vec<usize> = (0..from.len()).collect();
    order.sort_by(|&a, &b| (from[a] - to).abs().total_cmp(&(from[b] - to).abs()));
    order.into_iter().find(|&i| match which {
        Which::Any => true,
        Which::Real => from[i].is_real(),
        Which::Complex => !from[i].is_real(),
    })
}

/// scipy's `_cplxreal`: split into conjugate pairs (one representative with positive imaginary
/// part, averaged with its partner) and reals, each sorted by real part.
fn cplxreal(z: Vec<C64>) -> Result<(Vec<C64>, Vec<f64>), String> {
    let tol = 100.0 * f64::EPSILON;
    let mut z = z;
    // lexsort((|imag|, real)): by real part, then |imag|; stable.
    z.sort_by(|a, b| {
        a.re.total_cmp(&b.re)
            .then(a.im.abs().total_cmp(&b.im.abs()))
    });
    let is_real = |q: &C64| q.im.abs() <= tol * q.abs();
    let zr: Vec<f64> = z.iter().filter(|q| is_real(q)).map(|q| q.re).collect();
    let rest: Vec<C64> = z.iter().filter(|q| !is_real(q)).copied().collect();
    let mut zp: Vec<C64> = rest.iter().filter(|q| q.im > 0.0).copied().collect();
    let mut zn: Vec<C64> = rest.iter().filter(|q| q.im < 0.0).copied().collect();
    if zp.len() != zn.len() {
        return Err("complex value with no matching conjugate".into());
    }
    // Runs of (approximately) equal real part are sorted by |imag|.
    let mut start = 0;
    while start < zp.len() {
        let mut stop = start + 1;
        while stop < zp.len() && zp[stop].re - zp[stop - 1].re <= tol * zp[stop - 1].abs() {
            stop += 1;
        }
        if stop - start > 1 {
            zp[start..stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
            zn[start..stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
        }
        start = stop;
    }
    let mut zc = Vec::with_capacity(zp.len());
    for (a, b) in zp.iter().zip(&zn) {
        if (*a - b.conj()).abs() > tol * b.abs() {
            return Err("complex value with no matching conjugate".into());
        }
        zc.push((*a + b.conj()).scale(0.5));
    }
    Ok((zc, zr))
}

/// scipy's `_single_zpksos` with k = 1: polynomial coefficients right-aligned in b and a.
fn single_section(z: &[C64], p: &[C64]) -> [f64; 6] {
    let b = poly(z);
    let a = poly(p);
    let mut s = [0.0; 6];
    s[3 - b.len()..3].copy_from_slice(&b);
    s[6 - a.len()..6].copy_from_slice(&a);
    s
}

/// numpy.poly: coefficients of Π (x − r), highest power first; real parts (the roots come in
/// conjugate pairs or are real wherever this is called).
fn poly(roots: &[C64]) -> Vec<f64> {
    let mut a = vec![C64::real(1.0)];
    for r in roots {
        let mut next = vec![C64::real(0.0); a.len() + 1];
        for (i, c) in a.iter().enumerate() {
            next[i] = next[i] + *c;
            next[i + 1] = next[i + 1] + *c * (C64::real(0.0) - *r);
        }
        a = next;
    }
    a.into_iter().map(|c| c.re).collect()
}

/// Minimal complex arithmetic, with numpy's formulas where rounding could differ (Smith's
/// division, `z*z` for squares).
#[derive(Debug, Clone, Copy, PartialEq)]
struct C64 {
    re: f64,
    im: f64,
}

impl C64 {
    fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    fn real(re: f64) -> Self {
        C64 { re, im: 0.0 }
    }
    fn is_real(&self) -> bool {
        self.im == 0.0
    }
    fn conj(self) -> Self {
        C64::new(self.re, -self.im)
    }
    fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    fn scale(self, s: f64) -> Self {
        C64::new(self.re * s, self.im * s)
    }
    fn square(self) -> Self {
        self * self
    }
    /// Principal square root (branch cut on the negative real axis, like C's csqrt).
    fn sqrt(self) -> Self {
        if self.re == 0.0 && self.im == 0.0 {
            return C64::new(0.0, self.im);
        }
        let t = ((self.re.abs() + self.abs()) / 2.0).sqrt();
        if self.re >= 0.0 {
            C64::new(t, self.im / (2.0 * t))
        } else {
            C64::new(self.im.abs() / (2.0 * t), t.copysign(self.im))
        }
    }
}

impl std::ops::Add for C64 {
    type Output = C64;
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
}

impl std::ops::Sub for C64 {
    type Output = C64;
    fn sub(self, o: C64) -> C64 {
        C64::new(self.re - o.re, self.im - o.im)
    }
}

impl std::ops::Mul for C64 {
    type Output = C64;
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

impl std::ops::Div for C64 {
    type Output = C64;
    /// numpy's complex division (Smith's algorithm).
    fn div(self, o: C64) -> C64 {
        let (ar, ai, br, bi) = (self.re, self.im, o.re, o.im);
        if br.abs() >= bi.abs() {
            let rat = bi / br;
            let scl = 1.0 / (br + bi * rat);
            C64::new((ar + ai * rat) * scl, (ai - ar * rat) * scl)
        } else {
            let rat = br / bi;
            let scl = 1.0 / (bi + br * rat);
            C64::new((ar * rat + ai) * scl, (ai * rat - ar) * scl)
        }
    }
}

/// Coefficients of one section in f32, as the filter uses them: `b0 b1 b2 a1 a2` (a0 == 1).
pub type SectionF32 = [f32; 5];

/// Causal SOS filter over sample-major chunks (`data[t * C + c]`), transposed direct form II per
/// section, one f32 state pair per (section, channel), carried across calls.
#[derive(Debug, Clone)]
pub struct SosFilter {
    coefficients: Vec<SectionF32>,
    n_channels: usize,
    /// `state[(s * 2 + k) * C + c]`: z1 (k = 0) and z2 (k = 1) of section s, channel c; planar so
    /// the loop over channels reads and writes contiguous vectors.
    state: Vec<f32>,
}

impl SosFilter {
    /// Coefficients are designed in f64 and stored as f32 (each divided by a0 first, which scipy's
    /// `sosfilt` assumes is 1 already).
    pub fn new(sos: &Sos, n_channels: usize) -> Self {
        let coefficients: Vec<SectionF32> = sos
            .sections
            .iter()
            .map(|s| {
                let a0 = if s[3] != 0.0 { s[3] } else { 1.0 };
                [s[0] / a0, s[1] / a0, s[2] / a0, s[4] / a0, s[5] / a0].map(|v| v as f32)
            })
            .collect();
        let state = vec![0.0; coefficients.len() * n_channels * 2];
        SosFilter {
            coefficients,
            n_channels,
            state,
        }
    }

    /// The f32 coefficients the filter runs with, per section `b0 b1 b2 a1 a2` (for the GPU twin).
    pub fn coefficients_f32(&self) -> &[SectionF32] {
        &self.coefficients
    }

    pub fn n_channels(&self) -> usize {
        self.n_channels
    }

    /// Current state, `[(section * 2 + k) * C + channel]` with k = 0 for z1, 1 for z2.
    pub fn state(&self) -> &[f32] {
        &self.state
    }

    /// Filters `data` (whole samples of C channels; a trailing partial sample is left untouched)
    /// in place, continuing from the state left by the previous call.
    pub fn process(&mut self, data: &mut [f32]) {
        let c = self.n_channels;
        if c == 0 || self.coefficients.is_empty() {
            return;
        }
        let whole = data.len() / c * c;
        let data = &mut data[..whole];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            unsafe { sos_rows_avx512(&self.coefficients, &mut self.state, c, data) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { sos_rows_avx2(&self.coefficients, &mut self.state, c, data) };
            return;
        }
        sos_rows(&self.coefficients, &mut self.state, c, data);
    }

    /// Zero state, as at the start of a stream.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
    }
}

/// The same code compiled for AVX2 (wider vectors). No FMA contraction happens in Rust, so the
/// result is bit-identical to the baseline build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sos_rows_avx2(
    coefficients: &[SectionF32],
    state: &mut [f32],
    c: usize,
    data: &mut [f32],
) {
    sos_rows(coefficients, state, c, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sos_rows_avx512(
    coefficients: &[SectionF32],
    state: &mut [f32],
    c: usize,
    data: &mut [f32],
) {
    sos_rows(coefficients, state, c, data)
}

/// Sample by sample; within a sample, blocks of [`LANES`] contiguous channels go through all
/// sections while in registers (the channel loop is what vectorises). Per element this is scipy
/// `_sosfilt`'s loop body, same operation order:
/// `y = b0·x + z1; z1 = b1·x − a1·y + z2; z2 = b2·x − a2·y`.
#[inline(always)]
fn sos_rows(coefficients: &[SectionF32], state: &mut [f32], c: usize, data: &mut [f32]) {
    let blocks = c / LANES;
    for row in data.chunks_exact_mut(c) {
        let (head, tail) = row.split_at_mut(blocks * LANES);
        for (b, xs) in head.chunks_exact_mut(LANES).enumerate() {
            let mut x = [0.0f32; LANES];
            x.copy_from_slice(xs);
            for (k, st) in coefficients.iter().zip(state.chunks_exact_mut(2 * c)) {
                let (z1, z2) = st.split_at_mut(c);
                let z1: &mut [f32; LANES] = (&mut z1[b * LANES..(b + 1) * LANES])
                    .try_into()
                    .expect("block");
                let z2: &mut [f32; LANES] = (&mut z2[b * LANES..(b + 1) * LANES])
                    .try_into()
                    .expect("block");
                section_block(k, &mut x, z1, z2);
            }
            xs.copy_from_slice(&x);
        }
        for (i, xs) in tail.iter_mut().enumerate() {
            let ch = blocks * LANES + i;
            for (k, st) in coefficients.iter().zip(state.chunks_exact_mut(2 * c)) {
                let (z1, z2) = st.split_at_mut(c);
                section(
                    k,
                    std::slice::from_mut(xs),
                    &mut z1[ch..ch + 1],
                    &mut z2[ch..ch + 1],
                );
            }
        }
    }
}

/// Channels per register block of [`sos_rows`] (two AVX2 or one AVX-512 vector).
const LANES: usize = 16;

#[inline(always)]
fn section_block(
    k: &SectionF32,
    x: &mut [f32; LANES],
    z1: &mut [f32; LANES],
    z2: &mut [f32; LANES],
) {
    let [b0, b1, b2, a1, a2] = *k;
    for i in 0..LANES {
        let xin = x[i];
        let y = b0 * xin + z1[i];
        z1[i] = b1 * xin - a1 * y + z2[i];
        z2[i] = b2 * xin - a2 * y;
        x[i] = y;
    }
}

#[inline(always)]
fn section(k: &SectionF32, x: &mut [f32], z1: &mut [f32], z2: &mut [f32]) {
    let [b0, b1, b2, a1, a2] = *k;
    for ((x, z1), z2) in x.iter_mut().zip(z1.iter_mut()).zip(z2.iter_mut()) {
        let xin = *x;
        let y = b0 * xin + *z1;
        *z1 = b1 * xin - a1 * y + *z2;
        *z2 = b2 * xin - a2 * y;
        *x = y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn design_matches_scipy_butter_sos() {
        let text = std::fs::read_to_string(fixture_dir().join("butter_sos.json")).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases["designs"].as_array().unwrap();
        assert!(cases.len() >= 20, "fixture has {} designs", cases.len());
        let mut worst = 0.0f64;
        for case in cases {
            let order = case["order"].as_u64().unwrap() as usize;
            let low = case["low_hz"].as_f64().unwrap();
            let high = case["high_hz"].as_f64().unwrap();
            let fs = case["fs"].as_f64().unwrap();
            let expected: Vec<Vec<f64>> = serde_json::from_value(case["sos"].clone()).unwrap();
            let got = butter_bandpass(order, low, high, fs).unwrap();
            assert_eq!(
                got.sections.len(),
                expected.len(),
                "order {order} {low}-{high} @ {fs}"
            );
            for (g, e) in got.sections.iter().zip(&expected) {
                // Relative to the largest coefficient of the same polynomial (b or a), since
                // some coefficients are exactly 0 and b carries the overall gain.
                for (part, range) in [("b", 0..3), ("a", 3..6)] {
                    let scale = e[range.clone()].iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    for i in range {
                        let err = (g[i] - e[i]).abs();
                        worst = worst.max(err / scale);
                        assert!(
                            err <= 1e-9 * scale,
                            "order {order} {low}-{high} Hz @ {fs}: {part} coefficient {i}: {} vs scipy {}",
                            g[i],
                            e[i]
                        );
                    }
                }
            }
        }
        eprintln!("butter_bandpass vs scipy: worst relative coefficient error {worst:e}");
    }

    #[test]
    fn design_rejects_bad_bands() {
        assert!(butter_bandpass(3, 300.0, 16000.0, 30000.0).is_err());
        assert!(butter_bandpass(3, 6000.0, 300.0, 30000.0).is_err());
        assert!(butter_bandpass(0, 300.0, 6000.0, 30000.0).is_err());
        assert!(butter_bandpass(3, 0.0, 6000.0, 30000.0).is_err());
        assert!(butter_bandpass(3, 300.0, 6000.0, f64::NAN).is_err());
    }

    fn read_f32(path: &std::path::Path) -> Vec<f32> {
        let bytes = std::fs::read(path).unwrap();
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Against scipy.signal.sosfilt on the same f32 input and the same f32 coefficients, fed in
    /// uneven chunks. Error measure: max |ours − scipy| / max |scipy| over the whole output.
    #[test]
    fn filter_matches_scipy_sosfilt_in_uneven_chunks() {
        let dir = fixture_dir();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("sosfilt.json")).unwrap())
                .unwrap();
        let n_channels = meta["n_channels"].as_u64().unwrap() as usize;
        let input = read_f32(&dir.join(meta["input"].as_str().unwrap()));
        for case in meta["cases"].as_array().unwrap() {
            let sections: Vec<[f64; 6]> = serde_json::from_value(case["sos"].clone()).unwrap();
            let expected = read_f32(&dir.join(case["output"].as_str().unwrap()));
            assert_eq!(expected.len(), input.len());
            let sos = Sos { sections };

            let mut whole = input.clone();
            SosFilter::new(&sos, n_channels).process(&mut whole);

            let mut chunked = input.clone();
            let mut filter = SosFilter::new(&sos, n_channels);
            let sizes = [1usize, 7, 300, 2, 1001, 64];
            let mut t = 0;
            let n_samples = input.len() / n_channels;
            for i in 0.. {
                if t >= n_samples {
                    break;
                }
                let len = sizes[i % sizes.len()].min(n_samples - t);
                filter.process(&mut chunked[t * n_channels..(t + len) * n_channels]);
                t += len;
            }
            assert!(
                whole
                    .iter()
                    .zip(&chunked)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "chunking changed the output"
            );

            let peak = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = whole
                .iter()
                .zip(&expected)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let rel = err / peak;
            assert!(peak > 10.0, "fixture output is degenerate");
            eprintln!(
                "sosfilt {}: max |err| / max |scipy| = {rel:e}",
                case["name"]
            );
            assert!(rel <= 1e-4, "{}: relative error {rel:e}", case["name"]);
        }
    }

    /// The AVX-512, AVX2 and baseline builds of the loop give the same bits (no FMA contraction),
    /// including the channels past the last full register block.
    #[test]
    fn instruction_sets_agree() {
        let sos = butter_bandpass(4, 300.0, 6000.0, 30000.0).unwrap();
        let n_channels = 37; // two blocks of 16 and a tail of 5
        let input: Vec<f32> = (0..n_channels * 500)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.37)
            .collect();
        let filter = SosFilter::new(&sos, n_channels);
        let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
            let mut data = input.clone();
            let mut state = filter.state.clone();
            f(&mut state, &mut data);
            data
        };
        let baseline = run(&|st, d| sos_rows(&filter.coefficients, st, n_channels, d));
        let mut dispatched = input.clone();
        filter.clone().process(&mut dispatched);
        assert!(baseline
            .iter()
            .zip(&dispatched)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        #[cfg(target_arch = "x86_64")]
        for (name, supported) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if !supported {
                continue;
            }
            let got = run(&|st, d| unsafe {
                // SAFETY: the feature was detected just above.
                if name == "avx2" {
                    sos_rows_avx2(&filter.coefficients, st, n_channels, d)
                } else {
                    sos_rows_avx512(&filter.coefficients, st, n_channels, d)
                }
            });
            assert!(
                baseline
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
        }
    }

    #[test]
    fn filter_rejects_dc_and_passes_the_band() {
        let fs = 30000.0;
        let sos = butter_bandpass(3, 300.0, 6000.0, fs).unwrap();
        let mut f = SosFilter::new(&sos, 2);
        let n = 30000;
        // Channel 0: DC offset; channel 1: 1 kHz sine of amplitude 100.
        let mut data: Vec<f32> = (0..n)
            .flat_map(|t| {
                [
                    500.0,
                    100.0 * (2.0 * std::f64::consts::PI * 1000.0 * t as f64 / fs).sin() as f32,
                ]
            })
            .collect();
        f.process(&mut data);
        let tail = &data[2 * (n - 3000)..];
        let dc = tail.iter().step_by(2).fold(0.0f32, |m, v| m.max(v.abs()));
        let ac = tail
            .iter()
            .skip(1)
            .step_by(2)
            .fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(dc < 1e-2, "DC leaks through: {dc}");
        assert!((ac - 100.0).abs() < 2.0, "1 kHz amplitude {ac}");
        f.reset();
        assert!(f.state().iter().all(|&v| v == 0.0));
    }
}
