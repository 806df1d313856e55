//! A simulated two-photon calcium movie: soma-sized ROIs whose fluorescence follows calcium
//! transients of simulated neurons, on a textured neuropil background, with shot noise and slow
//! drift.
//!
//! Two kinds of neuron, so that a selection by higher-order statistics (POYO-SSL, skewness and
//! kurtosis of dF/F) has something to find: *bursty* ones (rare bursts, large sparse transients,
//! high skew and kurtosis) and *steady* ones (tonic firing whose overlapping small transients
//! sum to a near-Gaussian trace).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand::seq::index::sample as sample_indices;
use rand::Rng;
use rand_distr::StandardNormal;

use super::geometry::SAMPLE_RATE_HZ;
use super::spikes::{rng_for, Firing, Locomotion, Spike, SpikeTrain};
pub use crate::stream::frames_schema;
use crate::stream::rois_schema;
use crate::transforms::spike_detect::SOURCE_STREAM_KEY;

mod domain {
    pub const PLACEMENT: u64 = 10;
    pub const ROI: u64 = 11;
    pub const ROI_TRAIN: u64 = 12;
    pub const KINDS: u64 = 13;
    pub const BACKGROUND: u64 = 14;
    pub const PIXEL_NOISE: u64 = 15;
}

/// Share of ROIs that are bursty.
const BURSTY_FRACTION: f64 = 0.35;
const MIN_RADIUS_PX: f64 = 4.0;
const MAX_RADIUS_PX: f64 = 6.0;
/// Counts per detected photon: pixel variance = SHOT_GAIN · value + READ_NOISE².
const SHOT_GAIN: f32 = 16.0;
const READ_NOISE: f32 = 6.0;
/// How much of the population's mean dF/F shows in the neuropil.
const NEUROPIL_COUPLING: f64 = 0.15;
const NEUROPIL_TAU_S: f64 = 3.0;
const NEUROPIL_SD: f64 = 0.03;
const DRIFT_DEPTH: f64 = 0.03;

/// One region of interest (a soma) and the neuron behind it.
pub struct Roi {
    /// Centre in pixels (x = column, y = row).
    pub cx: f64,
    pub cy: f64,
    /// dF/F of one spike's transient at its peak (before per-spike jitter).
    pub amplitude: f64,
    /// Mean spike rate (Hz).
    pub rate_hz: f64,
    pub bursty: bool,
    /// Resting fluorescence added over the background at full footprint weight (counts).
    brightness: f32,
    tau_rise_s: f64,
    tau_decay_s: f64,
    /// 1 / peak of exp(−t/τd) − exp(−t/τr), so a spike of amplitude a peaks at a.
    norm: f64,
    rise: f64,
    decay: f64,
    /// (pixel, weight) of the soma: a soft disk, dimmer at the nucleus.
    footprint: Vec<(usize, f32)>,
    train: SpikeTrain,
}

impl Roi {
    /// dF/F now (calcium transients summed).
    pub fn dff(&self) -> f64 {
        self.norm * (self.decay - self.rise)
    }

    /// Moves the calcium state forward by `dt` seconds.
    fn decay_by(&mut self, dt: f64) {
        self.rise *= (-dt / self.tau_rise_s).exp();
        self.decay *= (-dt / self.tau_decay_s).exp();
    }

    /// Adds a spike that happened `age` seconds ago with amplitude `a`.
    fn add_spike(&mut self, a: f64, age: f64) {
        self.rise += a * (-age / self.tau_rise_s).exp();
        self.decay += a * (-age / self.tau_decay_s).exp();
    }
}

fn transient_norm(tau_rise: f64, tau_decay: f64) -> f64 {
    let t_peak = (tau_decay / tau_rise).ln() * tau_decay * tau_rise / (tau_decay - tau_rise);
    1.0 / ((-t_peak / tau_decay).exp() - (-t_peak / tau_rise).exp())
}

/// Random non-overlapping soma positions (x, y, radius), at least 1 px apart and inside the frame.
pub fn place_rois(seed: u64, count: usize, size: usize) -> Result<Vec<(f64, f64, f64)>, String> {
    let mut rng = rng_for(seed, domain::PLACEMENT, 0);
    let mut placed: Vec<(f64, f64, f64)> = Vec::with_capacity(count);
    let attempts = 1000 + 500 * count;
    for _ in 0..attempts {
        if placed.len() == count {
            break;
        }
        let r = rng.random_range(MIN_RADIUS_PX..=MAX_RADIUS_PX);
        let margin = r + 1.0;
        if size as f64 <= 2.0 * margin {
            break;
        }
        let x = rng.random_range(margin..size as f64 - margin);
        let y = rng.random_range(margin..size as f64 - margin);
        let free = placed
            .iter()
            .all(|&(px, py, pr)| ((px - x).powi(2) + (py - y).powi(2)).sqrt() >= pr + r + 1.0);
        if free {
            placed.push((x, y, r));
        }
    }
    if placed.len() < count {
        return Err(format!(
            "{count} non-overlapping somata (radius {MIN_RADIUS_PX}–{MAX_RADIUS_PX} px) do not fit in a \
             {size}×{size} frame; {} did",
            placed.len()
        ));
    }
    Ok(placed)
}

