//! Negative peak detection with local exclusion, made streaming (the CPU twin of the detection
//! shader): SpikeInterface 0.105.3 `locally_exclusive` (`detect_peaks_numba_locally_exclusive_on_chunk`,
//! `peak_sign="neg"`), then a per-channel dead time.
//!
//! SpikeInterface's rules, kept exactly:
//! - candidate at (s, c): `x[s,c] <= −thr[c]` and `x[s,c] < x[s−1,c]` and `x[s,c] <= x[s+1,c]`
//!   (so a flat-bottomed trough counts once, at its first sample; the first and last sample of the
//!   stream are never candidates);
//! - a candidate i is dropped if some other candidate j on a neighbour channel (the channel itself
//!   included) with `|s_i − s_j| <= exclude` has a larger score `|x|/thr`, or an equal score at an
//!   earlier sample. Equal scores at the same sample on different channels keep both. Only
//!   candidates compete (a larger non-candidate value does not suppress).
//!
//! Differences, on purpose: SpikeInterface discards peaks within `exclude + 1` samples of each
//! chunk edge (its chunks overlap by that margin); a stream has no chunk edges, and context past
//! the ends of the stream is absent. The score is `(−x) · (1/thr)` with `1/thr` computed once per
//! threshold in f32 (SpikeInterface divides): multiplications round the same on every backend,
//! divisions do not (WGSL allows 2.5 ulp), and the two differ by at most an ulp, which only matters
//! for exact ties.
//!
//! Then the dead time: peaks are taken in (sample, channel) order and a peak on channel c is
//! dropped when `s − s_last[c] <= dead_samples`, `s_last[c]` being the previous *kept* peak on c
//! (0 turns it off; within the exclusion radius the exclusion already keeps one peak per ±exclude).
//!
//! Streaming: a candidate at s is known once s+1 has arrived, and final once every candidate up to
//! s + exclude is known, i.e. once sample s + exclude + 1 has arrived. The detector keeps the last
//! sample's values and the candidates of the last 2·exclude + 1 samples, so any chunking (even one
//! sample at a time) yields the identical peak list.

use std::collections::VecDeque;

use crate::simd::Simd;

/// For each channel, the channels within `radius_um` on the same shank, itself included (CSR).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    offsets: Vec<u32>,
    indices: Vec<u32>,
    /// Dense membership, `n_channels` bits per channel, for O(1) tests in the exclusion.
    bits: Vec<u64>,
    words_per_row: usize,
}

impl Neighbours {
    /// Euclidean distance in the probe plane, `sqrt(dx² + dy²) <= radius_um` (SpikeInterface's
    /// `get_channel_distances(..) <= radius_um`), restricted to the same shank. The three slices
    /// give one entry per channel; the shortest one decides the channel count.
    pub fn within_radius(x_um: &[f64], y_um: &[f64], shank: &[u32], radius_um: f64) -> Self {
        let n = x_um.len().min(y_um.len()).min(shank.len());
        let lists: Vec<Vec<u32>> = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| {
                        let (dx, dy) = (x_um[a] - x_um[b], y_um[a] - y_um[b]);
                        shank[a] == shank[b] && (dx * dx + dy * dy).sqrt() <= radius_um || a == b
                    })
                    .map(|b| b as u32)
                    .collect()
            })
            .collect();
        Self::from_lists(&lists)
    }

    /// Each channel's own neighbour list (indices past the channel count are ignored). The
    /// relation is used as given (SpikeInterface's distance mask is symmetric).
    pub fn from_lists(lists: &[Vec<u32>]) -> Self {
        let n = lists.len();
        let words_per_row = n.div_ceil(64).max(1);
        let mut bits = vec![0u64; n * words_per_row];
        let mut offsets = Vec::with_capacity(n + 1);
        let mut indices = Vec::new();
        offsets.push(0u32);
        for (a, list) in lists.iter().enumerate() {
            let mut list: Vec<u32> = list.iter().copied().filter(|&b| (b as usize) < n).collect();
            list.sort_unstable();
            list.dedup();
            for &b in &list {
                bits[a * words_per_row + b as usize / 64] |= 1 << (b % 64);
            }
            indices.extend_from_slice(&list);
            offsets.push(indices.len() as u32);
        }
        Neighbours {
            offsets,
            indices,
            bits,
            words_per_row,
        }
    }

    pub fn n_channels(&self) -> usize {
        self.offsets.len() - 1
    }

    /// CSR offsets: the neighbours of channel c are `indices()[offsets()[c]..offsets()[c + 1]]`.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// CSR column indices, ascending within each channel.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn of(&self, channel: usize) -> &[u32] {
        &self.indices[self.offsets[channel] as usize..self.offsets[channel + 1] as usize]
    }

    /// Whether `b` is a neighbour of `a` (false for indices out of range).
    #[inline]
    pub fn contains(&self, a: usize, b: usize) -> bool {
        let n = self.n_channels();
        a < n && b < n && self.bits[a * self.words_per_row + b / 64] & (1 << (b % 64)) != 0
    }
}

