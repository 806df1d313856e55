//! Ingest → store benchmark. Prints a table:
//! 1. throughput of the real chain (`spikeglx` source at pace = "max" → `store` sink, Parquet
//!    conversion included, wired through the stream hub as the daemon wires it) on a 384-channel
//!    probe recording, on one core, in multiples of real time, with 0 and with 4 run-time
//!    subscribers draining the stream (as `/streams/{id}` readers do);
//! 2. the compression ratio on the real 16-channel Open Ephys recording, next to `zstd -19` on
//!    the raw file, `flac --best` and `mtscomp`, where those tools are installed
//!    (`bench/store.sh` installs them).
//!
//! Run: `cargo bench -p pipelines --bench ingest_store` (or `bench/store.sh`).
//! Env: `NEUROD_BENCH_SECONDS` (default 20) seconds of probe data, `NEUROD_BENCH_REPEATS`
//! (default 2) runs of each subscriber count, the best kept (the machine is shared).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pipelines::component::{BuildContext, Output, Outputs, Shutdown, SinkContext, SourceContext};
use pipelines::edge::{Inbox, Recv};
use pipelines::hub::{Hub, SubscribeOptions};
use pipelines::metrics::Metrics;
use pipelines::registry;
use pipelines::sources::simulated::{Rig, SimulatedOptions};

fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// Pins the whole process (all threads it will start) to one CPU: "on one core" means it.
fn pin_to_one_core() -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }
}

/// Writes `seconds` of the simulated rig's 385-channel AP stream as a SpikeGLX pair.
fn write_probe_recording(dir: &Path, seconds: f64) -> PathBuf {
    let opts: SimulatedOptions = toml::from_str(&format!(
        "pace = 'max'\ntwophoton = false\nduration_s = {seconds}\nbatch_ms = 100"
    ))
    .expect("valid options");
    let mut rig = Rig::new("bench", &opts).expect("rig builds");
    let bin = dir.join("bench_g0_t0.imec0.ap.bin");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&bin).unwrap());
    let mut samples = 0u64;
    while let Some(w) = rig.next_window(false).unwrap() {
        for (_, b) in &w.batches {
            if pipelines::stream::stream_id_of(&b.schema()) != Some("bench.imec0.ap") {
                continue;
            }
            let cols: Vec<&arrow::array::Int16Array> = b
                .columns()
                .iter()
                .skip(1)
                .map(|c| c.as_any().downcast_ref().unwrap())
                .collect();
            let mut buf = Vec::with_capacity(b.num_rows() * cols.len() * 2);
            for r in 0..b.num_rows() {
                for c in &cols {
                    buf.extend_from_slice(&c.value(r).to_le_bytes());
                }
            }
            std::io::Write::write_all(&mut out, &buf).unwrap();
            samples += b.num_rows() as u64;
        }
    }
    drop(out);
    let real = std::fs::read_to_string(
        shared_data().join("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta"),
    )
    .expect("the real NP1.0 meta in ../shared/data");
    let mut meta: String = real
        .lines()
        .filter(|l| {
            !l.starts_with("fileSizeBytes=")
                && !l.starts_with("imSampRate=")
                && !l.starts_with("firstSample=")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    meta.push_str(&format!(
        "fileSizeBytes={}\nimSampRate=30000\nfirstSample=0\n",
        samples * 770
    ));
    std::fs::write(dir.join("bench_g0_t0.imec0.ap.meta"), meta).unwrap();
    bin
}

struct ChainResult {
    wall_s: f64,
    /// CPU seconds of the whole process (every thread) during the run: on a shared machine, the
    /// work done, less sensitive to other load than the wall time.
    cpu_s: f64,
    rows: u64,
    parquet_bytes: u64,
}

/// Runs `source` → `store` exactly as the daemon wires them (a hub port, an edge with the
/// source's policy), until the source ends, with `subscribers` run-time subscribers draining
/// the source's stream from its first batches on.
fn run_chain(
    source_type: &str,
    source_opts: &str,
    data_dir: &Path,
    subscribers: usize,
) -> ChainResult {
    let metrics = Metrics::new();
    let hub = Hub::new(&metrics);
    let ctx = BuildContext {
        id: "src",
        data_dir,
        inputs: &[],
    };
    let src = registry::build_source(source_type, &ctx, toml::from_str(source_opts).unwrap())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let sink_ctx = BuildContext {
        id: "store",
        data_dir,
        inputs: &[],
    };
    let sink = registry::build_sink("store", &sink_ctx, toml::Table::new())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let sink_metrics = metrics.component("store", "sink", "store");
    let inbox = Inbox::new(256, sink_metrics.clone());
    let src_metrics = metrics.component("src", "source", source_type);
    let port = hub.port("src", "");
    hub.connect(&port, "store", &inbox.handle(), 0, src.overflow());
    let mut outputs = Outputs::default();
    outputs.insert("", Output::attached(port, src_metrics.clone()));
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let hub = hub.clone();
            std::thread::spawn(move || drain_subscription(&hub, "src"))
        })
        .collect();
    let shutdown = Shutdown::new();
    let t = Instant::now();
    let cpu = cpu_seconds();
    let s = std::thread::spawn({
        let shutdown = shutdown.clone();
        move || {
            src.run(SourceContext {
                id: "src".into(),
                outputs,
                shutdown,
                metrics: src_metrics,
                resume: Default::default(),
            })
        }
    });
    let k = std::thread::spawn({
        let dir = data_dir.to_path_buf();
        let metrics = sink_metrics.clone();
        move || {
            sink.run(SinkContext {
                id: "store".into(),
                inbox,
                shutdown,
                metrics,
                data_dir: dir,
            })
        }
    });
    s.join().unwrap().unwrap();
    k.join().unwrap().unwrap();
    let wall_s = t.elapsed().as_secs_f64();
    let received: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let sent = sink_metrics.received_rows();
    for rows in &received {
        // Subscribed after the first batches, and drop_oldest: never more than the store got.
        assert!(*rows <= sent, "a subscriber got {rows} of {sent} rows");
    }
    if let Some(least) = received.iter().min() {
        println!(
            "  ({subscribers} subscribers: the slowest read {:.1}% of the rows)",
            *least as f64 * 100.0 / sent.max(1) as f64
        );
    }
    ChainResult {
        wall_s,
        cpu_s: cpu_seconds() - cpu,
        rows: sent,
        parquet_bytes: parquet_bytes(&data_dir.join("store")),
    }
}

