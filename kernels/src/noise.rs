//! Noise per channel by the median absolute deviation, with numpy's semantics:
//! `σ = median(|x − median(x)|) / 0.6744897501960817`, all in f32 like SpikeInterface's
//! `get_noise_levels` on f32 traces (numpy medians of an even count are the mean of the two middle
//! values; the final division is done in f32, as numpy 2 does for an f32 array and a Python float).
//! Divide by 0.6745: multiplying is a known bug in the wild.

use crate::columns::gather_columns;

/// The MAD of a normal distribution in units of σ: divide a MAD by it to get σ.
pub const MAD_TO_SIGMA: f64 = 0.6744897501960817;

/// Per channel `median(|x − median(x)|) / MAD_TO_SIGMA` over the samples of `data` (sample-major,
/// whole samples of `n_channels`). `out` holds one value per channel (extra entries untouched); an
/// empty input gives NaN.
pub fn mad_sigma(data: &[f32], n_channels: usize, out: &mut [f32]) {
    let channels: Vec<usize> = (0..n_channels.min(out.len())).collect();
    let mut sigma = vec![0.0; channels.len()];
    MadEstimator::default().estimate(&[data], n_channels, &channels, &mut sigma);
    out[..channels.len()].copy_from_slice(&sigma);
}

/// The same computation with reusable scratch (the chain re-estimates noise over tens of
/// thousands of samples per channel; nothing is allocated once the scratch has grown). Medians
/// of long columns are bracketed from a sample first (see `median_in_place_with`), about twice
/// as fast as a plain selection, with the identical result.
#[derive(Debug, Default, Clone)]
pub struct MadEstimator {
    /// `BLOCK` channel columns gathered from sample-major blocks, then ranked in place.
    columns: Vec<f32>,
    /// The values near a median, for [`median_in_place_with`].
    spare: Vec<f32>,
}

/// Channels gathered per pass over the data (bounds the column scratch to BLOCK × samples).
const BLOCK: usize = 64;
/// Rows transposed at a time (a multiple of 8, the vector transpose's tile).
const TILE: usize = 64;

impl MadEstimator {
    /// σ of `channels` (indices into rows of `n_channels`) over the concatenation of `blocks`
    /// (each sample-major, whole samples; order does not matter to a median). `out[i]` is σ of
    /// `channels[i]`.
    pub fn estimate(
        &mut self,
        blocks: &[&[f32]],
        n_channels: usize,
        channels: &[usize],
        out: &mut [f32],
    ) {
        if n_channels == 0 {
            return;
        }
        let n_samples: usize = blocks.iter().map(|b| b.len() / n_channels).sum();
        if self.columns.len() < BLOCK * n_samples {
            self.columns = crate::memory::zeroed_f32(BLOCK * n_samples);
        }
        if self.spare.len() < n_samples + crate::cmr::SLACK {
            self.spare.resize(n_samples + crate::cmr::SLACK, 0.0);
        }
        for (group, sigmas) in channels.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            // Transpose tile by tile: TILE rows stay in L1 while each column gets TILE
            // consecutive values (whole cache lines), instead of one strided write per value.
            let mut t = 0;
            for block in blocks {
                let rows = block.len() / n_channels;
                let mut r = 0;
                while r < rows {
                    let tn = TILE.min(rows - r);
                    let tile = &block[r * n_channels..(r + tn) * n_channels];
                    gather_columns(tile, n_channels, group, &mut self.columns, n_samples, t + r);
                    r += tn;
                }
                t += rows;
            }
            for (j, sigma) in sigmas.iter_mut().enumerate().take(group.len()) {
                let column = &mut self.columns[j * n_samples..(j + 1) * n_samples];
                *sigma = sigma_of_column_with(column, &mut self.spare);
            }
        }
    }
}

/// MAD σ of one column; reorders it.
pub fn sigma_of_column(v: &mut [f32]) -> f32 {
    let mut spare = vec![0.0; v.len() + crate::cmr::SLACK];
    sigma_of_column_with(v, &mut spare)
}