/// A detected negative peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub sample: i64,
    pub channel: u32,
    /// µV, negative.
    pub value: f32,
}

/// The exclusion score of a value judged against a threshold: `(−value) · (1/threshold)`, both in
/// f32 (see the module notes). Larger is stronger.
#[inline]
pub fn exclusion_score(value: f32, inv_threshold: f32) -> f32 {
    -value * inv_threshold
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    sample: i64,
    channel: u32,
    value: f32,
    threshold: f32,
    score: f32,
}

/// Streaming `locally_exclusive` detector with per-channel dead time.
#[derive(Debug, Clone)]
pub struct PeakDetector {
    n_channels: usize,
    neighbours: Neighbours,
    exclude: i64,
    dead: i64,
    /// The next sample expected; None at the start of a stream.
    next_sample: Option<i64>,
    /// Values of sample `next_sample − 1`.
    last_row: Vec<f32>,
    /// Candidates at `next_sample − 1` that still need `x[s] <= x[s+1]`, with their thresholds.
    pending: Vec<Candidate>,
    /// Confirmed candidates in (sample, channel) order, from 2·exclude before the oldest
    /// undecided one (the context it needs) to the newest.
    candidates: VecDeque<Candidate>,
    /// Index in `candidates` of the first undecided candidate.
    undecided: usize,
    /// Sample of the last kept peak per channel (dead time).
    last_kept: Vec<i64>,
    /// Candidate starts of the sample being scanned, a bit per channel.
    start_bits: Vec<u64>,
    /// Thresholds of the previous call and their negation and reciprocal.
    thresholds: Vec<f32>,
    neg_thresholds: Vec<f32>,
    inv_thresholds: Vec<f32>,
}

impl PeakDetector {
    /// `neighbours` should cover `n_channels` channels (channels it lacks have no neighbours, not
    /// even themselves: they never suppress or get suppressed).
    pub fn new(
        n_channels: usize,
        neighbours: Neighbours,
        exclude_samples: usize,
        dead_samples: usize,
    ) -> Self {
        PeakDetector {
            n_channels,
            neighbours,
            exclude: exclude_samples as i64,
            dead: dead_samples as i64,
            next_sample: None,
            last_row: vec![0.0; n_channels],
            pending: Vec::with_capacity(n_channels),
            candidates: VecDeque::new(),
            undecided: 0,
            last_kept: vec![i64::MIN; n_channels],
            start_bits: vec![0; n_channels.div_ceil(64)],
            thresholds: Vec::new(),
            neg_thresholds: vec![0.0; n_channels],
            inv_thresholds: vec![0.0; n_channels],
        }
    }

    pub fn n_channels(&self) -> usize {
        self.n_channels
    }

    pub fn neighbours(&self) -> &Neighbours {
        &self.neighbours
    }

    pub fn exclude_samples(&self) -> usize {
        self.exclude as usize
    }

    pub fn dead_samples(&self) -> usize {
        self.dead as usize
    }

