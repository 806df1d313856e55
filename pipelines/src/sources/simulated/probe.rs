//! One simulated NP1.0 probe: units with spatial templates on white noise, a little LFP and
//! common-mode signal, and the sync word.
//!
//! Fast by construction: the white noise is read from a precomputed pool at random offsets
//! (one offset per channel per 10 ms segment), LFP sources are a handful of per-sample filters
//! spread over channels by fixed profiles, and templates are added only where spikes are.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int16Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand::seq::index::sample as sample_indices;
use rand::Rng;
use rand_distr::StandardNormal;

use super::geometry::{
    ap_stream_info, np1_contact_um, sync_word, NP1_ADC_MAX, NP1_ADC_MIN, NP1_CHANNELS,
    NP1_UV_PER_BIT, SAMPLE_RATE_HZ,
};
use super::spikes::{rng_for, Firing, Locomotion, Spike, SpikeTrain};

/// Template samples before the trough (0.5 ms) and from the trough on (1.5 ms).
pub const TEMPLATE_PRE: i64 = 15;
pub const TEMPLATE_POST: i64 = 45;
const TEMPLATE_LEN: usize = (TEMPLATE_PRE + TEMPLATE_POST) as usize;
/// Template contacts whose amplitude falls below this fraction of the peak are left out.
const TEMPLATE_CUTOFF: f64 = 0.02;

/// Units of probe 0 whose spikes make the running speed.
pub const DRIVER_UNITS: usize = 8;

/// Random-generator domains (see `rng_for`); the index is probe · 2^32 + unit.
pub(super) mod domain {
    pub const UNIT: u64 = 1;
    pub const TRAIN: u64 = 2;
    pub const NOISE: u64 = 3;
    pub const LFP: u64 = 4;
    pub const DRIVERS: u64 = 5;
}

/// One simulated unit: where it is, how big, how it fires.
pub struct Unit {
    pub x_um: f64,
    pub y_um: f64,
    /// Trough amplitude at the peak contact (µV).
    pub amplitude_uv: f64,
    /// Mean rate (Hz); for drivers, the rate at rest.
    pub rate_hz: f64,
    pub bursty: bool,
    /// Weight in the running speed (0 for units that do not drive it).
    pub driver_weight: f64,
    /// Locomotion gain: rate at full running = rate_hz · (1 + gain).
    pub locomotion_gain: f64,
    pub peak_channel: usize,
    /// (channel, trough amplitude in ADC counts) for every contact the unit reaches.
    template: Vec<(usize, f32)>,
    /// Unit-trough waveform, trough at `TEMPLATE_PRE`.
    waveform: [f32; TEMPLATE_LEN],
    train: SpikeTrain,
}

impl Unit {
    pub fn is_driver(&self) -> bool {
        self.driver_weight > 0.0
    }
}

/// Biphasic extracellular waveform: a narrow negative trough then a broader, smaller positive
/// repolarisation, ~1.5 ms in all, scaled so that the trough is −1, tapered to 0 at the edges.
fn waveform(rng: &mut SmallRng) -> [f32; TEMPLATE_LEN] {
    let ms = SAMPLE_RATE_HZ / 1000.0;
    let trough_sd = rng.random_range(0.08..0.14) * ms;
    let repol_at = rng.random_range(0.3..0.6) * ms;
    let repol_sd = rng.random_range(0.18..0.32) * ms;
    let repol_ratio = rng.random_range(0.2..0.45);
    let mut w = [0f32; TEMPLATE_LEN];
    for (i, v) in w.iter_mut().enumerate() {
        let t = i as f64 - TEMPLATE_PRE as f64;
        let trough = (-0.5 * (t / trough_sd).powi(2)).exp();
        let repol = (-0.5 * ((t - repol_at) / repol_sd).powi(2)).exp();
        *v = (-trough + repol_ratio * repol) as f32;
    }
    let taper = 8;
    for k in 0..taper {
        let f = (0.5 - 0.5 * (std::f64::consts::PI * k as f64 / taper as f64).cos()) as f32;
        w[k] *= f;
        w[TEMPLATE_LEN - 1 - k] *= f;
    }
    let trough = w[TEMPLATE_PRE as usize].abs().max(1e-6);
    for v in &mut w {
        *v /= trough;
    }
    w
}

