//! `type = "spike_detect"`: spikes from the AP band of continuous streams, causally, chunk by
//! chunk (ALGORITHMS.md §2: bandpass, common median reference, MAD noise, negative threshold
//! crossing, local exclusion over channels within a radius and ±`exclude_ms`).
//!
//! ```toml
//! [transforms.spikes]
//! type = "spike_detect"
//! inputs = ["probe0"]
//! band = [250, 3000]       # Hz, Butterworth in second-order sections, causal
//! order = 1
//! reference = "global"     # common median over the whole probe; "shank" or "none"
//! threshold = 5.0          # k: a spike goes below -k·σ
//! radius_um = 60           # local exclusion radius (same shank)
//! exclude_ms = 0.5         # ... and time window, ±
//! dead_time_ms = 2.0       # per-channel dead time after a kept spike
//! calibration_s = 2.0      # σ from the first seconds of each stream ...
//! refresh_s = 60           # ... re-estimated this often over the latest calibration_s (0 = never)
//! backend = "auto"         # the fastest present: never a software GPU; with a hardware GPU,
//!                          # GPU and CPU measured on the stream's first seconds. "hardware": a
//!                          # hardware GPU, else the CPU; "gpu": any Vulkan adapter (lavapipe
//!                          # counts), an error without one; "cpu"
//! ```
//!
//! Defaults, and why they are not SpikeInterface's (bandpass 300–6000 Hz order 5, radius 50 µm,
//! ±1 ms in 0.105): SpikeInterface filters forward *and* backward, so its waveforms do not ring;
//! a causal Butterworth of order 3 or more rings after every spike, and the late troughs cross the
//! threshold again (on six ground-truth recordings, 6–20 µV noise: precision 0.33–0.78 at order 3,
//! ±0.1 ms, against SpikeInterface's 0.97–0.99). A first-order 250–3000 Hz band (Blackrock's
//! 250 Hz high-pass; most spike energy is below 3 kHz), ±0.5 ms over 60 µm and a 2 ms dead time
//! match or beat SpikeInterface's recall and precision on all six (`daemon/tests/spikes.rs` checks
//! three of them), causally.
//!
//! `backend` follows the rule shared by every kernel-backed transform ([`super::backend`]).
//! With `auto` and a hardware GPU both chains run the first `calibration_s` + 1 s of each stream
//! and the faster is kept (their detections are identical, so the switch is seamless); lavapipe
//! (Mesa's software Vulkan) is never taken by `auto`: on two cores it runs the chain at about
//! 1.3× real time against the CPU twins' ~37× (`bench/spikes.sh`).
//!
//! Only `ap` channels are detected (sync and other channels are neither detected nor part of the
//! median). In the daemon, streams on the input that are not continuous (a rig's frames, tables)
//! never reach it: the topology passes by every layout a transform does not take. The chain ([`kernels::chain`]) is built when a stream's first batch arrives, from the
//! geometry and µV per bit in its schema. The CPU chain reads the Int16 columns in place,
//! converting them to µV sample-major in one tiled pass; a GPU chain gets them copied sample-major
//! into a buffer the stream keeps (no allocation per batch once it has grown to the batch size).
//!
//! Output, default port, one events stream per input stream, id `<input stream id>.spikes`:
//! `sample_index: Int64` (of the input stream), `time_s: Float64` (= sample_index / rate),
//! `channel: Int32` (saved-channel index in the input stream), `amplitude_uv: Float32` (the
//! filtered, referenced value at the peak, negative), `threshold_uv: Float32` (k·σ it was judged
//! against, positive). Rows are in (sample, channel) order. The spikes do not depend on how the
//! input was chunked. The first `calibration_s` of a stream is held until σ is known, then
//! detected too (only that window waits); afterwards a spike leaves with the batch that completes
//! its ±`exclude_ms` context. `finish` flushes what is held back at the end of the input.
//!
//! Port `progress` (a watermark, for [`super::bin_features`]): a one-row table per input batch
//! that moved it, `complete_before_sample: Int64`: every spike of that stream with
//! `sample_index` below it has been sent on the default port before this row.
//!
//! Metrics (in [`crate::metrics::shared_registry`], as transforms get no `ComponentMetrics`):
//! `neurod_kernel_backend{backend, component_id} 1` for the backend in use, and
//! `neurod_spike_detect_latency_seconds{component_id}`: for each input batch, the time from
//! `process` being called with it (the topology calls it as soon as the batch leaves the inbox)
//! to its spike rows being ready — the wait in its stream's worker queue, conversion, the chain
//! and the output batch. Queueing in the inbox before that, and the hand-over to the consumers'
//! inboxes after (on the next `process` call), are not included.
//!
//! Threads: each input stream is detected on a worker thread of its own ([`workers`]): the end
//! of a stream's calibration (σ over the whole window, then the held-back samples detected, about
//! 0.1 s of one core for a 384-channel probe) would otherwise stall every other stream's batches
//! behind it, and with 8 probes calibrating together the inbox overflowed; each worker's queue
//! holds [`workers::QUEUE_S`] of its stream (at most [`workers::QUEUE_BYTES`]).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use prometheus::{HistogramOpts, HistogramVec};

