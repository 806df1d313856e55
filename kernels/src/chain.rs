//! The whole detection chain (ALGORITHMS.md §2), chunk by chunk, with calibration; shared by both
//! backends through [`DetectionChain`]. [`CpuChain`] is the CPU one:
//!
//! i16 → f32 µV (per-channel µV per bit) → causal bandpass ([`SosFilter`]) → median reference over
//! the detect channels, per group ([`MedianReference`]) → noise σ by MAD ([`MadEstimator`]) →
//! streaming `locally_exclusive` detection at k·σ with dead time ([`PeakDetector`]).
//!
//! Calibration: the first `calibration_s` of filtered, referenced data is buffered; when it is
//! complete σ is computed over it and the buffered samples are detected too (no spike is lost at
//! the start; only this first window has extra latency). A stream that ends sooner is calibrated
//! on what it had.
//!
//! Refresh: with `refresh_s > 0`, σ is re-estimated over the window `[R − calibration, R)` for each
//! `R = calibration + j·refresh` (j ≥ 1, in samples since the start of the stream) and the new
//! thresholds apply from sample `R + spread`, `spread = min(refresh, 0.5 s)`. The estimation work
//! (two exact medians per channel over the window) is spread over the chunks of `[R, R + spread)`
//! rather than stalling one chunk, and since the window and the switch point are fixed sample
//! indices, the result does not depend on the chunking. A ring of `calibration + spread` samples
//! holds the window (only rows that belong to an upcoming window are copied into it).
//!
//! Everything is sized at construction or grows to the largest chunk seen: nothing is allocated
//! per chunk in steady state.

mod config;
pub use config::{
    ChainConfig, Reference, DEFAULT_BAND_HZ, DEFAULT_CALIBRATION_S, DEFAULT_EXCLUDE_MS,
    DEFAULT_ORDER, DEFAULT_RADIUS_UM, DEFAULT_REFRESH_S, DEFAULT_THRESHOLD,
};

use crate::cmr::MedianReference;
use crate::columns::{check_columns, columns_to_microvolts, columns_to_rows, Columns};
use crate::detect::{Peak, PeakDetector};
use crate::filter::{butter_bandpass, SosFilter};
use crate::noise::MadEstimator;
use crate::schedule::{RefreshSchedule, RowClock};
use crate::Backend;

/// Errors of the kernels crate.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("bandpass design (order {order}, {low_hz}–{high_hz} Hz at {fs} Hz): {problem}")]
    FilterDesign {
        order: usize,
        low_hz: f64,
        high_hz: f64,
        fs: f64,
        problem: String,
    },
    #[error("detection chain configuration: `{field}`: {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },
    #[error("chunk of {len} values is not a whole number of samples of {n_channels} channels")]
    ChunkShape { len: usize, n_channels: usize },
    #[error(
        "chunk of {columns} columns (or columns shorter than the first) for {n_channels} channels"
    )]
    ColumnShape { columns: usize, n_channels: usize },
    /// A TEB model or step input that does not fit (see `teb::decoder`).
    #[error("TEB decoder: {0}")]
    Teb(String),
    #[error("a GPU was required but none is usable")]
    NoGpu,
    #[error("gpu: {0}")]
    Gpu(String),
}

/// Channels estimated per refresh step (neighbouring channels share the cache lines of a row).
const REFRESH_STEP: usize = 16;

/// One detected spike and the threshold (k·σ, µV, positive) it was judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub peak: Peak,
    pub threshold_uv: f32,
}

