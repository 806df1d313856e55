use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, Float32Array, Float64Array, Int64Array};
use kernels::teb::{Dims, Hidden, StepOutput, TebCpu};

use super::*;
use crate::component::Emitter;

const SOURCE: &str = "probe.bins";
const TARGET: &str = "rig.behaviour";
const BIN_S: f64 = 0.02;
/// Source rows at 100 Hz (two per bin), target rows at 50 Hz (one per bin).
const SOURCE_ROW_S: f64 = 0.01;

fn dims() -> Dims {
    Dims {
        source: 3,
        target: 2,
        latent: 3,
        hidden: Hidden {
            target_lstm: 4,
            source_lstm: 5,
            source_mlp: 6,
        },
    }
}

/// A random model reading `SOURCE` x0..x2 and `TARGET` y0, y1, with a normalisation that is not
/// the identity (so raw units matter).
fn model(seed: u64) -> TebModel {
    let mut m = TebModel::random(dims(), seed);
    m.config.source.stream_id = SOURCE.into();
    m.config.target.stream_id = TARGET.into();
    m.config.normalisation.source_mean = vec![0.5, -1.0, 2.0];
    m.config.normalisation.source_std = vec![1.5, 0.5, 3.0];
    m.config.normalisation.target_mean = vec![10.0, -3.0];
    m.config.normalisation.target_std = vec![4.0, 2.0];
    m
}

fn model_dir(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    model(seed).save(&path).unwrap();
    (dir, path)
}