/// Subscribes to `stream` as soon as it is registered and reads it to its end; the rows read.
fn drain_subscription(hub: &Hub, stream: &str) -> u64 {
    let sub = loop {
        let options = SubscribeOptions {
            capacity: 256,
            consumer: "bench".into(),
            evict_on_overflow: false,
            waker: None,
        };
        match hub.subscribe(stream, options) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    };
    let mut rows = 0;
    loop {
        match sub.recv_timeout(std::time::Duration::from_secs(1)) {
            Recv::Data(b) => rows += b.num_rows() as u64,
            Recv::Timeout => {}
            Recv::Closed => return rows,
        }
    }
}

fn parquet_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            total += parquet_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Size of a command's compressed output, or why it could not be measured.
fn tool_bytes(name: &str, f: impl FnOnce() -> Option<u64>) -> Result<u64, String> {
    if Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Err(format!("n/a ({name} not installed)"));
    }
    f().ok_or_else(|| format!("n/a ({name} failed)"))
}

fn zstd19(raw: &Path, tmp: &Path) -> Option<u64> {
    let out = tmp.join("raw.zst");
    let ok = Command::new("zstd")
        .args(["-19", "-q", "-f", "-o"])
        .arg(&out)
        .arg(raw)
        .status()
        .ok()?
        .success();
    ok.then(|| std::fs::metadata(&out).ok().map(|m| m.len()))?
}

/// FLAC holds at most 8 channels: encode the 16 as two 8-channel files and add their sizes.
fn flac_best(raw: &Path, tmp: &Path, channels: usize, rate: u32) -> Option<u64> {
    let bytes = std::fs::read(raw).ok()?;
    let samples: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut total = 0;
    for (g, group) in (0..channels).collect::<Vec<_>>().chunks(8).enumerate() {
        let part = tmp.join(format!("flac{g}.raw"));
        let mut buf = Vec::new();
        for s in samples.chunks_exact(channels) {
            for &c in group {
                buf.extend_from_slice(&s[c].to_le_bytes());
            }
        }
        std::fs::write(&part, &buf).ok()?;
        let out = tmp.join(format!("flac{g}.flac"));
        let ok = Command::new("flac")
            .args([
                "--best",
                "--silent",
                "-f",
                "--force-raw-format",
                "--endian=little",
                "--sign=signed",
                "--bps=16",
            ])
            .arg(format!("--channels={}", group.len()))
            .arg(format!("--sample-rate={rate}"))
            .arg("-o")
            .arg(&out)
            .arg(&part)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        total += std::fs::metadata(&out).ok()?.len();
    }
    Some(total)
}

