//! Common median reference (the CPU twin of the median shader): at each sample, subtract from
//! every channel of a group the median of that group's channels at that sample.
//!
//! The median is exact, with numpy's semantics (an even count gives the mean of the two middle
//! values, computed in f32 as `(a + b) / 2`). It is the costliest stage of the CPU chain (384
//! values per sample, 30 000 samples per second), so instead of selecting among all values it uses
//! the previous sample's median: one vectorised pass counts the values below a window around it
//! and copies the ~40 inside (AVX2: compare and left-pack through a permutation table; AVX-512:
//! compress; else scalar, branch-free); a second pass over those keeps the ≤ 16 around the
//! interpolated position of the wanted ranks, which are ranked by counting. When the ranks miss
//! the window it widens (twice), then falls back to `select_nth_unstable`. The window adapts so
//! misses stay rare. It only changes the speed, never the result, and it evolves sample by sample,
//! so the output does not depend on chunking (nor on the instruction set). Scratch buffers are
//! reused: nothing is allocated per chunk.

use crate::simd::Simd;

/// Median reference over groups of channels (one per shank, or one for the whole probe);
/// channels in no group are left untouched.
#[derive(Debug, Clone)]
pub struct MedianReference {
    n_channels: usize,
    groups: Vec<Group>,
    /// Values of one group at one sample (gathered, or the window's members).
    scratch: Vec<f32>,
    /// Gathered values of a non-contiguous group.
    gathered: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Group {
    channels: Vec<usize>,
    /// `Some(start)` when the channels are `start, start+1, …` (no gather needed).
    contiguous_from: Option<usize>,
    /// Median of the previous sample, the centre of the search window.
    last_median: f32,
    /// Half-width of the search window (µV): widened after a miss, narrowed while the window
    /// holds more than [`WINDOW_MAX`] values.
    half_width: f32,
}

/// The most values a window should hold. With independent noise on each channel the previous
/// median predicts the rank of the new one to about ±10 of 384, so the window must hold a few
/// dozen values for misses to be rare.
const WINDOW_MAX: usize = 48;

impl MedianReference {
    /// Channels out of range and duplicates within a group are dropped (logged); empty groups are
    /// ignored.
    pub fn new(groups: Vec<Vec<usize>>, n_channels: usize) -> Self {
        let mut kept = Vec::with_capacity(groups.len());
        let mut largest = 0;
        for mut channels in groups {
            let before = channels.len();
            channels.retain(|&c| c < n_channels);
            let mut seen = vec![false; n_channels];
            channels.retain(|&c| !std::mem::replace(&mut seen[c], true));
            if channels.len() != before {
                tracing::warn!(
                    dropped = before - channels.len(),
                    n_channels,
                    "median reference: channel indices out of range or repeated in a group were dropped"
                );
            }
            if channels.is_empty() {
                continue;
            }
            let contiguous_from = channels
                .windows(2)
                .all(|w| w[1] == w[0] + 1)
                .then_some(channels[0]);
            largest = largest.max(channels.len());
            kept.push(Group {
                channels,
                contiguous_from,
                last_median: f32::NAN,
                half_width: 1.0,
            });
        }
        MedianReference {
            n_channels,
            groups: kept,
            // The window (at most all values, plus vector slack), then the narrowed window.
            scratch: vec![0.0; 2 * (largest + SLACK)],
            gathered: vec![0.0; largest],
        }
    }

    pub fn n_channels(&self) -> usize {
        self.n_channels
    }

    /// The groups as given (after dropping invalid indices), for the GPU twin.
    pub fn groups(&self) -> impl Iterator<Item = &[usize]> {
        self.groups.iter().map(|g| g.channels.as_slice())
    }