fn build_with(id: &str, dir: &Path, extra: &str) -> TebDecode {
    let options = format!("model = {:?}\n{extra}", dir.display().to_string());
    build_decode(
        &BuildContext {
            id,
            data_dir: "/tmp".as_ref(),
            inputs: &["features".into(), "rig".into()],
        },
        toml::from_str(&options).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn x_value(row: usize, c: usize) -> f32 {
    ((row * 3 + c) as f32 * 0.37).sin() * (c as f32 + 1.0)
}

fn y_value(bin: usize, c: usize) -> f32 {
    10.0 + ((bin as f32) * 0.21 + c as f32).cos() * 5.0
}

fn table(
    stream: &str,
    rate: &str,
    time: Vec<f64>,
    columns: Vec<(String, Vec<f32>)>,
) -> RecordBatch {
    let md: HashMap<String, String> = [
        (keys::STREAM_ID.to_string(), stream.to_string()),
        (keys::LAYOUT.to_string(), "table".to_string()),
        (keys::SAMPLING_HZ.to_string(), rate.to_string()),
    ]
    .into();
    let mut fields = vec![Field::new(TIME_S, DataType::Float64, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(Float64Array::from(time))];
    for (name, v) in columns {
        fields.push(Field::new(name, DataType::Float32, false));
        arrays.push(Arc::new(Float32Array::from(v)));
    }
    RecordBatch::try_new(Arc::new(Schema::new_with_metadata(fields, md)), arrays).unwrap()
}

/// Source rows `rows` (100 Hz), one batch.
fn source_rows(rows: &[usize]) -> RecordBatch {
    table(
        SOURCE,
        "100",
        rows.iter().map(|&r| r as f64 * SOURCE_ROW_S).collect(),
        (0..3)
            .map(|c| {
                (
                    format!("x{c}"),
                    rows.iter().map(|&r| x_value(r, c)).collect(),
                )
            })
            .collect(),
    )
}

/// Target rows of bins `bins` (50 Hz), one batch.
fn target_rows(bins: &[usize]) -> RecordBatch {
    table(
        TARGET,
        "50",
        bins.iter().map(|&b| b as f64 * BIN_S).collect(),
        (0..2)
            .map(|c| {
                (
                    format!("y{c}"),
                    bins.iter().map(|&b| y_value(b, c)).collect(),
                )
            })
            .collect(),
    )
}

/// Source bin `k`'s value as the binner makes it: the f64 mean of its two rows.
fn x_bin(k: usize) -> Vec<f32> {
    (0..3)
        .map(|c| ((f64::from(x_value(2 * k, c)) + f64::from(x_value(2 * k + 1, c))) / 2.0) as f32)
        .collect()
}

fn y_bin(k: usize) -> Vec<f32> {
    (0..2).map(|c| y_value(k, c)).collect()
}

#[derive(Debug, Clone, PartialEq)]
struct OutRow {
    time_s: f64,
    bin: i64,
    predicted: Vec<f32>,
    target_only: Vec<f32>,
    actual: Option<Vec<f32>>,
    rate_nats: f32,
    rate_bits_per_s: f32,
}

fn f32_col<'a>(b: &'a RecordBatch, name: &str) -> &'a Float32Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap()
}

fn out_rows(out: &Emitter) -> Vec<OutRow> {
    let mut rows = Vec::new();
    for (port, b) in &out.batches {
        assert!(port.is_empty());
        let md = b.schema().metadata().clone();
        assert!(md[keys::STREAM_ID].starts_with(&format!("{TARGET}.")));
        assert_eq!(md[TARGET_STREAM_KEY], TARGET);
        let t = b.column(0).as_any().downcast_ref::<Float64Array>().unwrap();
        let k = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let cols = |p: &str| -> Vec<&Float32Array> {
            (0..2).map(|c| f32_col(b, &format!("{p}y{c}"))).collect()
        };
        let (p, o, a) = (cols("predicted_"), cols("target_only_"), cols("actual_"));
        for i in 0..b.num_rows() {
            let actual = a[0]
                .is_valid(i)
                .then(|| a.iter().map(|c| c.value(i)).collect());
            rows.push(OutRow {
                time_s: t.value(i),
                bin: k.value(i),
                predicted: p.iter().map(|c| c.value(i)).collect(),
                target_only: o.iter().map(|c| c.value(i)).collect(),
                actual,
                rate_nats: f32_col(b, RATE_NATS).value(i),
                rate_bits_per_s: f32_col(b, RATE_BITS_PER_S).value(i),
            });
        }
    }
    rows
}

/// What one step of `model` gives on the bins, stepped in order with a reset before each bin
/// in `resets_before`: (predicted bin, output) per step.
fn reference(m: &TebModel, bins: &[usize], resets_before: &[usize]) -> Vec<(i64, StepOutput)> {
    let mut cpu = TebCpu::new(m);
    let mut out = StepOutput::for_model(m);
    bins.iter()
        .map(|&k| {
            if resets_before.contains(&k) {
                cpu.reset();
            }
            cpu.step(&x_bin(k), &y_bin(k), &mut out);
            (k as i64 + 1, out.clone())
        })
        .collect()
}

fn src() -> Input {
    Input::new(0, "features")
}
fn tgt() -> Input {
    Input::new(1, "rig")
}

/// Feeds `batches` (input, batch) then finishes; the rows out.
fn run(tr: &mut TebDecode, batches: Vec<(Input, RecordBatch)>) -> Vec<OutRow> {
    let mut ctx = TransformContext::detached("t");
    for (input, b) in batches {
        tr.process(&input, b, &mut ctx).unwrap();
    }
    tr.finish(&mut ctx).unwrap();
    assert_eq!(ctx.out.undeclared_ports(&tr.ports()), Vec::<String>::new());
    out_rows(&ctx.out)
}

/// `n` items cut into chunks of the sizes in `sizes`, cycled.
fn chunks(n: usize, sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for &s in sizes.iter().cycle() {
        if start >= n {
            break;
        }
        let end = (start + s).min(n);
        out.push((start..end).collect());
        start = end;
    }
    out
}

/// Source and target batches put in one order.
type Interleave = fn(Vec<RecordBatch>, Vec<RecordBatch>) -> Vec<(Input, RecordBatch)>;

#[test]
fn rows_are_the_model_stepped_on_the_bins_however_the_inputs_are_chunked() {
    let (_d, dir) = model_dir(1);
    let m = model(1);
    let bins = 60;
    let whole = run(
        &mut build_with("dec", &dir, ""),
        vec![
            (src(), source_rows(&(0..2 * bins).collect::<Vec<_>>())),
            (tgt(), target_rows(&(0..bins).collect::<Vec<_>>())),
        ],
    );
    // Every bin but the last predicts the next; the last has no actual value.
    let expected = reference(&m, &(0..bins).collect::<Vec<_>>(), &[]);
    assert_eq!(whole.len(), bins);
    let window = (1.0f64 / BIN_S).round() as usize;
    for (i, (row, (k, want))) in whole.iter().zip(&expected).enumerate() {
        assert_eq!(row.bin, *k);
        assert_eq!(row.time_s, *k as f64 * BIN_S);
        assert_eq!(row.predicted, want.prediction);
        assert_eq!(row.target_only, want.target_only);
        assert_eq!(row.rate_nats, want.rate_nats);
        let lo = (i + 1).saturating_sub(window);
        let mean: f64 = expected[lo..=i]
            .iter()
            .map(|(_, o)| f64::from(o.rate_nats))
            .sum::<f64>()
            / (i + 1 - lo) as f64;
        let bps = (mean / BIN_S / std::f64::consts::LN_2) as f32;
        assert!(
            (row.rate_bits_per_s - bps).abs() <= 1e-5 * bps.abs().max(1.0),
            "{i}"
        );
        let actual = (*k < bins as i64).then(|| y_bin(*k as usize));
        assert_eq!(row.actual, actual, "bin {k}");
    }
    // Irregular chunks, interleaved three ways: the same rows.
    let interleavings: [Interleave; 3] = [
        |s, t| {
            s.into_iter()
                .map(|b| (src(), b))
                .chain(t.into_iter().map(|b| (tgt(), b)))
                .collect()
        },
        |s, t| {
            t.into_iter()
                .map(|b| (tgt(), b))
                .chain(s.into_iter().map(|b| (src(), b)))
                .collect()
        },
        |s, t| {
            let mut out = Vec::new();
            let (mut s, mut t) = (s.into_iter(), t.into_iter());
            loop {
                let (a, b) = (s.next(), t.next());
                if a.is_none() && b.is_none() {
                    break out;
                }
                out.extend(a.map(|b| (src(), b)));
                out.extend(b.map(|b| (tgt(), b)));
            }
        },
    ];
    for (n, interleave) in interleavings.iter().enumerate() {
        let s = chunks(2 * bins, &[1, 7, 3, 13, 2])
            .iter()
            .map(|c| source_rows(c))
            .collect();
        let t = chunks(bins, &[5, 1, 2, 11])
            .iter()
            .map(|c| target_rows(c))
            .collect();
        let rows = run(&mut build_with("dec", &dir, ""), interleave(s, t));
        assert_eq!(rows, whole, "interleaving {n}");
    }
}

#[test]
fn a_gap_resets_the_state_is_counted_and_never_filled_in() {
    let (_d, dir) = model_dir(2);
    let m = model(2);
    // Source bins 10..13 missing; target bin 30 missing.
    let source: Vec<usize> = (0..100).filter(|r| !(20..26).contains(r)).collect();
    let target: Vec<usize> = (0..50).filter(|b| *b != 30).collect();
    let mut tr = build_with("gap", &dir, "");
    let rows = run(
        &mut tr,
        vec![(src(), source_rows(&source)), (tgt(), target_rows(&target))],
    );
    let stepped: Vec<usize> = (0..50)
        .filter(|k| !(10..13).contains(k) && *k != 30)
        .collect();
    let expected = reference(&m, &stepped, &[13, 31]);
    assert_eq!(
        rows.iter().map(|r| r.bin).collect::<Vec<_>>(),
        expected.iter().map(|(k, _)| *k).collect::<Vec<_>>()
    );
    for (row, (k, want)) in rows.iter().zip(&expected) {
        assert_eq!(row.predicted, want.prediction, "bin {k}");
        let actual = (*k != 30 && *k < 50).then(|| y_bin(*k as usize));
        assert_eq!(row.actual, actual, "bin {k}");
    }
    // The row predicting bin 10 has its actual value though the source lacks that bin.
    assert!(rows.iter().any(|r| r.bin == 10 && r.actual.is_some()));
    assert_eq!(tr.core.handles.gaps.get(), 2);
    assert_eq!(tr.core.handles.gap_bins.get(), 4);
}

/// A record as the module docs lay it out.
#[derive(Debug, PartialEq)]
struct Parsed {
    flags: u16,
    generation: u32,
    sequence: u64,
    bin: i64,
    time_s: f64,
    rate_nats: f32,
    rate_bits_per_s: f32,
    predictions: Vec<f32>,
}

fn parse(d: &[u8]) -> Parsed {
    let u16_at = |o: usize| u16::from_le_bytes(d[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    let f32_at = |o: usize| f32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    assert_eq!(&d[..4], b"NTEB");
    assert_eq!(u16_at(4), 1);
    let n = u32_at(8) as usize;
    assert_eq!(d.len(), 48 + 4 * n);
    Parsed {
        flags: u16_at(6),
        generation: u32_at(12),
        sequence: u64_at(16),
        bin: u64_at(24) as i64,
        time_s: f64::from_bits(u64_at(32)),
        rate_nats: f32_at(40),
        rate_bits_per_s: f32_at(44),
        predictions: (0..n).map(|i| f32_at(48 + 4 * i)).collect(),
    }
}

fn gap_data() -> Vec<(Input, RecordBatch)> {
    let source: Vec<usize> = (0..80).filter(|r| !(40..44).contains(r)).collect();
    vec![
        (src(), source_rows(&source)),
        (tgt(), target_rows(&(0..40).collect::<Vec<_>>())),
    ]
}

/// Records and rows agree field by field; flags mark the first step and the one after the gap.
fn check_records(records: &[Parsed], rows: &[OutRow]) {
    assert_eq!(records.len(), rows.len());
    for (i, (r, row)) in records.iter().zip(rows).enumerate() {
        assert_eq!(r.sequence, i as u64);
        assert_eq!(r.bin, row.bin);
        assert_eq!(r.time_s, row.time_s);
        assert_eq!(r.rate_nats, row.rate_nats);
        assert_eq!(r.rate_bits_per_s, row.rate_bits_per_s);
        assert_eq!(r.predictions, row.predicted);
        assert_eq!(r.generation, 0);
        let reset = r.bin == 1 || r.bin == 23; // steps at bins 0 and 22 (after 20, 21 missing)
        assert_eq!(r.flags, u16::from(reset), "bin {}", r.bin);
    }
}

#[test]
fn udp_records_are_the_rows_sent_as_documented() {
    let (_d, dir) = model_dir(3);
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tr = build_with("udp", &dir, &format!("emit_to = \"udp://{addr}\""));
    let rows = run(&mut tr, gap_data());
    let mut buf = [0u8; 1024];
    let records: Vec<Parsed> = (0..rows.len())
        .map(|_| {
            let n = listener.recv(&mut buf).unwrap();
            parse(&buf[..n])
        })
        .collect();
    check_records(&records, &rows);
    assert_eq!(tr.core.handles.records_sent.get(), rows.len() as u64);
}

#[test]
fn unix_records_too_and_a_missing_reader_is_counted_not_fatal() {
    let (d, dir) = model_dir(4);
    let path = d.path().join("decode.sock");
    let emit = format!("emit_to = \"unix://{}\"", path.display());
    // No reader yet: every record fails, every row still goes.
    let mut tr = build_with("unix", &dir, &emit);
    let rows = run(&mut tr, gap_data());
    assert_eq!(rows.len(), 38);
    assert_eq!(tr.core.handles.records_failed.get(), 38);
    assert_eq!(tr.core.handles.records_sent.get(), 0);
    let reader = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A Unix datagram queue holds few records (net.unix.max_dgram_qlen, 10 by default): the
    // reader takes each as it comes, as a controller would.
    reader.set_nonblocking(true).unwrap();
    let mut tr = build_with("unix", &dir, &emit);
    let mut ctx = TransformContext::detached("t");
    let mut buf = [0u8; 1024];
    let mut records = Vec::new();
    for (input, b) in gap_data() {
        // One batch per bin, so that a call sends at most one record.
        let per_bin = if input.index == 0 { 2 } else { 1 };
        for start in (0..b.num_rows()).step_by(per_bin) {
            let part = b.slice(start, per_bin.min(b.num_rows() - start));
            tr.process(&input, part, &mut ctx).unwrap();
            while let Ok(n) = reader.recv(&mut buf) {
                records.push(parse(&buf[..n]));
            }
        }
    }
    tr.finish(&mut ctx).unwrap();
    while let Ok(n) = reader.recv(&mut buf) {
        records.push(parse(&buf[..n]));
    }
    check_records(&records, &out_rows(&ctx.out));
}

/// NEUROD_PYTHON, else python3 (the reader needs the standard library only).
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NEUROD_PYTHON").filter(|p| Path::new(p).exists()) {
        return Some(p.into());
    }
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must have a Python");
        eprintln!("SKIPPED: no NEUROD_PYTHON and no python3");
    }
    ok.then(|| "python3".into())
}

