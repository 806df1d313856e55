//! Rigid registration of one image to a reference by phase correlation, as Suite2p does it
//! (`suite2p/registration/rigid.py`): the frame is tapered at its edges towards the reference's
//! mean, both spectra are whitened (divided by their magnitude), the reference's is smoothed by a
//! Gaussian of `smooth_sigma` px, and the peak of the inverse transform within ±`max_shift`
//! is the shift. Suite2p's rigid step stops at whole pixels; here the peak is refined by fitting a
//! Gaussian (a parabola through the logarithms) to it and its neighbours along each axis. The
//! smoothed phase correlation of two shifted copies is a sampled Gaussian, for which that fit is
//! exact; on real frames it recovers shifts within a few hundredths of a pixel.
//!
//! Layout of the work: real-to-complex FFT of each row (`realfft`), transpose, complex FFT of each
//! of the `w/2 + 1` frequency columns (`rustfft`), so every FFT runs on contiguous memory. The
//! inverse goes back over the columns, then only the `2·max_shift + 3` rows around zero shift are
//! transposed back and inverse-transformed along x: the rest of the correlation is never looked
//! at. Plans, the reference spectrum and every buffer are made once per image size.
//!
//! Sign convention: a shift (dy, dx) means the frame shows the reference moved by (dy, dx)
//! pixels (down, right): frame(y, x) ≈ reference(y − dy, x − dx). Registering the frame means
//! sampling it at (y + dy, x + dx), see [`shift_bilinear`].

use std::sync::Arc;

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Added to spectral magnitudes before dividing by them (Suite2p's `eps0`).
const EPS: f32 = 1e-5;

/// Settings of the correlation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Largest shift searched, pixels, each axis.
    pub max_shift: usize,
    /// Gaussian smoothing of the correlation, pixels (Suite2p `smooth_sigma`, 1.15).
    pub smooth_sigma: f32,
    /// Width of the sigmoid edge taper, pixels (Suite2p: 3 · `smooth_sigma`); 0 = no taper.
    pub taper: f32,
}

impl Params {
    /// The largest `max_shift` an image of `h` × `w` allows (the correlation wraps around).
    pub fn max_shift_limit(h: usize, w: usize) -> usize {
        (h.min(w) / 2).saturating_sub(2)
    }
}

/// One estimated shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    pub dy: f32,
    pub dx: f32,
    /// Correlation at the whole-pixel peak (1 for identical images up to the smoothing).
    pub peak: f32,
}

/// Registration against one reference image, with everything it needs preallocated.
pub struct Registration {
    h: usize,
    w: usize,
    /// `w / 2 + 1`: complex columns of a row's real FFT.
    wc: usize,
    max_shift: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    /// Edge taper and the reference's mean where it tapers (Suite2p `maskMul`, `maskOffset`).
    taper: Vec<f32>,
    offset: Vec<f32>,
    /// Whitened, smoothed, conjugated reference spectrum, column-major (`wc` columns of `h`).
    reference: Vec<Complex32>,
    // Buffers, reused for every frame.
    image: Vec<f32>,
    rows: Vec<Complex32>,
    cols: Vec<Complex32>,
    real_scratch: Vec<Complex32>,
    col_scratch: Vec<Complex32>,
    band: Vec<Complex32>,
    band_real: Vec<f32>,
    row_in: Vec<f32>,
}