use super::backend;
use crate::batch::Batch;
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::metrics::shared_registry;
use crate::stream::{self, Layout};

mod options;
mod streams;
mod workers;

use super::per_stream::PerStream;
pub(crate) use options::band_problems;
use options::Options;
pub use streams::spikes_schema;
use streams::{StreamCheck, StreamState};
use workers::Workers;

pub const TYPE: &str = "spike_detect";
/// The side port carrying the watermark.
pub const PROGRESS_PORT: &str = "progress";
/// Output stream id: `<input stream id>` + this.
pub const STREAM_SUFFIX: &str = ".spikes";
pub const CHANNEL: &str = "channel";
pub const AMPLITUDE_UV: &str = "amplitude_uv";
pub const THRESHOLD_UV: &str = "threshold_uv";
pub const COMPLETE_BEFORE_SAMPLE: &str = "complete_before_sample";
/// Schema metadata of the spikes and progress streams: the id of the continuous stream they
/// were detected on.
pub const SOURCE_STREAM_KEY: &str = "neurod.source_stream";
/// Schema metadata of the spikes stream: the detection parameters, as JSON.
pub const PARAMS_KEY: &str = "neurod.spike_detect";

/// The process-wide series of this transform (see the module docs).
struct Series {
    latency: HistogramVec,
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "neurod_spike_detect_latency_seconds",
                "Per input batch, from spike_detect receiving it to its spike rows being ready (the stream's worker queue, conversion, detection chain, output batch; not inbox queueing).",
            )
            .buckets(vec![
                1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                0.1, 0.25, 1.0, 2.5,
            ]),
            &["component_id"],
        )
        .expect("valid metric definition");
        if let Err(e) = shared_registry().register(Box::new(latency.clone())) {
            tracing::warn!(error = %e, "spike_detect metrics not registered");
        }
        Series { latency }
    })
}

pub struct SpikeDetect {
    id: String,
    options: Options,
    params_json: String,
    /// The checks of each input stream ([`PerStream`]), by id; its detection runs on its
    /// worker. A schema change finishes the old worker before the new one starts under the
    /// same id, so the check is replaced by hand rather than through `for_schema` (which makes
    /// the new state before handing back the old).
    streams: PerStream<StreamCheck>,
    workers: Workers,
    /// Streams whose chain could not be built: reported once, then skipped.
    failed: HashSet<String>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    Ok(Box::new(build_detect(ctx, options)?))
}