    /// References `data` (whole samples of C channels, sample-major; a trailing partial sample is
    /// left untouched) in place.
    pub fn process(&mut self, data: &mut [f32]) {
        let c = self.n_channels;
        if c == 0 {
            return;
        }
        match Simd::widest() {
            // SAFETY: `widest` gives a level only where the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.process_avx512(data) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.process_avx2(data) },
            Simd::Scalar => self.process_rows(data, Simd::Scalar),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn process_avx512(&mut self, data: &mut [f32]) {
        self.process_rows(data, Simd::Avx512)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn process_avx2(&mut self, data: &mut [f32]) {
        self.process_rows(data, Simd::Avx2)
    }

    #[inline(always)]
    fn process_rows(&mut self, data: &mut [f32], simd: Simd) {
        let c = self.n_channels;
        for row in data.chunks_exact_mut(c) {
            for g in &mut self.groups {
                match g.contiguous_from {
                    Some(start) => {
                        let values = &mut row[start..start + g.channels.len()];
                        let m = group_median(values, g, &mut self.scratch, simd);
                        for v in values.iter_mut() {
                            *v -= m;
                        }
                    }
                    None => {
                        let n = g.channels.len();
                        for (dst, &ch) in self.gathered[..n].iter_mut().zip(&g.channels) {
                            *dst = row[ch];
                        }
                        let m = group_median(&self.gathered[..n], g, &mut self.scratch, simd);
                        for &ch in &g.channels {
                            row[ch] -= m;
                        }
                    }
                }
            }
        }
    }
}

/// Exact median of `values` (numpy semantics), using and updating the group's search window.
#[inline(always)]
fn group_median(values: &[f32], g: &mut Group, scratch: &mut [f32], simd: Simd) -> f32 {
    let n = values.len();
    let (k_lo, k_hi) = ((n - 1) / 2, n / 2);
    if g.last_median.is_finite() {
        let mut lo = g.last_median - g.half_width;
        let mut hi = g.last_median + g.half_width;
        for attempt in 0..3 {
            let (below, inside) = window_pass(values, lo, hi, scratch, simd);
            if below <= k_lo && k_hi < below + inside {
                let (window, rest) = scratch.split_at_mut(inside);
                let m = middle_of_window(window, lo, hi, k_lo - below, k_hi - below, rest, simd);
                if attempt > 0 {
                    g.half_width *= 1.5;
                } else if inside > WINDOW_MAX {
                    g.half_width *= 0.9;
                }
                g.half_width = g.half_width.clamp(1e-6, 1e30);
                g.last_median = m;
                return m;
            }
            // Missed: widen towards the side(s) the wanted ranks lie on.
            let width = (hi - lo).max(1e-6);
            if below > k_lo {
                lo -= 2.0 * width;
            }
            if k_hi >= below + inside {
                hi += 2.0 * width;
            }
        }
        g.half_width = (g.half_width * 2.0).clamp(1e-6, 1e30);
    }
    let scratch = &mut scratch[..n];
    scratch.copy_from_slice(values);
    let m = middle_of(scratch, k_lo, k_hi);
    g.last_median = m;
    m
}

/// Counts the values below `lo` and copies those in `[lo, hi]` to the front of `scratch`
/// (which holds at least `values.len() + SLACK`). Returns (below, inside).
#[inline(always)]
fn window_pass(
    values: &[f32],
    lo: f32,
    hi: f32,
    scratch: &mut [f32],
    simd: Simd,
) -> (usize, usize) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2 is only chosen when the CPU supports AVX2.
        Simd::Avx2 => unsafe { x86::window_pass_avx2(values, lo, hi, scratch) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx512 is only chosen when the CPU supports AVX-512F.
        Simd::Avx512 => unsafe { x86::window_pass_avx512(values, lo, hi, scratch) },
        Simd::Scalar => window_pass_scalar(values, lo, hi, scratch, 0, 0),
    }
}

/// [`window_pass`] with the widest instruction set this CPU has (checked per call; for long
/// slices). `scratch` holds at least `values.len() + SLACK`.
pub(crate) fn window_pass_detect(
    values: &[f32],
    lo: f32,
    hi: f32,
    scratch: &mut [f32],
) -> (usize, usize) {
    window_pass(values, lo, hi, scratch, Simd::widest())
}

/// Branch-free scalar pass (also the tail of the vector ones), continuing from counts so far.
#[inline(always)]
fn window_pass_scalar(
    values: &[f32],
    lo: f32,
    hi: f32,
    scratch: &mut [f32],
    below: usize,
    inside: usize,
) -> (usize, usize) {
    let (mut below, mut inside) = (below, inside);
    for &v in values {
        below += (v < lo) as usize;
        scratch[inside] = v;
        inside += (v >= lo && v <= hi) as usize;
    }
    (below, inside)
}

/// Room a vector pass may write past the values it keeps.
pub(crate) const SLACK: usize = 16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// For each 8-lane mask, the lane indices of its set bits, packed to the front.
    static PACK: [[u32; 8]; 256] = {
        let mut table = [[0u32; 8]; 256];
        let mut mask = 0;
        while mask < 256 {
            let mut out = 0;
            let mut lane = 0;
            while lane < 8 {
                if mask & (1 << lane) != 0 {
                    table[mask][out] = lane as u32;
                    out += 1;
                }
                lane += 1;
            }
            mask += 1;
        }
        table
    };

    /// The window pass 8 lanes at a time: compare, count with popcnt, left-pack the lanes inside
    /// the window with a permutation from `PACK` and store them unaligned (8 lanes are written,
    /// `popcnt` of them kept, hence the slack in `scratch`).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn window_pass_avx2(
        values: &[f32],
        lo: f32,
        hi: f32,
        scratch: &mut [f32],
    ) -> (usize, usize) {
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let (mut below, mut inside) = (0usize, 0usize);
        let chunks = values.chunks_exact(8);
        let tail = chunks.remainder();
        for chunk in chunks {
            // SAFETY: `chunk` has 8 f32; `scratch[inside..inside + 8]` is in bounds because
            // inside <= values consumed so far and scratch has 8 values of slack (sliced below).
            let v = _mm256_loadu_ps(chunk.as_ptr());
            let lt = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(v, vlo)) as u32;
            let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(v, vlo);
            let le = _mm256_cmp_ps::<_CMP_LE_OQ>(v, vhi);
            let inm = _mm256_movemask_ps(_mm256_and_ps(ge, le)) as usize;
            let idx = _mm256_loadu_si256(PACK[inm].as_ptr() as *const __m256i);
            let packed = _mm256_permutevar8x32_ps(v, idx);
            let dst = &mut scratch[inside..inside + 8];
            _mm256_storeu_ps(dst.as_mut_ptr(), packed);
            below += lt.count_ones() as usize;
            inside += inm.count_ones() as usize;
        }
        super::window_pass_scalar(tail, lo, hi, scratch, below, inside)
    }