fn footprint(cx: f64, cy: f64, r: f64, size: usize) -> Vec<(usize, f32)> {
    let reach = (r + 2.0).ceil() as i64;
    let mut out = Vec::new();
    for y in (cy as i64 - reach)..=(cy as i64 + reach) {
        for x in (cx as i64 - reach)..=(cx as i64 + reach) {
            if x < 0 || y < 0 || x >= size as i64 || y >= size as i64 {
                continue;
            }
            let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
            let edge = 1.0 / (1.0 + ((d - r) / 0.7).exp());
            let nucleus = 1.0 - 0.35 * (-(d / (0.45 * r)).powi(2)).exp();
            let w = edge * nucleus;
            if w > 0.05 {
                out.push((y as usize * size + x as usize, w as f32));
            }
        }
    }
    out
}

/// Smooth neuropil texture with a couple of dark blood vessels.
fn background(seed: u64, size: usize) -> Vec<f32> {
    let mut rng = rng_for(seed, domain::BACKGROUND, 0);
    let scale = size as f64 / 128.0;
    let blobs: Vec<(f64, f64, f64, f64)> = (0..20)
        .map(|_| {
            (
                rng.random_range(0.0..size as f64),
                rng.random_range(0.0..size as f64),
                rng.random_range(8.0..25.0) * scale,
                rng.random_range(30.0..120.0),
            )
        })
        .collect();
    // Vessel k: a dark band along y = a + b·x + c·sin(x/ℓ), `width` px wide.
    let vessels: Vec<(f64, f64, f64, f64, f64)> = (0..2)
        .map(|_| {
            (
                rng.random_range(0.0..size as f64),
                rng.random_range(-0.6..0.6),
                rng.random_range(2.0..8.0) * scale,
                rng.random_range(10.0..30.0) * scale,
                rng.random_range(1.5..3.0) * scale.max(0.5),
            )
        })
        .collect();
    let mut img = vec![0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let (xf, yf) = (x as f64, y as f64);
            let mut v = 150.0;
            for &(bx, by, sd, amp) in &blobs {
                v += amp * (-((xf - bx).powi(2) + (yf - by).powi(2)) / (2.0 * sd * sd)).exp();
            }
            for &(a, b, c, l, width) in &vessels {
                let centre = a + b * xf + c * (xf / l).sin();
                let d = (yf - centre).abs() / (1.0 + b * b).sqrt();
                v *= 1.0 - 0.5 * (-(d / width).powi(2)).exp();
            }
            img[y * size + x] = v as f32;
        }
    }
    img
}