#[test]
fn the_python_reader_parses_the_records_as_the_rows_say() {
    let Some(py) = python() else { return };
    let (_d, dir) = model_dir(5);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/teb_udp_reader.py");
    let mut child = std::process::Command::new(py)
        .arg(&script)
        .args([
            "--listen",
            "udp://127.0.0.1:0",
            "--json",
            "--count",
            "38",
            "--timeout",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first.strip_prefix("listening on ").unwrap().to_string();
    let mut tr = build_with("py", &dir, &format!("emit_to = \"{address}\""));
    let rows = run(&mut tr, gap_data());
    let records: Vec<Parsed> = lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            let f = |k: &str| v[k].as_f64().unwrap();
            Parsed {
                flags: v["flags"].as_u64().unwrap() as u16,
                generation: v["model_generation"].as_u64().unwrap() as u32,
                sequence: v["sequence"].as_u64().unwrap(),
                bin: v["bin_index"].as_i64().unwrap(),
                time_s: f("time_s"),
                rate_nats: f("rate_nats") as f32,
                rate_bits_per_s: f("rate_bits_per_s") as f32,
                predictions: v["predictions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect();
    assert!(child.wait().unwrap().success());
    check_records(&records, &rows);
}

/// Drives `tr` over `bins`, one bin per input and batch; `before(k)` runs before bin k.
fn drive(
    tr: &mut TebDecode,
    ctx: &mut TransformContext,
    bins: std::ops::Range<usize>,
    mut before: impl FnMut(usize, &mut TebDecode, &mut TransformContext),
) {
    for k in bins {
        before(k, tr, ctx);
        tr.process(&src(), source_rows(&[2 * k, 2 * k + 1]), ctx)
            .unwrap();
        tr.process(&tgt(), target_rows(&[k]), ctx).unwrap();
    }
}

#[test]
fn a_new_model_is_swapped_in_mid_stream_warmed_and_without_a_gap() {
    let (_d, dir) = model_dir(6);
    let (a, b) = (model(6), model(7));
    let mut tr = build_with("reload", &dir, "");
    tr.reloader.poll_every = Duration::ZERO;
    let mut ctx = TransformContext::detached("t");
    // The bin whose step was the new model's first.
    let mut swapped_at = None;
    drive(&mut tr, &mut ctx, 0..80, |k, tr, ctx| {
        if k == 40 {
            b.save(&dir).unwrap();
        }
        // Two polls see the change settle (bin 40's two batches); the loader then runs while
        // the data goes on, and a later poll swaps it in. Here it is waited for at the latest.
        if k == 60 && tr.core.generation == 0 {
            assert!(tr.wait_reload(ctx), "a load was started");
        }
        if swapped_at.is_none() && tr.core.generation == 1 {
            swapped_at = Some(k);
        }
    });
    tr.finish(&mut ctx).unwrap();
    let rows = out_rows(&ctx.out);
    assert_eq!(
        rows.iter().map(|r| r.bin).collect::<Vec<_>>(),
        (1..=80).collect::<Vec<i64>>(),
        "no bin missed"
    );
    assert_eq!(tr.core.handles.reload_ok.get(), 1);
    assert_eq!(tr.core.generation, 1);
    // Before the swap, model A; after, model B as if it had run from the start (the ring holds
    // the whole run), caught up on the bins decoded while it loaded. The swap happens at the
    // start of a batch: the step of bin k-1 (in its target batch) may already be B's.
    let all: Vec<usize> = (0..80).collect();
    let (ra, rb) = (reference(&a, &all, &[]), reference(&b, &all, &[]));
    let swap = swapped_at.unwrap();
    assert!((41..=60).contains(&swap), "{swap}");
    for (i, row) in rows.iter().enumerate() {
        if i + 1 < swap {
            assert_eq!(row.predicted, ra[i].1.prediction, "row {i}");
        } else if i >= swap {
            assert_eq!(row.predicted, rb[i].1.prediction, "row {i}");
        } else {
            assert!(row.predicted == ra[i].1.prediction || row.predicted == rb[i].1.prediction);
        }
    }
    assert_ne!(ra[swap].1.prediction, rb[swap].1.prediction);
}

#[test]
fn a_bad_or_unfitting_model_is_refused_and_the_old_one_runs_on() {
    let (_d, dir) = model_dir(8);
    let a = model(8);
    let mut tr = build_with("refuse", &dir, "");
    tr.reloader.poll_every = Duration::ZERO;
    let mut ctx = TransformContext::detached("t");
    drive(&mut tr, &mut ctx, 0..60, |k, tr, ctx| match k {
        10 => {
            let mut other = model(9);
            other.config.target.columns[1] = "z".into();
            other.save(&dir).unwrap();
        }
        20 => {
            // The load started at bin 10 has finished or is waited for here.
            tr.wait_reload(ctx);
            assert_eq!(tr.core.handles.reload_failed.get(), 1);
            std::fs::write(dir.join("weights.safetensors"), b"not a model").unwrap();
        }
        30 => {
            tr.wait_reload(ctx);
        }
        _ => {}
    });
    tr.finish(&mut ctx).unwrap();
    assert_eq!(tr.core.handles.reload_failed.get(), 2);
    assert_eq!(tr.core.handles.reload_ok.get(), 0);
    assert_eq!(ctx.metrics.errors_total(), 2);
    let last = ctx.metrics.status().last_error.unwrap();
    assert!(last.contains("weights.safetensors"), "{last}");
    let rows = out_rows(&ctx.out);
    let expected = reference(&a, &(0..60).collect::<Vec<_>>(), &[]);
    assert_eq!(rows.len(), 60);
    for (row, (k, want)) in rows.iter().zip(&expected) {
        assert_eq!(row.bin, *k);
        assert_eq!(row.predicted, want.prediction);
    }
}

#[test]
fn bad_batches_are_errors_naming_the_input_other_streams_are_passed_by() {
    let (_d, dir) = model_dir(10);
    let mut tr = build_with("bad", &dir, "");
    let mut ctx = TransformContext::detached("t");
    // The model's source stream without x1.
    let b = table(
        SOURCE,
        "100",
        vec![0.0],
        vec![("x0".into(), vec![1.0]), ("x2".into(), vec![1.0])],
    );
    let e = tr.process(&src(), b, &mut ctx).unwrap_err().to_string();
    assert!(
        e.contains("input `features`") && e.contains("`x1`") && e.contains("source"),
        "{e}"
    );
    // A traces stream, or one without a layout.
    let mut md = HashMap::new();
    md.insert(keys::LAYOUT.to_string(), "traces".to_string());
    let traces =
        RecordBatch::new_empty(Arc::new(Schema::new_with_metadata(Vec::<Field>::new(), md)));
    let e = tr
        .process(&tgt(), traces, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("input `rig`") && e.contains("traces"), "{e}");
    // Another stream on the target input without the columns: passed by.
    let other = table("rig.other", "100", vec![0.0], vec![("q".into(), vec![1.0])]);
    tr.process(&tgt(), other, &mut ctx).unwrap();
    // A source table whose time_s is not Float64.
    let md: HashMap<String, String> = [
        (keys::STREAM_ID.to_string(), SOURCE.to_string()),
        (keys::LAYOUT.to_string(), "table".to_string()),
    ]
    .into();
    let fields: Vec<Field> = [TIME_S, "x0", "x1", "x2"]
        .iter()
        .map(|n| Field::new(*n, DataType::Float32, false))
        .collect();
    let cols: Vec<ArrayRef> = (0..4)
        .map(|_| Arc::new(Float32Array::from(vec![0.0f32])) as ArrayRef)
        .collect();
    let b = RecordBatch::try_new(Arc::new(Schema::new_with_metadata(fields, md)), cols).unwrap();
    let e = tr.process(&src(), b, &mut ctx).unwrap_err().to_string();
    assert!(e.contains("input `features`") && e.contains(TIME_S), "{e}");
    assert!(ctx.out.batches.is_empty());
}

#[test]
fn a_stream_with_the_columns_is_decoded_until_the_models_own_id_appears() {
    let (_d, dir) = model_dir(11);
    let m = model(11);
    let renamed = |b: RecordBatch, id: &str| {
        let mut md = b.schema().metadata().clone();
        md.insert(keys::STREAM_ID.to_string(), id.to_string());
        let schema = Arc::new(b.schema().as_ref().clone().with_metadata(md));
        RecordBatch::try_new(schema, b.columns().to_vec()).unwrap()
    };
    let mut tr = build_with("dec", &dir, "");
    let rows = run(
        &mut tr,
        vec![
            (
                src(),
                renamed(source_rows(&(0..40).collect::<Vec<_>>()), "probe1.bins"),
            ),
            (tgt(), target_rows(&(0..40).collect::<Vec<_>>())),
            // The model's own source stream: decoding restarts on it.
            (src(), source_rows(&(40..80).collect::<Vec<_>>())),
            // probe1 again: passed by now.
            (
                src(),
                renamed(source_rows(&(80..100).collect::<Vec<_>>()), "probe1.bins"),
            ),
        ],
    );
    let expected = reference(&m, &(0..40).collect::<Vec<_>>(), &[20]);
    assert_eq!(rows.len(), 40);
    for (row, (k, want)) in rows.iter().zip(&expected) {
        assert_eq!(row.bin, *k);
        assert_eq!(row.predicted, want.prediction, "bin {k}");
    }
}

#[test]
fn build_checks_the_model_the_inputs_and_the_options() {
    let two = ["a".to_string(), "b".to_string()];
    let errors = |inputs: &[String], o: &str| {
        let ctx = BuildContext {
            id: "c",
            data_dir: "/tmp".as_ref(),
            inputs,
        };
        build(&ctx, toml::from_str(o).unwrap())
            .err()
            .unwrap_or_default()
            .join("\n")
    };
    let e = errors(&two, "model = '/nonexistent/speed'");
    assert!(
        e.contains("/nonexistent/speed") && e.contains("not a directory"),
        "{e}"
    );
    let (_bad, dir) = model_dir(12);
    std::fs::write(dir.join("model.json"), "{").unwrap();
    let e = errors(&two, &format!("model = {:?}", dir.display().to_string()));
    assert!(e.contains("model.json"), "{e}");
    let (_good, dir) = model_dir(12);
    let m = format!("model = {:?}", dir.display().to_string());
    let e = errors(&two[..1], &m);
    assert!(e.contains("takes 2 inputs"), "{e}");
    let e = errors(
        &two,
        &format!("{m}\nemit_to = 'tcp://x:1'\nrate_smoothing_s = 0"),
    );
    assert!(
        e.contains("emit_to") && e.contains("rate_smoothing_s"),
        "{e}"
    );
    let e = errors(&two, &format!("{m}\nbackend = 'quantum'"));
    assert!(e.contains("quantum"), "{e}");
    assert!(errors(&two, &format!("{m}\nbackend = 'cpu'")).is_empty());
    // `gpu` without an adapter is a configuration error naming the option.
    let e = errors(&two, &format!("{m}\nbackend = 'gpu'"));
    match kernels::gpu::test_context() {
        Some(_) => assert!(e.is_empty(), "{e}"),
        None => assert!(e.contains("`backend`") && e.contains("GPU"), "{e}"),
    }
}

#[test]
fn on_the_gpu_the_rows_are_the_cpus_within_1e_4() {
    let Some(ctx) = kernels::gpu::test_context() else {
        return;
    };
    let (_d, dir) = model_dir(13);
    let data = || {
        vec![
            (src(), source_rows(&(0..400).collect::<Vec<_>>())),
            (tgt(), target_rows(&(0..200).collect::<Vec<_>>())),
        ]
    };
    let mut gpu = build_with("gpu", &dir, "backend = 'gpu'");
    assert_eq!(gpu.core.decoder_backend(), ctx.backend);
    let on_gpu = run(&mut gpu, data());
    let on_cpu = run(&mut build_with("cpu", &dir, "backend = 'cpu'"), data());
    assert_eq!(on_gpu.len(), on_cpu.len());
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
    };
    for (g, c) in on_gpu.iter().zip(&on_cpu) {
        assert_eq!((g.bin, &g.actual), (c.bin, &c.actual));
        assert!(close(&g.predicted, &c.predicted), "{g:?} vs {c:?}");
        assert!(close(&g.target_only, &c.target_only), "{g:?} vs {c:?}");
        assert!(close(&[g.rate_nats], &[c.rate_nats]), "{g:?} vs {c:?}");
    }
}