    /// `data` holds samples `first_sample..` of the filtered+referenced signal; peaks come out in
    /// (sample, channel) order and only once all their ±exclude context has been seen.
    /// `thresholds` (k·σ per channel, positive µV; +∞ disables a channel) apply to the samples of
    /// this call. A `first_sample` other than the next expected one starts a new stream segment:
    /// the previous one is flushed as by [`finish`](Self::finish) first.
    pub fn process(
        &mut self,
        first_sample: i64,
        data: &[f32],
        thresholds: &[f32],
        out: &mut Vec<Peak>,
    ) {
        self.process_with(first_sample, data, thresholds, &mut |peak, _| {
            out.push(peak)
        });
    }

    /// Flushes held-back samples at the end of the stream (context past the end is absent) and
    /// resets the stream position; the next call starts a new stream.
    pub fn finish(&mut self, out: &mut Vec<Peak>) {
        self.finish_with(&mut |peak, _| out.push(peak));
    }

    /// [`process`](Self::process), handing each peak with the threshold it was judged against.
    pub fn process_with(
        &mut self,
        first_sample: i64,
        data: &[f32],
        thresholds: &[f32],
        emit: &mut dyn FnMut(Peak, f32),
    ) {
        let c = self.n_channels;
        if c == 0 || data.len() < c {
            return;
        }
        if self.next_sample.is_some_and(|next| next != first_sample) {
            self.finish_with(emit);
        }
        self.set_thresholds(thresholds);
        let s = first_sample + (data.len() / c) as i64;
        self.push_rows(first_sample, data);
        self.next_sample = Some(s);
        // Candidates are known through s − 2 (s − 1 awaits its successor).
        self.decide(s - 2 - self.exclude, emit);
    }

    /// [`finish`](Self::finish), handing each peak with its threshold.
    pub fn finish_with(&mut self, emit: &mut dyn FnMut(Peak, f32)) {
        // The last sample has no successor: its pending candidates never complete.
        self.pending.clear();
        self.decide(i64::MAX, emit);
        self.candidates.clear();
        self.undecided = 0;
        self.next_sample = None;
    }

    fn set_thresholds(&mut self, thresholds: &[f32]) {
        let c = self.n_channels;
        if self.thresholds.len() == c
            && self.thresholds[..] == thresholds[..c.min(thresholds.len())]
        {
            return;
        }
        self.thresholds.clear();
        self.thresholds
            .extend((0..c).map(|i| thresholds.get(i).copied().unwrap_or(f32::INFINITY)));
        for ((t, neg), inv) in self
            .thresholds
            .iter()
            .zip(&mut self.neg_thresholds)
            .zip(&mut self.inv_thresholds)
        {
            *neg = -*t;
            *inv = 1.0 / *t;
        }
    }

