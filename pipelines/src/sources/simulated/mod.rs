//! The built-in simulated rig: Neuropixels 1.0 probes, a two-photon movie and running speed on one
//! data clock, with the ground truth of every spike on a side port.
//!
//! ```toml
//! [sources.sim]
//! type = "simulated"
//! seed = 1              # same seed, same options ⇒ identical data
//! duration_s = 0        # 0 = forever
//! pace = "realtime"     # or "max": as fast as the consumers take it
//! probes = 1
//! units_per_probe = 60
//! noise_uv = 10
//! batch_ms = 10         # 1..=100
//! twophoton = true
//! rois = 50
//! frame_size = 128
//! frame_rate_hz = 30
//! ```
//!
//! Streams, all on the default port: `<id>.imec<k>.ap` (continuous, 384 AP + SY0, 30 kHz, NP1.0
//! bank-0 geometry), `<id>.twophoton` (frames), `<id>.behaviour` (running speed, 100 Hz, only with
//! at least one probe). Port `ground_truth` (produced only when someone reads it):
//! `<id>.ground_truth` (events: every true spike exactly once, in time order per stream) and
//! `<id>.ground_truth_units` (table, once at the start). Port `rois` (likewise only when read, with
//! `twophoton = true`): `<id>.twophoton.rois` (layout `rois`, once at the start: each soma's
//! footprint pixels and weights, `roi` = the ROI index of the ground truth), so that
//! `inputs = ["mc", "sim.rois"]` gives `roi_traces` the true masks.
//!
//! The data do not depend on `batch_ms`: spike trains, noise segments, LFP, frames and speed are
//! all fixed on the data clock, so any batch size cuts the same recording differently.

mod behaviour;
mod geometry;
mod ground_truth;
mod probe;
mod rig;
mod spikes;
mod twophoton;

use std::time::Instant;

use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, PortSpec, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::metrics::batch_bytes;
use crate::pace::{Pace, Pacer};
use crate::stream::Layout;

pub use behaviour::SPEED as RUNNING_SPEED_COLUMN;
pub use geometry::{ap_stream_info, np1_contact_um, NP1_CHANNELS, NP1_UV_PER_BIT, SAMPLE_RATE_HZ};
pub use ground_truth::{
    events_schema as ground_truth_events_schema, units_schema as ground_truth_units_schema,
};
pub use probe::DRIVER_UNITS;
pub use rig::{Rig, Window};
pub use twophoton::frames_schema;

/// The side port carrying the ground truth.
pub const GROUND_TRUTH_PORT: &str = "ground_truth";
/// The side port carrying the two-photon ROI masks.
pub const ROIS_PORT: &str = "rois";
const TYPE_NAME: &str = "simulated";

/// Options of `[sources.<id>] type = "simulated"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedOptions {
    pub seed: u64,
    /// Seconds of data to make; 0 = forever.
    pub duration_s: f64,
    pub pace: Pace,
    pub probes: u32,
    pub units_per_probe: u32,
    /// Per-channel white noise, µV (sd).
    pub noise_uv: f64,
    /// Data per step, ms (1..=100).
    pub batch_ms: u32,
    pub twophoton: bool,
    pub rois: u32,
    /// Frame side in pixels (square frames).
    pub frame_size: u32,
    pub frame_rate_hz: f64,
}

impl Default for SimulatedOptions {
    fn default() -> Self {
        SimulatedOptions {
            seed: 1,
            duration_s: 0.0,
            pace: Pace::Realtime,
            probes: 1,
            units_per_probe: 60,
            noise_uv: 10.0,
            batch_ms: 10,
            twophoton: true,
            rois: 50,
            frame_size: 128,
            frame_rate_hz: 30.0,
        }
    }
}

impl SimulatedOptions {
    /// Every problem with the options, each naming the component and the key.
    pub fn validate(&self, id: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, value: String, why: &str| {
            errors.push(format!(
                "component `{id}` (type `{TYPE_NAME}`): `{key}` = {value} {why}"
            ))
        };
        if !(self.duration_s.is_finite() && self.duration_s >= 0.0) {
            bad(
                "duration_s",
                self.duration_s.to_string(),
                "must be 0 (forever) or a positive number of seconds",
            );
        }
        if self.probes > 16 {
            bad("probes", self.probes.to_string(), "must be at most 16");
        }
        if self.units_per_probe > 2000 {
            bad(
                "units_per_probe",
                self.units_per_probe.to_string(),
                "must be at most 2000",
            );
        }
        if !(self.noise_uv.is_finite() && (0.0..=500.0).contains(&self.noise_uv)) {
            bad(
                "noise_uv",
                self.noise_uv.to_string(),
                "must be within 0..=500 µV",
            );
        }
        if !(1..=100).contains(&self.batch_ms) {
            bad(
                "batch_ms",
                self.batch_ms.to_string(),
                "must be within 1..=100",
            );
        }
        if self.twophoton {
            if !(8..=2048).contains(&self.frame_size) {
                bad(
                    "frame_size",
                    self.frame_size.to_string(),
                    "must be within 8..=2048 pixels",
                );
            }
            if !(self.frame_rate_hz.is_finite()
                && self.frame_rate_hz > 0.0
                && self.frame_rate_hz <= 1000.0)
            {
                bad(
                    "frame_rate_hz",
                    self.frame_rate_hz.to_string(),
                    "must be within (0, 1000] Hz",
                );
            }
        }
        if self.probes == 0 && !self.twophoton {
            bad(
                "probes",
                "0".into(),
                "with `twophoton = false` leaves nothing to simulate",
            );
        }
        errors
    }
}