/// The detection chain of one stream, whichever backend runs it.
pub trait DetectionChain: Send {
    /// `raw`: whole samples of C channels, sample-major, starting at `first_sample`. Detections are
    /// appended in (sample, channel) order once final (±exclude context seen; after calibration).
    fn process(
        &mut self,
        first_sample: i64,
        raw: &[i16],
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError>;
    /// [`process`](Self::process) from one Int16 column per channel (Arrow's layout).
    /// `staging` is the caller's reusable buffer for backends that take the chunk sample-major
    /// (the CPU chain converts straight from the columns).
    fn process_columns(
        &mut self,
        first_sample: i64,
        columns: &dyn Columns,
        staging: &mut Vec<i16>,
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        check_columns_shape(columns, self.n_channels())?;
        columns_to_rows(columns, staging);
        self.process(first_sample, staging, out)
    }
    /// Channels per sample.
    fn n_channels(&self) -> usize;
    /// End of stream: calibrate on what there is if not yet done, flush held-back samples.
    fn finish(&mut self, out: &mut Vec<Detection>) -> Result<(), KernelError>;
    fn backend(&self) -> Backend;
    /// σ per channel (µV) in use, once calibrated; 0 for channels not detected on.
    fn noise_uv(&self) -> Option<&[f32]>;
    /// A backend decision taken since the last call (a measuring chain's, once), to report.
    fn take_verdict(&mut self) -> Option<crate::backend::Verdict> {
        None
    }
}

/// The CPU chain (see the module docs).
pub struct CpuChain {
    n_channels: usize,
    k: f32,
    uv_per_bit: Vec<f32>,
    filter: SosFilter,
    reference: MedianReference,
    detector: PeakDetector,
    mad: MadEstimator,
    detect_list: Vec<usize>,
    /// f32 µV of the current pass (see [`passes`]), filtered and referenced in place.
    work: Vec<f32>,
    /// Ring of rows by count since the stream start: row n lives at slot `n % ring_samples`.
    ring: Vec<f32>,
    ring_samples: u64,
    schedule: RefreshSchedule,
    clock: RowClock,
    calibrated: bool,
    sigma: Vec<f32>,
    thresholds: Vec<f32>,
    /// σ being re-estimated for the refresh in progress, and how many detect channels are done.
    sigma_next: Vec<f32>,
    refresh_done: usize,
    /// Scratch for the channels' σ of one estimation step.
    sigma_step: Vec<f32>,
}

impl CpuChain {
    pub fn new(cfg: &ChainConfig) -> Result<Self, KernelError> {
        cfg.validate()?;
        let c = cfg.n_channels;
        let sos = butter_bandpass(cfg.order, cfg.band_hz.0, cfg.band_hz.1, cfg.sampling_hz)?;
        let schedule = RefreshSchedule::new(cfg);
        let ring_samples = schedule.ring_samples();
        let ring_len = usize::try_from(ring_samples)
            .ok()
            .and_then(|s| s.checked_mul(c))
            .filter(|&len| len <= isize::MAX as usize / 4)
            .ok_or(KernelError::Config {
                field: "calibration_s",
                problem: format!(
                    "{} s × {c} channels does not fit in memory",
                    cfg.calibration_s
                ),
            })?;
        let detect_list = cfg.detect_list();
        Ok(CpuChain {
            n_channels: c,
            k: cfg.threshold as f32,
            uv_per_bit: cfg.uv_per_bit.clone(),
            filter: SosFilter::new(&sos, c),
            reference: MedianReference::new(cfg.reference_groups(), c),
            detector: PeakDetector::new(
                c,
                cfg.neighbours(),
                cfg.exclude_samples(),
                cfg.dead_samples(),
            ),
            mad: MadEstimator::default(),
            work: Vec::new(),
            ring: crate::memory::zeroed_f32(ring_len),
            ring_samples,
            schedule,
            clock: RowClock::default(),
            calibrated: false,
            sigma: vec![0.0; c],
            thresholds: vec![f32::INFINITY; c],
            sigma_next: vec![0.0; c],
            refresh_done: 0,
            sigma_step: vec![0.0; detect_list.len()],
            detect_list,
        })
    }

    fn copy_into_ring(&mut self, first_count: u64, rows: &[f32]) {
        let c = self.n_channels;
        for (i, row) in rows.chunks_exact(c).enumerate() {
            let n = first_count + i as u64;
            if self.schedule.goes_to_ring(n) {
                let slot = (n % self.ring_samples) as usize * c;
                self.ring[slot..slot + c].copy_from_slice(row);
            }
        }
    }

    fn set_thresholds(&mut self) {
        self.thresholds.fill(f32::INFINITY);
        for &ch in &self.detect_list {
            self.thresholds[ch] = self.k * self.sigma[ch];
        }
    }

    /// σ over the buffered calibration rows `[0, rows)`, then detect them.
    fn calibrate(&mut self, rows: u64, out: &mut Vec<Detection>) {
        let c = self.n_channels;
        let buffered = &self.ring[..rows as usize * c];
        self.mad
            .estimate(&[buffered], c, &self.detect_list, &mut self.sigma_step);
        for (&ch, &s) in self.detect_list.iter().zip(&self.sigma_step) {
            self.sigma[ch] = s;
        }
        self.set_thresholds();
        self.calibrated = true;
        tracing::debug!(rows, "detection chain calibrated");
        for (start, end, sample) in self.clock.take_calibration_runs(rows) {
            let data = &self.ring[start as usize * c..end as usize * c];
            let thresholds = &self.thresholds;
            self.detector
                .process_with(sample, data, thresholds, &mut |peak, threshold_uv| {
                    out.push(Detection { peak, threshold_uv })
                });
        }
    }

    /// Estimation work for the refresh in progress, so that `target` of the detect channels are
    /// done (the rest waits for later chunks).
    fn refresh_step(&mut self, r: u64, target: usize) {
        let target = target.min(self.detect_list.len());
        if target <= self.refresh_done {
            return;
        }
        let c = self.n_channels;
        let ring_samples = self.ring_samples;
        // The window [r − calibration, r) in ring slots: up to two contiguous pieces.
        let calibration = self.schedule.calibration;
        let start = ((r - calibration) % ring_samples) as usize;
        let len = calibration as usize;
        let first_len = len.min(ring_samples as usize - start);
        let a = &self.ring[start * c..(start + first_len) * c];
        let b = &self.ring[..(len - first_len) * c];
        let channels = &self.detect_list[self.refresh_done..target];
        let sigmas = &mut self.sigma_step[..channels.len()];
        self.mad.estimate(&[a, b], c, channels, sigmas);
        for (&ch, &s) in channels.iter().zip(sigmas.iter()) {
            self.sigma_next[ch] = s;
        }
        self.refresh_done = target;
    }