    /// The window pass 16 lanes at a time with AVX-512's compress (into a register, then one
    /// unaligned store: the memory form of vcompressps is slow on some CPUs).
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn window_pass_avx512(
        values: &[f32],
        lo: f32,
        hi: f32,
        scratch: &mut [f32],
    ) -> (usize, usize) {
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let (mut below, mut inside) = (0usize, 0usize);
        let chunks = values.chunks_exact(16);
        let tail = chunks.remainder();
        for chunk in chunks {
            // SAFETY: `chunk` has 16 f32; the store goes through a bounds-checked 16-value slice.
            let v = _mm512_loadu_ps(chunk.as_ptr());
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, vlo);
            // Not below `lo` and not above `hi` (a NaN fails the second test).
            let inm = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(!lt, v, vhi);
            let packed = _mm512_maskz_compress_ps(inm, v);
            let dst = &mut scratch[inside..inside + 16];
            _mm512_storeu_ps(dst.as_mut_ptr(), packed);
            below += lt.count_ones() as usize;
            inside += inm.count_ones() as usize;
        }
        super::window_pass_scalar(tail, lo, hi, scratch, below, inside)
    }

    /// [`super::middle_of_few`] for all values at once: lane i counts the values below `v[i]`
    /// (each value broadcast and compared with all lanes), then the element of rank k is the
    /// largest lane whose count is at most k.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn middle_of_few_avx512(v: &[f32], k_lo: usize, k_hi: usize) -> f32 {
        debug_assert!(v.len() <= super::NARROW);
        let lanes = ((1u32 << v.len()) - 1) as __mmask16;
        // SAFETY: the mask reads only the first v.len() values.
        let x = _mm512_maskz_loadu_ps(lanes, v.as_ptr());
        let one = _mm512_set1_epi32(1);
        let mut below = _mm512_setzero_si512();
        for &y in v {
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_set1_ps(y), x);
            below = _mm512_mask_add_epi32(below, lt, below, one);
        }
        let rank = |k: usize| {
            let fits = _mm512_cmple_epu32_mask(below, _mm512_set1_epi32(k as i32)) & lanes;
            _mm512_mask_reduce_max_ps(fits, x)
        };
        let a = rank(k_lo);
        if k_lo == k_hi {
            a
        } else {
            (a + rank(k_hi)) / 2.0
        }
    }

    /// [`middle_of_few_avx512`] in two 8-lane halves.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn middle_of_few_avx2(v: &[f32], k_lo: usize, k_hi: usize) -> f32 {
        // Padding lanes hold +∞: every value is below them, so their count (v.len()) exceeds
        // any wanted rank.
        let mut w = [f32::INFINITY; super::NARROW];
        w[..v.len()].copy_from_slice(v);
        let (x0, x1) = (
            _mm256_loadu_ps(w.as_ptr()),
            _mm256_loadu_ps(w[8..].as_ptr()),
        );
        let (mut b0, mut b1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for &y in v {
            let y = _mm256_set1_ps(y);
            // A true comparison is all ones (-1): subtracting it counts one.
            b0 = _mm256_sub_epi32(b0, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(y, x0)));
            b1 = _mm256_sub_epi32(b1, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(y, x1)));
        }
        let rank = |k: usize| {
            let limit = _mm256_set1_epi32(k as i32 + 1);
            let none = _mm256_set1_ps(f32::NEG_INFINITY);
            let pick = |x: __m256, b: __m256i| {
                _mm256_blendv_ps(none, x, _mm256_castsi256_ps(_mm256_cmpgt_epi32(limit, b)))
            };
            let m = _mm256_max_ps(pick(x0, b0), pick(x1, b1));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        };
        let a = rank(k_lo);
        if k_lo == k_hi {
            a
        } else {
            (a + rank(k_hi)) / 2.0
        }
    }
}

