//! [`GpuChain`]: the whole detection chain on the GPU, with the calibration and refresh semantics
//! of [`CpuChain`](crate::chain::CpuChain) (see `kernels::chain`'s module docs), mirrored step by
//! step: the same segment plan (split where thresholds change), the same ring of row counts, the
//! same windows for σ, the same thresholds per detector call. Only the stages run elsewhere.
//!
//! Per chunk, one submission: the raw int16 chunk is uploaded as is; convert → filter → median
//! reference run in place on a chunk buffer; rows that belong to a calibration or refresh window
//! are copied into a ring buffer on the GPU (so σ never needs the data on the host); detection
//! decides what it can; only the survivors come back. Noise is estimated on the GPU from the
//! ring: at the end of calibration (a stall, as on the CPU: the buffered rows need σ before they
//! can be detected), and for a refresh as soon as its window is complete, read back at the apply
//! point (by then long finished).
//!
//! Every stage is bit-identical to its CPU twin on the same input (see each module), so the
//! chain's detections and σ equal the CPU chain's exactly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmr::GpuMedianReference;
use super::context::{GpuContext, GpuError};
use super::detect::GpuPeakDetector;
use super::noise::GpuNoise;
use super::sosfilt::{GpuConvert, GpuSosFilter};
use super::util::{buffer, check_binding, command_encoder, scoped, write_padded, GrowBuffer};
use crate::chain::{check_chunk_shape, ChainConfig, Detection, DetectionChain, KernelError};
use crate::filter::butter_bandpass;
use crate::schedule::{RefreshSchedule, RowClock};
use crate::Backend;

const STAGE: &str = "detection chain";

/// Wall-clock time of [`GpuChain::process`] calls (upload, GPU work, read-back, host side), for
/// benchmarks: latency per chunk and throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChunkTiming {
    pub chunks: u64,
    pub samples: u64,
    pub total: Duration,
    pub max: Duration,
    pub last: Duration,
}

impl ChunkTiming {
    /// Mean time per chunk.
    pub fn mean(&self) -> Duration {
        if self.chunks == 0 {
            Duration::ZERO
        } else {
            self.total / self.chunks as u32
        }
    }