impl Registration {
    /// Prepares registration of `h` × `w` images (row-major) to `reference`.
    pub fn new(reference: &[f32], h: usize, w: usize, p: Params) -> Result<Self, String> {
        if h < 8 || w < 8 {
            return Err(format!(
                "images of {h}×{w} are too small to register (8×8 at least)"
            ));
        }
        if reference.len() != h * w {
            return Err(format!(
                "reference has {} pixels, not {h}×{w}",
                reference.len()
            ));
        }
        let max_shift = p.max_shift.min(Params::max_shift_limit(h, w));
        let wc = w / 2 + 1;
        let mut real = RealFftPlanner::<f32>::new();
        let r2c = real.plan_fft_forward(w);
        let c2r = real.plan_fft_inverse(w);
        let mut planner = FftPlanner::<f32>::new();
        let col_fwd = planner.plan_fft_forward(h);
        let col_inv = planner.plan_fft_inverse(h);
        let real_scratch_len = r2c.get_scratch_len().max(c2r.get_scratch_len());
        let col_scratch_len = col_fwd
            .get_inplace_scratch_len()
            .max(col_inv.get_inplace_scratch_len());
        let band_rows = 2 * max_shift + 3;
        let (taper, offset) = taper_masks(reference, h, w, p.taper);
        let mut r = Registration {
            h,
            w,
            wc,
            max_shift,
            r2c,
            c2r,
            col_fwd,
            col_inv,
            taper,
            offset,
            reference: vec![Complex32::default(); wc * h],
            image: vec![0.0; h * w],
            rows: vec![Complex32::default(); h * wc],
            cols: vec![Complex32::default(); wc * h],
            real_scratch: vec![Complex32::default(); real_scratch_len],
            col_scratch: vec![Complex32::default(); col_scratch_len],
            band: vec![Complex32::default(); band_rows * wc],
            band_real: vec![0.0; band_rows * w],
            row_in: vec![0.0; w],
        };
        // Suite2p whitens the untapered reference; tapered like the frames, the estimates lose
        // a bias of up to 0.2 px that the reference's wrap-around edges otherwise bring.
        for (((d, v), t), o) in r
            .image
            .iter_mut()
            .zip(reference)
            .zip(&r.taper)
            .zip(&r.offset)
        {
            *d = v * t + o;
        }
        r.spectrum();
        let gauss = gaussian_spectrum(h, w, p.smooth_sigma);
        for ((dst, c), g) in r.reference.iter_mut().zip(&r.cols).zip(&gauss) {
            *dst = c.conj() / (EPS + c.norm()) * *g;
        }
        Ok(r)
    }

    pub fn height(&self) -> usize {
        self.h
    }
    pub fn width(&self) -> usize {
        self.w
    }
    pub fn max_shift(&self) -> usize {
        self.max_shift
    }

    /// The shift of a frame of Int16 pixels against the reference.
    pub fn estimate_i16(&mut self, frame: &[i16]) -> Shift {
        for (((d, v), t), o) in self
            .image
            .iter_mut()
            .zip(frame)
            .zip(&self.taper)
            .zip(&self.offset)
        {
            *d = f32::from(*v) * t + o;
        }
        self.correlate()
    }

    /// The shift of a float frame against the reference.
    pub fn estimate_f32(&mut self, frame: &[f32]) -> Shift {
        for (((d, v), t), o) in self
            .image
            .iter_mut()
            .zip(frame)
            .zip(&self.taper)
            .zip(&self.offset)
        {
            *d = v * t + o;
        }
        self.correlate()
    }

    /// 2-D spectrum of `self.image` into `self.cols` (column-major).
    fn spectrum(&mut self) {
        let (w, wc) = (self.w, self.wc);
        for (src, dst) in self
            .image
            .chunks_exact(w)
            .zip(self.rows.chunks_exact_mut(wc))
        {
            // realfft uses its input as scratch: copy the row out first.
            self.row_in.copy_from_slice(src);
            // Lengths match the plan by construction, so this cannot fail.
            let _ = self
                .r2c
                .process_with_scratch(&mut self.row_in, dst, &mut self.real_scratch);
        }
        transpose::transpose(&self.rows, &mut self.cols, wc, self.h);
        self.col_fwd
            .process_with_scratch(&mut self.cols, &mut self.col_scratch);
    }

