//! Helpers for black-box tests of the `neurod` binary.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn neurod() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_neurod"));
    c.env("NEUROD_LOG", "info");
    c
}

/// `../shared/data` relative to the workspace; None (with a loud message) if missing outside CI.
pub fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if p.is_dir() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have ../shared/data beside the clone ({})",
        p.display()
    );
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// The Python with the peers (pyarrow, numpy, ...), set by scripts/test.sh.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("NEUROD_PYTHON") {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run through scripts/test.sh, which sets NEUROD_PYTHON"
            );
            eprintln!("SKIPPED: NEUROD_PYTHON not set (run scripts/test.sh)");
            None
        }
    }
}

/// Runs a Python snippet with the peers; panics with its output if it fails.
pub fn run_python(py: &Path, code: &str, args: &[&str]) -> String {
    let mut all = vec!["-c", code];
    all.extend_from_slice(args);
    run_script(py, "python", &all)
}

/// Runs the peers' Python with `args` (a script and its arguments); panics with its output,
/// naming `what`, if it fails.
pub fn run_script(py: &Path, what: &str, args: &[&str]) -> String {
    let out = Command::new(py).args(args).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon whose stderr goes to a file, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    /// Arrow Flight: `{flight_port}` in the config, else given by `--flight-listen`.
    pub flight_port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Writes `config` (with `{port}` and `{dir}` substituted) into `dir` and runs it.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Daemon::start_with_env(dir, config, &[])
    }

    /// [`Daemon::start`] with extra environment variables for the daemon.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::spawn(dir, config, env);
        d.wait_http();
        d
    }

    /// Writes and runs `config` like [`Daemon::start`] without waiting for anything.
    pub fn spawn(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let flight_port = free_port();
        let text = config
            .replace("{port}", &port.to_string())
            .replace("{flight_port}", &flight_port.to_string())
            .replace("{dir}", &dir.display().to_string());
        let cfg = dir.join("neurod.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("neurod-{}.log", port));
        let mut cmd = neurod();
        cmd.args(["run", "--config"]).arg(&cfg);
        // Daemons of tests running side by side must not share the default Flight port.
        if !config.contains("flight_listen") {
            cmd.arg("--flight-listen")
                .arg(format!("127.0.0.1:{flight_port}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        Daemon {
            child,
            port,
            flight_port,
            log,
        }
    }

    /// Waits until the daemon answers HTTP, or has already ended (a short finite run can finish
    /// before the first look; the caller's `wait_exit` then reports how it ended).
    fn wait_http(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if http_get(self.port, "/healthz").is_some() {
                return;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon never answered HTTP; log:\n{}", self.log_text());
    }

    pub fn get(&self, path: &str) -> String {
        http_get(self.port, path).unwrap_or_else(|| panic!("GET {path} failed"))
    }

    /// The value of a metric series whose line starts with `prefix` (name and labels).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        metric_value(&self.get("/metrics"), prefix)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit in {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Minimal HTTP/1.1 GET; the body of a 200 answer, or None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_status(port, path)
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| body)
}

/// Minimal HTTP/1.1 GET; the status code and body, or None if the daemon isn't answering.
pub fn http_status(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        code,
        if chunked {
            dechunked(body)?
        } else {
            body.to_string()
        },
    ))
}

/// The body of a chunked HTTP/1.1 answer (other servers than ours, e.g. Prometheus, chunk).
fn dechunked(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `[daemon]` table of a test config (`{dir}` and `{port}` are filled by [`Daemon::start`]).
pub fn header() -> &'static str {
    r#"
[daemon]
data_dir = "{dir}/data"
listen = "127.0.0.1:{port}"
"#
}

/// A SpikeGLX replay (source `src`) at real-time pace (lossless: its edges block) into a store.
pub fn replay_config(bin: &Path, flush_interval_s: f64) -> String {
    format!(
        r#"{}
[sources.src]
type = "spikeglx"
path = "{}"
pace = "realtime"

[sinks.store]
type = "store"
inputs = ["src"]
flush_interval_s = {flush_interval_s}
"#,
        header(),
        bin.display()
    )
}

/// Runs a finite config to its end, which must be exit 0 with no batch rejected; returns the
/// daemon's data directory.
pub fn run_to_end(dir: &Path, config: &str, timeout: Duration) -> PathBuf {
    let t = Instant::now();
    let mut d = Daemon::start(dir, config);
    let status = d.wait_exit(timeout);
    let log = d.log_text();
    assert!(status.success(), "finite runs must end with exit 0:\n{log}");
    assert!(
        !log.contains("batch rejected"),
        "no batch may be rejected:\n{log}"
    );
    eprintln!("neurod run: {:.1} s", t.elapsed().as_secs_f64());
    dir.join("data")
}

/// Writes a SpikeGLX pair from a real NP1.0 meta with `samples` samples of 385 channels
/// (value = f(sample, channel)), the meta claiming `claimed_samples` (None: still acquiring).
pub fn write_spikeglx(
    dir: &Path,
    name: &str,
    samples: usize,
    claimed: Option<usize>,
) -> (PathBuf, Vec<u8>) {
    let meta = real_ap_meta(&shared_data().unwrap());
    let bytes = sample_bytes(0, samples);
    let bin = dir.join(format!("{name}.ap.bin"));
    std::fs::write(&bin, &bytes).unwrap();
    write_meta(dir, name, &meta, claimed);
    (bin, bytes)
}