    /// Samples processed per second of processing time.
    pub fn samples_per_second(&self) -> f64 {
        self.samples as f64 / self.total.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// The detection chain of one stream on the GPU.
pub struct GpuChain {
    ctx: Arc<GpuContext>,
    n_channels: usize,
    k: f32,
    convert: GpuConvert,
    filter: GpuSosFilter,
    reference: GpuMedianReference,
    detector: GpuPeakDetector,
    noise: GpuNoise,
    detect_list: Vec<usize>,
    /// The raw chunk as uploaded (int16 pairs).
    raw: GrowBuffer,
    /// The chunk in f32 µV, filtered and referenced in place.
    work: GrowBuffer,
    /// Ring of rows by count since the stream start: row n lives at slot `n % ring_samples`.
    ring: wgpu::Buffer,
    ring_samples: u64,
    schedule: RefreshSchedule,
    clock: RowClock,
    calibrated: bool,
    sigma: Vec<f32>,
    thresholds: Vec<f32>,
    sigma_step: Vec<f32>,
    /// The refresh point whose estimate was last launched on the GPU.
    launched: Option<u64>,
    /// Work recorded and not yet submitted.
    pending: Option<wgpu::CommandEncoder>,
    timing: ChunkTiming,
}

impl GpuChain {
    pub fn new(ctx: Arc<GpuContext>, cfg: &ChainConfig) -> Result<Self, KernelError> {
        cfg.validate()?;
        let c = cfg.n_channels;
        let sos = butter_bandpass(cfg.order, cfg.band_hz.0, cfg.band_hz.1, cfg.sampling_hz)?;
        let schedule = RefreshSchedule::new(cfg);
        let ring_samples = schedule.ring_samples();
        let ring_bytes = ring_samples
            .checked_mul(c as u64 * 4)
            .ok_or(KernelError::Config {
                field: "calibration_s",
                problem: format!("{} s × {c} channels overflows", cfg.calibration_s),
            })?;
        check_binding(&ctx, STAGE, "the calibration ring", ring_bytes)?;
        let detect_list = cfg.detect_list();
        let device = &ctx.device;
        let ring = buffer(
            &ctx,
            "detection ring",
            ring_bytes,
            // COPY_SRC: the detector keeps its history rows from whatever it detected.
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        );
        let raw = GrowBuffer::new(
            device,
            "raw chunk",
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            4,
        );
        let work = GrowBuffer::new(
            device,
            "chunk µV",
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            4,
        );
        Ok(GpuChain {
            convert: GpuConvert::new(ctx.clone(), &cfg.uv_per_bit)?,
            filter: GpuSosFilter::new(ctx.clone(), &sos, c)?,
            reference: GpuMedianReference::new(ctx.clone(), cfg.reference_groups(), c)?,
            detector: GpuPeakDetector::new(
                ctx.clone(),
                c,
                &cfg.neighbours(),
                cfg.exclude_samples(),
                cfg.dead_samples(),
            )?,
            noise: GpuNoise::new(ctx.clone(), c, &detect_list)?,
            ctx,
            n_channels: c,
            k: cfg.threshold as f32,
            raw,
            work,
            ring,
            ring_samples,
            schedule,
            clock: RowClock::default(),
            calibrated: false,
            sigma: vec![0.0; c],
            thresholds: vec![f32::INFINITY; c],
            sigma_step: vec![0.0; detect_list.len()],
            detect_list,
            launched: None,
            pending: None,
            timing: ChunkTiming::default(),
        })
    }

    /// Per-chunk wall-clock timing of `process` since construction (or the last reset).
    pub fn timing(&self) -> ChunkTiming {
        self.timing
    }

    pub fn reset_timing(&mut self) {
        self.timing = ChunkTiming::default();
    }

    /// The adapter this chain runs on.
    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_name
    }

    fn encoder(&mut self) -> wgpu::CommandEncoder {
        self.pending
            .take()
            .unwrap_or_else(|| command_encoder(&self.ctx, STAGE))
    }

    fn submit_pending(&mut self) {
        if let Some(encoder) = self.pending.take() {
            self.ctx.queue.submit([encoder.finish()]);
        }
    }

    /// Records copies of the chunk rows `[t0, t1)` (row counts from `n0`) that belong to a
    /// window into their ring slots.
    fn copy_into_ring(&mut self, n0: u64, t0: usize, t1: usize) {
        let row_bytes = (self.n_channels * 4) as u64;
        let mut encoder = self.encoder();
        let mut t = t0;
        while t < t1 {
            if !self.schedule.goes_to_ring(n0 + t as u64) {
                t += 1;
                continue;
            }
            let mut end = t + 1;
            while end < t1 && self.schedule.goes_to_ring(n0 + end as u64) {
                end += 1;
            }
            // Rows [t, end) go to consecutive slots, split where the ring wraps.
            let mut a = t;
            while a < end {
                let slot = (n0 + a as u64) % self.ring_samples;
                let len = ((self.ring_samples - slot) as usize).min(end - a);
                encoder.copy_buffer_to_buffer(
                    self.work.buffer(),
                    a as u64 * row_bytes,
                    &self.ring,
                    slot * row_bytes,
                    len as u64 * row_bytes,
                );
                a += len;
            }
            t = end;
        }
        self.pending = Some(encoder);
    }

    fn set_thresholds(&mut self) {
        self.thresholds.fill(f32::INFINITY);
        for &ch in &self.detect_list {
            self.thresholds[ch] = self.k * self.sigma[ch];
        }
    }

    /// Runs the noise estimate over the ring window `[start, start + rows)` (slots) and reads
    /// σ into `sigma_step`.
    fn estimate(&mut self, start: u64, rows: u64, read: bool) -> Result<(), GpuError> {
        let mut encoder = self.encoder();
        self.noise.encode(
            &mut encoder,
            &self.ring,
            self.ring_samples as usize,
            start as usize,
            rows as usize,
        )?;
        self.ctx.queue.submit([encoder.finish()]);
        if read {
            self.noise.read_sigma(&mut self.sigma_step)?;
        }
        Ok(())
    }

    /// σ over the buffered calibration rows `[0, rows)`, then detect them (CpuChain::calibrate).
    fn calibrate(&mut self, rows: u64, out: &mut Vec<Detection>) -> Result<(), GpuError> {
        self.estimate(0, rows, true)?;
        for (&ch, &s) in self.detect_list.iter().zip(&self.sigma_step) {
            self.sigma[ch] = s;
        }
        self.set_thresholds();
        self.calibrated = true;
        tracing::debug!(rows, "GPU detection chain calibrated");
        for (start, end, sample) in self.clock.take_calibration_runs(rows) {
            let encoder = self.encoder();
            self.detector.process_resident(
                encoder,
                sample,
                &self.ring,
                start as usize,
                (end - start) as usize,
                &self.thresholds,
                &mut |peak, threshold_uv| out.push(Detection { peak, threshold_uv }),
            )?;
        }
        Ok(())
    }

    fn process_chunk(
        &mut self,
        first_sample: i64,
        raw: &[i16],
        out: &mut Vec<Detection>,
    ) -> Result<(), GpuError> {
        let c = self.n_channels;
        let rows = raw.len() / c;
        let n0 = self.clock.start_chunk(first_sample, rows, self.calibrated);

        // Upload the chunk as is; convert, filter and reference it in place.
        let device = self.ctx.device.clone();
        check_binding(&self.ctx, STAGE, "the chunk", (raw.len() * 4) as u64)?;
        self.raw.ensure(&device, (raw.len() * 2) as u64);
        self.work.ensure(&device, (raw.len() * 4) as u64);
        write_padded(&self.ctx, self.raw.buffer(), 0, bytemuck::cast_slice(raw));
        let mut encoder = self.encoder();
        self.convert.encode(
            &mut encoder,
            self.raw.buffer(),
            self.work.buffer(),
            raw.len(),
        )?;
        self.filter.encode(&mut encoder, self.work.buffer(), rows)?;
        self.reference
            .encode(&mut encoder, self.work.buffer(), rows)?;
        self.pending = Some(encoder);

        // Then in segments split where thresholds change, exactly as CpuChain::process.
        let mut t = 0usize;
        while t < rows {
            let (event, end) = self.schedule.segment(n0, t, rows, self.calibrated);
            self.copy_into_ring(n0, t, end);
            if self.calibrated {
                let encoder = self.encoder();
                let sample = self.clock.sample(n0 + t as u64);
                self.detector.process_resident(
                    encoder,
                    sample,
                    self.work.buffer(),
                    t,
                    end - t,
                    &self.thresholds,
                    &mut |peak, threshold_uv| out.push(Detection { peak, threshold_uv }),
                )?;
            }
            t = end;
            let reached = n0 + t as u64;
            if !self.calibrated && reached == event {
                self.calibrate(reached, out)?;
            } else if self.calibrated && reached == event {
                // Apply point: the estimate over [r − calibration, r), launched when its window
                // completed (or now, if this chunk spans both), replaces σ.
                let r = event - self.schedule.spread;
                if self.launched != Some(r) {
                    self.launch_refresh(r)?;
                }
                self.noise.read_sigma(&mut self.sigma_step)?;
                for (&ch, &s) in self.detect_list.iter().zip(&self.sigma_step) {
                    self.sigma[ch] = s;
                }
                self.set_thresholds();
            }
        }
        self.clock.processed = n0 + rows as u64;

        // A refresh window just completed: estimate now, on the GPU, while the stream goes on.
        if self.calibrated {
            if let Some(r) = self.schedule.refresh_in_progress(self.clock.processed) {
                if self.launched != Some(r) {
                    self.launch_refresh(r)?;
                }
            }
        }
        self.submit_pending();
        Ok(())
    }

    fn launch_refresh(&mut self, r: u64) -> Result<(), GpuError> {
        let calibration = self.schedule.calibration;
        let start = (r - calibration) % self.ring_samples;
        self.estimate(start, calibration, false)?;
        self.launched = Some(r);
        Ok(())
    }
}

impl DetectionChain for GpuChain {
    fn n_channels(&self) -> usize {
        self.n_channels
    }

