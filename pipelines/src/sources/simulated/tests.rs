//! Black-box tests of the simulated rig through the `Source` interface.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, StringArray,
};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::component::{Output, Outputs, Shutdown};
use crate::edge::{Inbox, Recv};
use crate::metrics::Metrics;
use crate::stream::{keys, stream_id_of, ContinuousInfo};

const NOISE_COUNTS: f64 = 10.0 / NP1_UV_PER_BIT;

fn source(toml_text: &str) -> Box<dyn Source> {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    let ctx = BuildContext {
        id: "sim",
        data_dir: Path::new("/nonexistent"),
        inputs: &[],
    };
    match build(&ctx, table) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    }
}

/// Runs the source to its end (or until `stop_after`), returning every batch in arrival order.
fn run_with(
    toml_text: &str,
    ground_truth: bool,
    stop_after: Option<Duration>,
) -> (Vec<RecordBatch>, Duration) {
    let src = source(toml_text);
    let metrics = Metrics::new();
    let own = metrics.component("sim", "source", "simulated");
    let inbox = Inbox::new(64, metrics.component("sink", "sink", "test"));
    let mut outputs = Outputs::default();
    outputs.insert(
        "",
        Output::new(vec![inbox.sender()], src.overflow(), own.clone()),
    );
    let gt_senders = if ground_truth {
        vec![inbox.sender()]
    } else {
        vec![]
    };
    outputs.insert(
        GROUND_TRUTH_PORT,
        Output::new(gt_senders, src.overflow(), own.clone()),
    );
    let shutdown = Shutdown::new();
    let ctx = SourceContext {
        id: "sim".into(),
        outputs,
        shutdown: shutdown.clone(),
        metrics: own,
        resume: Default::default(),
    };
    let started = Instant::now();
    let worker = std::thread::spawn(move || src.run(ctx));
    let mut got = Vec::new();
    loop {
        if stop_after.is_some_and(|d| started.elapsed() >= d) {
            shutdown.trigger();
        }
        match inbox.recv_timeout(Duration::from_millis(20)) {
            Recv::Data(b) => got.push(b.into_record_batch()),
            Recv::Timeout => {}
            Recv::Closed => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "source never ended"
        );
    }
    worker.join().unwrap().unwrap();
    (got, started.elapsed())
}

fn run(toml_text: &str, ground_truth: bool) -> Vec<RecordBatch> {
    run_with(toml_text, ground_truth, None).0
}

fn by_stream(batches: &[RecordBatch]) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut m: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    for b in batches {
        let id = stream_id_of(&b.schema()).unwrap().to_string();
        m.entry(id).or_default().push(b.clone());
    }
    m
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

fn i64s(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| col::<Int64Array>(b, name).values().to_vec())
        .collect()
}

fn f64s(batches: &[RecordBatch], name: &str) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| col::<Float64Array>(b, name).values().to_vec())
        .collect()
}

fn i32s(batches: &[RecordBatch], name: &str) -> Vec<i32> {
    batches
        .iter()
        .flat_map(|b| col::<Int32Array>(b, name).values().to_vec())
        .collect()
}