/// [`build`] without the box: benchmarks and tests use [`SpikeDetect::settle`].
pub fn build_detect(ctx: &BuildContext, options: toml::Table) -> Result<SpikeDetect, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let mut errors: Vec<String> = o
        .problems()
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();
    if let Err(e) = backend::plan(&prefix, o.backend) {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SpikeDetect {
        id: ctx.id.into(),
        params_json: o.params_json(),
        options: o,
        streams: PerStream::new(),
        workers: Workers::new(ctx.id, series().latency.with_label_values(&[ctx.id])),
        failed: HashSet::new(),
    })
}

impl Transform for SpikeDetect {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Continuous]
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::default_port(&[Layout::Events]),
            PortSpec::named(PROGRESS_PORT, &[Layout::Table]),
        ]
    }

    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.process_batch(input, batch.into(), out)
    }

    /// Samples as a file source read them go to the chain as they are (sample-major), without
    /// Arrow columns.
    fn process_batch(
        &mut self,
        _input: &Input,
        batch: Batch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let arrived = Instant::now();
        let schema = batch.schema();
        let stream_id = stream::stream_id_of(&schema).unwrap_or("unnamed");
        if let Some(layout) = Layout::of(&schema).filter(|l| *l != Layout::Continuous) {
            return Err(ComponentError::Other(format!(
                "stream `{stream_id}`: spike_detect takes continuous streams, not {}",
                layout.as_str()
            )));
        }
        if self.failed.contains(stream_id) {
            return self.workers.drain(out);
        }
        let stale = self
            .streams
            .get_mut(stream_id)
            .is_some_and(|s| !s.accepts_schema(&schema));
        if stale {
            // Channels or rate changed (a new recording under the same id): finish the old
            // chain so nothing it holds is lost, then start afresh (the stale check is replaced
            // below; until then it is never used: a finished worker takes no batch).
            tracing::warn!(component = %self.id, stream = %stream_id, "stream schema changed: restarting spike detection");
            self.workers.finish(stream_id, out)?;
        }
        if stale || !self.streams.contains(stream_id) {
            match StreamState::new(&self.id, &self.options, &self.params_json, &schema) {
                Ok(s) => {
                    let input = StreamCheck::of(&s);
                    self.workers
                        .start(stream_id, s, batch.num_rows(), batch.bytes())?;
                    self.streams.insert(stream_id, input);
                }
                Err(e) => {
                    self.failed.insert(stream_id.to_string());
                    return Err(ComponentError::Other(format!(
                        "stream `{stream_id}`: {e}; its batches are skipped from now on"
                    )));
                }
            }
        }
        let handed = match self.streams.get_mut(stream_id) {
            Some(input) if batch.num_rows() > 0 => match input.check(&batch) {
                Ok(first) => self.workers.send(stream_id, batch, first, arrived),
                Err(e) => Err(e),
            },
            _ => Ok(()),
        };
        let drained = self.workers.drain(out);
        handed.and(drained)
    }

    fn finish(&mut self, out: &mut TransformContext) -> Result<(), ComponentError> {
        let (id, workers) = (&self.id, &mut self.workers);
        self.streams.finish_each(|stream, _| {
            workers.finish(stream, out).inspect_err(|e| {
                tracing::error!(component = %id, %stream, error = %e, "flushing spike detection failed");
            })
        })
    }
}