    fn process(
        &mut self,
        first_sample: i64,
        raw: &[i16],
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        let rows = check_chunk_shape(raw, self.n_channels)?;
        if rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let device = self.ctx.device.clone();
        let result = scoped(&device, STAGE, || {
            self.process_chunk(first_sample, raw, out)
        });
        // Whatever failed, drop half-recorded work rather than submit it with the next chunk.
        self.pending = None;
        let elapsed = started.elapsed();
        self.timing.chunks += 1;
        self.timing.samples += rows as u64;
        self.timing.total += elapsed;
        self.timing.max = self.timing.max.max(elapsed);
        self.timing.last = elapsed;
        result.map_err(KernelError::from)
    }

    fn finish(&mut self, out: &mut Vec<Detection>) -> Result<(), KernelError> {
        let device = self.ctx.device.clone();
        let result = scoped(&device, STAGE, || {
            if !self.calibrated && self.clock.processed > 0 {
                tracing::info!(
                    rows = self.clock.processed,
                    "detection chain: stream ended during calibration; calibrating on what there is"
                );
                self.calibrate(self.clock.processed, out)?;
            }
            let encoder = self.encoder();
            self.detector
                .finish_resident(encoder, &mut |peak, threshold_uv| {
                    out.push(Detection { peak, threshold_uv })
                })
        });
        self.pending = None;
        self.clock.end_stream();
        result.map_err(KernelError::from)
    }

