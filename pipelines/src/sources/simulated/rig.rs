//! The rig: every simulated stream on one 30 kHz data clock. Each step makes the probe samples
//! of the next `batch_ms`, and the frames, behaviour rows and true spikes that fall in that
//! window, so the streams stay in time with each other whatever the pace.

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::behaviour::{Behaviour, Driver};
use super::geometry::SAMPLE_RATE_HZ;
use super::ground_truth::{
    events_batch, events_schema, units_batch, units_schema, TrueSpike, UnitRow,
};
use super::probe::{ProbeSim, TEMPLATE_PRE};
use super::spikes::{rng_for, Locomotion, Spike, BIN_SAMPLES};
use super::twophoton::TwoPhotonSim;
use super::{SimulatedOptions, GROUND_TRUTH_PORT};

mod domain {
    pub const LOCOMOTION: u64 = 20;
    pub const BEHAVIOUR: u64 = 21;
}

/// What one step of the rig produced, in the order to send it.
pub struct Window {
    pub start_sample: i64,
    /// One past the last probe sample of the window (on the 30 kHz data clock).
    pub end_sample: i64,
    /// (port, batch): `""` for data, [`GROUND_TRUTH_PORT`] for the truth.
    pub batches: Vec<(&'static str, RecordBatch)>,
}

pub struct Rig {
    /// Streams true spikes may belong to: the probes' AP streams, then the two-photon stream.
    spike_streams: Vec<String>,
    behaviour_stream: Option<String>,
    events_stream: String,
    units_stream: String,
    window_samples: i64,
    total_samples: Option<i64>,
    next_sample: i64,
    locomotion: Locomotion,
    probes: Vec<ProbeSim>,
    twophoton: Option<TwoPhotonSim>,
    behaviour: Option<Behaviour>,
    events_schema: SchemaRef,
    units_schema: SchemaRef,
    units_sent: bool,
    finished: bool,
    spikes: Vec<Spike>,
}

impl Rig {
    /// Builds the rig of component `id`; every problem with the options is reported.
    pub fn new(id: &str, o: &SimulatedOptions) -> Result<Rig, Vec<String>> {
        let mut errors = o.validate(id);
        if !errors.is_empty() {
            return Err(errors);
        }
        let probes: Vec<ProbeSim> = (0..o.probes)
            .map(|k| {
                ProbeSim::new(
                    format!("{id}.imec{k}.ap"),
                    o.seed,
                    k,
                    o.units_per_probe,
                    o.noise_uv,
                )
            })
            .collect();
        let twophoton = if o.twophoton {
            match TwoPhotonSim::new(
                format!("{id}.twophoton"),
                o.seed,
                o.rois as usize,
                o.frame_size as usize,
                o.frame_rate_hz,
            ) {
                Ok(t) => Some(t),
                Err(why) => {
                    errors.push(format!(
                        "component `{id}` (type `simulated`): `rois` = {}: {why}",
                        o.rois
                    ));
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let behaviour = probes.first().map(|p0| {
            let drivers: Vec<Driver> = p0
                .units
                .iter()
                .enumerate()
                .filter(|(_, u)| u.is_driver())
                .map(|(i, u)| Driver {
                    unit: i as u32,
                    weight: u.driver_weight,
                    rest_hz: u.rate_hz,
                    run_hz: u.rate_hz * (1.0 + u.locomotion_gain),
                })
                .collect();
            Behaviour::new(
                format!("{id}.behaviour"),
                p0.units.len(),
                &drivers,
                rng_for(o.seed, domain::BEHAVIOUR, 0),
            )
        });
        let mut spike_streams: Vec<String> = probes.iter().map(|p| p.stream_id.clone()).collect();
        if let Some(t) = &twophoton {
            spike_streams.push(t.stream_id.clone());
        }
        let events_stream = format!("{id}.ground_truth");
        let units_stream = format!("{id}.ground_truth_units");
        Ok(Rig {
            spike_streams,
            behaviour_stream: behaviour.as_ref().map(|b| b.stream_id.clone()),
            events_schema: events_schema(&events_stream),
            units_schema: units_schema(&units_stream),
            events_stream,
            units_stream,
            window_samples: (o.batch_ms as i64) * (SAMPLE_RATE_HZ as i64) / 1000,
            total_samples: (o.duration_s > 0.0)
                .then(|| (o.duration_s * SAMPLE_RATE_HZ).round().max(1.0) as i64),
            next_sample: 0,
            locomotion: Locomotion::new(rng_for(o.seed, domain::LOCOMOTION, 0)),
            probes,
            twophoton,
            behaviour,
            units_sent: false,
            finished: false,
            spikes: Vec::new(),
        })
    }

    /// The two-photon ROI masks (for the `rois` port), if the rig images.
    pub fn rois_batch(&self) -> Option<Result<RecordBatch, ArrowError>> {
        self.twophoton.as_ref().map(TwoPhotonSim::rois_batch)
    }

    /// Ids of the data streams (default port), in the order the rig sends them.
    pub fn data_streams(&self) -> Vec<String> {
        let mut s = self.spike_streams.clone();
        s.extend(self.behaviour_stream.clone());
        s
    }

    /// Ids of the ground-truth streams: spike events, then units.
    pub fn ground_truth_streams(&self) -> [String; 2] {
        [self.events_stream.clone(), self.units_stream.clone()]
    }

    /// Probe samples made so far (the data clock).
    pub fn samples_done(&self) -> i64 {
        self.next_sample
    }

    /// Makes the next window, with the ground truth if `ground_truth`; `None` once
    /// `duration_s` of data has been made.
    pub fn next_window(&mut self, ground_truth: bool) -> Result<Option<Window>, ArrowError> {
        let s0 = self.next_sample;
        let mut s1 = s0 + self.window_samples;
        if let Some(total) = self.total_samples {
            s1 = s1.min(total);
        }
        if self.finished || s1 <= s0 {
            self.finished = true;
            return Ok(None);
        }
        self.locomotion.extend_to(s1 + TEMPLATE_PRE);
        let mut batches: Vec<(&'static str, RecordBatch)> = Vec::new();
        let mut truth: Vec<TrueSpike> = Vec::new();
        let time_of = |sample: i64| sample as f64 / SAMPLE_RATE_HZ;

        for (k, probe) in self.probes.iter_mut().enumerate() {
            self.spikes.clear();
            batches.push((
                "",
                probe.window(s0, s1, &self.locomotion, &mut self.spikes)?,
            ));
            if k == 0 {
                if let Some(b) = &mut self.behaviour {
                    b.add_spikes(&self.spikes);
                }
            }
            if ground_truth {
                truth.extend(self.spikes.iter().map(|s| {
                    TrueSpike {
                        stream: k,
                        sample_index: s.sample,
                        time_s: time_of(s.sample),
                        unit: s.unit as i32,
                        channel: probe
                            .units
                            .get(s.unit as usize)
                            .map_or(-1, |u| u.peak_channel as i32),
                    }
                }));
            }
        }
        if let Some(tp) = &mut self.twophoton {
            let mut frames = Vec::new();
            self.spikes.clear();
            tp.window(s0, s1, &self.locomotion, &mut frames, &mut self.spikes)?;
            batches.extend(frames.into_iter().map(|f| ("", f)));
            if ground_truth {
                let stream = self.probes.len();
                truth.extend(self.spikes.iter().map(|s| TrueSpike {
                    stream,
                    sample_index: tp.first_frame_showing(s.sample),
                    time_s: time_of(s.sample),
                    unit: s.unit as i32,
                    channel: s.unit as i32,
                }));
            }
        }
        if let Some(b) = &mut self.behaviour {
            let mut rows = Vec::new();
            b.advance(s1, &mut rows)?;
            if Some(s1) == self.total_samples {
                rows.extend(b.flush()?);
            }
            batches.extend(rows.into_iter().map(|r| ("", r)));
        }
        if ground_truth {
            if !self.units_sent {
                batches.push((
                    GROUND_TRUTH_PORT,
                    units_batch(&self.units_schema, &self.unit_rows())?,
                ));
                self.units_sent = true;
            }
            if !truth.is_empty() {
                // Stable: each stream is already in sample order.
                truth.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
                batches.push((
                    GROUND_TRUTH_PORT,
                    events_batch(&self.events_schema, &self.spike_streams, &truth)?,
                ));
            }
        }
        self.locomotion.forget_before(s0 - BIN_SAMPLES);
        self.next_sample = s1;
        Ok(Some(Window {
            start_sample: s0,
            end_sample: s1,
            batches,
        }))
    }

    fn unit_rows(&self) -> Vec<UnitRow> {
        let mut rows = Vec::new();
        for p in &self.probes {
            rows.extend(p.units.iter().enumerate().map(|(i, u)| UnitRow {
                stream: p.stream_id.clone(),
                unit: i as i32,
                channel: u.peak_channel as i32,
                x_um: u.x_um,
                y_um: u.y_um,
                amplitude_uv: u.amplitude_uv,
                rate_hz: u.rate_hz,
                bursty: u.bursty,
                driver: u.is_driver(),
            }));
        }
        if let Some(t) = &self.twophoton {
            rows.extend(t.rois.iter().enumerate().map(|(i, r)| UnitRow {
                stream: t.stream_id.clone(),
                unit: i as i32,
                channel: i as i32,
                x_um: r.cx,
                y_um: r.cy,
                amplitude_uv: r.amplitude,
                rate_hz: r.rate_hz,
                bursty: r.bursty,
                driver: false,
            }));
        }
        rows
    }
}