    /// Detects rows `[t0, t1)` of the current chunk (row counts from `n0`).
    fn detect_rows(&mut self, n0: u64, t0: usize, t1: usize, out: &mut Vec<Detection>) {
        let c = self.n_channels;
        let sample = self.clock.sample(n0 + t0 as u64);
        let data = &self.work[t0 * c..t1 * c];
        let thresholds = &self.thresholds;
        self.detector
            .process_with(sample, data, thresholds, &mut |peak, threshold_uv| {
                out.push(Detection { peak, threshold_uv })
            });
    }
}

impl DetectionChain for CpuChain {
    fn process(
        &mut self,
        first_sample: i64,
        raw: &[i16],
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        let rows = check_chunk_shape(raw, self.n_channels)?;
        let c = self.n_channels;
        let mut all = passes(rows, c).peekable();
        while let Some((start, len)) = all.next() {
            self.work.resize(len * c, 0.0);
            to_microvolts(
                &raw[start * c..(start + len) * c],
                &self.uv_per_bit,
                &mut self.work,
            );
            let ahead = all
                .peek()
                .map_or(&[][..], |&(s, l)| &raw[s * c..(s + l) * c]);
            self.process_work(first_sample + start as i64, len, out, ahead);
        }
        Ok(())
    }

    fn process_columns(
        &mut self,
        first_sample: i64,
        columns: &dyn Columns,
        _staging: &mut Vec<i16>,
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        let rows = check_columns_shape(columns, self.n_channels)?;
        for (start, len) in passes(rows, self.n_channels) {
            self.work.resize(len * self.n_channels, 0.0);
            let part = RowRange {
                columns,
                start,
                len,
            };
            columns_to_microvolts(&part, &self.uv_per_bit, &mut self.work);
            self.process_work(first_sample + start as i64, len, out, &[]);
        }
        Ok(())
    }

    fn n_channels(&self) -> usize {
        self.n_channels
    }