/// [`middle_of`] for a window `[lo, hi]` that already holds few values: one more pass narrows it
/// ([`narrow_to_ranks`]), and the at most [`NARROW`] values left are ranked without branches.
/// Run on every miss, the full selection took about a tenth of the reference's time on the
/// ground-truth recording; with the narrowing's retries, all the run's selections (σ's
/// included) fell from 8.8 % to 6.6 % of its user time. `spare` (at least `window.len() +
/// SLACK` long) takes the narrowed set. Window values are never NaN.
#[inline(always)]
fn middle_of_window(
    window: &mut [f32],
    lo: f32,
    hi: f32,
    k_lo: usize,
    k_hi: usize,
    spare: &mut [f32],
    simd: Simd,
) -> f32 {
    let n = window.len();
    if n <= NARROW {
        return middle_of_few_with(window, k_lo, k_hi, simd);
    }
    if spare.len() >= n + SLACK {
        let pass = |v: &[f32], a, b, to: &mut [f32]| window_pass(v, a, b, to, simd);
        if let Some((below, inside)) =
            narrow_to_ranks(window, lo, hi, (k_lo, k_hi), 5.0, spare, pass)
        {
            if inside <= NARROW {
                return middle_of_few_with(&spare[..inside], k_lo - below, k_hi - below, simd);
            }
        }
    }
    middle_of(window, k_lo, k_hi)
}

/// Narrows `window`, values in `[lo, hi]` spread close to uniformly (as values near a median
/// are), to the range about `2 · half_count` values wide around the interpolated position of the
/// ranks `k_lo..=k_hi`, with `pass` (a window pass, into `spare`). When the ranks lie beside that
/// range, the next range of the same width on their side is tried, twice at most. Returns the
/// (below, inside) counts of the range that holds them, its values at the front of `spare`, or
/// None. Shared by the median reference and σ's exact medians.
#[inline(always)]
pub(crate) fn narrow_to_ranks(
    window: &[f32],
    lo: f32,
    hi: f32,
    (k_lo, k_hi): (usize, usize),
    half_count: f32,
    spare: &mut [f32],
    mut pass: impl FnMut(&[f32], f32, f32, &mut [f32]) -> (usize, usize),
) -> Option<(usize, usize)> {
    let n = window.len();
    let span = hi - lo;
    let centre = lo + span * ((k_lo as f32 + 1.0) / (n + 1) as f32);
    let half = span * (half_count / n as f32);
    let (mut a, mut b) = (centre - half, centre + half);
    for _ in 0..3 {
        let (below, inside) = pass(window, a, b, spare);
        if below <= k_lo && k_hi < below + inside {
            return Some((below, inside));
        }
        let width = b - a;
        (a, b) = if below > k_lo {
            (a - width, a)
        } else {
            (b, b + width)
        };
    }
    None
}