    fn correlate(&mut self) -> Shift {
        self.spectrum();
        for (c, r) in self.cols.iter_mut().zip(&self.reference) {
            *c = *c / (EPS + c.norm()) * *r;
        }
        self.col_inv
            .process_with_scratch(&mut self.cols, &mut self.col_scratch);
        // Rows −(m+1)..=m+1 of the correlation, as band rows 0..2m+3.
        let (h, w, wc, m) = (self.h, self.w, self.wc, self.max_shift as isize);
        let rows = 2 * m as usize + 3;
        for i in 0..rows {
            let y = (i as isize - m - 1).rem_euclid(h as isize) as usize;
            let row = &mut self.band[i * wc..(i + 1) * wc];
            for (kx, v) in row.iter_mut().enumerate() {
                *v = self.cols[kx * h + y];
            }
            // The correlation is real: its spectrum's DC (and Nyquist) bins are real but for
            // rounding, which realfft would reject.
            row[0].im = 0.0;
            if w.is_multiple_of(2) {
                row[wc - 1].im = 0.0;
            }
            let _ = self.c2r.process_with_scratch(
                row,
                &mut self.band_real[i * w..(i + 1) * w],
                &mut self.real_scratch,
            );
        }
        let norm = 1.0 / (h * w) as f32;
        let at = |dy: isize, dx: isize| -> f32 {
            let x = dx.rem_euclid(w as isize) as usize;
            self.band_real[(dy + m + 1) as usize * w + x] * norm
        };
        let (mut best, mut by, mut bx) = (f32::NEG_INFINITY, 0isize, 0isize);
        for dy in -m..=m {
            for dx in -m..=m {
                let v = at(dy, dx);
                if v > best {
                    (best, by, bx) = (v, dy, dx);
                }
            }
        }
        let fy = peak_offset(at(by - 1, bx), best, at(by + 1, bx));
        let fx = peak_offset(at(by, bx - 1), best, at(by, bx + 1));
        Shift {
            dy: by as f32 + fy,
            dx: bx as f32 + fx,
            peak: best,
        }
    }
}

/// Sub-pixel offset of a peak from three samples: a Gaussian fit (parabola through the
/// logarithms) when all are positive, else a parabola; within ±0.5.
fn peak_offset(left: f32, centre: f32, right: f32) -> f32 {
    let (l, c, r) = if left > 0.0 && centre > 0.0 && right > 0.0 {
        (left.ln(), centre.ln(), right.ln())
    } else {
        (left, centre, right)
    };
    let curvature = l - 2.0 * c + r;
    // Not a maximum (or NaN): no refinement.
    if curvature.is_nan() || curvature >= 0.0 {
        return 0.0;
    }
    (0.5 * (l - r) / curvature).clamp(-0.5, 0.5)
}

/// Suite2p's `spatial_taper` and `compute_masks`: a sigmoid falling to 0 over about `slope`
/// pixels, starting 2·`slope` from each edge, and the reference's mean filling in.
fn taper_masks(reference: &[f32], h: usize, w: usize, slope: f32) -> (Vec<f32>, Vec<f32>) {
    if slope <= 0.0 {
        return (vec![1.0; h * w], vec![0.0; h * w]);
    }
    let axis = |n: usize| -> Vec<f32> {
        let centre = (n as f32 - 1.0) / 2.0;
        let m = centre - 2.0 * slope;
        (0..n)
            .map(|i| 1.0 / (1.0 + ((((i as f32) - centre).abs() - m) / slope).exp()))
            .collect()
    };
    let (my, mx) = (axis(h), axis(w));
    let mean = reference.iter().map(|v| f64::from(*v)).sum::<f64>() / reference.len() as f64;
    let mut taper = Vec::with_capacity(h * w);
    for y in &my {
        taper.extend(mx.iter().map(|x| y * x));
    }
    let offset = taper.iter().map(|t| mean as f32 * (1.0 - t)).collect();
    (taper, offset)
}

