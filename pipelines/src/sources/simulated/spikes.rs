//! Spike trains on the rig's 30 kHz data clock, and the locomotion state that drives some of them.
//!
//! Every train has its own random generator seeded from (seed, stream, unit), so a unit's spikes
//! do not depend on how many other units there are or on how the data is cut into batches.

use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Exp1;

use super::geometry::SAMPLE_RATE_HZ;

/// Absolute refractory period: no unit fires twice within 2 ms.
pub const REFRACTORY_SAMPLES: i64 = 60;
/// Locomotion and behaviour advance in 10 ms bins (the behaviour stream's row period).
pub const BIN_SAMPLES: i64 = 300;

/// One true spike: the sample of its trough (probe) or of its onset (two-photon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub sample: i64,
    pub unit: u32,
    /// Amplitude factor of this spike (jitter, attenuation within a burst).
    pub gain: f32,
}

/// A random generator for one part of the simulation, independent of every other part.
pub fn rng_for(seed: u64, domain: u64, index: u64) -> SmallRng {
    // SplitMix64 finaliser over the three words, so that nearby (seed, domain, index) triples
    // give unrelated states.
    let mut z = seed
        ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SmallRng::seed_from_u64(z ^ (z >> 31))
}

/// How a unit fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Firing {
    /// One spike per event.
    Tonic,
    /// Bursts of `min_spikes..=max_spikes` spikes, `isi_samples` apart, each smaller than the
    /// last by `attenuation` (as in real complex-spike bursts).
    Bursty {
        min_spikes: u32,
        max_spikes: u32,
        isi_samples: (i64, i64),
        attenuation: f32,
    },
}

impl Firing {
    fn mean_spikes(&self) -> f64 {
        match *self {
            Firing::Tonic => 1.0,
            Firing::Bursty {
                min_spikes,
                max_spikes,
                ..
            } => (min_spikes + max_spikes) as f64 / 2.0,
        }
    }
}

/// A unit's spike generator: a Poisson process of events (spikes or bursts) with dead time,
/// optionally modulated by locomotion (rate · (1 + gain · level)), sampled by thinning.
pub struct SpikeTrain {
    firing: Firing,
    /// Events per sample at the highest modulation, the thinning envelope.
    envelope_per_sample: f64,
    locomotion_gain: f64,
    rng: SmallRng,
    next_candidate: i64,
}

impl SpikeTrain {
    /// `rate_hz` is the unit's mean spike rate at rest.
    pub fn new(rate_hz: f64, firing: Firing, locomotion_gain: f64, rng: SmallRng) -> Self {
        let events_hz = rate_hz / firing.mean_spikes();
        // Dead time lowers a Poisson rate r to r / (1 + r·τ); ask for more so the mean is kept.
        let dead_s = REFRACTORY_SAMPLES as f64 / SAMPLE_RATE_HZ;
        let corrected = events_hz / (1.0 - (events_hz * dead_s).min(0.5));
        let mut train = SpikeTrain {
            firing,
            envelope_per_sample: corrected * (1.0 + locomotion_gain) / SAMPLE_RATE_HZ,
            locomotion_gain,
            rng,
            next_candidate: 0,
        };
        train.next_candidate = train.gap();
        train
    }

    fn gap(&mut self) -> i64 {
        let e: f64 = self.rng.sample(Exp1);
        ((e / self.envelope_per_sample).round() as i64).max(1)
    }

    /// Decides every event before `horizon` and appends its spikes (a burst may run past it).
    pub fn advance(
        &mut self,
        horizon: i64,
        unit: u32,
        locomotion: &Locomotion,
        out: &mut Vec<Spike>,
    ) {
        while self.next_candidate < horizon {
            let t = self.next_candidate;
            let accept = self.locomotion_gain == 0.0 || {
                let p = (1.0 + self.locomotion_gain * locomotion.level_at(t))
                    / (1.0 + self.locomotion_gain);
                self.rng.random::<f64>() < p
            };
            if !accept {
                self.next_candidate = t + self.gap();
                continue;
            }
            let jitter = |rng: &mut SmallRng| rng.random_range(0.9f32..1.1);
            let last = match self.firing {
                Firing::Tonic => {
                    let gain = jitter(&mut self.rng);
                    out.push(Spike {
                        sample: t,
                        unit,
                        gain,
                    });
                    t
                }
                Firing::Bursty {
                    min_spikes,
                    max_spikes,
                    isi_samples,
                    attenuation,
                } => {
                    let n = self.rng.random_range(min_spikes..=max_spikes);
                    let mut s = t;
                    let mut size = 1.0f32;
                    for k in 0..n {
                        if k > 0 {
                            s += self.rng.random_range(isi_samples.0..=isi_samples.1);
                            size *= attenuation;
                        }
                        let gain = size * jitter(&mut self.rng);
                        out.push(Spike {
                            sample: s,
                            unit,
                            gain,
                        });
                    }
                    s
                }
            };
            self.next_candidate = last + REFRACTORY_SAMPLES + self.gap();
        }
    }
}