/// Most values [`middle_of_few`] ranks.
const NARROW: usize = 16;

/// [`middle_of_few`] with the instruction set of the window passes: the vector forms count for
/// every value at once (compiled from the portable form, the counts came out as mostly scalar
/// code, a fifth of the reference's time).
#[inline(always)]
fn middle_of_few_with(v: &[f32], k_lo: usize, k_hi: usize, simd: Simd) -> f32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2 is only chosen when the CPU supports AVX2.
        Simd::Avx2 => unsafe { x86::middle_of_few_avx2(v, k_lo, k_hi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx512 is only chosen when the CPU supports AVX-512F.
        Simd::Avx512 => unsafe { x86::middle_of_few_avx512(v, k_lo, k_hi) },
        Simd::Scalar => middle_of_few(v, k_lo, k_hi),
    }
}

/// Mean of the elements of rank `k_lo` and `k_hi` of at most [`NARROW`] non-NaN values without
/// sorting: the element of rank k is the largest x with `#{y < x} <= k` (ties share a count).
/// The count runs over a fixed-size, +∞-padded copy so it vectorises: a compare and a popcount.
#[inline(always)]
fn middle_of_few(v: &[f32], k_lo: usize, k_hi: usize) -> f32 {
    let mut w = [f32::INFINITY; NARROW];
    w[..v.len()].copy_from_slice(v);
    let (klo, khi) = (k_lo as u32, k_hi as u32);
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        // A bit per comparison, then one popcount: summed as integers, the comparisons compiled
        // to a shift, a move and an add per lane (the reference took 1.15× as long).
        let mut below = 0u32;
        for (i, &y) in w.iter().enumerate() {
            below |= ((y < x) as u32) << i;
        }
        let lt = below.count_ones();
        a = if lt <= klo && x > a { x } else { a };
        b = if lt <= khi && x > b { x } else { b };
    }
    if k_lo == k_hi {
        a
    } else {
        (a + b) / 2.0
    }
}

