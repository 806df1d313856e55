//! SQL benchmark: neurod's `SqlEngine` next to DuckDB on the same stored Parquet files.
//!
//! Data (made once, cached; see [`data_dir`]), written through the storage layer exactly as the
//! `store` sink writes it (Arrow IPC segment rotated at 300 s of data or 1 GiB, converted by
//! `finish_segment` with the sink's default Parquet options, manifest refreshed after each file):
//! - `rig.imec0.ap.spikes`: one hour of spikes on 384 channels with the schema `spike_detect`
//!   emits, each channel a Poisson train at 5–20 Hz, in 10 ms batches (the daemon's default
//!   `batch_ms`) sorted by (sample_index, channel);
//! - `rig.imec0.ap`: `NEUROD_SQL_BENCH_RAW_S` (default 300) seconds of the simulated rig's
//!   385-channel Int16 AP stream at 30 kHz, in 10 ms batches.
//!
//! Queries, the same SQL text in both engines but for the raw range (DuckDB gets one view per stream over
//! `read_parquet([...the stream's files])`), median of `NEUROD_SQL_BENCH_RUNS` (default 7) warm
//! runs plus the first run, results checked equal:
//! 1. spike count per channel over the last 60 s (the bound a literal, from the data);
//! 2. one second of raw samples in the middle, every column: a `time_s` range in neurod (whose
//!    tables derive `time_s` of continuous streams as `sample_index / sampling_hz`), the same
//!    rows as a `sample_index` range in DuckDB (the files carry no `time_s` column).
//!
//! Run: `bench/sql.sh` (or `cargo bench -p neurod --bench sql` with `NEUROD_PYTHON` naming a
//! Python with duckdb and pyarrow).

#[path = "common/session.rs"]
mod session;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{Int16Type, Int32Type, Int64Type};
use neurod::sql::{QueryResult, SqlEngine, SqlLimits};
use pipelines::sources::simulated::NP1_CHANNELS;
use pipelines::storage::layout::stream_dir_name;
use session::{cached, target_dir, write_raw, write_spikes, PROBE, RATE_HZ, SPIKES};

/// Bumped when the data made here change, so that an old cache is made again.
const DATA_VERSION: u32 = 1;

/// `NEUROD_SQL_BENCH_DIR`, else `<target dir>/sql-bench-data`.
fn data_dir() -> PathBuf {
    std::env::var_os("NEUROD_SQL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("sql-bench-data"))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for f in parquet_files(dir) {
        bytes += std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        files += 1;
    }
    (bytes, files)
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Makes the data unless a complete copy of this version and length is cached.
fn ensure_data(root: &Path, raw_s: u64) -> PathBuf {
    let data = root.join(format!("v{DATA_VERSION}-raw{raw_s}s"));
    let what = format!("1 h of spikes and {raw_s} s of raw samples");
    cached(&data, &what, || {
        let store = data.join("disk");
        let t = Instant::now();
        write_spikes(&store);
        let spikes_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        write_raw(&store, raw_s);
        println!(
            "data: made in {spikes_s:.0} s (spikes) + {:.0} s (raw)",
            t.elapsed().as_secs_f64()
        );
    });
    data
}

fn query(engine: &SqlEngine, sql: &str) -> (QueryResult, Duration) {
    let t = Instant::now();
    let r = engine
        .block_on(engine.query(sql))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (r, t.elapsed())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// First run and median of `runs` warm runs, in ms, and the last result.
fn time_neurod(engine: &SqlEngine, sql: &str, runs: usize) -> (f64, f64, QueryResult) {
    let (mut last, first) = query(engine, sql);
    let mut warm = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (r, d) = query(engine, sql);
        warm.push(d.as_secs_f64() * 1e3);
        last = r;
    }
    (first.as_secs_f64() * 1e3, median(warm), last)
}

/// (channel, count) pairs of a `channel, count(*)` result, sorted.
fn counts(r: &QueryResult) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for b in &r.batches {
        let ch = b.column(0).as_primitive::<Int32Type>();
        let n = b.column(1).as_primitive::<Int64Type>();
        out.extend(
            ch.iter()
                .zip(n.iter())
                .map(|(c, n)| (i64::from(c.unwrap_or(-1)), n.unwrap_or(0))),
        );
    }
    out.sort_unstable();
    out
}