fn log_uniform(rng: &mut SmallRng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..hi.ln())).exp()
}

fn make_unit(seed: u64, probe: u32, unit: u32, driver: bool) -> Unit {
    let index = ((probe as u64) << 32) | unit as u64;
    let mut rng = rng_for(seed, domain::UNIT, index);
    let y_um = rng.random_range(0.0..3840.0);
    let x_um = rng.random_range(-10.0..58.0);
    let z_um = rng.random_range(10.0..40.0);
    let amplitude_uv = log_uniform(&mut rng, 50.0, 250.0);
    let decay_um = rng.random_range(30.0..60.0);
    let distance = |c: usize| {
        let (cx, cy) = np1_contact_um(c);
        ((cx - x_um).powi(2) + (cy - y_um).powi(2) + z_um * z_um).sqrt()
    };
    let mut peak_channel = 0;
    let mut nearest = f64::INFINITY;
    for c in 0..NP1_CHANNELS {
        let d = distance(c);
        if d < nearest {
            nearest = d;
            peak_channel = c;
        }
    }
    let peak_counts = amplitude_uv / NP1_UV_PER_BIT;
    let template = (0..NP1_CHANNELS)
        .filter_map(|c| {
            let f = (-(distance(c) - nearest) / decay_um).exp();
            (f >= TEMPLATE_CUTOFF).then_some((c, (peak_counts * f) as f32))
        })
        .collect();
    let waveform = waveform(&mut rng);
    let (rate_hz, firing, locomotion_gain) = if driver {
        // Drivers fire tonically at 2–5 Hz at rest and 15–25 Hz at full running.
        let rest = rng.random_range(2.0..5.0);
        let run = rng.random_range(15.0..25.0);
        (rest, Firing::Tonic, run / rest - 1.0)
    } else {
        let rate = log_uniform(&mut rng, 1.0, 20.0);
        let firing = if rng.random_bool(0.2) {
            Firing::Bursty {
                min_spikes: 2,
                max_spikes: 5,
                isi_samples: (90, 240),
                attenuation: 0.8,
            }
        } else {
            Firing::Tonic
        };
        (rate, firing, 0.0)
    };
    let driver_weight = if driver {
        rng.random_range(0.5..1.5)
    } else {
        0.0
    };
    let train = SpikeTrain::new(
        rate_hz,
        firing,
        locomotion_gain,
        rng_for(seed, domain::TRAIN, index),
    );
    Unit {
        x_um,
        y_um,
        amplitude_uv,
        rate_hz,
        bursty: firing != Firing::Tonic,
        driver_weight,
        locomotion_gain,
        peak_channel,
        template,
        waveform,
        train,
    }
}

/// Gaussian white noise read from a pool at a fresh random offset per channel every segment.
struct NoisePool {
    pool: Vec<f32>,
    rng: SmallRng,
    segment: i64,
    offsets: Vec<usize>,
}

const NOISE_POOL_LEN: usize = 1 << 17;
/// 10 ms: segments are fixed on the data clock, so the noise does not depend on batch size.
const NOISE_SEGMENT: i64 = 300;

impl NoisePool {
    fn new(sd_counts: f64, mut rng: SmallRng) -> Self {
        let pool = (0..NOISE_POOL_LEN)
            .map(|_| (rng.sample::<f64, _>(StandardNormal) * sd_counts) as f32)
            .collect();
        NoisePool {
            pool,
            rng,
            segment: -1,
            offsets: vec![0; NP1_CHANNELS],
        }
    }

    /// Writes the noise of samples `s0..s1` into the channel-major `out` (`n` samples a channel).
    fn fill(&mut self, s0: i64, s1: i64, out: &mut [f32], n: usize) {
        let max_offset = NOISE_POOL_LEN - NOISE_SEGMENT as usize;
        let mut s = s0;
        while s < s1 {
            let segment = s.div_euclid(NOISE_SEGMENT);
            if segment != self.segment {
                for o in &mut self.offsets {
                    *o = self.rng.random_range(0..max_offset);
                }
                self.segment = segment;
            }
            let end = ((segment + 1) * NOISE_SEGMENT).min(s1);
            let len = (end - s) as usize;
            let within = (s - segment * NOISE_SEGMENT) as usize;
            let at = (s - s0) as usize;
            for (ch, &o) in self.offsets.iter().enumerate() {
                let src = &self.pool[o + within..o + within + len];
                out[ch * n + at..ch * n + at + len].copy_from_slice(src);
            }
            s = end;
        }
    }
}