/// Mean of the elements of rank `k_lo` and `k_hi` (equal for an odd count, or consecutive) of
/// `v`; reorders `v`.
#[inline(always)]
fn middle_of(v: &mut [f32], k_lo: usize, k_hi: usize) -> f32 {
    let (_, &mut a, right) = v.select_nth_unstable_by(k_lo, f32::total_cmp);
    if k_hi == k_lo {
        return a;
    }
    let b = right.iter().copied().fold(f32::INFINITY, f32::min);
    (a + b) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// numpy.median of f32 values: sort, middle or mean of the two middles in f32.
    fn reference_median(values: &[f32]) -> f32 {
        let mut v = values.to_vec();
        v.sort_by(f32::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    #[test]
    fn even_and_odd_groups_use_numpy_medians() {
        // Sample 0: group [0,1,2,3] → median of 4, 1, 3, 10 is (3 + 4) / 2 = 3.5;
        // group [4,5,6] → median of 7, -2, 5 is 5. Channel 7 is in no group.
        let mut data = vec![4.0, 1.0, 3.0, 10.0, 7.0, -2.0, 5.0, 100.0];
        let mut cmr = MedianReference::new(vec![vec![0, 1, 2, 3], vec![4, 6, 5]], 8);
        cmr.process(&mut data);
        assert_eq!(data, vec![0.5, -2.5, -0.5, 6.5, 2.0, -7.0, 0.0, 100.0]);
    }

    #[test]
    fn matches_sorting_reference_on_drifting_data_with_jumps() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let n_channels = 385;
        let n_samples = 3000;
        let mut data = Vec::with_capacity(n_channels * n_samples);
        let mut common = 0.0f32;
        for t in 0..n_samples {
            common += rng.random_range(-3.0..3.0);
            if t % 500 == 250 {
                common += 400.0; // a jump the window cannot follow
            }
            for c in 0..n_channels {
                // Quantised values make ties (equal medians) common too.
                let v = common + (rng.random_range(-40.0f32..40.0) * 4.0).round() / 4.0;
                data.push(if c == 384 { 9999.0 } else { v });
            }
        }
        let groups = vec![
            (0..384).collect::<Vec<_>>(),
            (0..384).filter(|c| c % 3 == 0).collect(),
        ];
        // Two overlapping groups would apply twice; test them separately.
        for group in groups {
            let mut expected = data.clone();
            for row in expected.chunks_exact_mut(n_channels) {
                let values: Vec<f32> = group.iter().map(|&c| row[c]).collect();
                let m = reference_median(&values);
                for &c in &group {
                    row[c] -= m;
                }
            }
            let mut got = data.clone();
            let mut cmr = MedianReference::new(vec![group.clone()], n_channels);
            for chunk in got.chunks_mut(n_channels * 37) {
                cmr.process(chunk);
            }
            assert!(got
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    /// Every instruction set this CPU has gives the scalar pass's counts and window contents, and
    /// the same referenced output bit for bit.
    #[test]
    fn instruction_sets_agree() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let levels = Simd::available();
        eprintln!("median reference instruction sets tested: {levels:?}");
        for n in [1usize, 7, 8, 15, 16, 17, 100, 384] {
            let values: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(-20.0f32..20.0) * 2.0).round() / 2.0)
                .collect();
            for (lo, hi) in [(-3.0, 4.5), (-100.0, 100.0), (50.0, 60.0), (0.5, 0.5)] {
                let mut expected = vec![0.0; n + SLACK];
                let (b0, i0) = window_pass(&values, lo, hi, &mut expected, Simd::Scalar);
                let mut want = expected[..i0].to_vec();
                want.sort_by(f32::total_cmp);
                for &simd in &levels {
                    let mut got = vec![0.0; n + SLACK];
                    let (b, i) = window_pass(&values, lo, hi, &mut got, simd);
                    let mut got = got[..i].to_vec();
                    got.sort_by(f32::total_cmp);
                    assert_eq!(
                        (b, i, &got),
                        (b0, i0, &want),
                        "{simd:?}, n {n}, window [{lo}, {hi}]"
                    );
                }
            }
        }
        let n_channels = 384;
        let data: Vec<f32> = (0..n_channels * 2000)
            .map(|_| rng.random_range(-30.0f32..30.0))
            .collect();
        let reference = {
            let mut d = data.clone();
            MedianReference::new(vec![(0..n_channels).collect()], n_channels)
                .process_rows(&mut d, Simd::Scalar);
            d
        };
        for &simd in &levels {
            let mut d = data.clone();
            MedianReference::new(vec![(0..n_channels).collect()], n_channels)
                .process_rows(&mut d, simd);
            assert!(
                d.iter()
                    .zip(&reference)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{simd:?}"
            );
        }
    }

    /// The vector rankings of a few values give the sorted ranks, ties and every length included.
    #[test]
    fn few_values_rank_alike_on_every_instruction_set() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for n in 1..=NARROW {
            for _ in 0..200 {
                // Half-units from a narrow range: ties are common.
                let v: Vec<f32> = (0..n)
                    .map(|_| (rng.random_range(-4.0f32..4.0) * 2.0).round() / 2.0)
                    .collect();
                let mut sorted = v.clone();
                sorted.sort_by(f32::total_cmp);
                for k in 0..n {
                    let k_hi = (k + 1).min(n - 1);
                    let want = (sorted[k] + sorted[k_hi]) / 2.0;
                    for simd in Simd::available() {
                        assert_eq!(
                            middle_of_few_with(&v, k, k_hi, simd),
                            want,
                            "{simd:?} {v:?} {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_range_and_repeated_channels_are_dropped() {
        let cmr = MedianReference::new(vec![vec![0, 1, 1, 9], vec![]], 3);
        let groups: Vec<&[usize]> = cmr.groups().collect();
        assert_eq!(groups, vec![&[0usize, 1][..]]);
    }
}