    fn finish(&mut self, out: &mut Vec<Detection>) -> Result<(), KernelError> {
        if !self.calibrated && self.clock.processed > 0 {
            tracing::info!(
                rows = self.clock.processed,
                "detection chain: stream ended during calibration; calibrating on what there is"
            );
            self.calibrate(self.clock.processed, out);
        }
        self.detector
            .finish_with(&mut |peak, threshold_uv| out.push(Detection { peak, threshold_uv }));
        self.clock.end_stream();
        Ok(())
    }

    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn noise_uv(&self) -> Option<&[f32]> {
        self.calibrated.then_some(self.sigma.as_slice())
    }
}

impl CpuChain {
    /// The chain after conversion: `self.work` holds `rows` samples of µV starting at
    /// `first_sample`.
    fn process_work(
        &mut self,
        first_sample: i64,
        rows: usize,
        out: &mut Vec<Detection>,
        ahead: &[i16],
    ) {
        let c = self.n_channels;
        let n0 = self.clock.start_chunk(first_sample, rows, self.calibrated);

        // Filter, reference: independent of thresholds, the whole chunk at once.
        self.filter.process(&mut self.work);
        reference_prefetching(&mut self.reference, &mut self.work, c, ahead);

        // Then in segments split where thresholds change (end of calibration, apply points).
        let mut t = 0usize;
        while t < rows {
            let n = n0 + t as u64;
            let (event, end) = self.schedule.segment(n0, t, rows, self.calibrated);
            let (from, to) = (t * c, end * c);
            let segment = std::mem::take(&mut self.work);
            self.copy_into_ring(n, &segment[from..to]);
            self.work = segment;
            if self.calibrated {
                self.detect_rows(n0, t, end, out);
            }
            t = end;
            let reached = n0 + t as u64;
            if !self.calibrated && reached == event {
                self.calibrate(reached, out);
            } else if self.calibrated && reached == event {
                // Apply point: finish the estimation and switch thresholds.
                let r = event - self.schedule.spread;
                self.refresh_step(r, usize::MAX);
                for &ch in &self.detect_list {
                    self.sigma[ch] = self.sigma_next[ch];
                }
                self.set_thresholds();
                self.refresh_done = 0;
            }
        }
        let processed = n0 + rows as u64;
        self.clock.processed = processed;

        // Spread the estimation of a refresh in progress over its period.
        if self.calibrated {
            if let Some(r) = self.schedule.refresh_in_progress(processed) {
                let elapsed = processed - r;
                let target = (self.detect_list.len() as u64 * elapsed)
                    .div_ceil(self.schedule.spread) as usize;
                // Whole steps of REFRESH_STEP channels: each step reads every row of the window
                // once, so tiny steps would multiply that cost.
                self.refresh_step(r, target.next_multiple_of(REFRESH_STEP));
            }
        }
    }
}

/// The median reference over `work` (whole rows of `c` channels), asking the cache after every
/// two rows for the next share of `ahead`, the samples of the next pass. The conversion of that
/// pass then reads them from cache instead of memory (it was the first read of each batch, and
/// took as long as the filter); the loads overlap the reference, the chain's longest
/// compute-bound stage. Spread out: on the ground-truth recording, prefetching in 16 bursts per
/// pass saved a sixth of the conversion's time, and every two rows, half of it.
fn reference_prefetching(
    reference: &mut MedianReference,
    work: &mut [f32],
    c: usize,
    ahead: &[i16],
) {
    const ROWS: usize = 2;
    if ahead.is_empty() {
        reference.process(work);
        return;
    }
    let rows = work.len() / c.max(1);
    let bytes = std::mem::size_of_val(ahead);
    let share = bytes
        .div_ceil(rows.div_ceil(ROWS).max(1))
        .next_multiple_of(64);
    for (i, some_rows) in work.chunks_mut(ROWS * c.max(1)).enumerate() {
        reference.process(some_rows);
        prefetch(ahead, (i * share).min(bytes)..((i + 1) * share).min(bytes));
    }
}

/// Asks the cache for the lines of `bytes` of `values` (a hint only; nothing on other CPUs).
#[inline(always)]
fn prefetch(values: &[i16], bytes: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for offset in bytes.step_by(64) {
        // SAFETY: `offset` lies within `values`; a prefetch never faults or changes memory.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(values.as_ptr().cast::<i8>().add(offset));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (values, bytes);
}

/// Bytes of f32 work per pass of the chain over a chunk.
const PASS_BYTES: usize = 512 << 10;

/// A chunk of `rows` samples of `n_channels` as `(first row, rows)` passes of equal length and at
/// most [`PASS_BYTES`] of work each (one for a 10 ms batch of a probe). A large chunk (a replay's
/// 100 ms batches are 4.6 MB of µV) is converted, filtered, referenced and detected a pass at a
/// time, so that each stage finds the previous one's output in L2 rather than memory, and the
/// work buffer stays small. The chain does not depend on the chunking.
fn passes(rows: usize, n_channels: usize) -> impl Iterator<Item = (usize, usize)> {
    let most = (PASS_BYTES / (4 * n_channels.max(1))).max(1);
    let step = rows.div_ceil(rows.div_ceil(most).max(1)).max(1);
    (0..rows)
        .step_by(step)
        .map(move |start| (start, step.min(rows - start)))
}

/// Rows `start..start + len` of a chunk of columns.
struct RowRange<'a> {
    columns: &'a dyn Columns,
    start: usize,
    len: usize,
}

impl Columns for RowRange<'_> {
    fn n_columns(&self) -> usize {
        self.columns.n_columns()
    }
    fn rows(&self) -> usize {
        self.len
    }
    fn column(&self, channel: usize) -> &[i16] {
        &self.columns.column(channel)[self.start..self.start + self.len]
    }
}

/// The rows of a chunk of whole samples of `n_channels`, else the error.
pub(crate) fn check_chunk_shape(raw: &[i16], n_channels: usize) -> Result<usize, KernelError> {
    if !raw.len().is_multiple_of(n_channels) {
        return Err(KernelError::ChunkShape {
            len: raw.len(),
            n_channels,
        });
    }
    Ok(raw.len() / n_channels)
}

/// `Some(rows)` of a well-shaped chunk of columns, else the error.
fn check_columns_shape(columns: &dyn Columns, n_channels: usize) -> Result<usize, KernelError> {
    check_columns(columns, n_channels).ok_or(KernelError::ColumnShape {
        columns: columns.n_columns(),
        n_channels,
    })
}

/// `raw · µV per bit`, row by row (channels innermost, vectorised).
fn to_microvolts(raw: &[i16], uv_per_bit: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { to_microvolts_avx2(raw, uv_per_bit, out) };
        return;
    }
    to_microvolts_rows(raw, uv_per_bit, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_microvolts_avx2(raw: &[i16], uv_per_bit: &[f32], out: &mut [f32]) {
    to_microvolts_rows(raw, uv_per_bit, out)
}

#[inline(always)]
fn to_microvolts_rows(raw: &[i16], uv_per_bit: &[f32], out: &mut [f32]) {
    let c = uv_per_bit.len();
    for (src, dst) in raw.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        for ((d, &s), &k) in dst.iter_mut().zip(src).zip(uv_per_bit) {
            *d = s as f32 * k;
        }
    }
}