impl SpikeDetect {
    /// Waits until every batch handed over so far is done, emitting what came of it (tests and
    /// benchmarks use it to see, and time, the output of each batch as it happens).
    pub fn settle(&mut self, out: &mut Emitter) -> Result<(), ComponentError> {
        self.workers.settle(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stream::{batch_from_interleaved, keys, ChannelInfo, ChannelKind, ContinuousInfo};
    use arrow::array::{Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use kernels::Backend;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    pub const RATE: f64 = 30000.0;
    pub const AP: usize = 8;

    /// 8 AP channels in two columns 32 µm apart, rows 20 µm apart (one shank), then a sync channel.
    pub fn probe_info(id: &str) -> ContinuousInfo {
        let mut channels: Vec<ChannelInfo> = (0..AP)
            .map(|i| ChannelInfo {
                name: format!("AP{i}"),
                kind: ChannelKind::Ap,
                uv_per_bit: Some(0.5),
                x_um: Some(if i % 2 == 0 { 0.0 } else { 32.0 }),
                y_um: Some(20.0 * (i / 2) as f64),
                shank: Some(0),
            })
            .collect();
        channels.push(ChannelInfo {
            name: "SY0".into(),
            kind: ChannelKind::Sync,
            uv_per_bit: None,
            x_um: None,
            y_um: None,
            shank: None,
        });
        ContinuousInfo {
            stream_id: id.into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "30000".into(),
            sampling_hz: RATE,
            first_sample: 0,
            probe: None,
            channels,
        }
    }

    /// A spike of `depth_uv` (negative) on `channel` peaking at `sample`.
    pub struct Injected {
        pub sample: usize,
        pub channel: usize,
        pub depth_uv: f64,
    }

    /// Interleaved Int16 (0.5 µV/bit): 10 µV Gaussian noise per channel, the injected spikes as
    /// 0.6 ms-wide negative bumps (0.3 of their depth on the channels beside), a toggling sync word.
    pub fn synthetic(samples: usize, spikes: &[Injected], seed: u64) -> Vec<i16> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0, 10.0).unwrap();
        let c = AP + 1;
        let mut uv = vec![0f64; samples * c];
        for t in 0..samples {
            for ch in 0..AP {
                uv[t * c + ch] = rng.sample(normal);
            }
        }
        for s in spikes {
            for dt in -12i64..=12 {
                let t = s.sample as i64 + dt;
                if t < 0 || t >= samples as i64 {
                    continue;
                }
                let w = (-(dt as f64 / 4.0).powi(2)).exp();
                for ch in 0..AP {
                    let near = ch.abs_diff(s.channel);
                    let scale = match near {
                        0 => 1.0,
                        1 => 0.3,
                        _ => 0.0,
                    };
                    uv[t as usize * c + ch] += s.depth_uv * w * scale;
                }
            }
        }
        let mut out = Vec::with_capacity(samples * c);
        for t in 0..samples {
            for ch in 0..AP {
                out.push((uv[t * c + ch] / 0.5).round().clamp(-32768.0, 32767.0) as i16);
            }
            out.push(((t / 300) % 2) as i16 * 64);
        }
        out
    }

    pub fn batches(info: &ContinuousInfo, data: &[i16], batch: usize) -> Vec<RecordBatch> {
        let c = info.channels.len();
        let schema = info.schema();
        data.chunks(batch * c)
            .enumerate()
            .map(|(k, chunk)| {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                batch_from_interleaved(&schema, (k * batch) as i64, &bytes).unwrap()
            })
            .collect()
    }

    /// The transform itself (not boxed as a `dyn Transform`), so tests can [`SpikeDetect::settle`].
    pub fn build_with(id: &str, options: &str) -> Box<SpikeDetect> {
        let t: toml::Table = toml::from_str(options).unwrap();
        let ctx = BuildContext {
            id,
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        };
        Box::new(build_detect(&ctx, t).unwrap_or_else(|e| panic!("{e:?}")))
    }

    /// A progress row: spikes sent before it, input samples processed when it came, its value.
    type Progress = (usize, i64, i64);
    /// A spike: sample, channel, amplitude, threshold.
    type Spike = (i64, i32, f32, f32);

    /// (sample, channel, amplitude, threshold) of every spike in the order sent, and the
    /// progress rows.
    /// Each batch's output is collected as soon as its worker is done with it.
    fn run(tr: &mut SpikeDetect, input: Vec<impl Into<Batch>>) -> (Vec<Spike>, Vec<Progress>) {
        let mut spikes = Vec::new();
        let mut progress = Vec::new();
        let mut out = TransformContext::detached("t");
        let mut seen = 0i64;
        let declared = tr.ports();
        let collect =
            |out: &mut Emitter, seen: i64, spikes: &mut Vec<_>, progress: &mut Vec<Progress>| {
                assert_eq!(out.undeclared_ports(&declared), Vec::<String>::new());
                for (port, b) in out.batches.drain(..) {
                    if port == PROGRESS_PORT {
                        let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        progress.push((spikes.len(), seen, v.value(0)));
                        continue;
                    }
                    let col = |i: usize| b.column(i).clone();
                    let s = col(0);
                    let s = s.as_any().downcast_ref::<Int64Array>().unwrap();
                    let ch = col(2);
                    let ch = ch.as_any().downcast_ref::<Int32Array>().unwrap();
                    let a = col(3);
                    let a = a.as_any().downcast_ref::<Float32Array>().unwrap();
                    let th = col(4);
                    let th = th.as_any().downcast_ref::<Float32Array>().unwrap();
                    for r in 0..b.num_rows() {
                        spikes.push((s.value(r), ch.value(r), a.value(r), th.value(r)));
                    }
                }
            };
        for b in input {
            let b = b.into();
            seen += b.num_rows() as i64;
            tr.process_batch(&Input::new(0, "in"), b, &mut out).unwrap();
            tr.settle(&mut out).unwrap();
            collect(&mut out, seen, &mut spikes, &mut progress);
        }
        tr.finish(&mut out).unwrap();
        collect(&mut out, seen, &mut spikes, &mut progress);
        (spikes, progress)
    }

    fn injected() -> Vec<Injected> {
        // After the 0.2 s calibration window and inside it, on both columns; 150 µV deep
        // against 10 µV noise: unmistakable.
        [(3_000, 1), (7_500, 4), (9_000, 6), (12_345, 2), (15_000, 7)]
            .into_iter()
            .map(|(sample, channel)| Injected {
                sample,
                channel,
                depth_uv: -150.0,
            })
            .collect()
    }

    const CPU: &str = "backend = 'cpu'\ncalibration_s = 0.2\nrefresh_s = 0";

    #[test]
    fn finds_each_injected_spike_once_on_its_channel_and_never_on_sync() {
        let info = probe_info("p");
        let data = synthetic(18_000, &injected(), 1);
        let mut tr = build_with("det", CPU);
        let (spikes, _) = run(tr.as_mut(), batches(&info, &data, 300));
        for inj in injected() {
            let hits: Vec<_> = spikes
                .iter()
                .filter(|s| (s.0 - inj.sample as i64).abs() <= 15)
                .collect();
            assert_eq!(hits.len(), 1, "spike at {}: {hits:?}", inj.sample);
            let (_, ch, amp, th) = *hits[0];
            assert_eq!(
                ch as usize, inj.channel,
                "local exclusion keeps the deepest channel"
            );
            assert!(amp < -60.0, "amplitude in µV after filtering: {amp}");
            // 10 µV of white noise keeps about a fifth of its power in 250–3000 Hz: σ ≈ 4 µV.
            assert!((15.0..30.0).contains(&th), "threshold k·σ in µV: {th}");
        }
        assert!(
            spikes.iter().all(|s| (s.1 as usize) < AP),
            "the sync channel is never detected"
        );
        // Noise minus the median of only 8 channels has heavy tails (std/MAD ≈ 1.14): about 0.8
        // crossings of 5σ per channel-second, ~4 here; they are few and barely past the threshold.
        let others: Vec<_> = spikes
            .iter()
            .filter(|s| {
                injected()
                    .iter()
                    .all(|i| (s.0 - i.sample as i64).abs() > 15)
            })
            .collect();
        assert!(others.len() <= 12, "{spikes:?}");
        assert!(others.iter().all(|s| -s.2 < 1.5 * s.3), "{others:?}");
    }

    #[test]
    fn output_does_not_depend_on_chunking() {
        let info = probe_info("p");
        let data = synthetic(20_000, &injected(), 2);
        let mut a = build_with("a", CPU);
        let mut b = build_with("b", CPU);
        let (sa, _) = run(a.as_mut(), batches(&info, &data, 30));
        let (sb, _) = run(b.as_mut(), batches(&info, &data, 317));
        assert!(!sa.is_empty());
        assert_eq!(sa, sb);
    }

    /// Samples as a file source sends them reach the chain without their Arrow columns ever being
    /// built, and give the spikes and progress the columns give.
    #[test]
    fn samples_give_the_spikes_of_the_columns_without_building_them() {
        let info = probe_info("p");
        let data = synthetic(20_000, &injected(), 3);
        let pool = crate::buffer_pool::BufferPool::new();
        let schema = info.schema();
        let c = info.channels.len();
        let samples: Vec<Batch> = data
            .chunks(300 * c)
            .enumerate()
            .map(|(k, chunk)| {
                let values = arrow::buffer::ScalarBuffer::from(chunk.to_vec());
                Batch::from_samples(&schema, (k * 300) as i64, values, &pool).unwrap()
            })
            .collect();
        let kept = samples.clone();
        let mut a = build_with("a", CPU);
        let mut b = build_with("b", CPU);
        let from_samples = run(a.as_mut(), samples);
        let from_columns = run(b.as_mut(), batches(&info, &data, 300));
        assert!(from_samples.0.len() >= injected().len());
        assert_eq!(from_samples, from_columns);
        assert!(kept.iter().all(|b| !b.has_columns()));
    }

    /// Each stream is detected on a worker thread of its own, so that one stream's burst of
    /// work (the end of its calibration) never holds up another's batches and streams use
    /// several cores; interleaved, each stream gets exactly the spikes it gets alone.
    #[test]
    fn each_stream_is_detected_on_its_own_thread_with_the_spikes_it_gets_alone() {
        let (info_a, info_b) = (probe_info("pa"), probe_info("pb"));
        let (data_a, data_b) = (
            synthetic(12_000, &injected(), 11),
            synthetic(12_000, &injected(), 12),
        );
        let mut tr = build_with("two_streams", CPU);
        let mut out = TransformContext::detached("t");
        let pairs = batches(&info_a, &data_a, 300)
            .into_iter()
            .zip(batches(&info_b, &data_b, 300));
        for (a, b) in pairs {
            tr.process(&Input::new(0, "in"), a, &mut out).unwrap();
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        // Every worker has run (a thread takes its name when it first runs).
        tr.settle(&mut out).unwrap();
        #[cfg(target_os = "linux")]
        {
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect();
            for want in ["detect pa", "detect pb"] {
                assert!(names.iter().any(|n| n == want), "{want}: {names:?}");
            }
        }
        tr.finish(&mut out).unwrap();
        let of = |stream: &str| -> Vec<(i64, i32, u32)> {
            let mut v = Vec::new();
            for (_, b) in out.batches.iter().filter(|(port, b)| {
                port.is_empty() && stream::stream_id_of(&b.schema()) == Some(stream)
            }) {
                let s = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let c = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
                let a = b.column(3).as_any().downcast_ref::<Float32Array>().unwrap();
                v.extend((0..b.num_rows()).map(|r| (s.value(r), c.value(r), a.value(r).to_bits())));
            }
            v
        };
        for (stream, info, data) in [("pa", &info_a, &data_a), ("pb", &info_b, &data_b)] {
            let (alone, _) = run(&mut build_with("alone", CPU), batches(info, data, 300));
            let alone: Vec<_> = alone.iter().map(|s| (s.0, s.1, s.2.to_bits())).collect();
            assert!(!alone.is_empty());
            assert_eq!(of(&format!("{stream}{STREAM_SUFFIX}")), alone, "{stream}");
        }
    }

    #[test]
    fn progress_is_a_true_watermark() {
        let info = probe_info("p");
        let data = synthetic(18_000, &injected(), 3);
        let mut tr = build_with("det", CPU);
        let (spikes, progress) = run(tr.as_mut(), batches(&info, &data, 30));
        assert!(progress.len() > 100, "the watermark moves batch by batch");
        for (sent_before, _, complete) in &progress {
            let late: Vec<_> = spikes[*sent_before..]
                .iter()
                .filter(|s| s.0 < *complete)
                .collect();
            assert!(
                late.is_empty(),
                "spikes below {complete} sent after it: {late:?}"
            );
        }
        for (_, seen, complete) in &progress {
            if *seen < 6_000 {
                // σ is calibrated on the first 0.2 s: nothing is complete before.
                assert_eq!(*complete, 0, "after {seen} samples");
            } else {
                // Afterwards only the ±0.5 ms context (15 samples) and a spare one are pending.
                assert!(*complete >= seen - 16, "after {seen} samples: {complete}");
            }
        }
        assert_eq!(
            progress.last().unwrap().2,
            18_000,
            "at the end everything is"
        );
    }

    #[test]
    fn spikes_schema_names_the_stream_and_its_origin() {
        let info = probe_info("rig.imec0.ap");
        let data = synthetic(9_000, &injected(), 4);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        for b in batches(&info, &data, 3000) {
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        tr.finish(&mut out).unwrap();
        let (_, b) = out.batches.iter().find(|(p, _)| p.is_empty()).unwrap();
        let s = b.schema();
        let md = s.metadata();
        assert_eq!(md[keys::STREAM_ID], "rig.imec0.ap.spikes");
        assert_eq!(md[keys::LAYOUT], "events");
        assert_eq!(md[keys::SAMPLING_HZ], "30000");
        assert_eq!(md[SOURCE_STREAM_KEY], "rig.imec0.ap");
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "sample_index",
                "time_s",
                "channel",
                "amplitude_uv",
                "threshold_uv"
            ]
        );
        let idx = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let t = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(t.value(0), idx.value(0) as f64 / RATE);
    }

    #[test]
    fn bad_options_are_all_reported() {
        let t: toml::Table = toml::from_str(
            "band = [6000, 300]\nthreshold = -1\nexclude_ms = 50\nreference = 'car'",
        )
        .unwrap();
        let ctx = BuildContext {
            id: "det",
            data_dir: "/tmp".as_ref(),
            inputs: &[],
        };
        let e = build(&ctx, t).err().unwrap();
        assert!(e[0].contains("det") && e[0].contains("car"), "{e:?}");
        let t: toml::Table =
            toml::from_str("band = [6000, 300]\nthreshold = -1\nexclude_ms = 50").unwrap();
        let e = build(&ctx, t).err().unwrap();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().all(|m| m.contains("transform `det`")), "{e:?}");
        let t: toml::Table = toml::from_str("thresold = 4").unwrap();
        assert!(build(&ctx, t).err().unwrap()[0].contains("thresold"));
    }