/// A filtered-noise signal shared by many channels through a spatial profile.
struct LfpSource {
    /// x[t] = a1·x[t−1] + a2·x[t−2] + drive·e[t], scaled to unit variance.
    a1: f64,
    a2: f64,
    drive: f64,
    x1: f64,
    x2: f64,
    /// Amplitude (ADC counts, sd) on each channel.
    profile: Vec<f32>,
}

impl LfpSource {
    /// A resonance at `freq_hz` of bandwidth `bandwidth_hz` (AR(2)).
    fn resonant(freq_hz: f64, bandwidth_hz: f64, profile: Vec<f32>) -> Self {
        let r = (-std::f64::consts::PI * bandwidth_hz / SAMPLE_RATE_HZ).exp();
        let w = 2.0 * std::f64::consts::PI * freq_hz / SAMPLE_RATE_HZ;
        Self::ar2(2.0 * r * w.cos(), -r * r, profile)
    }
    /// Low-pass noise with corner `corner_hz` (AR(1)).
    fn low_pass(corner_hz: f64, profile: Vec<f32>) -> Self {
        let a = (-2.0 * std::f64::consts::PI * corner_hz / SAMPLE_RATE_HZ).exp();
        Self::ar2(a, 0.0, profile)
    }
    fn ar2(a1: f64, a2: f64, profile: Vec<f32>) -> Self {
        // Stationary variance of an AR(2) driven by unit white noise.
        let var = (1.0 - a2) / ((1.0 + a2) * ((1.0 - a2).powi(2) - a1 * a1));
        LfpSource {
            a1,
            a2,
            drive: 1.0 / var.sqrt(),
            x1: 0.0,
            x2: 0.0,
            profile,
        }
    }
    fn step(&mut self, rng: &mut SmallRng) -> f32 {
        let e: f64 = rng.sample(StandardNormal);
        let x = self.a1 * self.x1 + self.a2 * self.x2 + self.drive * e;
        self.x2 = self.x1;
        self.x1 = x;
        x as f32
    }
}

struct Lfp {
    /// Theta, gamma, slow broadband, common mode: a fixed four, so that adding them to a
    /// channel is one fused pass.
    sources: [LfpSource; 4],
    rng: SmallRng,
    scratch: Vec<f32>,
}

impl Lfp {
    fn new(mut rng: SmallRng) -> Self {
        let counts = |uv: f64| uv / NP1_UV_PER_BIT;
        let gaussian_along_probe = |rng: &mut SmallRng, uv: f64, width: (f64, f64)| {
            let centre = rng.random_range(0.0..3840.0);
            let sd = rng.random_range(width.0..width.1);
            (0..NP1_CHANNELS)
                .map(|c| {
                    let y = np1_contact_um(c).1;
                    (counts(uv) * (-0.5 * ((y - centre) / sd).powi(2)).exp()) as f32
                })
                .collect::<Vec<_>>()
        };
        let theta = LfpSource::resonant(
            rng.random_range(5.0..9.0),
            3.0,
            gaussian_along_probe(&mut rng, 6.0, (400.0, 1200.0)),
        );
        let gamma = LfpSource::resonant(
            rng.random_range(25.0..60.0),
            15.0,
            gaussian_along_probe(&mut rng, 3.0, (200.0, 600.0)),
        );
        let tip_up = rng.random_bool(0.5);
        let slow_profile = (0..NP1_CHANNELS)
            .map(|c| {
                let f = c as f64 / (NP1_CHANNELS - 1) as f64;
                let f = if tip_up { f } else { 1.0 - f };
                (counts(5.0) * (0.3 + 0.7 * f)) as f32
            })
            .collect();
        let slow = LfpSource::low_pass(10.0, slow_profile);
        // The same signal on every contact (reference and ground pick-up): what a common median
        // reference removes.
        let common = LfpSource::low_pass(250.0, vec![counts(3.0) as f32; NP1_CHANNELS]);
        let mut lfp = Lfp {
            sources: [theta, gamma, slow, common],
            rng,
            scratch: Vec::new(),
        };
        // Start from the stationary state rather than from silence.
        for _ in 0..SAMPLE_RATE_HZ as usize {
            for s in &mut lfp.sources {
                s.step(&mut lfp.rng);
            }
        }
        lfp
    }