/// Spectrum of a unit-sum Gaussian of `sigma` pixels, column-major like the image spectra
/// (`w / 2 + 1` columns of `h`): exp(−2π²σ²(fy² + fx²)), f in cycles per pixel.
fn gaussian_spectrum(h: usize, w: usize, sigma: f32) -> Vec<f32> {
    let wc = w / 2 + 1;
    let k = -2.0 * std::f32::consts::PI.powi(2) * sigma * sigma;
    let freq = |i: usize, n: usize| -> f32 {
        let i = if i <= n / 2 {
            i as f32
        } else {
            i as f32 - n as f32
        };
        i / n as f32
    };
    let mut out = Vec::with_capacity(wc * h);
    for kx in 0..wc {
        let fx = kx as f32 / w as f32;
        for ky in 0..h {
            let fy = freq(ky, h);
            out.push((k * (fy * fy + fx * fx)).exp());
        }
    }
    out
}

/// Registers a frame: `dst(y, x) = src(y + dy, x + dx)`, bilinear, coordinates outside the image
/// clamped to its edge (edge pixels repeat rather than zeros or wrap-around coming in).
/// Bilinear interpolation averages neighbours, so a frame moved by half a pixel comes out a
/// little smoother than one moved by whole pixels; Suite2p moves by whole pixels in its rigid
/// step (no smoothing, ±0.5 px error).
#[allow(clippy::too_many_arguments)]
pub fn shift_bilinear<S: Copy, D>(
    src: &[S],
    dst: &mut [D],
    h: usize,
    w: usize,
    dy: f32,
    dx: f32,
    load: impl Fn(S) -> f32,
    store: impl Fn(f32) -> D,
) {
    debug_assert!(src.len() >= h * w && dst.len() >= h * w);
    let (fy, fx) = (dy.floor(), dx.floor());
    let (ay, ax) = (dy - fy, dx - fx);
    let (iy, ix) = (fy as isize, fx as isize);
    let (hi, wi) = (h as isize, w as isize);
    let clamp_x = |x: isize| x.clamp(0, wi - 1) as usize;
    // Output columns whose sources x + ix and x + ix + 1 are both inside the row.
    let lo = (-ix).clamp(0, wi) as usize;
    let hi_x = (wi - 1 - ix).clamp(lo as isize, wi) as usize;
    let (w00, w01, w10, w11) = (
        (1.0 - ay) * (1.0 - ax),
        (1.0 - ay) * ax,
        ay * (1.0 - ax),
        ay * ax,
    );
    for y in 0..h {
        let r0 = (y as isize + iy).clamp(0, hi - 1) as usize * w;
        let r1 = (y as isize + iy + 1).clamp(0, hi - 1) as usize * w;
        let (s0, s1) = (&src[r0..r0 + w], &src[r1..r1 + w]);
        let out = &mut dst[y * w..(y + 1) * w];
        let px = |x: usize| -> f32 {
            let (xa, xb) = (clamp_x(x as isize + ix), clamp_x(x as isize + ix + 1));
            w00 * load(s0[xa]) + w01 * load(s0[xb]) + w10 * load(s1[xa]) + w11 * load(s1[xb])
        };
        for x in (0..lo).chain(hi_x..w) {
            out[x] = store(px(x));
        }
        // The bulk, without clamping, so that it vectorises.
        let off = (lo as isize + ix) as usize;
        let n = hi_x - lo;
        if n > 0 {
            let (a0, a1) = (&s0[off..off + n + 1], &s1[off..off + n + 1]);
            for (k, o) in out[lo..hi_x].iter_mut().enumerate() {
                *o = store(
                    w00 * load(a0[k])
                        + w01 * load(a0[k + 1])
                        + w10 * load(a1[k])
                        + w11 * load(a1[k + 1]),
                );
            }
        }
    }
}