/// Rounds to the nearest count (ties to even) within 0..=i16::MAX, as `probe::to_adc` does:
/// float and integer operations only, so the loop vectorises.
#[inline]
fn to_counts(v: f32) -> i16 {
    const MAGIC: f32 = 12_582_912.0;
    let v = v.clamp(0.0, i16::MAX as f32);
    ((v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i16
}

pub struct TwoPhotonSim {
    pub stream_id: String,
    pub schema: SchemaRef,
    pub rois: Vec<Roi>,
    size: usize,
    frame_rate_hz: f64,
    background: Vec<f32>,
    /// Spikes decided but not yet in a frame, by (sample, unit).
    pending: Vec<Spike>,
    next_frame: i64,
    last_frame_s: f64,
    noise_rng: SmallRng,
    neuropil_slow: f64,
    drift_period_s: f64,
    drift_phase: f64,
    image: Vec<f32>,
    item_field: Arc<Field>,
}

impl TwoPhotonSim {
    pub fn new(
        stream_id: String,
        seed: u64,
        rois: usize,
        size: usize,
        frame_rate_hz: f64,
    ) -> Result<Self, String> {
        let places = place_rois(seed, rois, size)?;
        let n_bursty = (rois as f64 * BURSTY_FRACTION).round() as usize;
        let bursty =
            sample_indices(&mut rng_for(seed, domain::KINDS, 0), rois, n_bursty).into_vec();
        let rois = places
            .into_iter()
            .enumerate()
            .map(|(i, (cx, cy, radius))| {
                let mut rng = rng_for(seed, domain::ROI, i as u64);
                let is_bursty = bursty.contains(&i);
                let (rate_hz, amplitude, firing) = if is_bursty {
                    // Rare bursts of 3–10 spikes: large, sparse transients.
                    let bursts_hz: f64 = rng.random_range(0.02..0.08);
                    let firing = Firing::Bursty {
                        min_spikes: 3,
                        max_spikes: 10,
                        isi_samples: (300, 900),
                        attenuation: 0.95,
                    };
                    (bursts_hz * 6.5, rng.random_range(0.5..1.0), firing)
                } else {
                    (
                        rng.random_range(2.0..6.0),
                        rng.random_range(0.2..0.35),
                        Firing::Tonic,
                    )
                };
                let tau_rise_s = 0.05 * rng.random_range(0.8..1.2);
                let tau_decay_s = rng.random_range(0.5..1.0);
                Roi {
                    cx,
                    cy,
                    amplitude,
                    rate_hz,
                    bursty: is_bursty,
                    brightness: rng.random_range(250.0..600.0),
                    tau_rise_s,
                    tau_decay_s,
                    norm: transient_norm(tau_rise_s, tau_decay_s),
                    rise: 0.0,
                    decay: 0.0,
                    footprint: footprint(cx, cy, radius, size),
                    train: SpikeTrain::new(
                        rate_hz,
                        firing,
                        0.0,
                        rng_for(seed, domain::ROI_TRAIN, i as u64),
                    ),
                }
            })
            .collect();
        let mut noise_rng = rng_for(seed, domain::PIXEL_NOISE, 0);
        let drift_period_s = noise_rng.random_range(60.0..180.0);
        let drift_phase = noise_rng.random_range(0.0..std::f64::consts::TAU);
        let rate_text = frame_rate_hz.to_string();
        Ok(TwoPhotonSim {
            schema: frames_schema(&stream_id, "twophoton", size, size, &rate_text),
            stream_id,
            rois,
            size,
            frame_rate_hz,
            background: background(seed, size),
            pending: Vec::new(),
            next_frame: 0,
            last_frame_s: 0.0,
            noise_rng,
            neuropil_slow: 0.0,
            drift_period_s,
            drift_phase,
            image: vec![0.0; size * size],
            item_field: Arc::new(Field::new("item", DataType::Int16, false)),
        })
    }

    /// The ROI masks, one row per pixel of each soma's footprint (`roi` = ROI index, as in the
    /// ground truth; `weight` = the footprint's weight), stream id `<frames stream id>.rois`,
    /// naming the frames stream in `neurod.source_stream`.
    pub fn rois_batch(&self) -> Result<RecordBatch, ArrowError> {
        let s = rois_schema(&format!("{}.rois", self.stream_id), self.size, self.size);
        let mut md = s.metadata().clone();
        md.insert(SOURCE_STREAM_KEY.into(), self.stream_id.clone());
        let schema = Arc::new(Schema::new_with_metadata(s.fields().clone(), md));
        let rows: Vec<(i32, usize, f32)> = self
            .rois
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.footprint.iter().map(move |&(p, w)| (i as i32, p, w)))
            .collect();
        let size = self.size;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| (r.1 / size) as i32),
                )),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| (r.1 % size) as i32),
                )),
                Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
    }

    /// Data-clock sample at which frame `k` is taken (fractional).
    fn frame_sample(&self, k: i64) -> f64 {
        k as f64 * SAMPLE_RATE_HZ / self.frame_rate_hz
    }

    /// The first frame that shows a spike at `sample`.
    pub fn first_frame_showing(&self, sample: i64) -> i64 {
        let mut k = (sample as f64 * self.frame_rate_hz / SAMPLE_RATE_HZ).ceil() as i64;
        while self.frame_sample(k) < sample as f64 {
            k += 1;
        }
        while k > 0 && self.frame_sample(k - 1) >= sample as f64 {
            k -= 1;
        }
        k
    }

    /// Makes the frames taken in samples `s0..s1`; appends the spikes of `s0..s1` to `emitted`.
    pub fn window(
        &mut self,
        s0: i64,
        s1: i64,
        locomotion: &Locomotion,
        frames: &mut Vec<RecordBatch>,
        emitted: &mut Vec<Spike>,
    ) -> Result<(), ArrowError> {
        for (i, roi) in self.rois.iter_mut().enumerate() {
            roi.train
                .advance(s1, i as u32, locomotion, &mut self.pending);
        }
        self.pending.sort_unstable_by_key(|s| (s.sample, s.unit));
        emitted.extend(
            self.pending
                .iter()
                .filter(|s| s.sample >= s0 && s.sample < s1),
        );
        while self.frame_sample(self.next_frame) < s1 as f64 {
            frames.push(self.frame()?);
            self.next_frame += 1;
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<RecordBatch, ArrowError> {
        let k = self.next_frame;
        let at_sample = self.frame_sample(k);
        let t = k as f64 / self.frame_rate_hz;
        let dt = (t - self.last_frame_s).max(0.0);
        self.last_frame_s = t;

        for roi in &mut self.rois {
            roi.decay_by(dt);
        }
        let shown = self
            .pending
            .iter()
            .take_while(|s| s.sample as f64 <= at_sample)
            .count();
        for spike in self.pending.drain(..shown) {
            if let Some(roi) = self.rois.get_mut(spike.unit as usize) {
                let age = t - spike.sample as f64 / SAMPLE_RATE_HZ;
                roi.add_spike(roi.amplitude * spike.gain as f64, age.max(0.0));
            }
        }

        let mean_dff = if self.rois.is_empty() {
            0.0
        } else {
            self.rois.iter().map(Roi::dff).sum::<f64>() / self.rois.len() as f64
        };
        let keep = (-dt / NEUROPIL_TAU_S).exp();
        let e: f64 = self.noise_rng.sample(StandardNormal);
        self.neuropil_slow =
            self.neuropil_slow * keep + NEUROPIL_SD * (1.0 - keep * keep).sqrt() * e;
        let neuropil = (1.0 + NEUROPIL_COUPLING * mean_dff + self.neuropil_slow) as f32;
        let drift = (1.0
            + DRIFT_DEPTH
                * (std::f64::consts::TAU * t / self.drift_period_s + self.drift_phase).sin())
            as f32;

        for (p, b) in self.image.iter_mut().zip(&self.background) {
            *p = b * neuropil;
        }
        for roi in &self.rois {
            let level = roi.brightness * (1.0 + roi.dff()) as f32;
            for &(p, w) in &roi.footprint {
                if let Some(v) = self.image.get_mut(p) {
                    *v += w * level;
                }
            }
        }
        let pixels: Vec<i16> = self
            .image
            .iter()
            .map(|&v| {
                let v = (v * drift).max(0.0);
                let sd = (SHOT_GAIN * v + READ_NOISE * READ_NOISE).sqrt();
                let e: f32 = self.noise_rng.sample(StandardNormal);
                to_counts(v + sd * e)
            })
            .collect();
        let values: ArrayRef = Arc::new(Int16Array::from(pixels));
        let list = FixedSizeListArray::try_new(
            self.item_field.clone(),
            (self.size * self.size) as i32,
            values,
            None,
        )?;
        RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![k])),
                Arc::new(Float64Array::from(vec![t])),
                Arc::new(list),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_peaks_at_its_amplitude_after_the_rise() {
        let (tr, td) = (0.05, 0.7);
        let n = transient_norm(tr, td);
        let peak = (0..2000)
            .map(|i| {
                let t = i as f64 * 0.001;
                n * ((-t / td).exp() - (-t / tr).exp())
            })
            .fold(0.0, f64::max);
        assert!((peak - 1.0).abs() < 1e-3, "peak {peak}");
    }

    #[test]
    fn pixel_counts_round_and_stay_in_range() {
        assert_eq!(to_counts(-3.0), 0);
        assert_eq!(to_counts(411.6), 412);
        assert_eq!(to_counts(40_000.0), i16::MAX);
    }

    #[test]
    fn somata_do_not_overlap_and_stay_inside() {
        let p = place_rois(4, 50, 128).unwrap();
        assert_eq!(p.len(), 50);
        for (i, a) in p.iter().enumerate() {
            assert!(a.0 - a.2 >= 1.0 && a.0 + a.2 <= 127.0);
            for b in &p[i + 1..] {
                let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
                assert!(d >= a.2 + b.2 + 1.0);
            }
        }
        let e = place_rois(4, 500, 32).unwrap_err();
        assert!(e.contains("500") && e.contains("32×32"), "{e}");
    }

    #[test]
    fn a_spike_between_frames_first_shows_in_the_next_frame() {
        let sim = TwoPhotonSim::new("s".into(), 1, 2, 64, 30.0).unwrap();
        assert_eq!(sim.first_frame_showing(0), 0);
        assert_eq!(sim.first_frame_showing(1), 1);
        assert_eq!(sim.first_frame_showing(1000), 1);
        assert_eq!(sim.first_frame_showing(1001), 2);
    }
}