    /// Adds the next `n` samples of every source to the channel-major `out`.
    fn add(&mut self, out: &mut [f32], n: usize) {
        self.scratch.clear();
        self.scratch.resize(4 * n, 0.0);
        for t in 0..n {
            for (j, s) in self.sources.iter_mut().enumerate() {
                self.scratch[j * n + t] = s.step(&mut self.rng);
            }
        }
        let (x0, rest) = self.scratch.split_at(n);
        let (x1, rest) = rest.split_at(n);
        let (x2, x3) = rest.split_at(n);
        let [p0, p1, p2, p3] = &self.sources;
        for (ch, col) in out.chunks_exact_mut(n).enumerate() {
            let (a0, a1, a2, a3) = (
                p0.profile[ch],
                p1.profile[ch],
                p2.profile[ch],
                p3.profile[ch],
            );
            for ((((v, y0), y1), y2), y3) in col.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
                *v += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3;
            }
        }
    }
}

/// Rounds to the nearest ADC step (ties to even) within the NP1.0 10-bit range.
///
/// Adding 1.5·2^23 leaves the rounded integer in the low mantissa bits: plain float and integer
/// operations that vectorise, where `round()` and a saturating `as` cast go one value at a time.
#[inline]
fn to_adc(v: f32) -> i16 {
    const MAGIC: f32 = 12_582_912.0;
    let v = v.clamp(NP1_ADC_MIN as f32, NP1_ADC_MAX as f32);
    ((v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i16
}

pub struct ProbeSim {
    pub stream_id: String,
    pub schema: SchemaRef,
    pub units: Vec<Unit>,
    noise: NoisePool,
    lfp: Lfp,
    /// Spikes decided but not yet fully drawn, by (sample, unit).
    pending: Vec<Spike>,
    /// Channel-major µV-in-counts buffer of the window being drawn.
    scratch: Vec<f32>,
}

impl ProbeSim {
    /// Probe `probe` of the rig; probe 0 carries the `DRIVER_UNITS` units that make the speed.
    pub fn new(stream_id: String, seed: u64, probe: u32, units: u32, noise_uv: f64) -> Self {
        let drivers: Vec<usize> = if probe == 0 {
            let mut rng = rng_for(seed, domain::DRIVERS, 0);
            let n = DRIVER_UNITS.min(units as usize);
            sample_indices(&mut rng, units as usize, n).into_vec()
        } else {
            Vec::new()
        };
        let units = (0..units)
            .map(|u| make_unit(seed, probe, u, drivers.contains(&(u as usize))))
            .collect();
        let probe_index = probe as u64;
        ProbeSim {
            schema: ap_stream_info(&stream_id).schema(),
            stream_id,
            units,
            noise: NoisePool::new(
                noise_uv / NP1_UV_PER_BIT,
                rng_for(seed, domain::NOISE, probe_index),
            ),
            lfp: Lfp::new(rng_for(seed, domain::LFP, probe_index)),
            pending: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Draws samples `s0..s1`; appends the spikes whose trough falls in them to `emitted`, in
    /// (sample, unit) order.
    pub fn window(
        &mut self,
        s0: i64,
        s1: i64,
        locomotion: &Locomotion,
        emitted: &mut Vec<Spike>,
    ) -> Result<RecordBatch, ArrowError> {
        if s1 <= s0 {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let n = (s1 - s0) as usize;
        // Spikes whose template starts before s1 must be known now.
        for (u, unit) in self.units.iter_mut().enumerate() {
            unit.train
                .advance(s1 + TEMPLATE_PRE, u as u32, locomotion, &mut self.pending);
        }
        self.pending.sort_unstable_by_key(|s| (s.sample, s.unit));

        // Every value is written by the noise first, so the buffer is only resized, never cleared.
        self.scratch.resize(NP1_CHANNELS * n, 0.0);
        self.noise.fill(s0, s1, &mut self.scratch, n);
        self.lfp.add(&mut self.scratch, n);
        for spike in &self.pending {
            let start = spike.sample - TEMPLATE_PRE;
            if start >= s1 {
                break;
            }
            let (from, to) = (start.max(s0), (start + TEMPLATE_LEN as i64).min(s1));
            let Some(unit) = self.units.get(spike.unit as usize) else {
                continue;
            };
            if from >= to {
                continue;
            }
            let wave = &unit.waveform[(from - start) as usize..(to - start) as usize];
            let at = (from - s0) as usize;
            for &(ch, amplitude) in &unit.template {
                let a = amplitude * spike.gain;
                let col = &mut self.scratch[ch * n + at..ch * n + at + wave.len()];
                for (v, w) in col.iter_mut().zip(wave) {
                    *v += a * w;
                }
            }
        }
        emitted.extend(
            self.pending
                .iter()
                .filter(|s| s.sample >= s0 && s.sample < s1),
        );
        self.pending.retain(|s| s.sample + TEMPLATE_POST > s1);

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(NP1_CHANNELS + 2);
        columns.push(Arc::new(Int64Array::from_iter_values(s0..s1)));
        for col in self.scratch.chunks_exact(n) {
            let values: Vec<i16> = col.iter().map(|&v| to_adc(v)).collect();
            columns.push(Arc::new(Int16Array::from(values)));
        }
        columns.push(Arc::new(Int16Array::from_iter_values(
            (s0..s1).map(sync_word),
        )));
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waveform_is_negative_peaked_biphasic_and_tapered() {
        let w = waveform(&mut rng_for(5, 0, 0));
        let (argmin, min) =
            w.iter()
                .enumerate()
                .fold((0, f32::MAX), |a, (i, &v)| if v < a.1 { (i, v) } else { a });
        assert_eq!(argmin, TEMPLATE_PRE as usize);
        assert!((min + 1.0).abs() < 1e-6);
        let max = w.iter().cloned().fold(f32::MIN, f32::max);
        assert!(max > 0.1 && max < 0.5, "repolarisation peak {max}");
        assert!(w[0].abs() < 0.01 && w[TEMPLATE_LEN - 1].abs() < 0.01);
    }

    #[test]
    fn template_decays_away_from_the_peak_contact() {
        let u = make_unit(7, 0, 3, false);
        let peak = u
            .template
            .iter()
            .find(|(c, _)| *c == u.peak_channel)
            .unwrap()
            .1;
        assert!((peak as f64 * NP1_UV_PER_BIT - u.amplitude_uv).abs() < 1e-3);
        // Amplitude falls with distance from the unit, and nothing reaches 300 µm away.
        let planar = |c: usize| {
            let (x, y) = np1_contact_um(c);
            ((x - u.x_um).powi(2) + (y - u.y_um).powi(2)).sqrt()
        };
        let mut by_distance: Vec<(f64, f32)> =
            u.template.iter().map(|&(c, a)| (planar(c), a)).collect();
        by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in by_distance.windows(2) {
            assert!(w[1].1 <= w[0].1, "{w:?}");
        }
        assert!(by_distance.last().unwrap().0 < 300.0);
        assert!(
            (10..=150).contains(&u.template.len()),
            "{}",
            u.template.len()
        );
        assert!((50.0..=250.0).contains(&u.amplitude_uv));
    }

    #[test]
    fn lfp_sources_have_unit_variance() {
        let mut rng = rng_for(1, 9, 9);
        for mut s in [
            LfpSource::resonant(7.0, 3.0, vec![]),
            LfpSource::low_pass(10.0, vec![]),
        ] {
            let n = 30_000 * 40;
            let var = (0..n)
                .map(|_| (s.step(&mut rng) as f64).powi(2))
                .sum::<f64>()
                / n as f64;
            assert!((0.6..1.5).contains(&var), "variance {var}");
        }
    }

    #[test]
    fn adc_rounds_and_saturates_at_10_bits() {
        assert_eq!(to_adc(1.49), 1);
        assert_eq!(to_adc(-1.5), -2);
        assert_eq!(to_adc(2.5), 2);
        assert_eq!(to_adc(-0.4), 0);
        assert_eq!(to_adc(-37.6), -38);
        assert_eq!(to_adc(900.0), 511);
        assert_eq!(to_adc(-900.0), -512);
    }
}
