//! Spike detection benchmark. Prints markdown tables; asserts nothing about time.
//!
//! 1. Throughput of the `spike_detect` transform (CPU chain: Int16 columns → sample-major copy →
//!    bandpass → median reference → MAD noise → threshold + local exclusion → Arrow spikes) on a
//!    384-channel probe, on one core, in multiples of real time; next to SpikeInterface's chain on
//!    the same file (`score_spikes.py --peer`, which runs it with `n_jobs=1`; it inherits this
//!    process's one-core affinity), with both scored against the ground truth.
//! 2. How many 384-channel probes the CPU path keeps up with in real time on two cores: N chains
//!    fed 10 ms batches on the real-time schedule by two threads (one per core); a run keeps up
//!    when no chain is ever more than [`MAX_LAG_S`] behind (the daemon's default inbox holds 256
//!    batches = 2.56 s at 10 ms, so nothing would be dropped) and all are within 50 ms at the end.
//!    The worst lag comes right after the calibration window, when every chain detects its
//!    buffered 2 s at once.
//! 3. Latency of 1 ms chunks (30 samples × 385 channels): `process` alone, pinned to one core,
//!    and from the send into an inbox to the spike rows leaving, with a producer at real-time pace
//!    on the other core; in steady state (from 1 s after the calibration window; the release of
//!    the window and the backlog it leaves are reported apart).
//! 4. Spike rates per channel on the real 16-channel Open Ephys recording.
//!
//! The GPU chain gets the same rows where an adapter exists (lavapipe counts, and is labelled).
//!
//! Data: a ground-truth recording from `../shared/tools/groundtruth.py` when `NEUROD_PYTHON` is
//! set (`bench/spikes.sh` sets it), else the simulated rig's probe.
//! Run: `cargo bench -p pipelines --bench spike_detect` or `bench/spikes.sh`.
//! Env: `NEUROD_BENCH_SECONDS` (default 10) seconds of probe data; `NEUROD_BENCH_MAX_PROBES`
//! (default 64) the most probes tried.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int32Array, Int64Array};
use arrow::record_batch::RecordBatch;
use pipelines::component::{BuildContext, Emitter, Input, Transform, TransformContext};
use pipelines::edge::{Inbox, Overflow, Recv};
use pipelines::formats::openephys::OpenEphysRecording;
use pipelines::formats::spikeglx::SpikeGlxMeta;
use pipelines::metrics::Metrics;
use pipelines::sources::simulated::{Rig, SimulatedOptions};
use pipelines::stream::{batch_from_interleaved, ContinuousInfo};
use pipelines::transforms::spike_detect::{self, SpikeDetect};

/// A chain this far behind real time is close to dropping batches at the daemon's defaults: a
/// live source's inbox holds 256 batches, 2.56 s of 10 ms batches.
const MAX_LAG_S: f64 = 2.0;

/// The `sample_index` of a continuous batch's first row.
fn first_sample(b: &RecordBatch) -> i64 {
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("continuous batches start with sample_index")
        .value(0)
}

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn set_affinity(cpus: &[usize]) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it. Pid 0 is the
    // calling thread; threads it starts afterwards inherit the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// CPUs of the machine, read once before anything is pinned (`available_parallelism` follows
/// the calling thread's affinity).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The probe recording the benchmark runs on.
struct Probe {
    info: ContinuousInfo,
    /// Interleaved Int16, all saved channels.
    data: Vec<u8>,
    /// The ground-truth folder, when the recording came from groundtruth.py.
    gt: Option<PathBuf>,
    label: String,
}

fn groundtruth_probe(py: &str, dir: &Path, seconds: f64) -> Option<Probe> {
    let gt = dir.join("gt");
    let ok = Command::new(py)
        .arg(shared().join("tools/groundtruth.py"))
        .arg(&gt)
        .args(["--seconds", &seconds.to_string(), "--seed", "42"])
        .status()
        .ok()?
        .success();
    if !ok {
        eprintln!("groundtruth.py failed: falling back to the simulated rig");
        return None;
    }
    let bin = gt.join("groundtruth_g0_t0.imec0.ap.bin");
    let meta = SpikeGlxMeta::read(&bin.with_extension("meta")).ok()?;
    Some(Probe {
        info: meta.info("gt").ok()?,
        data: std::fs::read(&bin).ok()?,
        gt: Some(gt),
        label: "groundtruth.py (SpikeInterface generator, 60 units, 10 µV noise)".into(),
    })
}