    #[test]
    fn band_above_nyquist_fails_the_stream_once_with_its_name() {
        let mut info = probe_info("slow");
        info.sampling_hz = 2500.0;
        info.sampling_hz_text = "2500".into();
        let data = synthetic(600, &[], 5);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        let mut bs = batches(&info, &data, 300).into_iter();
        let e = tr
            .process(&Input::new(0, "in"), bs.next().unwrap(), &mut out)
            .unwrap_err();
        assert!(
            e.to_string().contains("slow") && e.to_string().contains("Nyquist"),
            "{e}"
        );
        assert!(
            tr.process(&Input::new(0, "in"), bs.next().unwrap(), &mut out)
                .is_ok(),
            "reported once"
        );
    }

    #[test]
    fn non_continuous_and_overlapping_input_is_rejected_and_named() {
        let info = probe_info("p");
        let data = synthetic(600, &[], 6);
        let mut tr = build_with("det", CPU);
        let mut out = TransformContext::detached("t");
        let bs = batches(&info, &data, 300);
        tr.process(&Input::new(0, "in"), bs[0].clone(), &mut out)
            .unwrap();
        let e = tr
            .process(&Input::new(0, "in"), bs[0].clone(), &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("already received"), "{e}");
        let events = Schema::new_with_metadata(
            vec![Field::new("sample_index", DataType::Int64, false)],
            [
                (keys::LAYOUT.to_string(), "events".to_string()),
                (keys::STREAM_ID.to_string(), "gt".to_string()),
            ]
            .into(),
        );
        let b = RecordBatch::try_new(
            Arc::new(events),
            vec![Arc::new(Int64Array::from(vec![1i64])) as ArrayRef],
        )
        .unwrap();
        let e = tr.process(&Input::new(0, "in"), b, &mut out).unwrap_err();
        assert!(e.to_string().contains("`gt`"), "{e}");
    }