/// The chain for `pref` by [`crate::backend`]'s rule: the CPU chain, the GPU chain, or with
/// `auto` and a hardware adapter a [`MeasuredChain`](crate::measured::MeasuredChain) that keeps
/// the faster of the two on the stream's first seconds. A GPU chain that fails to build is an
/// error with `gpu`, else the CPU runs. Logs its choice.
pub fn build_chain(
    cfg: &ChainConfig,
    pref: crate::backend::Preference,
) -> Result<Box<dyn DetectionChain>, KernelError> {
    use crate::backend::{Plan, Preference, Trial};
    let cpu = |why: &str| -> Result<Box<dyn DetectionChain>, KernelError> {
        tracing::info!(
            backend = "cpu",
            reason = why,
            "spike detection chain backend"
        );
        Ok(Box::new(CpuChain::new(cfg)?))
    };
    let gpu = |ctx: std::sync::Arc<crate::gpu::GpuContext>| {
        crate::gpu::GpuChain::new(ctx, cfg).map(|chain| Box::new(chain) as Box<dyn DetectionChain>)
    };
    match crate::backend::plan(pref)? {
        Plan::Cpu(why) => cpu(why),
        Plan::Gpu(ctx) => {
            let (backend, name) = (ctx.backend, ctx.adapter_name.clone());
            match gpu(ctx) {
                Ok(chain) => {
                    tracing::info!(backend = backend.as_str(), adapter = %name, "spike detection chain backend");
                    Ok(chain)
                }
                Err(e) if pref == Preference::Gpu => Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "GPU detection chain failed to build; using the CPU");
                    cpu("GPU chain failed to build")
                }
            }
        }
        Plan::Measure(ctx) => {
            let (backend, name) = (ctx.backend, ctx.adapter_name.clone());
            match gpu(ctx) {
                Ok(chain) => {
                    // The trial covers the end of calibration (its burst of work) and a second
                    // of steady state.
                    let window_s = cfg.calibration_s + 1.0;
                    tracing::info!(adapter = %name, window_s, "spike detection chain: measuring CPU and GPU on the stream's data");
                    Ok(Box::new(crate::measured::MeasuredChain::new(
                        Box::new(CpuChain::new(cfg)?),
                        chain,
                        Trial::new(backend, window_s),
                        cfg.sampling_hz,
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "GPU detection chain failed to build; using the CPU");
                    cpu("GPU chain failed to build")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A synthetic stream: Gaussian-ish noise of `noise_uv` per channel, a common-mode hum, DC
    /// offsets, and negative spikes with a spatial footprint on the neighbouring channels.
    /// Returns raw i16 at 1 µV per bit (sample-major) and the spike times/channels.
    fn synthetic(
        n_channels: usize,
        n_samples: usize,
        seed: u64,
        noise_uv: impl Fn(usize) -> f32,
    ) -> (Vec<i16>, Vec<(usize, usize)>) {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut x = vec![0.0f32; n_channels * n_samples];
        let offsets: Vec<f32> = (0..n_channels)
            .map(|_| rng.random_range(-200.0..200.0))
            .collect();
        for t in 0..n_samples {
            let sd = noise_uv(t);
            let hum = 30.0 * (t as f32 * 2.0 * std::f32::consts::PI * 50.0 / 30000.0).sin();
            for c in 0..n_channels {
                let g: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
                x[t * n_channels + c] = offsets[c] + hum + g * sd * 1.732;
            }
        }
        let mut spikes = Vec::new();
        let template: Vec<f32> = (0..40)
            .map(|i| {
                let t = i as f32 / 30.0; // ms
                -((t - 0.3) / 0.12).powi(2).mul_add(-0.5, 0.0).exp()
                    + 0.35 * (-((t - 0.8) / 0.3).powi(2) * 0.5).exp()
            })
            .collect();
        let mut t = 100;
        while t + 60 < n_samples {
            let c = rng.random_range(0..n_channels);
            let amp = rng.random_range(80.0f32..250.0);
            spikes.push((t, c));
            for dc in -3i64..=3 {
                let ch = c as i64 + dc;
                if ch < 0 || ch >= n_channels as i64 {
                    continue;
                }
                let w = (-(dc as f32).powi(2) / 2.0).exp();
                for (i, v) in template.iter().enumerate() {
                    x[(t + i) * n_channels + ch as usize] += amp * w * v;
                }
            }
            t += rng.random_range(100..600);
        }
        (
            x.iter()
                .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
                .collect(),
            spikes,
        )
    }

    fn run(
        chain: &mut dyn DetectionChain,
        raw: &[i16],
        n_channels: usize,
        chunk: usize,
    ) -> Vec<Detection> {
        let mut out = Vec::new();
        let mut t = 0;
        for piece in raw.chunks(chunk * n_channels) {
            chain.process(5000 + t as i64, piece, &mut out).unwrap();
            t += piece.len() / n_channels;
        }
        chain.finish(&mut out).unwrap();
        out
    }

    fn test_config(n_channels: usize) -> ChainConfig {
        let mut cfg = ChainConfig::with_defaults(n_channels, 30000.0);
        cfg.calibration_s = 0.5;
        cfg.refresh_s = 1.0;
        cfg.dead_time_ms = 0.2;
        cfg
    }

    #[test]
    fn passes_cover_a_chunk_in_equal_pieces_that_fit_the_cache() {
        assert_eq!(passes(300, 384).collect::<Vec<_>>(), vec![(0, 300)]);
        let big: Vec<_> = passes(3000, 384).collect();
        assert_eq!(big.len(), 9);
        // 341 rows fit; nine passes of 334 rows (the last 328) rather than eight and a sliver.
        assert!(big
            .iter()
            .all(|&(_, n)| n * 384 * 4 <= PASS_BYTES && n >= 328));
        assert!(big.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        assert_eq!(big.last().map(|&(s, n)| s + n), Some(3000));
        assert_eq!(passes(0, 384).count(), 0);
    }

    #[test]
    fn chunking_does_not_change_detections_or_noise() {
        let n_channels = 40;
        let (raw, spikes) = synthetic(
            n_channels,
            30000 * 4,
            1,
            |t| if t < 60000 { 8.0 } else { 14.0 },
        );
        let cfg = test_config(n_channels);
        let mut reference = CpuChain::new(&cfg).unwrap();
        let expected = run(&mut reference, &raw, n_channels, 3000);
        // Most planted spikes found, near their trough (template minimum ~9 samples in).
        let found = spikes
            .iter()
            .filter(|&&(t, c)| {
                expected.iter().any(|d| {
                    let s = d.peak.sample - 5000 - t as i64;
                    (0..=20).contains(&s) && (d.peak.channel as i64 - c as i64).abs() <= 1
                })
            })
            .count();
        assert!(
            found * 10 >= spikes.len() * 9,
            "found {found} of {} planted spikes",
            spikes.len()
        );
        for chunk in [30, 210, 1, 4999] {
            let mut chain = CpuChain::new(&cfg).unwrap();
            let got = run(&mut chain, &raw, n_channels, chunk);
            if let Some(i) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
                panic!(
                    "chunk {chunk}: first difference at {i}: {:?} vs {:?}; counts {} {}",
                    got[i],
                    expected[i],
                    got.len(),
                    expected.len()
                );
            }
            assert_eq!(got.len(), expected.len(), "chunk {chunk}");
            assert!(got == expected, "chunk {chunk}: detections differ");
            let (a, b) = (chain.noise_uv().unwrap(), reference.noise_uv().unwrap());
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn calibration_window_is_detected_and_refresh_follows_the_noise() {
        let n_channels = 24;
        // Noise 8 µV for 2 s, then 16 µV; calibration 0.5 s, refresh every 1 s.
        let (raw, _) = synthetic(
            n_channels,
            30000 * 4,
            2,
            |t| if t < 60000 { 8.0 } else { 16.0 },
        );
        let cfg = test_config(n_channels);
        let mut chain = CpuChain::new(&cfg).unwrap();
        let mut out = Vec::new();
        chain
            .process(0, &raw[..14999 * n_channels], &mut out)
            .unwrap();
        assert!(
            out.is_empty() && chain.noise_uv().is_none(),
            "nothing before calibration completes"
        );
        chain
            .process(
                14999,
                &raw[14999 * n_channels..15000 * n_channels],
                &mut out,
            )
            .unwrap();
        let sigma0 = chain.noise_uv().unwrap().to_vec();
        assert!(
            out.iter().any(|d| d.peak.sample < 3000),
            "spikes of the first 0.1 s are detected"
        );
        assert!(out.iter().all(|d| d.peak.sample < 15000));
        // White noise through the 300–6000 Hz band keeps √(5700/15000) ≈ 0.62 of its σ.
        for s in &sigma0 {
            assert!(
                (s / (8.0 * 0.62) - 1.0).abs() < 0.15,
                "σ {s} for 8 µV noise"
            );
        }
        chain
            .process(15000, &raw[15000 * n_channels..], &mut out)
            .unwrap();
        chain.finish(&mut out).unwrap();
        // Refresh points at 1.5, 2.5, 3.5 s over the preceding 0.5 s, applied 0.5 s later:
        // the window [2.0, 2.5) s is all 16 µV noise and applies from 3.0 s.
        let sigma_end = chain.noise_uv().unwrap();
        for (a, b) in sigma_end.iter().zip(&sigma0) {
            assert!(
                (a / b - 2.0).abs() < 0.3,
                "σ {a} after the noise doubled from {b}"
            );
        }
        let thr_at = |from: i64, to: i64| -> Vec<f32> {
            out.iter()
                .filter(|d| (from..to).contains(&d.peak.sample))
                .map(|d| d.threshold_uv)
                .collect()
        };
        let early = thr_at(0, 60000);
        let late = thr_at(90000, 120000);
        assert!(!early.is_empty() && !late.is_empty());
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            (mean(&late) / mean(&early) - 2.0).abs() < 0.3,
            "thresholds {} → {}",
            mean(&early),
            mean(&late)
        );
        // The switch happens exactly at the apply point (3.0 s = 90000 samples), not before.
        let last_old: Vec<f32> = thr_at(75000, 90000);
        assert!(mean(&last_old) < mean(&late) * 0.8);
    }

    #[test]
    fn sync_channel_is_neither_detected_nor_referenced() {
        let n_channels = 9;
        let (mut raw, _) = synthetic(n_channels, 30000, 3, |_| 8.0);
        // Channel 8 is a sync word: a square wave that would trip any threshold.
        for (t, row) in raw.chunks_exact_mut(n_channels).enumerate() {
            row[8] = if (t / 500) % 2 == 0 { 0 } else { -20000 };
        }
        let mut cfg = test_config(n_channels);
        cfg.detect_channels[8] = false;
        let mut chain = CpuChain::new(&cfg).unwrap();
        let out = run(&mut chain, &raw, n_channels, 300);
        assert!(!out.is_empty());
        assert!(out.iter().all(|d| d.peak.channel != 8));
        assert_eq!(chain.noise_uv().unwrap()[8], 0.0);
        // With it in the median, every channel would see the square wave's edges.
        let mut with_sync = cfg.clone();
        with_sync.detect_channels[8] = true;
        assert_eq!(
            with_sync.reference_groups(),
            vec![(0..9).collect::<Vec<_>>()]
        );
        assert_eq!(cfg.reference_groups(), vec![(0..8).collect::<Vec<_>>()]);
    }

    #[test]
    fn a_stream_shorter_than_calibration_is_calibrated_at_finish() {
        let n_channels = 8;
        let (raw, _) = synthetic(n_channels, 6000, 4, |_| 8.0);
        let mut chain = CpuChain::new(&test_config(n_channels)).unwrap();
        let out = run(&mut chain, &raw, n_channels, 1000);
        assert!(chain.noise_uv().is_some());
        assert!(!out.is_empty());
        assert!(
            out.windows(2)
                .all(|w| (w[0].peak.sample, w[0].peak.channel)
                    < (w[1].peak.sample, w[1].peak.channel))
        );
    }

    #[test]
    fn skipped_samples_keep_indices_and_detections_in_their_runs() {
        let n_channels = 8;
        let (raw, _) = synthetic(n_channels, 30000, 6, |_| 8.0);
        let mut chain = CpuChain::new(&test_config(n_channels)).unwrap();
        let mut out = Vec::new();
        // Samples 0..10000, then a jump to 50000 (during calibration), then to 200000 (after).
        let rows = |a: usize, b: usize| &raw[a * n_channels..b * n_channels];
        chain.process(0, rows(0, 10000), &mut out).unwrap();
        chain.process(50000, rows(10000, 20000), &mut out).unwrap();
        chain.process(200000, rows(20000, 30000), &mut out).unwrap();
        chain.finish(&mut out).unwrap();
        assert!(out.iter().any(|d| d.peak.sample < 10000));
        assert!(out.iter().any(|d| (50000..60000).contains(&d.peak.sample)));
        assert!(out.iter().any(|d| d.peak.sample >= 200000));
        let in_runs = |s: i64| {
            (0..10000).contains(&s) || (50000..60000).contains(&s) || (200000..210000).contains(&s)
        };
        assert!(
            out.iter().all(|d| in_runs(d.peak.sample)),
            "a detection outside the samples given"
        );
    }

    #[test]
    fn per_shank_groups_and_config_errors() {
        let mut cfg = ChainConfig::with_defaults(6, 30000.0);
        cfg.shank = vec![1, 0, 1, 0, 1, 0];
        cfg.detect_channels[4] = false;
        cfg.reference = Reference::PerShank;
        assert_eq!(cfg.reference_groups(), vec![vec![1, 3, 5], vec![0, 2]]);
        // Neighbours stay on their shank and skip undetected channels.
        let nb = cfg.neighbours();
        assert_eq!(nb.of(2), &[0, 2]);
        assert!(nb.of(4).is_empty());

        let mut bad = cfg.clone();
        bad.uv_per_bit.pop();
        bad.threshold = -1.0;
        let e = CpuChain::new(&bad).err().unwrap().to_string();
        assert!(e.contains("uv_per_bit") && e.contains("threshold"), "{e}");
        let mut bad = cfg.clone();
        bad.band_hz = (300.0, 16000.0);
        assert!(CpuChain::new(&bad).is_err());
        let mut chain = CpuChain::new(&cfg).unwrap();
        let e = chain.process(0, &[0; 7], &mut Vec::new()).unwrap_err();
        assert!(matches!(
            e,
            KernelError::ChunkShape {
                len: 7,
                n_channels: 6
            }
        ));
    }

    /// Where the time goes, 384 channels (+ sync) at 30 kHz, 1 ms chunks, one core. Run with
    /// `cargo test --release -p kernels chain::tests::timing -- --ignored --nocapture`
    /// (best of 3; a loaded machine inflates every number).
    #[test]
    #[ignore]
    fn timing() {
        let n_channels = 385;
        let seconds = 12usize;
        let (raw, _) = synthetic(n_channels, 30000 * seconds, 5, |_| 10.0);
        let mut cfg = ChainConfig::with_defaults(n_channels, 30000.0);
        cfg.detect_channels[384] = false;
        let chunk = 30 * n_channels;
        let best = |f: &mut dyn FnMut() -> [f64; 5]| {
            let mut best = [f64::MAX; 5];
            for _ in 0..3 {
                for (b, t) in best.iter_mut().zip(f()) {
                    *b = b.min(t);
                }
            }
            best
        };
        // Stage by stage on a reused 1 ms buffer, as the chain runs them.
        let sos = butter_bandpass(3, 300.0, 6000.0, 30000.0).unwrap();
        let stages = best(&mut || {
            let mut filter = SosFilter::new(&sos, n_channels);
            let mut cmr = MedianReference::new(cfg.reference_groups(), n_channels);
            let mut det = PeakDetector::new(n_channels, cfg.neighbours(), 3, 0);
            let thr = vec![45.0f32; n_channels];
            let mut buf = vec![0.0f32; chunk];
            let mut peaks = Vec::new();
            let mut t = [0.0; 5];
            for (i, c) in raw.chunks(chunk).enumerate() {
                let t0 = std::time::Instant::now();
                to_microvolts(c, &cfg.uv_per_bit, &mut buf);
                let t1 = std::time::Instant::now();
                filter.process(&mut buf);
                let t2 = std::time::Instant::now();
                cmr.process(&mut buf);
                let t3 = std::time::Instant::now();
                det.process(i as i64 * 30, &buf, &thr, &mut peaks);
                let t4 = std::time::Instant::now();
                for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3].iter().enumerate() {
                    t[k] += d.as_secs_f64();
                }
            }
            t
        });
        let mut work = vec![0.0f32; 60000 * n_channels];
        to_microvolts(&raw[..work.len()], &cfg.uv_per_bit, &mut work);
        let mut mad = MadEstimator::default();
        let list = cfg.detect_list();
        let mut sigma = vec![0.0; list.len()];
        let [t_mad, ..] = best(&mut || {
            let t0 = std::time::Instant::now();
            mad.estimate(&[&work], n_channels, &list, &mut sigma);
            [t0.elapsed().as_secs_f64(), 0.0, 0.0, 0.0, 0.0]
        });
        // The whole chain after its calibration (2 s), refresh every 60 s (none in this run) and
        // every 2 s.
        let chain_time = |refresh_s: f64, order: usize| {
            best(&mut || {
                let mut cfg = cfg.clone();
                cfg.refresh_s = refresh_s;
                cfg.order = order;
                let mut chain = CpuChain::new(&cfg).unwrap();
                let mut out = Vec::new();
                let mut steady = 0.0;
                for (i, c) in raw.chunks(chunk).enumerate() {
                    let t0 = std::time::Instant::now();
                    chain.process(i as i64 * 30, c, &mut out).unwrap();
                    if i >= 2000 {
                        steady += t0.elapsed().as_secs_f64();
                    }
                }
                [steady, out.len() as f64, 0.0, 0.0, 0.0]
            })
        };
        let steady = chain_time(60.0, 3);
        let refreshing = chain_time(2.0, 3);
        let first_order = chain_time(60.0, 1);
        let ms = |t: f64, s: f64| 1e3 * t / s;
        let s = seconds as f64;
        let after = (seconds - 2) as f64;
        eprintln!("384 channels @ 30 kHz, order 3, 1 ms chunks, one core (ms per s of data):");
        eprintln!("  i16→µV {:6.2}", ms(stages[0], s));
        eprintln!("  filter {:6.2}", ms(stages[1], s));
        eprintln!("  median {:6.2}", ms(stages[2], s));
        eprintln!("  detect {:6.2}", ms(stages[3], s));
        eprintln!("  MAD σ over 2 s: {:.0} ms per estimate", 1e3 * t_mad);
        eprintln!(
            "  chain after calibration, refresh 60 s: {:6.2} ms/s = {:.0}× real time ({} detections)",
            ms(steady[0], after),
            after / steady[0],
            steady[1]
        );
        eprintln!(
            "  chain after calibration, refresh  2 s: {:6.2} ms/s = {:.0}× real time",
            ms(refreshing[0], after),
            after / refreshing[0]
        );
        eprintln!(
            "  chain after calibration, order 1, refresh 60 s: {:6.2} ms/s = {:.0}× real time",
            ms(first_order[0], after),
            after / first_order[0]
        );
    }
}