/// The simulated rig as a source.
pub struct SimulatedSource {
    rig: Rig,
    pace: Pace,
    options: SimulatedOptions,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let options: SimulatedOptions = parse_options(ctx.id, TYPE_NAME, options)?;
    Ok(Box::new(SimulatedSource {
        rig: Rig::new(ctx.id, &options)?,
        pace: options.pace,
        options,
    }))
}

impl Source for SimulatedSource {
    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::default_port(&[Layout::Continuous, Layout::Frames, Layout::Table]),
            PortSpec::named(GROUND_TRUTH_PORT, &[Layout::Events, Layout::Table]),
            PortSpec::named(ROIS_PORT, &[Layout::Rois]),
        ]
    }

    /// A live rig does not wait for slow consumers; a run at `max` pace loses nothing.
    fn overflow(&self) -> Overflow {
        match self.pace {
            Pace::Realtime => Overflow::DropOldest,
            Pace::Max => Overflow::Block,
        }
    }

    fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), ComponentError> {
        let SimulatedSource {
            mut rig,
            pace,
            options,
        } = *self;
        // A simulation cannot resume a stored run: when the stores it feeds already hold its
        // streams (a restart, a reload), it starts a new run under new ids (`<id>-run2`, ...).
        let suffixes: Vec<String> = rig
            .data_streams()
            .into_iter()
            .chain(rig.ground_truth_streams())
            .filter_map(|s| s.strip_prefix(ctx.id.as_str()).map(str::to_string))
            .collect();
        let prefix = ctx.resume.new_run_prefix(&ctx.id, &suffixes);
        if prefix != ctx.id {
            tracing::info!(component = %ctx.id, run = %prefix, "the stores hold an earlier run: starting a new one");
            rig = Rig::new(&prefix, &options).map_err(|e| ComponentError::Other(e.join("; ")))?;
        }
        let pacer = Pacer::new(pace, SAMPLE_RATE_HZ);
        tracing::info!(
            component = %ctx.id,
            streams = ?rig.data_streams(),
            "simulated rig started"
        );
        // The masks go once, before any frame, and only to someone who reads them.
        if ctx
            .outputs
            .port(ROIS_PORT)
            .is_some_and(|o| o.has_consumers())
        {
            match rig.rois_batch() {
                Some(Ok(b)) => {
                    let _ = ctx.outputs.send_to(ROIS_PORT, b);
                }
                Some(Err(e)) => {
                    let e = ComponentError::arrow(
                        format!("component `{}`: building the ROI masks", ctx.id),
                        e,
                    );
                    ctx.metrics
                        .error(e.error_type(), "generating", e.to_string());
                    return Err(e);
                }
                None => {}
            }
        }
        while !ctx.shutdown.is_triggered() {
            let ground_truth = ctx
                .outputs
                .port(GROUND_TRUTH_PORT)
                .is_some_and(|o| o.has_consumers());
            let started = Instant::now();
            let window = match rig.next_window(ground_truth) {
                Ok(Some(w)) => w,
                Ok(None) => break,
                Err(e) => {
                    let e = ComponentError::arrow(
                        format!("component `{}`: building simulated batches", ctx.id),
                        e,
                    );
                    ctx.metrics
                        .error(e.error_type(), "generating", e.to_string());
                    tracing::error!(component = %ctx.id, error = %e, "simulated rig failed");
                    return Err(e);
                }
            };
            ctx.metrics
                .observe_processing(started.elapsed().as_secs_f64());
            // The window's data exist on a live rig only once its last sample is acquired.
            if !pacer.wait_for(window.end_sample as u64, &ctx.shutdown) {
                break;
            }
            for (port, batch) in window.batches {
                // A port whose consumers all stopped just drops what it is given.
                let _ = ctx.outputs.send_to(port, batch);
            }
            ctx.metrics
                .set_lag(pacer.lag_seconds(window.end_sample as u64));
            if ctx.outputs.all_closed() {
                tracing::info!(component = %ctx.id, "no consumer left; simulated rig stops");
                break;
            }
        }
        Ok(())
    }
}

/// Why `generate` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulatedError {
    #[error("invalid options: {}", .0.join("; "))]
    Options(Vec<String>),
    #[error("building a simulated batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// What `generate` did, for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    pub data_seconds: f64,
    /// Wall time of the generation alone (building the rig excluded).
    pub wall_seconds: f64,
    pub batches: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl GenerationStats {
    /// Seconds of data made per second of wall time.
    pub fn times_realtime(&self) -> f64 {
        self.data_seconds / self.wall_seconds.max(1e-9)
    }
}

/// Makes `data_seconds` of data (or `options.duration_s`, if shorter and non-zero) as fast as one
/// thread can, and throws it away: the generation cost alone, for benchmarks. The pace option
/// is ignored.
pub fn generate(
    options: &SimulatedOptions,
    data_seconds: f64,
    ground_truth: bool,
) -> Result<GenerationStats, SimulatedError> {
    let mut rig = Rig::new("bench", options).map_err(SimulatedError::Options)?;
    let target = (data_seconds.max(0.0) * SAMPLE_RATE_HZ).round() as i64;
    let mut stats = GenerationStats {
        data_seconds: 0.0,
        wall_seconds: 0.0,
        batches: 0,
        rows: 0,
        bytes: 0,
    };
    let started = Instant::now();
    while rig.samples_done() < target {
        let Some(window) = rig.next_window(ground_truth)? else {
            break;
        };
        for (_, b) in &window.batches {
            stats.batches += 1;
            stats.rows += b.num_rows() as u64;
            stats.bytes += batch_bytes(b);
        }
    }
    stats.wall_seconds = started.elapsed().as_secs_f64();
    stats.data_seconds = rig.samples_done() as f64 / SAMPLE_RATE_HZ;
    Ok(stats)
}

#[cfg(test)]
mod tests;