/// The animal's locomotion state: rest and running bouts (seconds long) with smooth onsets,
/// as a level in 0..=1 per 10 ms bin. It modulates the "driver" units, whose spikes in turn
/// make the running speed, so speed is decodable from them.
pub struct Locomotion {
    rng: SmallRng,
    /// Levels of bins `first_bin..`.
    levels: VecDeque<f32>,
    first_bin: i64,
    running: bool,
    /// First bin of the next bout.
    bout_end: i64,
    vigour: f64,
    level: f64,
}

const MEAN_REST_S: f64 = 4.0;
const MEAN_RUN_S: f64 = 3.0;
const LEVEL_TAU_S: f64 = 0.3;

impl Locomotion {
    pub fn new(mut rng: SmallRng) -> Self {
        let first_rest: f64 = rng.sample::<f64, _>(Exp1) * MEAN_REST_S;
        let bins_per_s = SAMPLE_RATE_HZ / BIN_SAMPLES as f64;
        Locomotion {
            rng,
            levels: VecDeque::new(),
            first_bin: 0,
            running: false,
            bout_end: (first_rest * bins_per_s).ceil() as i64,
            vigour: 0.0,
            level: 0.0,
        }
    }

    /// Makes the levels of every bin up to the one holding `sample` available.
    pub fn extend_to(&mut self, sample: i64) {
        let bins_per_s = SAMPLE_RATE_HZ / BIN_SAMPLES as f64;
        let step = 1.0 - (-1.0 / (bins_per_s * LEVEL_TAU_S)).exp();
        let last_bin = sample.div_euclid(BIN_SAMPLES);
        while self.first_bin + (self.levels.len() as i64) <= last_bin {
            let bin = self.first_bin + self.levels.len() as i64;
            if bin >= self.bout_end {
                self.running = !self.running;
                let (mean, min) = if self.running {
                    self.vigour = self.rng.random_range(0.5..1.0);
                    (MEAN_RUN_S, 0.5)
                } else {
                    (MEAN_REST_S, 1.0)
                };
                let length_s = min + self.rng.sample::<f64, _>(Exp1) * (mean - min);
                self.bout_end = bin + (length_s * bins_per_s).ceil() as i64;
            }
            let target = if self.running { self.vigour } else { 0.0 };
            self.level += (target - self.level) * step;
            self.levels.push_back(self.level as f32);
        }
    }

    /// Forgets bins before the one holding `sample`.
    pub fn forget_before(&mut self, sample: i64) {
        let bin = sample.div_euclid(BIN_SAMPLES);
        while self.first_bin < bin && !self.levels.is_empty() {
            self.levels.pop_front();
            self.first_bin += 1;
        }
    }

    /// Level at `sample`; the nearest known bin if asked outside what is kept.
    pub fn level_at(&self, sample: i64) -> f64 {
        let i = (sample.div_euclid(BIN_SAMPLES) - self.first_bin).max(0) as usize;
        self.levels
            .get(i.min(self.levels.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn still() -> Locomotion {
        let mut l = Locomotion::new(rng_for(1, 0, 0));
        l.extend_to(0);
        l
    }

    #[test]
    fn tonic_train_keeps_its_rate_and_refractory_period() {
        let mut train = SpikeTrain::new(20.0, Firing::Tonic, 0.0, rng_for(3, 1, 2));
        let mut spikes = Vec::new();
        train.advance(30_000 * 200, 0, &still(), &mut spikes);
        let rate = spikes.len() as f64 / 200.0;
        assert!((rate - 20.0).abs() < 1.0, "rate {rate}");
        let min_isi = spikes
            .windows(2)
            .map(|w| w[1].sample - w[0].sample)
            .min()
            .unwrap();
        assert!(min_isi >= REFRACTORY_SAMPLES, "isi {min_isi}");
    }

    #[test]
    fn bursty_train_keeps_its_mean_rate_in_bursts() {
        let firing = Firing::Bursty {
            min_spikes: 2,
            max_spikes: 5,
            isi_samples: (90, 240),
            attenuation: 0.8,
        };
        let mut train = SpikeTrain::new(5.0, firing, 0.0, rng_for(3, 1, 3));
        let mut spikes = Vec::new();
        train.advance(30_000 * 400, 0, &still(), &mut spikes);
        let rate = spikes.len() as f64 / 400.0;
        assert!((rate - 5.0).abs() < 0.6, "rate {rate}");
        let short = spikes
            .windows(2)
            .filter(|w| w[1].sample - w[0].sample <= 240)
            .count();
        assert!(
            short as f64 > 0.5 * spikes.len() as f64,
            "{short} short ISIs"
        );
    }

    #[test]
    fn locomotion_alternates_rest_and_running() {
        let mut l = Locomotion::new(rng_for(9, 2, 0));
        l.extend_to(30_000 * 120);
        let levels: Vec<f64> = (0..12_000).map(|b| l.level_at(b * BIN_SAMPLES)).collect();
        let running = levels.iter().filter(|&&v| v > 0.3).count() as f64 / levels.len() as f64;
        assert!(
            (0.15..0.75).contains(&running),
            "running fraction {running}"
        );
        assert!(levels.iter().all(|v| (0.0..=1.0).contains(v)));
        l.forget_before(30_000 * 100);
        assert_eq!(l.level_at(30_000 * 110), levels[11_000]);
    }
}
