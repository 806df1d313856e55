//! Running speed at 100 Hz, made from the spikes of probe 0's driver units: an exponentially
//! smoothed (τ = 200 ms), weighted sum of their spike counts in 10 ms bins, above its resting
//! level, plus a little encoder noise, never negative. Speed at row j uses bins before j only,
//! so the units lead the behaviour (what a transfer-entropy metric should find).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Float32Array, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand_distr::StandardNormal;

use super::geometry::SAMPLE_RATE_HZ;
use super::spikes::{Spike, BIN_SAMPLES};
use crate::stream::{keys, Layout, SAMPLE_INDEX, TIME_S};

pub const RATE_HZ: f64 = 100.0;
pub const RATE_TEXT: &str = "100";
pub const ROWS_PER_BATCH: usize = 10;
pub const SPEED: &str = "running_speed_cm_s";
const SMOOTHING_TAU_S: f64 = 0.2;
/// Speed at full running, cm/s.
const FULL_RUN_CM_S: f64 = 30.0;
const ENCODER_NOISE_CM_S: f64 = 0.5;

pub fn schema(stream_id: &str) -> SchemaRef {
    let md: HashMap<String, String> = [
        (keys::STREAM_ID, stream_id),
        (keys::LAYOUT, Layout::Table.as_str()),
        (keys::STREAM_KIND, "behaviour"),
        (keys::SAMPLING_HZ, RATE_TEXT),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new(TIME_S, DataType::Float64, false),
            Field::new(SPEED, DataType::Float32, false),
        ],
        md,
    ))
}

/// A driver: (unit, weight, rate at rest in Hz, rate at full running in Hz).
pub struct Driver {
    pub unit: u32,
    pub weight: f64,
    pub rest_hz: f64,
    pub run_hz: f64,
}

pub struct Behaviour {
    pub stream_id: String,
    schema: SchemaRef,
    /// Weight of each unit of probe 0 (0 for non-drivers).
    weights: Vec<f64>,
    /// Weighted driver spike counts of bins `first_bin..`.
    bins: VecDeque<f64>,
    first_bin: i64,
    smoothed: f64,
    resting: f64,
    cm_s_per_count: f64,
    next_row: i64,
    rng: SmallRng,
    rows: Vec<(i64, f32)>,
}

impl Behaviour {
    pub fn new(stream_id: String, units: usize, drivers: &[Driver], rng: SmallRng) -> Self {
        let mut weights = vec![0.0; units];
        let bin_s = BIN_SAMPLES as f64 / SAMPLE_RATE_HZ;
        let mut resting = 0.0;
        let mut full = 0.0;
        for d in drivers {
            if let Some(w) = weights.get_mut(d.unit as usize) {
                *w = d.weight;
            }
            resting += d.weight * d.rest_hz * bin_s;
            full += d.weight * d.run_hz * bin_s;
        }
        let span = full - resting;
        Behaviour {
            schema: schema(&stream_id),
            stream_id,
            weights,
            bins: VecDeque::new(),
            first_bin: 0,
            smoothed: resting,
            resting,
            cm_s_per_count: if span > 0.0 {
                FULL_RUN_CM_S / span
            } else {
                0.0
            },
            next_row: 0,
            rng,
            rows: Vec::with_capacity(ROWS_PER_BATCH),
        }
    }

    /// Counts the spikes of probe 0 emitted in the current window (sample order).
    pub fn add_spikes(&mut self, spikes: &[Spike]) {
        for s in spikes {
            let w = self.weights.get(s.unit as usize).copied().unwrap_or(0.0);
            if w == 0.0 {
                continue;
            }
            let i = s.sample.div_euclid(BIN_SAMPLES) - self.first_bin;
            if i < 0 {
                continue; // a bin already consumed; cannot happen with ordered windows
            }
            let i = i as usize;
            if self.bins.len() <= i {
                self.bins.resize(i + 1, 0.0);
            }
            self.bins[i] += w;
        }
    }

    /// Makes the rows whose time falls before sample `s1`; returns every full batch of 10 rows.
    pub fn advance(&mut self, s1: i64, out: &mut Vec<RecordBatch>) -> Result<(), ArrowError> {
        let keep = (-(BIN_SAMPLES as f64 / SAMPLE_RATE_HZ) / SMOOTHING_TAU_S).exp();
        while self.next_row * BIN_SAMPLES < s1 {
            let j = self.next_row;
            if j > 0 {
                // Bin j−1 is complete: every spike before sample 300·j has been counted.
                let count = if self.first_bin == j - 1 {
                    self.first_bin += 1;
                    self.bins.pop_front().unwrap_or(0.0)
                } else {
                    0.0
                };
                self.smoothed = keep * self.smoothed + (1.0 - keep) * count;
            }
            let e: f64 = rand::Rng::sample(&mut self.rng, StandardNormal);
            let speed = (self.cm_s_per_count * (self.smoothed - self.resting)
                + ENCODER_NOISE_CM_S * e)
                .max(0.0);
            self.rows.push((j, speed as f32));
            self.next_row += 1;
            if self.rows.len() == ROWS_PER_BATCH {
                out.push(self.take_batch()?);
            }
        }
        Ok(())
    }

    /// The rows made since the last full batch, if any (at the end of the data).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        self.take_batch().map(Some)
    }

    fn take_batch(&mut self) -> Result<RecordBatch, ArrowError> {
        let rows = std::mem::take(&mut self.rows);
        self.rows.reserve(ROWS_PER_BATCH);
        RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| r.0 as f64 / RATE_HZ),
                )),
                Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::spikes::rng_for;
    use super::*;

    fn speeds(batches: &[RecordBatch]) -> Vec<f32> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(2)
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn a_burst_of_driver_spikes_raises_speed_only_afterwards() {
        let drivers = [Driver {
            unit: 1,
            weight: 1.0,
            rest_hz: 0.0,
            run_hz: 20.0,
        }];
        let mut b = Behaviour::new("b".into(), 3, &drivers, rng_for(1, 2, 3));
        // 20 driver spikes and 20 non-driver spikes in bin 50 (0.50–0.51 s).
        let spikes: Vec<Spike> = (0..40)
            .map(|i| Spike {
                sample: 50 * BIN_SAMPLES + i,
                unit: if i % 2 == 0 { 1 } else { 2 },
                gain: 1.0,
            })
            .collect();
        let mut out = Vec::new();
        b.advance(50 * BIN_SAMPLES, &mut out).unwrap();
        b.add_spikes(&spikes);
        b.advance(100 * BIN_SAMPLES, &mut out).unwrap();
        let v = speeds(&out);
        assert_eq!(v.len(), 100);
        let before = v[..51].iter().cloned().fold(0.0, f32::max);
        assert!(before < 3.0, "speed before the spikes {before}");
        // Row 51 is the first to see bin 50: 20 counts · (1 − e^(−0.05)) · 30 / 0.2 ≈ 146 cm/s.
        assert!(v[51] > 100.0, "{}", v[51]);
        assert!(v[70] < v[51] && v[70] > 0.5 * v[51] * (-0.19f32 / 0.2).exp());
        assert_eq!(out[0].schema().metadata()[keys::SAMPLING_HZ], "100");
    }

    #[test]
    fn flush_returns_the_partial_batch() {
        let mut b = Behaviour::new("b".into(), 0, &[], rng_for(1, 2, 3));
        let mut out = Vec::new();
        b.advance(13 * BIN_SAMPLES - 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let rest = b.flush().unwrap().unwrap();
        assert_eq!(rest.num_rows(), 3);
        assert!(b.flush().unwrap().is_none());
    }
}