/// Rounds to the nearest Int16 (saturating), for registered frames.
#[inline]
pub fn to_i16(v: f32) -> i16 {
    v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A periodic, band-limited texture (random integer frequencies below Nyquist), evaluated
    /// anywhere: shifted copies are exact, so the correlation peak is an exact Gaussian.
    fn image(h: usize, w: usize, dy: f32, dx: f32) -> Vec<f32> {
        // Every frequency present (whitening divides by each bin's magnitude), with falling
        // amplitude and scrambled phases.
        let mut waves: Vec<(f32, f32, f32, f32)> = Vec::new();
        for m in -(h as i32 / 2 - 1)..h as i32 / 2 {
            for n in 0..w as i32 / 2 {
                let phase = ((m * 7919 + n * 104_729) % 628) as f32 / 100.0;
                let amp = 1.0 / (1.0 + (m * m + n * n) as f32).sqrt();
                waves.push((m as f32, n as f32, phase, amp));
            }
        }
        let tau = std::f32::consts::TAU;
        let mut out = Vec::with_capacity(h * w);
        for y in 0..h {
            for x in 0..w {
                let (yf, xf) = (y as f32 - dy, x as f32 - dx);
                let v: f32 = waves
                    .iter()
                    .map(|(m, n, p, a)| {
                        a * (tau * (m * yf / h as f32 + n * xf / w as f32) + p).cos()
                    })
                    .sum();
                out.push(500.0 + 20.0 * v);
            }
        }
        out
    }

    fn params() -> Params {
        Params {
            max_shift: 8,
            smooth_sigma: 1.15,
            taper: 0.0,
        }
    }

    #[test]
    fn recovers_known_subpixel_shifts_of_a_periodic_texture() {
        let (h, w) = (48, 60);
        let mut r = Registration::new(&image(h, w, 0.0, 0.0), h, w, params()).unwrap();
        for &(dy, dx) in &[
            (0.0, 0.0),
            (3.0, -2.0),
            (-4.3, 1.7),
            (0.5, -0.5),
            (6.8, 7.2),
        ] {
            let s = r.estimate_f32(&image(h, w, dy, dx));
            assert!(
                (s.dy - dy).abs() < 0.01 && (s.dx - dx).abs() < 0.01,
                "({dy}, {dx}) estimated as ({}, {})",
                s.dy,
                s.dx
            );
        }
    }

    #[test]
    fn shifts_beyond_the_limit_are_not_found() {
        let (h, w) = (64, 64);
        let p = Params {
            max_shift: 3,
            ..params()
        };
        let mut r = Registration::new(&image(h, w, 0.0, 0.0), h, w, p).unwrap();
        let s = r.estimate_f32(&image(h, w, 6.0, 0.0));
        assert!(s.dy.abs() <= 3.5, "{s:?}");
    }

    #[test]
    fn bilinear_shift_undoes_a_whole_pixel_move_and_interpolates_halves() {
        let (h, w) = (5, 6);
        let src: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        let mut dst = vec![0f32; h * w];
        shift_bilinear(&src, &mut dst, h, w, 1.0, 2.0, |v| v, |v| v);
        // dst(y, x) = src(y + 1, x + 2), edges clamped.
        assert_eq!(dst[0], src[w + 2]);
        assert_eq!(dst[w + 3], src[2 * w + 5]);
        assert_eq!(dst[w + 4], src[2 * w + 5], "x clamped at the right edge");
        assert_eq!(
            dst[(h - 1) * w],
            src[(h - 1) * w + 2],
            "y clamped at the bottom"
        );
        shift_bilinear(&src, &mut dst, h, w, 0.5, -0.5, |v| v, |v| v);
        // Linear image: the value at (y + 0.5, x − 0.5) is w·(y + 0.5) + x − 0.5.
        assert_eq!(dst[w + 2], (w as f32) * 1.5 + 1.5);
        assert_eq!(
            dst[w],
            src[w] + 0.5 * w as f32,
            "x clamped at the left edge"
        );
    }
}