fn mtscomp(raw: &Path, tmp: &Path, channels: usize, rate: u32) -> Result<u64, String> {
    let python = std::env::var("NEUROD_PYTHON").unwrap_or_else(|_| "python3".into());
    let code = "import sys, mtscomp; mtscomp.compress(sys.argv[1], sys.argv[2], sys.argv[3], \
                sample_rate=float(sys.argv[4]), n_channels=int(sys.argv[5]), dtype='int16')";
    let cbin = tmp.join("raw.cbin");
    let ch = tmp.join("raw.ch");
    let out = Command::new(&python)
        .args(["-c", code])
        .arg(raw)
        .arg(&cbin)
        .arg(&ch)
        .arg(rate.to_string())
        .arg(channels.to_string())
        .output()
        .map_err(|_| "n/a (python not found)".to_string())?;
    if !out.status.success() {
        return Err("n/a (mtscomp not installed: pip install mtscomp)".into());
    }
    Ok(std::fs::metadata(&cbin).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(&ch).map(|m| m.len()).unwrap_or(0))
}

/// pyarrow writing the recording (`channels` interleaved Int16 at `rate`, `sample_index` added)
/// to Parquet at its best setting for such data, as neurod stores it: DELTA_BINARY_PACKED, no
/// dictionary, zstd level 1, 1 MiB pages. Times making the table and writing it (the file read
/// and the interpreter's start-up excluded); returns (seconds, Parquet bytes).
fn pyarrow_write(raw: &Path, tmp: &Path, channels: usize) -> Result<(f64, f64), String> {
    let python = std::env::var("NEUROD_PYTHON").unwrap_or_else(|_| "python3".into());
    let code = r#"
import sys, os, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq
raw, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.fromfile(raw, dtype="<i2").reshape(-1, n)
t0 = time.perf_counter()
cols = {"sample_index": pa.array(np.arange(len(d), dtype=np.int64))}
cols.update({f"c{i}": pa.array(np.ascontiguousarray(d[:, i])) for i in range(n)})
t = pa.table(cols)
pq.write_table(t, out, compression="zstd", compression_level=1, use_dictionary=False,
               column_encoding={c: "DELTA_BINARY_PACKED" for c in t.column_names},
               data_page_size=1 << 20)
s = time.perf_counter() - t0
print(s, os.path.getsize(out))
"#;
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&python)
        .args(["-c", code])
        .arg(raw)
        .arg(tmp.join("pyarrow.parquet"))
        .arg(channels.to_string())
        .output()
        .map_err(|e| format!("n/a (taskset/python: {e})"))?;
    if !out.status.success() {
        return Err(format!(
            "n/a ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("pyarrow failed")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
    match (it.next(), it.next()) {
        (Some(Ok(s)), Some(Ok(b))) => Ok((s, b)),
        _ => Err(format!("n/a (pyarrow printed {text:?})")),
    }
}

fn pyarrow_version() -> String {
    let python = std::env::var("NEUROD_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .args(["-c", "import pyarrow; print(pyarrow.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The sample-by-sample de-interleave `batch_from_interleaved` used before: a value to each of
/// 385 columns (each its own allocation) in turn; the reference the blocked one is measured
/// against.
fn deinterleave_by_sample(values: &[i16], n_ch: usize) -> Vec<Vec<i16>> {
    let n = values.len() / n_ch;
    let mut columns: Vec<Vec<i16>> = (0..n_ch).map(|_| Vec::with_capacity(n)).collect();
    for sample in values.chunks_exact(n_ch) {
        for (col, v) in columns.iter_mut().zip(sample) {
            col.push(*v);
        }
    }
    columns
}

/// The de-interleave of the recording in the source's 10 ms batches, blocked against sample by
/// sample, the best of 5 runs each, alternating.
fn deinterleave_rows(bin: &Path, seconds: f64) {
    let bytes = std::fs::read(bin).expect("the recording");
    let mut values = Vec::new();
    pipelines::stream::samples_from_le_bytes(&bytes, &mut values);
    let batch = 300 * 385;
    let mut best = [f64::INFINITY; 2];
    for run in 0..10 {
        let t = Instant::now();
        let mut check = 0i64;
        for chunk in values.chunks(batch) {
            check += i64::from(if run % 2 == 0 {
                let cols = pipelines::stream::deinterleave(chunk, 385);
                cols[cols.len() / 2]
            } else {
                let cols = deinterleave_by_sample(chunk, 385);
                cols[192][cols[192].len() / 2]
            });
        }
        std::hint::black_box(check);
        best[run % 2] = best[run % 2].min(t.elapsed().as_secs_f64());
    }
    println!();
    println!("## de-interleave, 385 Int16 channels in 10 ms batches (best of 5)");
    println!("| method | ms per s of data | x real time |");
    println!("|---|---|---|");
    for (name, s) in [
        ("blocked, SSE2 tiles, one allocation (neurod)", best[0]),
        ("sample by sample, a column each", best[1]),
    ] {
        println!("| {name} | {:.2} | {:.0} |", s * 1e3 / seconds, seconds / s);
    }
    println!("blocked is {:.1}x faster", best[1] / best[0]);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let data = shared_data();
    if !data.is_dir() {
        eprintln!("SKIPPED: {} not found", data.display());
        return;
    }
    let seconds: f64 = std::env::var("NEUROD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    println!("preparing {seconds} s of a simulated 385-channel NP1.0 recording ...");
    let bin = write_probe_recording(tmp.path(), seconds);
    let raw_bytes = std::fs::metadata(&bin).unwrap().len();
    let pinned = pin_to_one_core();

    println!();
    println!(
        "## ingest -> store, 384 AP + 1 SY channels at 30 kHz ({})",
        if pinned {
            "pinned to one core"
        } else {
            "NOT pinned: sched_setaffinity failed"
        }
    );
    println!("| chain | data s | wall s | CPU s | x real time | MB/s in | Parquet ratio |");
    println!("|---|---|---|---|---|---|---|");
    let repeats: usize = std::env::var("NEUROD_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut best: Vec<Option<ChainResult>> = vec![None, None];
    // Alternating runs, so that a change in the machine's load hits both counts alike.
    for run in 0..repeats.max(1) * 2 {
        let which = run % 2;
        let out_dir = tmp.path().join(format!("out_probe_{run}"));
        let r = run_chain(
            "spikeglx",
            &format!("path = '{}'\npace = 'max'\nbatch_ms = 10", bin.display()),
            &out_dir,
            [0, 4][which],
        );
        assert_eq!(r.rows as f64, seconds * 30000.0, "every sample stored");
        let _ = std::fs::remove_dir_all(&out_dir);
        if best[which].as_ref().is_none_or(|b| r.cpu_s < b.cpu_s) {
            best[which] = Some(r);
        }
    }
    let [Some(none), Some(four)] = [best[0].take(), best[1].take()] else {
        unreachable!("both counts ran")
    };
    for (label, r) in [("0 subscribers", &none), ("4 run-time subscribers", &four)] {
        println!(
            "| spikeglx (pace=max) -> store, {label} | {seconds:.1} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} |",
            r.wall_s,
            r.cpu_s,
            seconds / r.wall_s,
            raw_bytes as f64 / 1e6 / r.wall_s,
            raw_bytes as f64 / r.parquet_bytes as f64
        );
    }
    match pyarrow_write(&bin, tmp.path(), 385) {
        Ok((secs, bytes)) => println!(
            "| pyarrow {} write_table (delta, zstd 1), same data, one core | {seconds:.1} | {secs:.2} | | {:.1} | {:.0} | {:.2} |",
            pyarrow_version(),
            seconds / secs,
            raw_bytes as f64 / 1e6 / secs,
            raw_bytes as f64 / bytes
        ),
        Err(why) => println!("| pyarrow write_table | {why} | | | | | |"),
    }
    println!(
        "\n4 run-time subscribers: {:+.1}% CPU time, {:+.1}% wall time (target: under +5%; \
         the best of {} runs each)",
        (four.cpu_s / none.cpu_s - 1.0) * 100.0,
        (four.wall_s / none.wall_s - 1.0) * 100.0,
        repeats.max(1)
    );

    deinterleave_rows(&bin, seconds);

    println!();
    println!("## compression of the real 16-channel Open Ephys recording (40 kHz, 3.3 s)");
    let rec = data.join("openephys-16ch-40khz/experiment1/recording1");
    let dat = rec.join("continuous/File_Reader-100.example_data/continuous.dat");
    let dat_bytes = std::fs::metadata(&dat).unwrap().len();
    let oe_dir = tmp.path().join("out_oe");
    let r = run_chain(
        "openephys",
        &format!("path = '{}'\npace = 'max'", rec.display()),
        &oe_dir,
        0,
    );
    println!("| method | bytes | ratio (raw .dat / compressed) |");
    println!("|---|---|---|");
    println!("| raw int16 .dat | {dat_bytes} | 1.000 |");
    let row = |name: &str, v: Result<u64, String>| match v {
        Ok(b) => println!("| {name} | {b} | {:.3} |", dat_bytes as f64 / b as f64),
        Err(why) => println!("| {name} | {why} | |"),
    };
    row("neurod store (Parquet, delta, zstd 1)", Ok(r.parquet_bytes));
    row(
        "zstd -19 on the raw file",
        tool_bytes("zstd", || zstd19(&dat, tmp.path())),
    );
    row(
        "flac --best (2 x 8 channels)",
        tool_bytes("flac", || flac_best(&dat, tmp.path(), 16, 40000)),
    );
    row("mtscomp (defaults)", mtscomp(&dat, tmp.path(), 16, 40000));
}