fn simulated_probe(seconds: f64) -> Probe {
    let opts: SimulatedOptions = toml::from_str(&format!(
        "pace = 'max'\ntwophoton = false\nduration_s = {seconds}\nbatch_ms = 100"
    ))
    .expect("valid options");
    let mut rig = Rig::new("bench", &opts).expect("rig builds");
    let mut data = Vec::new();
    let mut info = None;
    while let Some(w) = rig.next_window(false).unwrap() {
        for (_, b) in &w.batches {
            if pipelines::stream::stream_id_of(&b.schema()) != Some("bench.imec0.ap") {
                continue;
            }
            info.get_or_insert_with(|| ContinuousInfo::from_schema(&b.schema()).unwrap());
            let cols: Vec<&arrow::array::Int16Array> = b
                .columns()
                .iter()
                .skip(1)
                .map(|c| c.as_any().downcast_ref().unwrap())
                .collect();
            for r in 0..b.num_rows() {
                for c in &cols {
                    data.extend_from_slice(&c.value(r).to_le_bytes());
                }
            }
        }
    }
    Probe {
        info: info.expect("the rig has a probe"),
        data,
        gt: None,
        label: "simulated rig (NP1.0, 60 units, 10 µV noise)".into(),
    }
}

/// The recording cut into batches of `samples`, as a source would send them.
fn batches(info: &ContinuousInfo, data: &[u8], samples: usize) -> Vec<RecordBatch> {
    let schema = info.schema();
    let stride = info.bytes_per_sample();
    data.chunks(samples * stride)
        .filter(|c| c.len() % stride == 0)
        .enumerate()
        .map(|(k, c)| batch_from_interleaved(&schema, (k * samples) as i64, c).unwrap())
        .collect()
}

/// The transform, whose `settle` after each `process` makes every batch's work happen (and be
/// timed) within the call, as a one-stream chain does.
fn detector(id: &str, backend: &str, extra: &str) -> Box<SpikeDetect> {
    let t: toml::Table = toml::from_str(&format!("backend = '{backend}'\n{extra}")).unwrap();
    let ctx = BuildContext {
        id,
        data_dir: Path::new("/tmp"),
        inputs: &[],
    };
    Box::new(spike_detect::build_detect(&ctx, t).unwrap_or_else(|e| panic!("{e:?}")))
}

/// (sample, channel) of the spikes a transform emitted.
fn drain_spikes(out: &mut Emitter, into: &mut Vec<(i64, i32)>) {
    for (port, b) in out.batches.drain(..) {
        if !port.is_empty() {
            continue;
        }
        let s = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let c = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
        into.extend(s.values().iter().copied().zip(c.values().iter().copied()));
    }
}

struct Throughput {
    wall_s: f64,
    /// Wall time and seconds of data after the calibration window (steady state).
    steady_s: (f64, f64),
    spikes: Vec<(i64, i32)>,
}

fn throughput(backend: &str, input: &[RecordBatch], rate: f64) -> Throughput {
    let mut tr = detector("bench", backend, "");
    let mut out = TransformContext::detached("t");
    let mut spikes = Vec::new();
    let calib_end = calibration_samples(rate);
    let mut steady = (0.0, 0.0);
    let t = Instant::now();
    for b in input {
        let first = first_sample(b);
        let tb = Instant::now();
        tr.process(&Input::new(0, "in"), b.clone(), &mut out)
            .unwrap();
        tr.settle(&mut out).unwrap();
        drain_spikes(&mut out, &mut spikes);
        if first >= calib_end {
            steady.0 += tb.elapsed().as_secs_f64();
            steady.1 += b.num_rows() as f64 / rate;
        }
    }
    tr.finish(&mut out).unwrap();
    drain_spikes(&mut out, &mut spikes);
    Throughput {
        wall_s: t.elapsed().as_secs_f64(),
        steady_s: steady,
        spikes,
    }
}