fn strs(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            col::<StringArray>(b, name)
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn bools(batches: &[RecordBatch], name: &str) -> Vec<bool> {
    batches
        .iter()
        .flat_map(|b| {
            let a = col::<BooleanArray>(b, name);
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

/// One channel of a continuous stream, all batches concatenated.
fn channel(batches: &[RecordBatch], name: &str) -> Vec<i16> {
    batches
        .iter()
        .flat_map(|b| col::<Int16Array>(b, name).values().to_vec())
        .collect()
}

/// (sample_index, unit) of the true spikes of `stream`, and the unit → peak channel map.
struct Truth {
    stream: Vec<String>,
    sample: Vec<i64>,
    time: Vec<f64>,
    unit: Vec<i32>,
    channel: Vec<i32>,
}

fn truth(streams: &BTreeMap<String, Vec<RecordBatch>>) -> Truth {
    let ev = &streams["sim.ground_truth"];
    Truth {
        stream: strs(ev, "stream"),
        sample: i64s(ev, "sample_index"),
        time: f64s(ev, "time_s"),
        unit: i32s(ev, "unit"),
        channel: i32s(ev, "channel"),
    }
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn skewness(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let m2 = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
    let m3 = x.iter().map(|v| (v - m).powi(3)).sum::<f64>() / n;
    m3 / m2.powf(1.5)
}

#[test]
fn ap_stream_has_np1_schema_geometry_and_sync() {
    let got = run(
        "pace = 'max'\nduration_s = 0.6\ntwophoton = false\nbatch_ms = 100",
        false,
    );
    let streams = by_stream(&got);
    assert_eq!(
        streams.keys().collect::<Vec<_>>(),
        ["sim.behaviour", "sim.imec0.ap"]
    );
    let ap = &streams["sim.imec0.ap"];
    let schema = ap[0].schema();
    assert_eq!(schema.fields().len(), 1 + 384 + 1);
    let md = schema.metadata();
    assert_eq!(md[keys::SAMPLING_HZ], "30000");
    assert_eq!(md[keys::PROBE], "NP1000");
    assert_eq!(md[keys::STREAM_KIND], "ap");
    assert_eq!(md[keys::LAYOUT], "continuous");
    let info = ContinuousInfo::from_schema(&schema).unwrap();
    assert_eq!(info, ap_stream_info("sim.imec0.ap"));
    let ap0 = schema.field_with_name("AP0").unwrap().metadata();
    assert_eq!(ap0[keys::UV_PER_BIT], "2.34375");
    let xy: Vec<(f64, f64)> = info.channels[..5]
        .iter()
        .map(|c| (c.x_um.unwrap(), c.y_um.unwrap()))
        .collect();
    assert_eq!(
        xy,
        [
            (16.0, 0.0),
            (48.0, 0.0),
            (0.0, 20.0),
            (32.0, 20.0),
            (16.0, 40.0)
        ]
    );
    assert_eq!(info.channels[383].y_um, Some(3820.0));
    assert_eq!(info.channels[384].name, "SY0");

    let sy = channel(ap, "SY0");
    assert_eq!(sy.len(), 18_000);
    assert!(sy[..15_000].iter().all(|&v| v == 64));
    assert!(sy[15_000..].iter().all(|&v| v == 0));
    for name in ["AP0", "AP200", "AP383"] {
        let x = channel(ap, name);
        assert!(x.iter().all(|v| (-512..=511).contains(v)));
        let sd = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        // White noise at 10 µV plus a few µV of LFP, spikes and common mode.
        assert!(
            sd > NOISE_COUNTS * 0.95 && sd < NOISE_COUNTS * 2.0,
            "{name}: sd {sd} counts"
        );
    }
}

#[test]
fn same_seed_gives_identical_data_and_another_seed_does_not() {
    let opts = "pace = 'max'\nduration_s = 0.3\nrois = 8\nframe_size = 48";
    let a = run(opts, true);
    let b = run(opts, true);
    assert!(a.len() > 40);
    assert_eq!(a, b);
    let c = run(&format!("{opts}\nseed = 2"), true);
    let (sa, sc) = (by_stream(&a), by_stream(&c));
    assert_ne!(
        channel(&sa["sim.imec0.ap"], "AP100"),
        channel(&sc["sim.imec0.ap"], "AP100")
    );
    assert_ne!(sa["sim.twophoton"], sc["sim.twophoton"]);
}

#[test]
fn batch_size_cuts_the_same_recording() {
    let opts = "pace = 'max'\nduration_s = 0.5\nrois = 8\nframe_size = 48\nprobes = 2";
    let a = by_stream(&run(&format!("{opts}\nbatch_ms = 7"), true));
    let b = by_stream(&run(&format!("{opts}\nbatch_ms = 20"), true));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (id, batches) in &a {
        let joined = |v: &Vec<RecordBatch>| {
            arrow::compute::concat_batches(&v[0].schema(), v.iter()).unwrap()
        };
        assert_eq!(joined(batches), joined(&b[id]), "stream {id}");
    }
    assert_eq!(a["sim.imec0.ap"][0].num_rows(), 210);
    assert_eq!(b["sim.imec0.ap"][0].num_rows(), 600);
}

#[test]
fn true_spikes_of_a_big_unit_are_in_the_data() {
    let got = run("pace = 'max'\nduration_s = 5\ntwophoton = false", true);
    let streams = by_stream(&got);
    let units = &streams["sim.ground_truth_units"];
    assert_eq!(units.len(), 1, "units table is sent once");
    let amp = f64s(units, "amplitude_uv");
    let peak = i32s(units, "channel");
    assert_eq!(amp.len(), 60);
    assert!(amp.iter().all(|a| (50.0..=250.0).contains(a)));
    let big = (0..amp.len())
        .max_by(|&i, &j| amp[i].total_cmp(&amp[j]))
        .unwrap();
    assert!(amp[big] > 150.0, "largest unit only {} µV", amp[big]);

    let t = truth(&streams);
    assert!(t.stream.iter().all(|s| s == "sim.imec0.ap"));
    let ap = &streams["sim.imec0.ap"];
    let x = channel(ap, &format!("AP{}", peak[big]));
    let threshold = -4.0 * NOISE_COUNTS;
    let spikes: Vec<i64> = (0..t.unit.len())
        .filter(|&i| t.unit[i] == big as i32)
        .map(|i| t.sample[i])
        .collect();
    assert!(spikes.len() >= 5, "{} spikes", spikes.len());
    let at_spikes = spikes
        .iter()
        .filter(|&&s| (x[s as usize] as f64) < threshold)
        .count() as f64
        / spikes.len() as f64;
    let random = (0..2000)
        .map(|i| (i * 7919 + 13) % x.len())
        .filter(|&s| (x[s] as f64) < threshold)
        .count() as f64
        / 2000.0;
    assert!(at_spikes > 0.8, "only {at_spikes} of true spikes cross −4σ");
    assert!(random < 0.05, "{random} of random samples cross −4σ");

    // Every true spike once, in time order, with the unit's peak channel and its time.
    let mut seen = std::collections::HashSet::new();
    for i in 0..t.sample.len() {
        assert!(seen.insert((t.sample[i], t.unit[i])), "duplicate spike");
        if i > 0 {
            assert!(t.sample[i] >= t.sample[i - 1], "out of order at {i}");
        }
        assert_eq!(t.channel[i], peak[t.unit[i] as usize]);
        assert_eq!(t.time[i], t.sample[i] as f64 / 30_000.0);
        assert!((0..150_000).contains(&t.sample[i]));
    }
    // 60 units at 1–20 Hz (log-uniform, mean ≈ 6.3 Hz) for 5 s.
    let rate = t.sample.len() as f64 / 5.0 / 60.0;
    assert!((2.5..15.0).contains(&rate), "mean rate {rate} Hz");
}

#[test]
fn streams_stay_in_time_on_one_clock() {
    let got = run(
        "pace = 'max'\nduration_s = 1\nrois = 8\nframe_size = 48\nbatch_ms = 10",
        false,
    );
    let mut ap_start = -1;
    let mut ap_end = 0i64;
    let mut frames = Vec::new();
    let mut rows = Vec::new();
    for b in &got {
        match stream_id_of(&b.schema()).unwrap() {
            "sim.imec0.ap" => {
                let s = col::<Int64Array>(b, "sample_index");
                assert_eq!(s.value(0), ap_end, "AP batches must be contiguous");
                ap_start = s.value(0);
                ap_end = s.value(s.len() - 1) + 1;
            }
            "sim.twophoton" => {
                assert_eq!(b.num_rows(), 1, "one frame per batch");
                let k = col::<Int64Array>(b, "frame_index").value(0);
                let t = col::<Float64Array>(b, "time_s").value(0);
                assert_eq!(t, k as f64 / 30.0);
                let at = t * 30_000.0;
                assert!(
                    at >= ap_start as f64 && at < ap_end as f64,
                    "frame {k} at sample {at} sent with AP window {ap_start}..{ap_end}"
                );
                frames.push(k);
            }
            "sim.behaviour" => {
                let j = col::<Int64Array>(b, "sample_index");
                assert_eq!(b.num_rows(), 10);
                let last = j.value(9);
                assert!(last * 300 < ap_end && last * 300 >= ap_start - 3000);
                rows.extend(j.values().iter().copied());
                let t = col::<Float64Array>(b, "time_s");
                assert_eq!(t.value(0), j.value(0) as f64 / 100.0);
                let v = col::<Float32Array>(b, RUNNING_SPEED_COLUMN);
                assert!(v.values().iter().all(|&s| s >= 0.0 && s.is_finite()));
            }
            other => panic!("unexpected stream {other}"),
        }
    }
    assert_eq!(ap_end, 30_000);
    assert_eq!(frames, (0..30).collect::<Vec<_>>());
    assert_eq!(rows, (0..100).collect::<Vec<_>>());
}

#[test]
fn duration_is_respected_to_the_sample() {
    let got = run(
        "pace = 'max'\nduration_s = 0.105\nrois = 4\nframe_size = 32",
        true,
    );
    let s = by_stream(&got);
    let ap = &s["sim.imec0.ap"];
    assert_eq!(i64s(ap, "sample_index").len(), 3150);
    assert_eq!(ap.last().unwrap().num_rows(), 150);
    assert_eq!(i64s(&s["sim.twophoton"], "frame_index"), [0, 1, 2, 3]);
    let beh = &s["sim.behaviour"];
    assert_eq!(
        beh.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        [10, 1],
        "the last partial batch of rows is kept"
    );
    let t = truth(&s);
    assert!(t.time.iter().all(|&x| x < 0.105));
}

#[test]
fn running_speed_is_driven_by_the_driver_units_only() {
    let got = run("pace = 'max'\nduration_s = 40\ntwophoton = false", true);
    let s = by_stream(&got);
    let units = &s["sim.ground_truth_units"];
    let driver = bools(units, "driver");
    let bursty = bools(units, "bursty");
    let rate = f64s(units, "rate_hz");
    assert_eq!(driver.iter().filter(|&&d| d).count(), DRIVER_UNITS);

    let speed: Vec<f64> = s["sim.behaviour"]
        .iter()
        .flat_map(|b| {
            col::<Float32Array>(b, RUNNING_SPEED_COLUMN)
                .values()
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(speed.len(), 4000);
    // 100 ms bins.
    let bins = 400;
    let speed_bins: Vec<f64> = speed
        .chunks(10)
        .map(|c| c.iter().sum::<f64>() / 10.0)
        .collect();
    let t = truth(&s);
    let counts = |pick: &dyn Fn(usize) -> bool| {
        let mut c = vec![0.0; bins];
        for i in 0..t.unit.len() {
            if pick(t.unit[i] as usize) {
                c[(t.sample[i] / 3000) as usize] += 1.0;
            }
        }
        c
    };
    let drivers = counts(&|u| driver[u]);
    let r = correlation(&speed_bins, &drivers);
    assert!(r > 0.5, "speed vs driver spikes: r = {r}");
    let other = (0..driver.len())
        .filter(|&u| !driver[u] && !bursty[u])
        .max_by(|&a, &b| rate[a].total_cmp(&rate[b]))
        .unwrap();
    let r_other = correlation(&speed_bins, &counts(&|u| u == other));
    assert!(
        r_other.abs() < 0.2,
        "speed vs non-driver unit {other}: r = {r_other}"
    );
    let running = speed.iter().filter(|&&v| v > 5.0).count() as f64 / speed.len() as f64;
    assert!(
        (0.1..0.8).contains(&running),
        "running {running} of the time"
    );
}

#[test]
fn two_photon_rois_show_bursty_and_steady_calcium() {
    let got = run(
        "pace = 'max'\nduration_s = 120\nprobes = 0\nrois = 20\nframe_size = 64",
        true,
    );
    let s = by_stream(&got);
    let frames = &s["sim.twophoton"];
    let md = frames[0].schema().metadata().clone();
    assert_eq!(md[keys::LAYOUT], "frames");
    assert_eq!(md[keys::HEIGHT], "64");
    assert_eq!(md[keys::WIDTH], "64");
    assert_eq!(md[keys::SAMPLING_HZ], "30");
    assert_eq!(md[keys::STREAM_KIND], "twophoton");
    assert_eq!(frames.len(), 3600);
    let units = &s["sim.ground_truth_units"];
    let (cx, cy) = (f64s(units, "x_um"), f64s(units, "y_um"));
    let bursty = bools(units, "bursty");
    assert_eq!(bursty.iter().filter(|&&b| b).count(), 7);

    // ROI trace: mean of the pixels within 3 px of the centre.
    let masks: Vec<Vec<usize>> = (0..20)
        .map(|r| {
            (0..64 * 64)
                .filter(|p| {
                    let (x, y) = ((p % 64) as f64 + 0.5, (p / 64) as f64 + 0.5);
                    (x - cx[r]).powi(2) + (y - cy[r]).powi(2) <= 9.0
                })
                .collect()
        })
        .collect();
    let mut traces: Vec<Vec<f64>> = vec![Vec::new(); 20];
    let mut frame_mean = 0.0;
    for b in frames {
        let list = col::<FixedSizeListArray>(b, "pixels");
        assert_eq!(list.value_length(), 64 * 64);
        let px = list.values().as_any().downcast_ref::<Int16Array>().unwrap();
        let px = px.values();
        frame_mean += px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64 / 3600.0;
        for (r, m) in masks.iter().enumerate() {
            traces[r].push(m.iter().map(|&p| px[p] as f64).sum::<f64>() / m.len() as f64);
        }
    }
    let roi_mean = traces
        .iter()
        .map(|t| t.iter().sum::<f64>() / 3600.0)
        .sum::<f64>()
        / 20.0;
    assert!(
        roi_mean > 1.5 * frame_mean,
        "somata {roi_mean} vs frame {frame_mean}"
    );
    let skews: Vec<f64> = traces.iter().map(|t| skewness(t)).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bursty_skew = median((0..20).filter(|&r| bursty[r]).map(|r| skews[r]).collect());
    let steady_skew = median((0..20).filter(|&r| !bursty[r]).map(|r| skews[r]).collect());
    assert!(bursty_skew > 2.0, "bursty ROIs: median skew {bursty_skew}");
    assert!(
        steady_skew < 1.0,
        "steady ROIs: median skew {steady_skew}; {skews:?}"
    );

    // A two-photon spike is dated to the first frame taken at or after it.
    let t = truth(&s);
    assert!(!t.sample.is_empty());
    for i in 0..t.sample.len() {
        assert_eq!(t.stream[i], "sim.twophoton");
        let k = t.sample[i] as f64;
        assert!(k / 30.0 >= t.time[i] - 1e-9 && (k - 1.0) / 30.0 < t.time[i]);
        assert_eq!(t.channel[i], t.unit[i]);
    }
}

#[test]
fn one_second_of_a_probe_takes_under_a_second_at_max_pace() {
    let options = SimulatedOptions {
        twophoton: false,
        pace: Pace::Max,
        ..SimulatedOptions::default()
    };
    let stats = generate(&options, 1.0, true).unwrap();
    assert_eq!(stats.data_seconds, 1.0);
    assert!(stats.rows >= 30_000);
    assert!(
        stats.wall_seconds < 1.0,
        "1 s of one probe took {:.3} s",
        stats.wall_seconds
    );
    eprintln!(
        "simulated probe: {:.1}x real time in this profile",
        stats.times_realtime()
    );
}

#[test]
fn realtime_pace_follows_the_clock_and_stops_promptly() {
    let src = source("");
    assert_eq!(src.overflow(), Overflow::DropOldest);
    assert_eq!(source("pace = 'max'").overflow(), Overflow::Block);
    let (got, elapsed) = run_with(
        "rois = 4\nframe_size = 32",
        false,
        Some(Duration::from_millis(400)),
    );
    assert!(
        elapsed < Duration::from_millis(400 + 500),
        "took {elapsed:?} to stop"
    );
    let samples = i64s(&by_stream(&got)["sim.imec0.ap"], "sample_index").len() as f64;
    let seconds = samples / 30_000.0;
    assert!(
        (0.2..=0.5).contains(&seconds),
        "{seconds} s of data in 0.4 s of wall time"
    );
}

#[test]
fn ground_truth_is_made_only_when_asked() {
    let options = SimulatedOptions {
        rois: 4,
        frame_size: 32,
        ..SimulatedOptions::default()
    };
    let mut rig = Rig::new("sim", &options).unwrap();
    let w = rig.next_window(false).unwrap().unwrap();
    assert!(w.batches.iter().all(|(port, _)| port.is_empty()));
    let w = rig.next_window(true).unwrap().unwrap();
    assert!(w.batches.iter().any(|(port, b)| *port == GROUND_TRUTH_PORT
        && stream_id_of(&b.schema()) == Some("sim.ground_truth_units")));
}

#[test]
fn bad_options_are_all_reported_by_key() {
    let build_err = |text: &str| {
        let table: toml::Table = toml::from_str(text).unwrap();
        let ctx = BuildContext {
            id: "sim",
            data_dir: Path::new("/nonexistent"),
            inputs: &[],
        };
        match build(&ctx, table) {
            Ok(_) => panic!("{text} was accepted"),
            Err(e) => e,
        }
    };
    let e = build_err("seeed = 3");
    assert!(e[0].contains("sim") && e[0].contains("seeed"), "{e:?}");
    let e = build_err("batch_ms = 0\nnoise_uv = -1\nframe_rate_hz = 0");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().any(|m| m.contains("`batch_ms` = 0")));
    assert!(e.iter().any(|m| m.contains("`noise_uv` = -1")));
    let e = build_err("rois = 400\nframe_size = 32");
    assert!(
        e[0].contains("`rois` = 400") && e[0].contains("32×32"),
        "{e:?}"
    );
    let e = build_err("probes = 0\ntwophoton = false");
    assert!(e[0].contains("nothing to simulate"), "{e:?}");
    let e = build_err("pace = 'fast'");
    assert!(e[0].contains("fast"), "{e:?}");
}