    /// [`push_row`](Self::push_row) for each sample, built for the widest instruction set this
    /// CPU has (the per-sample scan over channels is what vectorises; results are identical).
    fn push_rows(&mut self, first_sample: i64, data: &[f32]) {
        match Simd::widest() {
            // SAFETY: `widest` gives a level only where the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.push_rows_avx512(first_sample, data) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.push_rows_avx2(first_sample, data) },
            Simd::Scalar => self.push_rows_with(first_sample, data, Simd::Scalar),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn push_rows_avx512(&mut self, first_sample: i64, data: &[f32]) {
        self.push_rows_with(first_sample, data, Simd::Avx512)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn push_rows_avx2(&mut self, first_sample: i64, data: &[f32]) {
        self.push_rows_with(first_sample, data, Simd::Avx2)
    }

    #[inline(always)]
    fn push_rows_with(&mut self, first_sample: i64, data: &[f32], simd: Simd) {
        let c = self.n_channels;
        // The previous sample is the row before in `data`, or the kept copy for the first one.
        let kept = std::mem::take(&mut self.last_row);
        let mut prev: &[f32] = &kept;
        let mut have_prev = self.next_sample.is_some();
        for (i, row) in data.chunks_exact(c).enumerate() {
            self.push_row(
                first_sample + i as i64,
                row,
                have_prev.then_some(prev),
                simd,
            );
            prev = row;
            have_prev = true;
        }
        let mut kept = kept;
        if let Some(last) = data.chunks_exact(c).last() {
            kept.copy_from_slice(last);
        }
        self.last_row = kept;
    }

    /// One sample: complete the previous sample's pending candidates, then find this sample's
    /// (none at the start of a stream, which has no previous sample).
    #[inline(always)]
    fn push_row(&mut self, s: i64, row: &[f32], prev: Option<&[f32]>, simd: Simd) {
        for p in self.pending.drain(..) {
            if p.value <= row[p.channel as usize] {
                self.candidates.push_back(p);
            }
        }
        let Some(prev) = prev else {
            return;
        };
        // The candidate starts of all channels as bits, without a branch; then one branch per
        // sample. On a busy probe about one sample in ten has a candidate somewhere: a branch per
        // block of channels was mispredicted on each of them, and was most of the scan's time.
        let mut any = 0;
        for (w, bits) in self.start_bits.iter_mut().enumerate() {
            let b0 = w * 64;
            let b1 = (b0 + 64).min(self.n_channels);
            *bits = start_bits(
                &row[b0..b1],
                &prev[b0..b1],
                &self.neg_thresholds[b0..b1],
                simd,
            );
            any |= *bits;
        }
        if any != 0 {
            self.push_candidates(s, row);
        }
    }

    /// The candidates whose bits [`push_row`](Self::push_row) set, in channel order.
    #[inline(never)]
    fn push_candidates(&mut self, s: i64, row: &[f32]) {
        for w in 0..self.start_bits.len() {
            let mut bits = self.start_bits[w];
            while bits != 0 {
                let ch = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let x = row[ch];
                self.pending.push(Candidate {
                    sample: s,
                    channel: ch as u32,
                    value: x,
                    threshold: self.thresholds[ch],
                    score: exclusion_score(x, self.inv_thresholds[ch]),
                });
            }
        }
    }

    /// Decides every undecided candidate with sample `<= through`, in order, then forgets the
    /// candidates no undecided one can need any more.
    fn decide(&mut self, through: i64, emit: &mut dyn FnMut(Peak, f32)) {
        let e = self.exclude;
        while self.undecided < self.candidates.len()
            && self.candidates[self.undecided].sample <= through
        {
            let i = self.undecided;
            let ci = self.candidates[i];
            let beaten = |cj: &Candidate| {
                self.neighbours
                    .contains(ci.channel as usize, cj.channel as usize)
                    && (cj.score > ci.score || (cj.score == ci.score && cj.sample < ci.sample))
            };
            let earlier = self
                .candidates
                .range(..i)
                .rev()
                .take_while(|cj| cj.sample >= ci.sample - e);
            let later = self
                .candidates
                .range(i + 1..)
                .take_while(|cj| cj.sample <= ci.sample + e);
            let suppressed = earlier.chain(later).any(beaten);
            if !suppressed {
                let ch = ci.channel as usize;
                let last = self.last_kept[ch];
                if last == i64::MIN || ci.sample - last > self.dead {
                    self.last_kept[ch] = ci.sample;
                    emit(
                        Peak {
                            sample: ci.sample,
                            channel: ci.channel,
                            value: ci.value,
                        },
                        ci.threshold,
                    );
                }
            }
            self.undecided += 1;
        }
        // The oldest undecided candidate (or any later one) looks back at most `e` samples.
        let horizon = match self.candidates.get(self.undecided) {
            Some(c) => c.sample - e,
            None => through.saturating_add(1).saturating_sub(e),
        };
        while self.undecided > 0 && self.candidates.front().is_some_and(|c| c.sample < horizon) {
            self.candidates.pop_front();
            self.undecided -= 1;
        }
    }
}

/// Bit i set when channel i (of at most 64) starts a candidate: at or below its negative
/// threshold and below its previous value.
#[inline(always)]
fn start_bits(row: &[f32], prev: &[f32], neg_thresholds: &[f32], simd: Simd) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if row.len() == 64 && prev.len() == 64 && neg_thresholds.len() == 64 {
        match simd {
            // SAFETY: a level other than Scalar exists only where the CPU supports it; the
            // slices hold 64 values (checked just above).
            Simd::Avx512 => return unsafe { x86::start_bits_avx512(row, prev, neg_thresholds) },
            Simd::Avx2 => return unsafe { x86::start_bits_avx2(row, prev, neg_thresholds) },
            Simd::Scalar => {}
        }
    }
    let _ = simd;
    let mut bits = 0u64;
    for (i, ((&x, &p), &t)) in row.iter().zip(prev).zip(neg_thresholds).enumerate() {
        bits |= (((x <= t) & (x < p)) as u64) << i;
    }
    bits
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::start_bits`] for 64 channels, 16 at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn start_bits_avx512(row: &[f32], prev: &[f32], neg: &[f32]) -> u64 {
        let mut bits = 0u64;
        for k in 0..4 {
            // SAFETY: the caller passes 64 values in each slice.
            let x = _mm512_loadu_ps(row.as_ptr().add(16 * k));
            let p = _mm512_loadu_ps(prev.as_ptr().add(16 * k));
            let t = _mm512_loadu_ps(neg.as_ptr().add(16 * k));
            let falling = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, p);
            let m = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(falling, x, t);
            bits |= (m as u64) << (16 * k);
        }
        bits
    }

    /// [`super::start_bits`] for 64 channels, 8 at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn start_bits_avx2(row: &[f32], prev: &[f32], neg: &[f32]) -> u64 {
        let mut bits = 0u64;
        for k in 0..8 {
            // SAFETY: the caller passes 64 values in each slice.
            let x = _mm256_loadu_ps(row.as_ptr().add(8 * k));
            let p = _mm256_loadu_ps(prev.as_ptr().add(8 * k));
            let t = _mm256_loadu_ps(neg.as_ptr().add(8 * k));
            let m = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_LT_OQ>(x, p),
                _mm256_cmp_ps::<_CMP_LE_OQ>(x, t),
            );
            bits |= (_mm256_movemask_ps(m) as u8 as u64) << (8 * k);
        }
        bits
    }
}

/// Helpers shared by this module's tests and the GPU twin's.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Neighbours;

    pub(crate) fn line_probe(n: usize) -> Neighbours {
        // Channels 20 µm apart on one line, 50 µm radius → ±2 channels.
        let x = vec![0.0; n];
        let y: Vec<f64> = (0..n).map(|i| i as f64 * 20.0).collect();
        Neighbours::within_radius(&x, &y, &vec![0; n], 50.0)
    }

    /// `(first row, rows)` of chunks of `sizes` (cycled, at least 1) over `n` rows.
    pub(crate) fn chunks(n: usize, sizes: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut t = 0;
        sizes.iter().cycle().map_while(move |&size| {
            (t < n).then(|| {
                let chunk = (t, size.clamp(1, n - t));
                t += chunk.1;
                chunk
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{chunks, line_probe};
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The vector scans find the scalar one's candidate starts, ties and NaN included.
    #[test]
    fn candidate_scan_agrees_on_every_instruction_set() {
        let levels = Simd::available();
        eprintln!("candidate scan instruction sets tested: {levels:?}");
        let mut rng = rand::rngs::SmallRng::seed_from_u64(13);
        // Whole numbers from a narrow range, so that x == prev and x == -threshold are common.
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| match rng.random_range(0..50) {
                    0 => f32::NAN,
                    _ => rng.random_range(-4i32..=4) as f32,
                })
                .collect()
        };
        let mut found = 0;
        for len in [64, 63, 1] {
            for _ in 0..500 {
                let (row, prev, neg) = (draw(len), draw(len), draw(len));
                let want = start_bits(&row, &prev, &neg, Simd::Scalar);
                found += want.count_ones();
                for &simd in &levels {
                    assert_eq!(start_bits(&row, &prev, &neg, simd), want, "{simd:?}");
                }
            }
        }
        // About a fifth of the channels start a candidate in this data.
        assert!(found > 5000, "{found}");
    }

    /// SpikeInterface's numba kernel, transcribed literally (one chunk, no margin trimming),
    /// with the score as `|x| · (1/thr)` like ours, then the dead time.
    #[allow(clippy::needless_range_loop)] // kept index-for-index with the numba code
    fn reference(
        data: &[f32],
        n_channels: usize,
        thr: &[f32],
        exclude: i64,
        mask: &Neighbours,
        dead: i64,
    ) -> Vec<Peak> {
        let n = (data.len() / n_channels) as i64;
        let x = |s: i64, c: usize| data[s as usize * n_channels + c];
        let mut peaks = Vec::new();
        for s in 1..n - 1 {
            for c in 0..n_channels {
                if x(s, c) <= -thr[c] && x(s, c) < x(s - 1, c) && x(s, c) <= x(s + 1, c) {
                    peaks.push((s, c));
                }
            }
        }
        let inv: Vec<f32> = thr.iter().map(|t| 1.0 / t).collect();
        let mut kept = Vec::new();
        for (i, &(si, ci)) in peaks.iter().enumerate() {
            let mut keep = true;
            for (j, &(sj, cj)) in peaks.iter().enumerate() {
                if i == j || !mask.contains(ci, cj) || (si - sj).abs() > exclude {
                    continue;
                }
                let vi = x(si, ci).abs() * inv[ci];
                let vj = x(sj, cj).abs() * inv[cj];
                if vj > vi || (vj == vi && si > sj) {
                    keep = false;
                    break;
                }
            }
            if keep {
                kept.push((si, ci));
            }
        }
        let mut last = vec![i64::MIN; n_channels];
        let mut out = Vec::new();
        for (s, c) in kept {
            if last[c] == i64::MIN || s - last[c] > dead {
                last[c] = s;
                out.push(Peak {
                    sample: s,
                    channel: c as u32,
                    value: x(s, c),
                });
            }
        }
        out
    }

    fn run_chunked(
        det: &mut PeakDetector,
        data: &[f32],
        n_channels: usize,
        thr: &[f32],
        sizes: &[usize],
    ) -> Vec<Peak> {
        let mut out = Vec::new();
        for (t, len) in chunks(data.len() / n_channels, sizes) {
            let chunk = &data[t * n_channels..(t + len) * n_channels];
            det.process(1000 + t as i64, chunk, thr, &mut out);
        }
        det.finish(&mut out);
        out
    }

    #[test]
    fn neighbours_by_radius_and_shank() {
        let x = [0.0, 0.0, 0.0, 30.0, 0.0];
        let y = [0.0, 20.0, 60.0, 40.0, 20.0];
        let shank = [0, 0, 0, 0, 1];
        let nb = Neighbours::within_radius(&x, &y, &shank, 50.0);
        assert_eq!(nb.of(0), &[0, 1, 3]); // (30, 40) is exactly 50 µm away: included
        assert_eq!(nb.of(1), &[0, 1, 2, 3]);
        assert_eq!(nb.of(2), &[1, 2, 3]);
        assert_eq!(nb.of(4), &[4]); // other shank
        assert!(nb.contains(0, 3) && !nb.contains(0, 2) && !nb.contains(0, 4));
        assert_eq!(nb.offsets(), &[0, 3, 7, 10, 14, 15]);
    }

    #[test]
    fn spikeinterface_tie_rules() {
        // 3 channels, all neighbours, threshold 10, exclude 2.
        let nb = line_probe(3);
        let thr = [10.0f32; 3];
        let mut data = vec![0.0f32; 20 * 3];
        let mut set = |s: usize, c: usize, v: f32| data[s * 3 + c] = v;
        // Same score at the same sample on channels 0 and 2 → both kept.
        set(3, 0, -20.0);
        set(3, 2, -20.0);
        // Same score 2 samples apart on channel 1 (within exclude) → the earlier one wins.
        set(9, 1, -30.0);
        set(11, 1, -30.0);
        // Flat bottom: -25, -25 → one candidate, at its first sample.
        set(15, 0, -25.0);
        set(16, 0, -25.0);
        // Below threshold by a hair → nothing.
        set(18, 2, -9.999);
        let mut det = PeakDetector::new(3, nb, 2, 0);
        let peaks = run_chunked(&mut det, &data, 3, &thr, &[100]);
        let got: Vec<(i64, u32)> = peaks.iter().map(|p| (p.sample - 1000, p.channel)).collect();
        assert_eq!(got, vec![(3, 0), (3, 2), (9, 1), (15, 0)]);
        assert_eq!(peaks[2].value, -30.0);
    }

    #[test]
    fn larger_score_wins_across_thresholds_and_dead_time_drops_followers() {
        // Channel 0 at -30 with threshold 10 (score 3) beats channel 1 at -50 with threshold 20
        // (score 2.5) one sample later.
        let nb = line_probe(2);
        let thr = [10.0f32, 20.0];
        let mut data = vec![0.0f32; 40 * 2];
        data[5 * 2] = -30.0;
        data[6 * 2 + 1] = -50.0;
        // Channel 0 again 8 and 20 samples later: dead time 10 drops the first, keeps the second.
        data[13 * 2] = -30.0;
        data[25 * 2] = -30.0;
        let mut det = PeakDetector::new(2, nb, 3, 10);
        let peaks = run_chunked(&mut det, &data, 2, &thr, &[4]);
        let got: Vec<(i64, u32)> = peaks.iter().map(|p| (p.sample - 1000, p.channel)).collect();
        assert_eq!(got, vec![(5, 0), (25, 0)]);
    }

    #[test]
    fn stream_edges_are_context_not_cutoffs() {
        // A trough at the second and at the second-to-last sample is detected; the very first and
        // last samples never are.
        let nb = line_probe(1);
        let data = vec![-50.0, -60.0, 0.0, 0.0, -60.0, -70.0];
        let mut det = PeakDetector::new(1, nb, 3, 0);
        let peaks = run_chunked(&mut det, &data, 1, &[10.0], &[1]);
        let got: Vec<i64> = peaks.iter().map(|p| p.sample - 1000).collect();
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn matches_reference_in_any_chunking() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for trial in 0..30 {
            // Fewer channels than a scan block, and several blocks with or without a tail.
            let n_channels = if trial % 2 == 0 {
                rng.random_range(1..12)
            } else {
                rng.random_range(12..50)
            };
            let n = rng.random_range(2..400);
            let exclude = rng.random_range(0..6);
            let dead = if trial % 3 == 0 {
                rng.random_range(0..15)
            } else {
                0
            };
            // Coarse quantisation makes exact ties frequent.
            let data: Vec<f32> = (0..n * n_channels)
                .map(|_| (rng.random_range(-10.0f32..4.0)).round() * 5.0)
                .collect();
            let thr: Vec<f32> = (0..n_channels)
                .map(|_| [10.0, 15.0, 20.0][rng.random_range(0..3)])
                .collect();
            let nb = line_probe(n_channels);
            let expected = reference(&data, n_channels, &thr, exclude, &nb, dead);
            for _ in 0..8 {
                let sizes: Vec<usize> = (0..5)
                    .map(|_| rng.random_range(1..2 * exclude as usize + 3))
                    .collect();
                let mut det =
                    PeakDetector::new(n_channels, nb.clone(), exclude as usize, dead as usize);
                let got = run_chunked(&mut det, &data, n_channels, &thr, &sizes);
                let got: Vec<Peak> = got
                    .into_iter()
                    .map(|p| Peak {
                        sample: p.sample - 1000,
                        ..p
                    })
                    .collect();
                assert_eq!(got, expected, "trial {trial}, chunks {sizes:?}");
            }
        }
    }

    #[test]
    fn a_gap_flushes_and_restarts_context() {
        let nb = line_probe(1);
        let mut det = PeakDetector::new(1, nb, 2, 0);
        let mut out = Vec::new();
        det.process(0, &[0.0, -50.0, -60.0], &[10.0], &mut out);
        assert!(out.is_empty());
        // Sample 3 is missing: -60 at sample 2 had no successor, so it is not a candidate; the new
        // segment's first sample has no predecessor.
        det.process(4, &[-70.0, -20.0, 0.0, 0.0, 0.0], &[10.0], &mut out);
        det.finish(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