/// Runs score_spikes.py on our spikes (with SpikeInterface's chain beside them).
fn score(py: &str, gt: &Path, spikes: &[(i64, i32)], tmp: &Path) -> Option<serde_json::Value> {
    let csv = tmp.join("ours.csv");
    let mut text = String::from("sample_index,channel\n");
    for (s, c) in spikes {
        text.push_str(&format!("{s},{c}\n"));
    }
    std::fs::write(&csv, text).ok()?;
    let json = tmp.join("score.json");
    let out = Command::new(py)
        .arg(shared().join("tools/score_spikes.py"))
        .arg(gt)
        .arg(&csv)
        .args(["--peer", "--json"])
        .arg(&json)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "score_spikes.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(&json).ok()?).ok()
}

/// Quantiles of durations in seconds.
fn quantiles(v: &mut [f64]) -> [f64; 4] {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    [q(0.5), q(0.99), q(0.999), q(1.0)]
}

fn us(s: f64) -> String {
    format!("{:.0}", s * 1e6)
}

/// Samples of the calibration window (default `calibration_s` = 2).
fn calibration_samples(rate: f64) -> i64 {
    (2.0 * rate) as i64
}

/// Per-batch `process` time for 1 ms chunks, split into after-calibration and the release.
fn latency_process(backend: &str, input: &[RecordBatch], rate: f64) -> (Vec<f64>, f64) {
    let mut tr = detector("lat", backend, "");
    let mut out = TransformContext::detached("t");
    let mut after = Vec::with_capacity(input.len());
    let mut release: f64 = 0.0;
    let calib_end = calibration_samples(rate);
    for b in input {
        let first = first_sample(b);
        let t = Instant::now();
        tr.process(&Input::new(0, "in"), b.clone(), &mut out)
            .unwrap();
        tr.settle(&mut out).unwrap();
        let dt = t.elapsed().as_secs_f64();
        out.batches.clear();
        // The batch that completes the window releases 2 s of held spikes.
        if first >= calib_end + rate as i64 {
            after.push(dt);
        } else if first + b.num_rows() as i64 >= calib_end {
            release = release.max(dt);
        }
    }
    (after, release)
}

/// Send-to-emit latency through an inbox, producer at real-time pace on another core: per
/// batch, its first sample and its latency.
fn latency_through_inbox(backend: &str, input: Vec<RecordBatch>, rate: f64) -> Vec<(i64, f64)> {
    let metrics = Metrics::new();
    let inbox = Inbox::new(256, metrics.component("lat", "transform", "spike_detect"));
    let sender = inbox.sender();
    let n = input.len();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let consumer = {
        let sent = sent.clone();
        let backend = backend.to_string();
        std::thread::spawn(move || {
            set_affinity(&[0]);
            let mut tr = detector("lat_inbox", &backend, "");
            let mut out = TransformContext::detached("t");
            let mut lat = Vec::with_capacity(n);
            let mut k = 0;
            loop {
                match inbox.recv_timeout(Duration::from_millis(200)) {
                    Recv::Data(b) => {
                        let first = first_sample(b.record_batch());
                        tr.process_batch(&Input::new(0, "in"), b, &mut out).unwrap();
                        tr.settle(&mut out).unwrap();
                        out.batches.clear();
                        let now = epoch.elapsed().as_nanos() as u64;
                        let at = sent[k].load(Ordering::Acquire);
                        lat.push((first, now.saturating_sub(at) as f64 * 1e-9));
                        k += 1;
                    }
                    Recv::Timeout => {}
                    Recv::Closed => break,
                }
            }
            lat
        })
    };
    let producer = std::thread::spawn(move || {
        let cores = cpus();
        set_affinity(&[if cores > 1 { 1 } else { 0 }]);
        let mut sender = sender;
        let start = Instant::now();
        let mut samples = 0u64;
        for (k, b) in input.into_iter().enumerate() {
            let due = start + Duration::from_secs_f64(samples as f64 / rate);
            while Instant::now() < due {
                // Sleep most of the wait, spin the last bit: the schedule is the point here.
                let left = due - Instant::now();
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(150));
                }
            }
            samples += b.num_rows() as u64;
            sent[k].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
            if sender.send(b, Overflow::Block).is_err() {
                break;
            }
        }
        sender.end();
    });
    producer.join().unwrap();
    consumer.join().unwrap()
}