/// Checks a stored continuous stream against the raw file it came from: every sample exactly
/// once (`sample_index` 0..n, no repeat), the same Int16 values; prints `n rate`.
const CHECK_EXACT: &str = r#"
import sys, numpy as np, pyarrow.dataset as ds
stream_dir, raw, nch = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = ds.dataset(stream_dir, format="parquet").to_table()
t = t.sort_by("sample_index")
want = np.fromfile(raw, dtype="<i2")
want = want[: len(want) // nch * nch].reshape(-1, nch)
idx = t.column("sample_index").to_numpy()
assert (idx == np.arange(len(want))).all(), ("sample_index", idx[:5], len(idx), len(want))
got = np.stack([t.column(i + 1).to_numpy() for i in range(nch)], axis=1)
assert got.dtype == np.int16, got.dtype
assert (got == want).all(), "values differ"
md = t.schema.metadata
print(len(want), md[b"neurod.sampling_hz"].decode())
"#;

/// Interleaved Int16 bytes of samples `from..to` of a 385-channel probe, value = f(sample, channel).
pub fn sample_bytes(from: usize, to: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((to - from) * 385 * 2);
    for s in from..to {
        for c in 0..385usize {
            let v = ((s * 7 + c * 13) % 4001) as i16 - 2000;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub fn write_meta(dir: &Path, name: &str, real_meta: &str, claimed: Option<usize>) {
    let mut text: String = real_meta
        .lines()
        .filter(|l| !l.starts_with("fileSizeBytes=") && !l.starts_with("fileTimeSecs="))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(n) = claimed {
        text.push_str(&format!(
            "fileSizeBytes={}\nfileTimeSecs={}\n",
            n * 770,
            n as f64 / 30000.0
        ));
    }
    std::fs::write(dir.join(format!("{name}.ap.meta")), text).unwrap();
}

/// Runs [`CHECK_EXACT`] on a stored stream directory against its raw file; its output.
pub fn check_exact(py: &Path, stream_dir: &Path, raw: &Path, channels: usize) -> String {
    run_python(
        py,
        CHECK_EXACT,
        &[
            stream_dir.to_str().unwrap(),
            raw.to_str().unwrap(),
            &channels.to_string(),
        ],
    )
}

/// The text of the real NP1.0 AP meta the SpikeGLX tests start from.
pub fn real_ap_meta(data: &Path) -> String {
    std::fs::read_to_string(data.join("spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta"))
        .unwrap()
}

/// Runs `neurod` with `args`, which must succeed; its stdout parsed as JSON.
pub fn neurod_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = neurod().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Opens `GET path` and returns the connection positioned at the start of the body, after
/// checking the status line and `content_type`. Nothing more is read: a reader that never reads.
pub fn http_open(port: u16, path: &str, content_type: &str) -> std::io::BufReader<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    assert!(head[0].starts_with("http/1.1 200"), "GET {path}: {head:?}");
    assert!(
        head.contains(&format!("content-type: {content_type}")),
        "GET {path}: {head:?}"
    );
    assert!(
        head.contains(&"transfer-encoding: chunked".to_string()),
        "GET {path}: {head:?}"
    );
    r
}

/// The body of a chunked HTTP response, as a plain reader. A connection cut before the final
/// chunk is an `UnexpectedEof` error.
pub struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: std::io::BufRead> Chunked<R> {
    pub fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl<R: std::io::BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "cut before the last chunk",
                ));
            }
            if line == "\r\n" {
                // The CRLF that closes the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| Error::new(ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "cut inside a chunk"));
        }
        self.left -= n;
        Ok(n)
    }
}

/// `GET /streams/{id}` as an Arrow IPC stream reader.
pub fn live_stream(
    port: u16,
    id: &str,
) -> arrow::ipc::reader::StreamReader<Chunked<std::io::BufReader<TcpStream>>> {
    let body = http_open(
        port,
        &format!("/streams/{id}"),
        "application/vnd.apache.arrow.stream",
    );
    arrow::ipc::reader::StreamReader::try_new(Chunked::new(body), None).unwrap()
}

/// Every batch of every Parquet file of a stored stream, file by file.
pub fn stored_batches(stream_dir: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(stream_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", stream_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        out.extend(reader.map(|b| b.unwrap()));
    }
    out
}

/// The `sample_index` column of every Parquet file of a stored stream, file by file.
pub fn stored_sample_index(stream_dir: &Path) -> Vec<i64> {
    let mut out = Vec::new();
    for b in stored_batches(stream_dir) {
        let col = b.column_by_name("sample_index").unwrap();
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        out.extend(col.values().iter().copied());
    }
    out
}