/// [`sigma_of_column`] with scratch of at least `v.len() + 16` values.
fn sigma_of_column_with(v: &mut [f32], spare: &mut [f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    let m = median_in_place_with(v, spare);
    for x in v.iter_mut() {
        *x = (*x - m).abs();
    }
    median_in_place_with(v, spare) / MAD_TO_SIGMA as f32
}

/// Values sampled to bracket a median (Floyd–Rivest style).
const SAMPLE: usize = 256;

/// [`median_in_place`], faster on long slices: the median of an evenly strided sample of
/// [`SAMPLE`] values predicts where the median lies; two sample quantiles ±3 standard errors
/// around it bracket it; one vectorised pass counts the values below the bracket and copies the
/// few inside to `spare` (≥ `v.len() + 16`), where [`ranks_in_bracket`] finds the wanted ranks.
/// When the bracket misses (rare, or NaNs), the full selection runs. The result is the same
/// either way. A small sample makes a wide bracket (a fifth of 60 000 values), which the
/// narrowing makes cheap, and its own selections were a sixth of σ's estimate with 1 024.
fn median_in_place_with(v: &mut [f32], spare: &mut [f32]) -> f32 {
    let n = v.len();
    if n < 8 * SAMPLE || spare.len() < n + crate::cmr::SLACK {
        return median_in_place(v);
    }
    let (k_lo, k_hi) = ((n - 1) / 2, n / 2);
    let mut sample = [0.0f32; SAMPLE];
    let step = n / SAMPLE;
    for (i, s) in sample.iter_mut().enumerate() {
        *s = v[i * step];
    }
    // Sample ranks 128 ± 24 (the sample median's rank error is ±8 for 256 values).
    let centre = SAMPLE / 2;
    let (r_lo, r_hi) = (centre - 24, centre + 24);
    let (_, &mut lo, upper) = sample.select_nth_unstable_by(r_lo, f32::total_cmp);
    let (_, &mut hi, _) = upper.select_nth_unstable_by(r_hi - r_lo - 1, f32::total_cmp);
    if lo.is_finite() && hi.is_finite() {
        let (below, inside) = crate::cmr::window_pass_detect(v, lo, hi, spare);
        if below <= k_lo && k_hi < below + inside {
            let (window, rest) = spare.split_at_mut(inside);
            return ranks_in_bracket(window, lo, hi, k_lo - below, k_hi - below, rest);
        }
    }
    median_in_place(v)
}

/// Values a bracket is narrowed to around the interpolated position of the wanted ranks: the
/// position's error is about the square root of the bracket's count (~110 for 12 000), so this
/// misses rarely.
const NARROWED: usize = 512;

/// [`median_in_place_ranks`] of the `window` values in `[lo, hi]`, after narrowing them to the
/// ~[`NARROWED`] around the interpolated position of the wanted ranks
/// ([`crate::cmr::narrow_to_ranks`]; into `spare`, used when it holds at least
/// `window.len() + 16`: the rest of a column's scratch after a bracket of under half of it).
/// Selecting among all of a bracket's values (~9 % of a column, with a sample of 1 024) took
/// half of σ's estimate.
fn ranks_in_bracket(
    window: &mut [f32],
    lo: f32,
    hi: f32,
    k_lo: usize,
    k_hi: usize,
    spare: &mut [f32],
) -> f32 {
    let n = window.len();
    if n > 4 * NARROWED && spare.len() >= n + crate::cmr::SLACK {
        let half = NARROWED as f32 / 2.0;
        let pass = crate::cmr::window_pass_detect;
        let narrowed = crate::cmr::narrow_to_ranks(window, lo, hi, (k_lo, k_hi), half, spare, pass);
        if let Some((below, inside)) = narrowed {
            return median_in_place_ranks(&mut spare[..inside], k_lo - below, k_hi - below);
        }
    }
    median_in_place_ranks(window, k_lo, k_hi)
}

/// Mean of the elements of rank `k_lo` and `k_hi` (equal, or consecutive); reorders `v`.
fn median_in_place_ranks(v: &mut [f32], k_lo: usize, k_hi: usize) -> f32 {
    let (_, &mut a, right) = v.select_nth_unstable_by(k_lo, f32::total_cmp);
    if k_hi == k_lo {
        return a;
    }
    let b = right.iter().copied().fold(f32::INFINITY, f32::min);
    (a + b) / 2.0
}

/// numpy.median of f32 values; reorders `v`. NaNs sort last (no panic; numpy would give NaN).
pub fn median_in_place(v: &mut [f32]) -> f32 {
    let n = v.len();
    if n == 0 {
        return f32::NAN;
    }
    median_in_place_ranks(v, (n - 1) / 2, n / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn hand_computed_even_and_odd() {
        // Channel 0: 1 2 3 4 → median 2.5, |dev| 1.5 .5 .5 1.5 → MAD 1.0.
        // Channel 1: 0 0 10 -10 → median 0, |dev| 0 0 10 10 → MAD 5.
        let data = [1.0, 0.0, 2.0, 0.0, 3.0, 10.0, 4.0, -10.0];
        let mut out = [0.0; 2];
        mad_sigma(&data, 2, &mut out);
        assert_eq!(out[0], 1.0f32 / 0.674_489_75f32);
        assert_eq!(out[1], 5.0f32 / 0.674_489_75f32);
        assert!(
            (out[0] - 1.482_602_2).abs() < 1e-6,
            "divide by 0.6745, never multiply: {}",
            out[0]
        );
        // Odd count: 5 1 3 → median 3, |dev| 2 2 0 → MAD 2.
        let mut out = [0.0; 1];
        mad_sigma(&[5.0, 1.0, 3.0], 1, &mut out);
        assert_eq!(out[0], 2.0 / MAD_TO_SIGMA as f32);
    }

    #[test]
    fn bracketed_median_equals_full_selection() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for (i, n) in [8192usize, 8193, 60_000, 60_001, 100_000]
            .into_iter()
            .enumerate()
        {
            // Quantised (many ties), skewed, and one with a block of outliers.
            let v: Vec<f32> = (0..n)
                .map(|j| {
                    let x: f32 = rng.random::<f32>().powi(3) * 100.0;
                    let x = if i == 1 { x.round() } else { x };
                    if i == 4 && j < n / 3 {
                        1e6
                    } else {
                        x
                    }
                })
                .collect();
            let mut a = v.clone();
            let mut b = v.clone();
            let mut spare = vec![0.0; n + 16];
            assert_eq!(
                median_in_place_with(&mut a, &mut spare),
                median_in_place(&mut b),
                "n = {n}"
            );
            let (mut a, mut b) = (v.clone(), v);
            assert_eq!(sigma_of_column_with(&mut a, &mut spare), {
                let m = median_in_place(&mut b);
                b.iter_mut().for_each(|x| *x = (*x - m).abs());
                median_in_place(&mut b) / MAD_TO_SIGMA as f32
            });
        }
    }

    /// Narrowing finds the same ranks where the bracket's values are far from uniform (the
    /// interpolated position misses, and the ranges beside it are tried) and where they are not.
    #[test]
    fn narrowed_bracket_finds_the_sorted_ranks() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
        for shape in 0..4 {
            let n = 12_001 + shape;
            let mut window: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.random();
                    match shape {
                        0 => u,
                        1 => u.powi(8),                 // crowded at the low end
                        2 => 1.0 - u.powi(8),           // crowded at the high end
                        _ => (u * 40.0).round() / 40.0, // ties
                    }
                })
                .collect();
            let mut sorted = window.clone();
            sorted.sort_by(f32::total_cmp);
            for k in [0, n / 7, n / 2 - 1, n / 2, n - 2] {
                let want = (sorted[k] + sorted[k + 1]) / 2.0;
                let mut spare = vec![0.0; n + 16];
                let got = ranks_in_bracket(&mut window, 0.0, 1.0, k, k + 1, &mut spare);
                assert_eq!(got, want, "shape {shape}, rank {k}");
            }
        }
    }

    #[test]
    fn gaussian_noise_gives_its_sigma_and_blocks_concatenate() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let n_channels = 20; // more than one gather block
        let n = 40_000;
        let data: Vec<f32> = (0..n * n_channels)
            .map(|i| {
                let sd = 1.0 + (i % n_channels) as f32;
                // Sum of 12 uniforms − 6: unit variance, close enough to normal for the MAD.
                let g: f32 = (0..12).map(|_| rng.random::<f32>()).sum::<f32>() - 6.0;
                g * sd
            })
            .collect();
        let mut whole = vec![0.0; n_channels];
        mad_sigma(&data, n_channels, &mut whole);
        for (c, s) in whole.iter().enumerate() {
            let sd = 1.0 + c as f32;
            assert!(
                (s / sd - 1.0).abs() < 0.03,
                "channel {c}: σ {s} for sd {sd}"
            );
        }
        // Split into two blocks at an arbitrary sample: same σ exactly (order-free).
        let (a, b) = data.split_at(12_345 * n_channels);
        let mut split = vec![0.0; 3];
        MadEstimator::default().estimate(&[b, a], n_channels, &[19, 0, 7], &mut split);
        assert_eq!(split, vec![whole[19], whole[0], whole[7]]);
    }
}