/// Runs `n` chains on the real-time schedule over `threads` threads (one per core); the worst
/// lag behind the schedule seen, and the lag at the end.
fn realtime_probes(
    n: usize,
    threads: usize,
    input: &Arc<Vec<RecordBatch>>,
    rate: f64,
) -> (f64, f64) {
    let start = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let input = input.clone();
            let mine = (t..n).step_by(threads).count();
            std::thread::spawn(move || {
                set_affinity(&[t % cpus()]);
                let mut chains: Vec<Box<SpikeDetect>> = (0..mine)
                    .map(|i| detector(&format!("rt{t}_{i}"), "cpu", ""))
                    .collect();
                let mut out = TransformContext::detached("t");
                let mut worst: f64 = 0.0;
                let mut samples = 0u64;
                for b in input.iter() {
                    samples += b.num_rows() as u64;
                    // Batch k can be processed once all its samples have been acquired.
                    let due = start + Duration::from_secs_f64(samples as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    for c in chains.iter_mut() {
                        c.process(&Input::new(0, "in"), b.clone(), &mut out)
                            .unwrap();
                        c.settle(&mut out).unwrap();
                        out.batches.clear();
                    }
                    let lag = Instant::now().saturating_duration_since(due).as_secs_f64();
                    worst = worst.max(lag);
                }
                let end_due = start + Duration::from_secs_f64(samples as f64 / rate);
                (
                    worst,
                    Instant::now()
                        .saturating_duration_since(end_due)
                        .as_secs_f64(),
                )
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0.0, 0.0), |(w, e), (w2, e2)| {
            (f64::max(w, w2), f64::max(e, e2))
        })
}

fn keeps_up(worst: f64, end: f64) -> bool {
    worst < MAX_LAG_S && end < 0.05
}

fn openephys_rates(backend: &str) {
    let rec_dir = shared().join("data/openephys-16ch-40khz/experiment1/recording1");
    let Ok(rec) = OpenEphysRecording::open(&rec_dir) else {
        println!("SKIPPED: {} not readable", rec_dir.display());
        return;
    };
    let Ok(stream) = rec.stream(None) else {
        println!("SKIPPED: no stream in {}", rec_dir.display());
        return;
    };
    let info = stream.info("oe16");
    let data = std::fs::read(&stream.dat_path).unwrap();
    let seconds = data.len() as f64 / info.bytes_per_sample() as f64 / info.sampling_hz;
    let input = batches(&info, &data, (info.sampling_hz / 100.0) as usize);
    // 2 s of a 3.3 s recording would go to calibration: a shorter window, the rest as default.
    let mut tr = detector("oe16", backend, "calibration_s = 1.0");
    let mut out = TransformContext::detached("t");
    let mut per_channel = vec![0u64; info.channels.len()];
    let mut thresholds = vec![0f32; info.channels.len()];
    for b in input {
        tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        tr.settle(&mut out).unwrap();
        collect_oe(&mut out, &mut per_channel, &mut thresholds);
    }
    tr.finish(&mut out).unwrap();
    collect_oe(&mut out, &mut per_channel, &mut thresholds);
    println!();
    println!(
        "## real 16-channel Open Ephys recording ({:.1} s, {} kHz), backend {backend}, calibration_s = 1",
        seconds,
        info.sampling_hz / 1000.0
    );
    println!("| channel | spikes | rate (Hz) | threshold 5σ (µV) |");
    println!("|---|---|---|---|");
    for (i, ch) in info.channels.iter().enumerate() {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            ch.name,
            per_channel[i],
            per_channel[i] as f64 / seconds,
            thresholds[i]
        );
    }
    let total: u64 = per_channel.iter().sum();
    println!("| all | {total} | {:.1} | |", total as f64 / seconds);
}