/// Panics unless `idx` is exactly `0..n`, naming the first repeat or gap.
pub fn assert_exactly_once(idx: &[i64], n: usize) {
    for (i, v) in idx.iter().enumerate() {
        assert_eq!(
            *v,
            i as i64,
            "sample_index {i} of {}: {v} (a repeat if smaller, a gap if larger)",
            idx.len()
        );
    }
    assert_eq!(idx.len(), n, "rows stored");
}

/// Runs `neurod validate` on a config that must be refused: asserts exit 1 and returns stderr.
pub fn validate_errors(cfg: &Path) -> String {
    let out = neurod()
        .arg("validate")
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a broken config must exit 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A little-endian TIFF whose one page claims `width` × `height` 16-bit pixels but holds 8 bytes.
pub fn tiff_claiming(width: u32, height: u32) -> Vec<u8> {
    const ENTRIES: u16 = 9;
    let data_at = 8 + 2 + 12 * u32::from(ENTRIES) + 4;
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&ENTRIES.to_le_bytes());
    // (tag, type: 3 = SHORT, 4 = LONG, value), in ascending tag order.
    let entries: [(u16, u16, u32); ENTRIES as usize] = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 16),      // BitsPerSample
        (259, 3, 1),       // no compression
        (262, 3, 1),       // BlackIsZero
        (273, 4, data_at), // StripOffsets
        (277, 3, 1),       // SamplesPerPixel
        (279, 4, 8),       // StripByteCounts
        (339, 3, 2),       // SampleFormat: signed
    ];
    for (tag, kind, value) in entries {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        match kind {
            3 => {
                t.extend_from_slice(&(value as u16).to_le_bytes());
                t.extend_from_slice(&[0, 0]);
            }
            _ => t.extend_from_slice(&value.to_le_bytes()),
        }
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&[0u8; 8]);
    t
}

/// What a running process holds, from `/proc`: resident memory, threads and open files.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub rss_mb: f64,
    pub threads: u64,
    pub open_files: u64,
}

pub fn held_by(pid: u32) -> Option<Held> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Held {
        rss_mb: field("VmRSS:")? as f64 / 1024.0,
        threads: field("Threads:")?,
        open_files: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
    })
}

/// A random model reading probe 0's bin_features counts and predicting the running speed.
pub fn rig_model(dir: &Path) -> PathBuf {
    let info = ap_stream_info("rig.imec0.ap");
    let columns: Vec<String> = info
        .channels
        .iter()
        .filter(|c| c.name.starts_with("AP"))
        .map(|c| format!("count_{}", c.name))
        .collect();
    use kernels::teb::{Dims, Hidden};
    use pipelines::sources::simulated::{ap_stream_info, RUNNING_SPEED_COLUMN};
    let dims = Dims {
        source: columns.len(),
        target: 1,
        latent: 4,
        hidden: Hidden {
            target_lstm: 8,
            source_lstm: 8,
            source_mlp: 8,
        },
    };
    let mut m = kernels::teb::TebModel::random(dims, 42);
    let n = &mut m.config.normalisation;
    n.source_mean = vec![0.05; columns.len()];
    n.source_std = vec![0.25; columns.len()];
    n.target_mean = vec![5.0];
    n.target_std = vec![5.0];
    m.config.source.stream_id = "rig.imec0.ap.bins".into();
    m.config.source.columns = columns;
    m.config.target.stream_id = "rig.behaviour".into();
    m.config.target.columns = vec![RUNNING_SPEED_COLUMN.into()];
    m.config.bin_s = 0.02; // bin_features' default bin_ms
    let path = dir.join("model");
    m.save(&path).unwrap();
    path
}

/// The environment variable `name` parsed, or `default` when unset or unreadable (the length,
/// count or size a long version of a test sets).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seed for randomised tests: `name` from the environment to replay a run, else the clock.
pub fn seed_from_env(name: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    env_or(name, clock)
}

/// The README's main job (`config.toml`) with its data directory and listen address put where
/// [`Daemon::start`] substitutes them.
pub fn main_job_config() -> String {
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml"))
            .unwrap()
            .replace("data_dir = \"data\"", "data_dir = \"{dir}/data\"")
            .replace(
                "listen = \"127.0.0.1:9750\"",
                "listen = \"127.0.0.1:{port}\"",
            );
    assert!(
        config.contains("{dir}/data") && config.contains("127.0.0.1:{port}"),
        "config.toml's data_dir or listen changed: tests can no longer point the main job at \
         their own dir and port"
    );
    config
}

/// The first of `candidates` that is a file: a bare name is looked up on PATH, a path taken as
/// it is. None means the test skips, loudly, except in CI (`CI` set), where the tool is required
/// because the test command installs it (`how`).
pub fn external_tool(candidates: &[PathBuf], how: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let found = candidates.iter().find_map(|c| {
        if c.components().count() > 1 {
            c.is_file().then(|| c.clone())
        } else {
            dirs.iter().map(|d| d.join(c)).find(|p| p.is_file())
        }
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs one of {candidates:?} ({how})"
        );
        eprintln!("\n!!!!! SKIPPED: none of {candidates:?} found ({how}) !!!!!\n");
    }
    found
}