    fn backend(&self) -> Backend {
        self.ctx.backend
    }

    fn noise_uv(&self) -> Option<&[f32]> {
        self.calibrated.then_some(self.sigma.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{CpuChain, Reference};
    use crate::gpu::test_context;
    use rand::{Rng, SeedableRng};

    /// Raw i16 at 1 µV per bit (sample-major): noise of `noise_uv(t)`, a common 50 Hz hum, DC
    /// offsets, and negative spikes with a footprint over ±3 neighbouring channels.
    fn synthetic(
        n_channels: usize,
        n_samples: usize,
        seed: u64,
        noise_uv: impl Fn(usize) -> f32,
    ) -> Vec<i16> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut x = vec![0f32; n_channels * n_samples];
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
        let template: Vec<f32> = (0..40)
            .map(|i| {
                let ms = i as f32 / 30.0;
                -(-0.5 * ((ms - 0.3) / 0.12).powi(2)).exp()
                    + 0.35 * (-0.5 * ((ms - 0.8) / 0.3).powi(2)).exp()
            })
            .collect();
        let mut t = 100;
        while t + 60 < n_samples {
            let c = rng.random_range(0..n_channels);
            let amp = rng.random_range(80.0f32..250.0);
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
            t += rng.random_range(50..400);
        }
        x.iter()
            .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    /// Feeds `raw` in chunks whose sizes cycle through `sizes`, starting at sample 5000, then
    /// finishes. `gap_after`: (row, jump) — the sample index jumps by `jump` after that row (a
    /// chunk ends there whatever the sizes).
    fn run(
        chain: &mut dyn DetectionChain,
        raw: &[i16],
        c: usize,
        sizes: &[usize],
        gap_after: &[(usize, i64)],
    ) -> Vec<Detection> {
        let mut out = Vec::new();
        let n = raw.len() / c;
        let (mut t, mut i, mut sample) = (0usize, 0usize, 5000i64);
        while t < n {
            let next_gap = gap_after
                .iter()
                .map(|g| g.0)
                .filter(|&row| row > t)
                .min()
                .unwrap_or(n);
            let len = sizes[i % sizes.len()].clamp(1, next_gap - t);
            chain
                .process(sample, &raw[t * c..(t + len) * c], &mut out)
                .unwrap();
            t += len;
            sample += len as i64;
            i += 1;
            if let Some(&(_, jump)) = gap_after.iter().find(|(row, _)| *row == t) {
                sample += jump;
            }
        }
        chain.finish(&mut out).unwrap();
        out
    }

    fn assert_same(got: &[Detection], want: &[Detection], what: &str) {
        let key = |d: &Detection| {
            (
                d.peak.sample,
                d.peak.channel,
                d.peak.value.to_bits(),
                d.threshold_uv.to_bits(),
            )
        };
        if let Some(i) = (0..got.len().min(want.len())).find(|&i| key(&got[i]) != key(&want[i])) {
            panic!(
                "{what}: first difference at {i}: gpu {:?} cpu {:?} ({} vs {})",
                got[i],
                want[i],
                got.len(),
                want.len()
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: detection counts");
    }

    fn assert_same_noise(gpu: &dyn DetectionChain, cpu: &dyn DetectionChain, what: &str) {
        let (g, c) = (gpu.noise_uv().unwrap(), cpu.noise_uv().unwrap());
        for (ch, (a, b)) in g.iter().zip(c).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{what}: σ of channel {ch}: gpu {a} cpu {b}"
            );
        }
    }

    fn config(n_channels: usize) -> ChainConfig {
        let mut cfg = ChainConfig::with_defaults(n_channels, 30000.0);
        cfg.calibration_s = 0.5;
        cfg.refresh_s = 1.0;
        cfg.dead_time_ms = 0.2;
        cfg
    }

    /// The whole chain, GPU vs CPU, identical detections (sample, channel, value and threshold
    /// bits) and identical σ, through calibration, two refreshes with a noise change, and
    /// chunkings from 1 sample to a tenth of a second.
    #[test]
    fn gpu_chain_matches_cpu_chain_exactly_in_any_chunking() {
        let Some(ctx) = test_context() else { return };
        let n_channels = 64;
        let raw = synthetic(
            n_channels,
            30000 * 3,
            1,
            |t| if t < 45000 { 8.0 } else { 14.0 },
        );
        let cfg = config(n_channels);
        let mut cpu = CpuChain::new(&cfg).unwrap();
        let want = run(&mut cpu, &raw, n_channels, &[3000], &[]);
        assert!(want.len() > 500, "{} detections", want.len());
        for sizes in [vec![3000], vec![1, 7, 300, 3001, 30], vec![4999, 211]] {
            let mut gpu = GpuChain::new(ctx.clone(), &cfg).unwrap();
            assert_eq!(gpu.backend(), ctx.backend);
            let got = run(&mut gpu, &raw, n_channels, &sizes, &[]);
            assert_same(&got, &want, &format!("chunks {sizes:?}"));
            assert_same_noise(&gpu, &cpu, &format!("chunks {sizes:?}"));
            let timing = gpu.timing();
            assert!(timing.chunks > 0 && timing.samples == 90000 && timing.max >= timing.mean());
        }
    }

    /// 385 channels (several workgroups of every kernel) with a sync channel excluded, per-shank
    /// reference on four shanks of uneven size, a gap in the stream during calibration and one
    /// after it, and two refreshes (one applied within a chunk that also completed its window).
    #[test]
    fn gpu_chain_matches_cpu_chain_on_a_probe_with_shanks_sync_and_gaps() {
        let Some(ctx) = test_context() else { return };
        let n_channels = 385;
        let mut raw = synthetic(
            n_channels,
            30000,
            2,
            |t| if t < 12000 { 10.0 } else { 16.0 },
        );
        for (t, row) in raw.chunks_exact_mut(n_channels).enumerate() {
            row[384] = if (t / 500) % 2 == 0 { 0 } else { -20000 };
        }
        let mut cfg = config(n_channels);
        // Calibration [0, 9000); refresh windows [6000, 15000) and [12000, 21000), applied at
        // 21000 and 27000 (spread = refresh = 6000 samples).
        cfg.calibration_s = 0.3;
        cfg.refresh_s = 0.2;
        cfg.detect_channels[384] = false;
        cfg.reference = Reference::PerShank;
        cfg.shank = (0..n_channels)
            .map(|c| {
                if c < 50 {
                    0
                } else if c < 200 {
                    1
                } else if c < 300 {
                    2
                } else {
                    3
                }
            })
            .collect();
        cfg.uv_per_bit = (0..n_channels)
            .map(|c| 1.0 + (c % 3) as f32 * 0.25)
            .collect();
        let gaps = [(4000usize, 123i64), (20000, 1)];
        let mut cpu = CpuChain::new(&cfg).unwrap();
        let want = run(&mut cpu, &raw, n_channels, &[1000], &gaps);
        assert!(want.len() > 100, "{} detections", want.len());
        assert!(want.iter().all(|d| d.peak.channel != 384));
        // The refreshes did change the thresholds (the noise went up at row 12000; rows before
        // 21000 are judged by the calibration's σ, rows from 27000 by the second refresh's).
        let mean_threshold = |rows: std::ops::Range<i64>| -> f32 {
            let v: Vec<f32> = want
                .iter()
                .filter(|d| rows.contains(&(d.peak.sample - 5000 - 124)))
                .map(|d| d.threshold_uv)
                .collect();
            assert!(!v.is_empty(), "no detections in rows {rows:?}");
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean_threshold(27000..30000) > 1.3 * mean_threshold(4500..20000));
        for sizes in [vec![1000, 777], vec![7001]] {
            let mut gpu = GpuChain::new(ctx.clone(), &cfg).unwrap();
            let got = run(&mut gpu, &raw, n_channels, &sizes, &gaps);
            let what = format!("385 channels, 4 shanks, gaps, chunks {sizes:?}");
            assert_same(&got, &want, &what);
            assert_same_noise(&gpu, &cpu, &what);
            assert_eq!(gpu.noise_uv().unwrap()[384], 0.0);
        }
    }

    #[test]
    fn gpu_chain_calibrates_a_short_stream_at_finish() {
        let Some(ctx) = test_context() else { return };
        let n_channels = 8;
        let raw = synthetic(n_channels, 6000, 4, |_| 8.0);
        let cfg = config(n_channels);
        let mut cpu = CpuChain::new(&cfg).unwrap();
        let want = run(&mut cpu, &raw, n_channels, &[1000], &[]);
        let mut gpu = GpuChain::new(ctx, &cfg).unwrap();
        let got = run(&mut gpu, &raw, n_channels, &[1000], &[]);
        assert!(!want.is_empty());
        assert_same(&got, &want, "short stream");
        assert_same_noise(&gpu, &cpu, "short stream");
        // Shape errors are typed, as on the CPU.
        let e = gpu.process(0, &[0; 7], &mut Vec::new()).unwrap_err();
        assert!(matches!(
            e,
            KernelError::ChunkShape {
                len: 7,
                n_channels: 8
            }
        ));
    }

    #[test]
    fn build_chain_picks_the_gpu_when_asked() {
        let Some(ctx) = test_context() else { return };
        let cfg = config(4);
        let chain = crate::chain::build_chain(&cfg, crate::gpu::Preference::Gpu).unwrap();
        assert_eq!(chain.backend(), ctx.backend);
        let chain = crate::chain::build_chain(&cfg, crate::gpu::Preference::Cpu).unwrap();
        assert_eq!(chain.backend(), Backend::Cpu);
    }

    /// `auto`'s measuring chain: whichever backend its trial keeps, the detections are the CPU
    /// chain's (the kept chain goes on seamlessly), and the verdict is reported once, with
    /// figures for both backends.
    #[test]
    fn measured_chain_hands_over_to_either_winner_seamlessly() {
        use crate::backend::{Figure, Trial};
        use crate::measured::MeasuredChain;
        let Some(ctx) = test_context() else { return };
        let c = 8;
        let raw = synthetic(c, 60000, 9, |t| if t < 30000 { 8.0 } else { 12.0 });
        let cfg = config(c);
        let want = run(&mut CpuChain::new(&cfg).unwrap(), &raw, c, &[300, 17], &[]);
        assert!(!want.is_empty());
        let gpu_wins: fn(&[Figure]) -> Backend = |f| {
            f.iter()
                .map(|f| f.backend)
                .find(|b| *b != Backend::Cpu)
                .unwrap_or(Backend::Cpu)
        };
        let cpu_wins: fn(&[Figure]) -> Backend = |_| Backend::Cpu;
        for (rule, winner) in [(gpu_wins, ctx.backend), (cpu_wins, Backend::Cpu)] {
            let mut chain = MeasuredChain::new(
                Box::new(CpuChain::new(&cfg).unwrap()),
                Box::new(GpuChain::new(ctx.clone(), &cfg).unwrap()),
                Trial::new(ctx.backend, cfg.calibration_s + 0.5).with_rule(rule),
                cfg.sampling_hz,
            );
            assert_eq!(
                chain.backend(),
                Backend::Cpu,
                "the CPU's output goes out first"
            );
            let got = run(&mut chain, &raw, c, &[300, 17], &[]);
            assert_same(&got, &want, winner.as_str());
            assert_eq!(chain.backend(), winner);
            let verdict = chain
                .take_verdict()
                .expect("the trial ended within the stream");
            assert_eq!(verdict.chosen, winner);
            assert_eq!(verdict.figures.len(), 2, "{verdict:?}");
            assert!(
                verdict
                    .figures
                    .iter()
                    .all(|f| f.data_s >= 1.0 && f.compute_s > 0.0),
                "{verdict:?}"
            );
            assert!(chain.take_verdict().is_none(), "reported once");
        }
    }

    /// Where the GPU time goes, 384 channels + sync at 30 kHz: the whole chain per chunk
    /// (latency, real-time factor) and each kernel on its own (upload and read-back included).
    /// Run with `cargo test --release -p kernels gpu::chain::tests::gpu_timing -- --ignored
    /// --nocapture`; `NEUROD_GPU_TIMING_S` sets the seconds of signal (default 2).
    #[test]
    #[ignore]
    fn gpu_timing() {
        let Some(ctx) = test_context() else { return };
        let seconds: usize = std::env::var("NEUROD_GPU_TIMING_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let n_channels = 385;
        let raw = synthetic(n_channels, 30000 * seconds, 5, |_| 10.0);
        let mut cfg = ChainConfig::with_defaults(n_channels, 30000.0);
        cfg.detect_channels[384] = false;
        cfg.calibration_s = 0.5;
        cfg.refresh_s = 1.0;
        eprintln!(
            "{} ({}), {seconds} s of 384 ch + sync @ 30 kHz:",
            ctx.adapter_name,
            ctx.backend.as_str()
        );
        for chunk in [30usize, 300, 3000] {
            let mut gpu = GpuChain::new(ctx.clone(), &cfg).unwrap();
            let mut out = Vec::new();
            // Calibration first (its stall is not a steady-state latency).
            let cal = 15000 * n_channels;
            gpu.process(0, &raw[..cal], &mut out).unwrap();
            gpu.reset_timing();
            for (i, piece) in raw[cal..].chunks(chunk * n_channels).enumerate() {
                gpu.process(15000 + (i * chunk) as i64, piece, &mut out)
                    .unwrap();
            }
            let t = gpu.timing();
            eprintln!(
                "  chain, {:5.1} ms chunks: mean {:8.3} ms, max {:8.3} ms per chunk, {:6.2}× real time ({} detections)",
                chunk as f64 / 30.0,
                t.mean().as_secs_f64() * 1e3,
                t.max.as_secs_f64() * 1e3,
                t.samples_per_second() / 30000.0,
                out.len()
            );
        }
        let rows = 3000;
        let mut data: Vec<f32> = raw[..rows * n_channels].iter().map(|&v| v as f32).collect();
        let time = |f: &mut dyn FnMut()| {
            f();
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        };
        let sos = butter_bandpass(3, 300.0, 6000.0, 30000.0).unwrap();
        let mut filter = GpuSosFilter::new(ctx.clone(), &sos, n_channels).unwrap();
        let t_filter = time(&mut || filter.process(&mut data).unwrap());
        let mut cmr =
            GpuMedianReference::new(ctx.clone(), cfg.reference_groups(), n_channels).unwrap();
        let t_cmr = time(&mut || cmr.process(&mut data).unwrap());
        let mut noise = GpuNoise::new(ctx.clone(), n_channels, &cfg.detect_list()).unwrap();
        let mut sigma = vec![0f32; 384];
        let t_noise = time(&mut || noise.sigma(&data, &mut sigma).unwrap());
        let thr: Vec<f32> = sigma
            .iter()
            .map(|s| 5.0 * s)
            .chain([f32::INFINITY])
            .collect();
        let mut det =
            GpuPeakDetector::new(ctx.clone(), n_channels, &cfg.neighbours(), 3, 0).unwrap();
        let mut peaks = Vec::new();
        let mut first = 0;
        let t_detect = time(&mut || {
            det.process(first, &data, &thr, &mut peaks).unwrap();
            first += rows as i64;
        });
        eprintln!("  kernels on 100 ms (3000 samples), upload and read-back included:");
        eprintln!("    filter {t_filter:8.2} ms, median {t_cmr:8.2} ms, MAD σ {t_noise:8.2} ms, detect {t_detect:8.2} ms");
    }
}