/// Rows, columns and the sum of the first and last AP channel: what both engines must agree on.
fn raw_digest(r: &QueryResult) -> (i64, i64, i64, i64) {
    let rows = r.rows() as i64;
    let cols = r.schema.fields().len() as i64;
    let last = format!("AP{}", NP1_CHANNELS - 1);
    let sum = |name: &str| -> i64 {
        let Ok(i) = r.schema.index_of(name) else {
            return i64::MIN;
        };
        r.batches
            .iter()
            .flat_map(|b| b.column(i).as_primitive::<Int16Type>().iter())
            .map(|v| i64::from(v.unwrap_or(0)))
            .sum()
    };
    (rows, cols, sum("AP0"), sum(&last))
}

const DUCKDB_SCRIPT: &str = r#"
import json, sys, time
import duckdb, pyarrow.compute as pc
job = json.load(sys.stdin)
con = duckdb.connect()
for name, files in job["views"].items():
    con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({json.dumps(files)})')
out = {"version": duckdb.__version__, "threads": con.sql("SELECT current_setting('threads')").fetchall()[0][0]}
for key, sql in job["queries"].items():
    times = []
    for i in range(job["runs"] + 1):
        t = time.perf_counter()
        table = con.sql(sql).to_arrow_table()
        times.append((time.perf_counter() - t) * 1e3)
    if key == "spikes":
        digest = sorted(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    else:
        last = "AP383"
        digest = [table.num_rows, table.num_columns, pc.sum(table["AP0"]).as_py() or 0, pc.sum(table[last]).as_py() or 0]
    out[key] = {"first_ms": times[0], "warm_ms": times[1:], "digest": digest}
print(json.dumps(out))
"#;

struct Row {
    name: &'static str,
    neurod_first: f64,
    neurod_median: f64,
    duck_first: f64,
    duck_median: f64,
    same: bool,
}

fn main() {
    // `cargo bench` passes `--bench`; a test harness run (`cargo test --benches`) does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let raw_s = env_number("NEUROD_SQL_BENCH_RAW_S", 300);
    let runs = env_number("NEUROD_SQL_BENCH_RUNS", 7).max(5) as usize;
    let data = ensure_data(&data_dir(), raw_s);
    let store = data.join("disk");
    let spikes_dir = store.join(stream_dir_name(SPIKES));
    let raw_dir = store.join(stream_dir_name(PROBE));
    for (name, dir) in [(SPIKES, &spikes_dir), (PROBE, &raw_dir)] {
        let (bytes, files) = dir_bytes(dir);
        println!(
            "data: {name}: {files} Parquet files, {:.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }

    let engine = SqlEngine::new(data.clone(), None, SqlLimits::default()).expect("the engine");
    // The bounds, once, from the data.
    let (r, _) = query(&engine, &format!(r#"SELECT max(time_s) FROM "{SPIKES}""#));
    let last_s = r
        .batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Float64Type>()
        })
        .and_then(|a| a.iter().next().flatten())
        .expect("the spikes table has rows");
    let from_s = last_s - 60.0;
    let (r, _) = query(
        &engine,
        &format!(r#"SELECT min(sample_index), max(sample_index) FROM "{PROBE}""#),
    );
    let bound = |i: usize| {
        r.batches
            .first()
            .and_then(|b| b.column(i).as_primitive_opt::<Int64Type>())
            .and_then(|a| a.iter().next().flatten())
            .expect("the raw table has rows")
    };
    let mid = (bound(0) + bound(1)) / 2;
    let (lo, hi) = (mid, mid + RATE_HZ as i64);
    let spikes_sql = format!(
        r#"SELECT channel, count(*) FROM "{SPIKES}" WHERE time_s >= {from_s:?} GROUP BY channel"#
    );
    // neurod derives `time_s` of continuous streams (sample_index / sampling_hz) and prunes by
    // it; the files have no such column, so DuckDB gets the same rows as a sample_index range
    // (its best form of the query).
    let (t0, t1) = (lo as f64 / RATE_HZ, hi as f64 / RATE_HZ);
    let raw_sql_neurod = format!(
        r#"SELECT * EXCLUDE (time_s) FROM "{PROBE}" WHERE time_s >= {t0:?} AND time_s < {t1:?}"#
    );
    let raw_sql =
        format!(r#"SELECT * FROM "{PROBE}" WHERE sample_index >= {lo} AND sample_index < {hi}"#);
    println!("query 1: {spikes_sql}");
    println!("query 2: neurod: {raw_sql_neurod}\n         DuckDB: {raw_sql}");

    let (n1_first, n1_med, n1) = time_neurod(&engine, &spikes_sql, runs);
    let (n2_first, n2_med, n2) = time_neurod(&engine, &raw_sql_neurod, runs);
    let ours_counts = counts(&n1);
    let ours_raw = raw_digest(&n2);

    let files = |d: &Path| -> Vec<String> {
        parquet_files(d)
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    };
    let job = serde_json::json!({
        "views": { SPIKES: files(&spikes_dir), PROBE: files(&raw_dir) },
        "queries": { "spikes": spikes_sql, "raw": raw_sql },
        "runs": runs,
    });
    let duck = run_duckdb(&job);
    let mut table = Vec::new();
    let duck_entry = |key: &str| -> Option<(f64, f64, serde_json::Value)> {
        let d = duck.as_ref()?.get(key)?;
        let warm: Vec<f64> = d
            .get("warm_ms")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        Some((
            d.get("first_ms")?.as_f64()?,
            median(warm),
            d.get("digest")?.clone(),
        ))
    };
    let (d1_first, d1_med, d1) =
        duck_entry("spikes").unwrap_or((f64::NAN, f64::NAN, serde_json::Value::Null));
    let (d2_first, d2_med, d2) =
        duck_entry("raw").unwrap_or((f64::NAN, f64::NAN, serde_json::Value::Null));
    let theirs_counts: Vec<(i64, i64)> = d1
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    let theirs_raw: Vec<i64> = d2
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    let spikes_same = ours_counts == theirs_counts;
    let raw_same = theirs_raw == [ours_raw.0, ours_raw.1, ours_raw.2, ours_raw.3];
    table.push(Row {
        name: "spike count per channel, last 60 s (1 h, 384 ch)",
        neurod_first: n1_first,
        neurod_median: n1_med,
        duck_first: d1_first,
        duck_median: d1_med,
        same: spikes_same,
    });
    table.push(Row {
        name: "1 s of raw samples, all 386 columns",
        neurod_first: n2_first,
        neurod_median: n2_med,
        duck_first: d2_first,
        duck_median: d2_med,
        same: raw_same,
    });
    println!(
        "spikes: {} channels, {} spikes in the last 60 s; raw: {} rows x {} columns",
        ours_counts.len(),
        ours_counts.iter().map(|c| c.1).sum::<i64>(),
        ours_raw.0,
        ours_raw.1
    );
    if let Some(d) = &duck {
        println!(
            "duckdb {} ({} threads); neurod: DataFusion, 2 query threads; {runs} warm runs each",
            d.get("version").and_then(|v| v.as_str()).unwrap_or("?"),
            d.get("threads").map(|v| v.to_string()).unwrap_or_default()
        );
    }
    println!();
    println!(
        "| {:<50} | {:>13} | {:>13} | {:>13} | {:>13} | {:>14} | {:>10} |",
        "query",
        "neurod first",
        "neurod median",
        "duckdb first",
        "duckdb median",
        "neurod/duckdb",
        "same rows"
    );
    println!(
        "|{}|",
        [52, 15, 15, 15, 15, 16, 12]
            .map(|n| "-".repeat(n))
            .join("|")
    );
    for r in &table {
        println!(
            "| {:<50} | {:>10.1} ms | {:>10.1} ms | {:>10.1} ms | {:>10.1} ms | {:>14.2} | {:>10} |",
            r.name,
            r.neurod_first,
            r.neurod_median,
            r.duck_first,
            r.duck_median,
            r.neurod_median / r.duck_median,
            if r.same { "yes" } else { "NO" }
        );
    }
    println!();
    for r in &table {
        let under = r.neurod_median < 100.0;
        let not_slower = r.neurod_median <= r.duck_median;
        println!(
            "target {}: under 100 ms {}, no slower than DuckDB {}",
            r.name,
            if under { "met" } else { "MISSED" },
            if not_slower { "met" } else { "MISSED" }
        );
    }
    if !(spikes_same && raw_same) && duck.is_some() {
        eprintln!("neurod and DuckDB disagree: ours {ours_raw:?} / {} counts; theirs {theirs_raw:?} / {} counts", ours_counts.len(), theirs_counts.len());
        std::process::exit(1);
    }
}

/// Runs the DuckDB side in `NEUROD_PYTHON` (else `python3`); `None`, said loudly, without it.
fn run_duckdb(job: &serde_json::Value) -> Option<serde_json::Value> {
    let python = std::env::var("NEUROD_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = match Command::new(&python)
        .args(["-c", DUCKDB_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("!!!!! DuckDB side skipped: {python}: {e} !!!!!");
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(job.to_string().as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!(
            "!!!!! DuckDB side failed ({python}; bench/sql.sh installs duckdb): {} !!!!!",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