fn collect_oe(out: &mut Emitter, per_channel: &mut [u64], thresholds: &mut [f32]) {
    for (port, b) in out.batches.drain(..) {
        if !port.is_empty() {
            continue;
        }
        let c = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
        let th = b
            .column(4)
            .as_any()
            .downcast_ref::<arrow::array::Float32Array>()
            .unwrap();
        for (ch, t) in c.values().iter().zip(th.values()) {
            if let Some(n) = per_channel.get_mut(*ch as usize) {
                *n += 1;
                thresholds[*ch as usize] = *t;
            }
        }
    }
}

fn main() {
    cpus();
    let seconds: f64 = std::env::var("NEUROD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let max_probes: usize = std::env::var("NEUROD_BENCH_MAX_PROBES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    if !shared().join("data").is_dir() {
        eprintln!("SKIPPED: {} not found", shared().join("data").display());
        return;
    }
    let python = std::env::var("NEUROD_PYTHON")
        .ok()
        .filter(|p| Path::new(p).exists());
    let tmp = tempfile::tempdir().unwrap();
    println!("preparing {seconds} s of a 385-channel NP1.0 recording ...");
    let probe = python
        .as_deref()
        .and_then(|py| groundtruth_probe(py, tmp.path(), seconds))
        .unwrap_or_else(|| simulated_probe(seconds));
    let rate = probe.info.sampling_hz;
    let gpu = kernels::gpu::acquire();
    let mut backends = vec!["cpu".to_string()];
    if let Some(ctx) = &gpu {
        backends.push("gpu".into());
        println!(
            "GPU adapter: {} ({})",
            ctx.adapter_name,
            ctx.backend.as_str()
        );
    } else {
        println!("no GPU adapter: CPU rows only");
    }
    let gpu_label = gpu.as_ref().map_or(String::new(), |c| {
        format!("gpu ({}, {})", c.backend.as_str(), c.adapter_name)
    });
    let label = |b: &str| {
        if b == "cpu" {
            "cpu".to_string()
        } else {
            gpu_label.clone()
        }
    };

    // 1. Throughput, one core.
    let pinned = set_affinity(&[0]);
    let input10 = batches(&probe.info, &probe.data, (rate / 100.0) as usize);
    println!();
    println!(
        "## spike_detect throughput, 384 AP + 1 SY channels at 30 kHz, {seconds} s of {} ({})",
        probe.label,
        if pinned {
            "pinned to one core"
        } else {
            "NOT pinned: sched_setaffinity failed"
        }
    );
    println!("| chain | batch | wall s | x real time | x real time after calibration | spikes | recall | precision |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ours_cpu_x = None;
    let mut si_row = None;
    let mut cpu_spikes = Vec::new();
    for b in &backends {
        let r = throughput(b, &input10, rate);
        let x = seconds / r.wall_s;
        let steady_x = r.steady_s.1 / r.steady_s.0;
        let scored = match (&probe.gt, &python) {
            (Some(gt), Some(py)) if b == "cpu" => score(py, gt, &r.spikes, tmp.path()),
            _ => None,
        };
        let (rec, prec) = scored
            .as_ref()
            .map(|v| {
                (
                    format!("{}", v["detections"]["recall"]),
                    format!("{}", v["detections"]["precision"]),
                )
            })
            .unwrap_or_else(|| match b.as_str() {
                "cpu" => (String::new(), String::new()),
                _ if r.spikes == cpu_spikes => ("same spikes as cpu".into(), String::new()),
                _ => ("spikes differ from cpu!".into(), String::new()),
            });
        println!(
            "| neurod spike_detect ({}) | 10 ms | {:.2} | {x:.1} | {steady_x:.1} | {} | {rec} | {prec} |",
            label(b),
            r.wall_s,
            r.spikes.len()
        );
        if b == "cpu" {
            ours_cpu_x = Some(x);
            si_row = scored.map(|v| v["spikeinterface"].clone());
            cpu_spikes = r.spikes;
        }
    }
    if let Some(si) = &si_row {
        println!(
            "| SpikeInterface 0.105 (bandpass, CMR, locally_exclusive; n_jobs=1, 1 s chunks) | 1 s | {} | {} | | {} | {} | {} |",
            si["wall_s"], si["realtime_x"], si["detections"], si["recall"], si["precision"]
        );
        if let (Some(ours), Some(theirs)) = (ours_cpu_x, si["realtime_x"].as_f64()) {
            println!();
            println!(
                "CPU speed-up over SpikeInterface on one core: **{:.0}×** (target ≥ 50×)",
                ours / theirs
            );
        }
    } else {
        println!("(SpikeInterface row: needs NEUROD_PYTHON with the peers and a groundtruth.py recording)");
    }

    // 3. Latency of 1 ms chunks.
    let input1 = batches(&probe.info, &probe.data, (rate / 1000.0) as usize);
    println!();
    println!(
        "## latency of 1 ms chunks (30 samples × 385 channels), from 1 s after the 2 s calibration window"
    );
    println!("| chain | measured | chunks | p50 µs | p99 µs | p99.9 µs | max µs | calibration release ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for b in &backends {
        let (mut lat, release) = latency_process(b, &input1, rate);
        let [p50, p99, p999, max] = quantiles(&mut lat);
        println!(
            "| {} | process() alone, one core | {} | {} | {} | {} | {} | {:.0} |",
            label(b),
            lat.len(),
            us(p50),
            us(p99),
            us(p999),
            us(max),
            release * 1e3
        );
        if cpus() > 1 {
            set_affinity(&(0..cpus()).collect::<Vec<_>>());
            let all = latency_through_inbox(b, input1.clone(), rate);
            set_affinity(&[0]);
            let calib_end = calibration_samples(rate);
            let steady_from = calib_end + rate as i64;
            let backlog = all
                .iter()
                .filter(|(first, _)| (calib_end..steady_from).contains(first))
                .map(|(_, l)| *l)
                .fold(0.0, f64::max);
            let mut lat: Vec<f64> = all
                .iter()
                .filter(|(first, _)| *first >= steady_from)
                .map(|(_, l)| *l)
                .collect();
            let [p50, p99, p999, max] = quantiles(&mut lat);
            println!(
                "| {} | send into the inbox → spike rows out, real-time producer on core 1 | {} | {} | {} | {} | {} | {:.0} (worst wait in the second after) |",
                label(b),
                lat.len(),
                us(p50),
                us(p99),
                us(p999),
                us(max),
                backlog * 1e3
            );
        }
    }
    println!();
    println!("target: p99.9 < 1000 µs");

    // 2. Probes in real time on all cores.
    let threads = cpus();
    set_affinity(&(0..threads).collect::<Vec<_>>());
    let trial_s = seconds.min(8.0);
    let trial_input: Arc<Vec<RecordBatch>> = Arc::new(
        input10
            .iter()
            .take((trial_s * 100.0) as usize)
            .cloned()
            .collect(),
    );
    println!();
    println!(
        "## 384-channel probes sustained in real time by the CPU chain on {threads} cores ({trial_s} s per trial, 10 ms batches, one thread per core)"
    );
    println!("| probes | worst lag s | lag at end s | keeps up |");
    println!("|---|---|---|---|");
    let mut good = 0;
    let mut bad = None;
    let mut n = 2;
    while n <= max_probes {
        let (worst, end) = realtime_probes(n, threads, &trial_input, rate);
        let ok = keeps_up(worst, end);
        println!(
            "| {n} | {worst:.3} | {end:.3} | {} |",
            if ok { "yes" } else { "no" }
        );
        if ok {
            good = n;
            n *= 2;
        } else {
            bad = Some(n);
            break;
        }
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        while hi - lo > (lo / 8).max(1) {
            let mid = (lo + hi) / 2;
            let (worst, end) = realtime_probes(mid, threads, &trial_input, rate);
            let ok = keeps_up(worst, end);
            println!(
                "| {mid} | {worst:.3} | {end:.3} | {} |",
                if ok { "yes" } else { "no" }
            );
            if ok {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        good = lo;
    }
    println!();
    println!(
        "probes sustained: **{good}**{} (target 16)",
        if bad.is_none() {
            format!(" (the most tried; NEUROD_BENCH_MAX_PROBES={max_probes})")
        } else {
            String::new()
        }
    );

    // 4. Real recording.
    set_affinity(&[0]);
    openephys_rates("cpu");
}