    #[test]
    fn backend_and_latency_are_exported() {
        let info = probe_info("p");
        let data = synthetic(3_000, &[], 7);
        let mut tr = build_with("det_metrics", CPU);
        let mut out = TransformContext::detached("t");
        for b in batches(&info, &data, 30) {
            tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        }
        tr.settle(&mut out).unwrap();
        let text = crate::metrics::Metrics::new().render();
        assert!(
            text.contains(r#"neurod_kernel_backend{backend="cpu",component_id="det_metrics"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"neurod_spike_detect_latency_seconds_count{component_id="det_metrics"} 100"#
            ),
            "{text}"
        );
    }

    /// Neither the default nor `hardware` ever takes a software adapter (lavapipe, installed in
    /// CI): without a hardware GPU both run the CPU chain. With one, `auto` measures (the CPU's
    /// output during the trial) and `hardware` takes it.
    #[test]
    fn auto_and_hardware_never_take_a_software_adapter() {
        let backend_of = |id: &str, backend: &str| {
            let info = probe_info("p");
            let data = synthetic(600, &[], 9);
            let mut tr = build_with(id, &format!("calibration_s = 0.2\nbackend = '{backend}'"));
            let mut out = TransformContext::detached("t");
            for b in batches(&info, &data, 300) {
                tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
            }
            let text = crate::metrics::Metrics::new().render();
            ["gpu", "lavapipe", "cpu"]
                .into_iter()
                .find(|b| {
                    text.contains(&format!(
                        r#"neurod_kernel_backend{{backend="{b}",component_id="{id}"}} 1"#
                    ))
                })
                .unwrap_or_else(|| panic!("no backend exported for {id}: {text}"))
        };
        let adapter = kernels::gpu::test_context().map(|c| c.backend);
        assert_eq!(
            backend_of("det_auto", "auto"),
            "cpu",
            "adapter: {adapter:?}"
        );
        let hardware = if adapter == Some(Backend::Gpu) {
            "gpu"
        } else {
            "cpu"
        };
        assert_eq!(backend_of("det_hardware", "hardware"), hardware);
    }

    #[test]
    fn gpu_backend_runs_where_an_adapter_exists_and_is_refused_where_not() {
        let t: toml::Table = toml::from_str("backend = 'gpu'\ncalibration_s = 0.2").unwrap();
        let built = build_detect(
            &BuildContext {
                id: "det_gpu",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            t,
        );
        match kernels::gpu::test_context() {
            None => {
                let e = built.err().unwrap();
                assert!(e[0].contains("no usable GPU adapter"), "{e:?}");
            }
            Some(_) => {
                let mut gpu = built.unwrap_or_else(|e| panic!("{e:?}"));
                let gpu = &mut gpu;
                let mut cpu = build_with("det_cpu", CPU);
                let info = probe_info("p");
                let data = synthetic(18_000, &injected(), 8);
                let (sg, _) = run(gpu, batches(&info, &data, 300));
                let (sc, _) = run(cpu.as_mut(), batches(&info, &data, 300));
                let key = |v: &Vec<Spike>| v.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>();
                assert_eq!(key(&sg), key(&sc), "same spikes on GPU and CPU");
            }
        }
    }
}
