//! Replays or follows a headerless, interleaved little-endian Int16 file (the SpikeGLX `.bin`
//! and Open Ephys `continuous.dat` layout, ALGORITHMS.md §1) as continuous batches.
//!
//! - **Replay** reads a finished file once, `batch_samples` at a time, paced by [`Pacer`]. A file
//!   that ends early (shorter than the acquisition says, or with a partial last sample) is
//!   *truncated*: every whole sample is emitted, then the problem is counted and logged, and the
//!   replay ends cleanly so the rest of the daemon keeps going.
//! - **Follow** tails a file the acquisition is still writing: whole samples are emitted as soon
//!   as they appear (a partial trailing sample waits until it completes), until a
//!   [`FinishWatcher`] says the acquisition stopped and every byte was read, the file stops
//!   growing for `idle_timeout`, or shutdown.
//!
//! One read buffer, sized for one batch, is allocated per run and reused for every batch.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::component::{ComponentError, Output, Shutdown, SourceContext};
use crate::edge::Overflow;
use crate::metrics::ComponentMetrics;
use crate::pace::{Pace, Pacer};
use crate::storage::ResumeLookup;
use crate::stream::{batch_from_interleaved, ContinuousInfo};
use arrow::datatypes::SchemaRef;

/// The `error_type` label counted when a file ends before its last sample.
pub const TRUNCATED_FILE: &str = "truncated_file";

/// While following, re-ask the acquisition whether it stopped at most this often: re-reading a
/// `.meta` or re-opening an oebin on every 5 ms poll would be wasted work.
const FINISH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Options shared by the file sources (`spikeglx`, `openephys`); each source's own option struct
/// carries the same keys (serde cannot combine `flatten` with `deny_unknown_fields`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadOptions {
    /// Replay speed; ignored when following (data is emitted as it arrives).
    pub pace: Pace,
    /// Tail a file that is still being written.
    pub follow: bool,
    /// Milliseconds of samples per batch, 1 to 100.
    pub batch_ms: f64,
    /// How often a follower looks for new bytes, in milliseconds.
    pub poll_ms: f64,
    /// A follower ends once the file has not grown for this long; 0 = never.
    pub idle_timeout_s: f64,
}

pub fn default_batch_ms() -> f64 {
    10.0
}

pub fn default_poll_ms() -> f64 {
    5.0
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            pace: Pace::Realtime,
            follow: false,
            batch_ms: default_batch_ms(),
            poll_ms: default_poll_ms(),
            idle_timeout_s: 0.0,
        }
    }
}

impl ReadOptions {
    /// Every out-of-range option, one message each (the caller prefixes the component).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.batch_ms.is_finite() && (1.0..=100.0).contains(&self.batch_ms)) {
            out.push(format!(
                "`batch_ms` = {} must be between 1 and 100",
                self.batch_ms
            ));
        }
        if !(self.poll_ms.is_finite() && self.poll_ms > 0.0 && self.poll_ms <= 10_000.0) {
            out.push(format!(
                "`poll_ms` = {} must be above 0 and at most 10000",
                self.poll_ms
            ));
        }
        if !(self.idle_timeout_s.is_finite() && self.idle_timeout_s >= 0.0) {
            out.push(format!(
                "`idle_timeout_s` = {} must be 0 (never) or a positive number of seconds",
                self.idle_timeout_s
            ));
        }
        out
    }

    /// Samples per batch at `rate_hz`: `batch_ms` of data, at least one sample.
    pub fn batch_samples(&self, rate_hz: f64) -> usize {
        let n = (rate_hz * self.batch_ms / 1000.0).round();
        if n.is_finite() && n >= 1.0 {
            n as usize
        } else {
            1
        }
    }

    pub fn poll(&self) -> Duration {
        Duration::try_from_secs_f64(self.poll_ms / 1000.0).unwrap_or(Duration::from_millis(5))
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        if self.idle_timeout_s > 0.0 {
            Duration::try_from_secs_f64(self.idle_timeout_s).ok()
        } else {
            None
        }
    }

    /// Live data never blocks the acquisition; a replay never loses data.
    pub fn overflow(&self) -> Overflow {
        if self.follow {
            Overflow::DropOldest
        } else {
            Overflow::Block
        }
    }
}

/// The acquisition has stopped writing the followed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Final size of the file in bytes, when the acquisition says (SpikeGLX `fileSizeBytes`).
    pub expected_bytes: Option<u64>,
}

/// Tells a follower when the acquisition has stopped. Called only while the file is not growing.
pub trait FinishWatcher: Send {
    /// `Some` once the acquisition has stopped; `None` while it still records (or cannot tell
    /// yet, e.g. a metadata file caught half-rewritten).
    fn check(&mut self) -> Option<Finished>;
}

impl<F: FnMut() -> Option<Finished> + Send> FinishWatcher for F {
    fn check(&mut self) -> Option<Finished> {
        self()
    }
}

/// How to read the file.
pub enum Mode {
    /// A finished file. `expected_bytes` is its size according to the acquisition (`None`:
    /// whatever is on disk when the replay starts).
    Replay {
        pace: Pace,
        expected_bytes: Option<u64>,
    },
    Follow(FollowConfig),
}

pub struct FollowConfig {
    pub poll: Duration,
    pub idle_timeout: Option<Duration>,
    pub watcher: Box<dyn FinishWatcher>,
}

/// Replays `path`, or follows it when `options.follow` is set; `watcher` tells a follower when
/// the acquisition has finished the file. Both file sources run through here.
pub fn run_source(
    path: PathBuf,
    info: ContinuousInfo,
    options: &ReadOptions,
    expected_bytes: Option<u64>,
    watcher: Box<dyn FinishWatcher>,
    ctx: SourceContext,
) -> Result<(), ComponentError> {
    let file = RawFile {
        path,
        batch_samples: options.batch_samples(info.sampling_hz),
        info,
    };
    let mode = if options.follow {
        Mode::Follow(FollowConfig {
            poll: options.poll(),
            idle_timeout: options.idle_timeout(),
            watcher,
        })
    } else {
        Mode::Replay {
            pace: options.pace,
            expected_bytes,
        }
    };
    run(file, mode, ctx)
}

/// The file and what its samples are.
pub struct RawFile {
    pub path: PathBuf,
    /// Stream description (its `stream_id` is the component id).
    pub info: ContinuousInfo,
    pub batch_samples: usize,
}

/// Runs a replay or a follow until the data ends, every consumer has stopped, or shutdown.
/// Truncation is counted and logged and still returns `Ok`; only I/O failures are `Err`.
pub fn run(file: RawFile, mode: Mode, ctx: SourceContext) -> Result<(), ComponentError> {
    let bps = file.info.bytes_per_sample();
    if bps == 0 {
        return Err(ComponentError::Other(format!(
            "{}: the stream has no channels",
            file.path.display()
        )));
    }
    let handle = File::open(&file.path)
        .map_err(|e| ComponentError::io(format!("{}: cannot open", file.path.display()), e))?;
    let mut reader = Reader {
        path: &file.path,
        file: handle,
        bps,
        buf: vec![0u8; file.batch_samples.max(1) * bps],
        filled: 0,
        offset: 0,
    };
    let SourceContext {
        id,
        mut outputs,
        shutdown,
        metrics,
        resume,
    } = ctx;
    let start = resume_point(&file, &resume, &metrics);
    let mut emitter = BatchEmitter {
        schema: file.info.schema(),
        path: &file.path,
        first_index: start,
        next_index: start,
    };
    if start > 0 {
        let offset = start as u64 * bps as u64;
        reader
            .file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| reader.io_error("cannot seek", e))?;
        reader.offset = offset;
        tracing::info!(
            "source `{id}`: resuming {} at sample_index {start} (byte {offset}): the stores it \
             feeds hold every sample before",
            file.path.display()
        );
    }
    let ctx = Env {
        id: &id,
        shutdown: &shutdown,
        metrics: &metrics,
    };
    let output = outputs.main();
    match mode {
        Mode::Replay {
            pace,
            expected_bytes,
        } => replay(
            &mut reader,
            &mut emitter,
            output,
            &ctx,
            Pacer::new(pace, file.info.sampling_hz),
            expected_bytes,
        ),
        Mode::Follow(cfg) => follow(&mut reader, &mut emitter, output, &ctx, cfg),
    }
}

/// The first sample to read: one past what every store fed by this source holds of its stream
/// (the store is the checkpoint: it is durable, and exactly what was stored). On a failing
/// catalog, from the start: the stores drop rows they hold.
fn resume_point(file: &RawFile, resume: &ResumeLookup, metrics: &ComponentMetrics) -> i64 {
    match resume.next_index(&file.info.stream_id) {
        Ok(n) => n.max(0),
        Err(e) => {
            metrics.error(e.error_type(), "resuming", e.to_string());
            tracing::error!(
                "{}: cannot tell what the store holds ({e}); reading from the start",
                file.path.display()
            );
            0
        }
    }
}

/// What the reading loops need of the [`SourceContext`] besides its output.
struct Env<'a> {
    id: &'a str,
    shutdown: &'a Shutdown,
    metrics: &'a ComponentMetrics,
}

/// Reads the file into one reusable buffer.
struct Reader<'a> {
    path: &'a Path,
    file: File,
    bps: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet emitted (whole samples, then at most a partial one).
    filled: usize,
    /// Bytes read from the file so far.
    offset: u64,
}

impl Reader<'_> {
    fn io_error(&self, what: &str, e: io::Error) -> ComponentError {
        ComponentError::io(format!("{}: {what}", self.path.display()), e)
    }

    /// Reads into the free part of the buffer, at most `limit` bytes, until it is full, `limit`
    /// is reached or the file has no more bytes now. Returns the bytes read.
    fn fill(&mut self, limit: u64) -> Result<usize, ComponentError> {
        let room = (self.buf.len() - self.filled).min(usize::try_from(limit).unwrap_or(usize::MAX));
        let end = self.filled + room;
        let mut total = 0;
        while self.filled < end {
            match self.file.read(&mut self.buf[self.filled..end]) {
                Ok(0) => break,
                Ok(n) => {
                    self.filled += n;
                    self.offset += n as u64;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("cannot read", e)),
            }
        }
        Ok(total)
    }

    fn whole_bytes(&self) -> usize {
        self.filled - self.filled % self.bps
    }

    fn is_full(&self) -> bool {
        self.filled == self.buf.len()
    }

    /// Forgets the first `n` bytes (already emitted), keeping the rest at the front.
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    fn file_len(&self) -> Result<u64, ComponentError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io_error("cannot stat", e))
    }
}

/// Whether to keep going after sending a batch.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// Every consumer has stopped.
    Closed,
}

struct BatchEmitter<'a> {
    schema: SchemaRef,
    path: &'a Path,
    /// `sample_index` this run started at (0, or where it resumed).
    first_index: i64,
    /// `sample_index` of the next sample (0 at the file's first sample).
    next_index: i64,
}

impl BatchEmitter<'_> {
    /// Samples emitted by this run (the pacer's clock starts with the run).
    fn samples_emitted(&self) -> u64 {
        (self.next_index - self.first_index) as u64
    }

    fn emit(&mut self, output: &mut Output, bytes: &[u8]) -> Result<Flow, ComponentError> {
        let batch = batch_from_interleaved(&self.schema, self.next_index, bytes).map_err(|e| {
            ComponentError::arrow(format!("{}: building a batch", self.path.display()), e)
        })?;
        self.next_index += batch.num_rows() as i64;
        match output.send(batch) {
            Ok(()) => Ok(Flow::Continue),
            Err(_) => Ok(Flow::Closed),
        }
    }
}

fn replay(
    reader: &mut Reader,
    emitter: &mut BatchEmitter,
    output: &mut Output,
    ctx: &Env,
    pacer: Pacer,
    expected_bytes: Option<u64>,
) -> Result<(), ComponentError> {
    let bps = reader.bps as u64;
    let end = match expected_bytes {
        Some(b) => b,
        None => reader.file_len()?,
    };
    if reader.offset >= end && reader.offset > 0 {
        tracing::info!(
            "source `{}`: {} is already stored up to its end ({} samples); nothing to replay",
            ctx.id,
            reader.path.display(),
            end / bps
        );
        return Ok(());
    }
    tracing::info!(
        "source `{}`: replaying {} ({} samples of {} channels)",
        ctx.id,
        reader.path.display(),
        end / bps,
        bps / 2
    );
    loop {
        let remaining = end.saturating_sub(reader.offset);
        if remaining == 0 {
            break;
        }
        let read = reader.fill(remaining)?;
        let whole = reader.whole_bytes();
        // Send a full batch, or what is left at the end of the file.
        let at_end = read == 0 || reader.offset >= end;
        if whole > 0 && (reader.is_full() || at_end) {
            let due = emitter.samples_emitted() + (whole / reader.bps) as u64;
            if !pacer.wait_for(due, ctx.shutdown) {
                tracing::info!("source `{}`: stopped by shutdown", ctx.id);
                return Ok(());
            }
            if emitter.emit(output, &reader.buf[..whole])? == Flow::Closed {
                tracing::info!("source `{}`: every consumer stopped", ctx.id);
                return Ok(());
            }
            reader.consume(whole);
            ctx.metrics
                .set_lag(pacer.lag_seconds(emitter.samples_emitted()));
        }
        if read == 0 {
            break;
        }
    }
    let partial = reader.filled as u64;
    if reader.offset < end || partial > 0 {
        let expected = match expected_bytes {
            Some(b) => format!("{b} bytes ({} samples)", b / bps),
            None => format!("a whole number of {bps}-byte samples"),
        };
        report_truncated(ctx, reader.path, &expected, reader.offset, emitter, partial);
    } else {
        tracing::info!(
            "source `{}`: finished {} ({} samples)",
            ctx.id,
            reader.path.display(),
            emitter.samples_emitted()
        );
    }
    Ok(())
}

/// Counts and logs a file that ended before its last sample.
fn report_truncated(
    ctx: &Env,
    path: &Path,
    expected: &str,
    actual_bytes: u64,
    emitter: &BatchEmitter,
    partial_bytes: u64,
) {
    let msg = truncation_message(
        path,
        expected,
        actual_bytes,
        emitter.next_index as u64,
        emitter.samples_emitted(),
        partial_bytes,
    );
    tracing::error!("source `{}`: {msg}", ctx.id);
    ctx.metrics.error(TRUNCATED_FILE, "reading", msg);
}

fn truncation_message(
    path: &Path,
    expected: &str,
    actual_bytes: u64,
    end_index: u64,
    samples: u64,
    partial_bytes: u64,
) -> String {
    let end = match end_index {
        0 => "it holds no whole sample".to_string(),
        n => format!("the data ends after sample_index {}", n - 1),
    };
    let partial = if partial_bytes > 0 {
        format!(", a partial sample of {partial_bytes} bytes dropped")
    } else {
        String::new()
    };
    format!(
        "{}: truncated: expected {expected}, found {actual_bytes} bytes; {end} \
         ({samples} whole samples emitted{partial})",
        path.display()
    )
}

/// When the file was first seen to reach each length, to estimate the age of emitted samples.
#[derive(Default)]
struct GrowthLog {
    seen: VecDeque<(u64, Instant)>,
}

impl GrowthLog {
    fn observe(&mut self, len: u64, now: Instant) {
        if self.seen.back().is_none_or(|&(l, _)| len > l) {
            self.seen.push_back((len, now));
        }
    }

    /// Seconds since the file first held byte `end - 1` (the newest byte emitted).
    fn age_of(&mut self, end: u64) -> f64 {
        while self.seen.front().is_some_and(|&(l, _)| l < end) {
            self.seen.pop_front();
        }
        self.seen
            .front()
            .map(|&(_, t)| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Why a follower stopped.
enum FollowEnd {
    Finished(Finished),
    Idle(Duration),
    Shutdown,
    Closed,
}

fn follow(
    reader: &mut Reader,
    emitter: &mut BatchEmitter,
    output: &mut Output,
    ctx: &Env,
    mut cfg: FollowConfig,
) -> Result<(), ComponentError> {
    tracing::info!(
        "source `{}`: following {} ({} channels)",
        ctx.id,
        reader.path.display(),
        reader.bps / 2
    );
    let mut growth = GrowthLog::default();
    let mut last_growth = Instant::now();
    let mut last_check: Option<Instant> = None;
    let end = loop {
        if ctx.shutdown.is_triggered() {
            break FollowEnd::Shutdown;
        }
        let len = reader.file_len()?;
        if len < reader.offset {
            let msg = format!(
                "{}: shrank from {} to {len} bytes while being followed (replaced?); stopping",
                reader.path.display(),
                reader.offset
            );
            tracing::error!("source `{}`: {msg}", ctx.id);
            ctx.metrics.error("file_shrank", "reading", msg);
            break FollowEnd::Closed;
        }
        growth.observe(len, Instant::now());
        let read = match drain(reader, emitter, output, ctx, &mut growth, u64::MAX)? {
            Some(n) => n,
            None => break FollowEnd::Closed,
        };
        if read > 0 {
            last_growth = Instant::now();
        } else {
            if last_check.is_none_or(|t| t.elapsed() >= FINISH_CHECK_INTERVAL) {
                last_check = Some(Instant::now());
                if let Some(f) = cfg.watcher.check() {
                    break FollowEnd::Finished(f);
                }
            }
            if let Some(idle) = cfg.idle_timeout {
                if last_growth.elapsed() >= idle {
                    break FollowEnd::Idle(idle);
                }
            }
        }
        if ctx.shutdown.sleep(cfg.poll) {
            break FollowEnd::Shutdown;
        }
    };
    let what = match end {
        FollowEnd::Closed => {
            tracing::info!("source `{}`: stopped following", ctx.id);
            return Ok(());
        }
        FollowEnd::Finished(f) => {
            // The last bytes may have landed between our last read and the acquisition's stop.
            let limit = f
                .expected_bytes
                .map_or(u64::MAX, |b| b.saturating_sub(reader.offset));
            if drain(reader, emitter, output, ctx, &mut growth, limit)?.is_none() {
                return Ok(());
            }
            let bps = reader.bps as u64;
            match f.expected_bytes {
                Some(expected) if reader.offset < expected => {
                    report_truncated(
                        ctx,
                        reader.path,
                        &format!("{expected} bytes ({} samples)", expected / bps),
                        reader.offset,
                        emitter,
                        reader.filled as u64,
                    );
                    return Ok(());
                }
                Some(expected) if reader.file_len()? > expected => tracing::warn!(
                    "source `{}`: {} holds more than the {expected} bytes the acquisition \
                     reported; read only those",
                    ctx.id,
                    reader.path.display()
                ),
                _ => {}
            }
            "the acquisition stopped".to_string()
        }
        FollowEnd::Idle(idle) => format!("the file has not grown for {} s", idle.as_secs_f64()),
        FollowEnd::Shutdown => "shutdown".to_string(),
    };
    if reader.filled > 0 {
        tracing::warn!(
            "source `{}`: {}: dropping a partial last sample ({} of {} bytes) after sample_index {}",
            ctx.id,
            reader.path.display(),
            reader.filled,
            reader.bps,
            emitter.next_index - 1
        );
    }
    tracing::info!(
        "source `{}`: stopped following {} ({what}) after {} samples",
        ctx.id,
        reader.path.display(),
        emitter.samples_emitted()
    );
    Ok(())
}

/// Reads everything the file holds now (at most `limit` bytes), emitting full batches as the
/// buffer fills and the whole samples left at the end. Returns the bytes read, or `None` once
/// every consumer has stopped.
fn drain(
    reader: &mut Reader,
    emitter: &mut BatchEmitter,
    output: &mut Output,
    ctx: &Env,
    growth: &mut GrowthLog,
    limit: u64,
) -> Result<Option<u64>, ComponentError> {
    let mut total = 0u64;
    loop {
        let read = reader.fill(limit - total)? as u64;
        total += read;
        // Bytes that appeared after the last stat were first seen now.
        growth.observe(reader.offset, Instant::now());
        let whole = reader.whole_bytes();
        let more = read > 0 && total < limit;
        if whole > 0 && (reader.is_full() || !more) {
            if emitter.emit(output, &reader.buf[..whole])? == Flow::Closed {
                return Ok(None);
            }
            let emitted_end = reader.offset - (reader.filled - whole) as u64;
            reader.consume(whole);
            ctx.metrics.set_lag(growth.age_of(emitted_end));
        }
        if !more {
            return Ok(Some(total));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::component::{Outputs, Shutdown};
    use crate::edge::{Inbox, Recv};
    use crate::metrics::{ComponentMetrics, Metrics};
    use crate::stream::{ChannelInfo, ChannelKind};
    use arrow::array::{Array, Int16Array, Int64Array};
    use arrow::record_batch::RecordBatch;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// What a test source run produced.
    pub(crate) struct Collected {
        pub batches: Vec<RecordBatch>,
        pub metrics: ComponentMetrics,
        pub result: Result<(), ComponentError>,
    }

    impl Collected {
        /// The samples back in file layout: interleaved little-endian Int16.
        pub fn interleaved_bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for b in &self.batches {
                let cols: Vec<&Int16Array> = (1..b.num_columns())
                    .map(|c| b.column(c).as_any().downcast_ref::<Int16Array>().unwrap())
                    .collect();
                for r in 0..b.num_rows() {
                    for c in &cols {
                        out.extend_from_slice(&c.value(r).to_le_bytes());
                    }
                }
            }
            out
        }

        /// `sample_index` of every row, in arrival order.
        pub fn indices(&self) -> Vec<i64> {
            self.batches
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    a.values().to_vec()
                })
                .collect()
        }
    }

    /// Runs `run` on a thread with one consumer inbox (large enough never to drop) and collects
    /// everything it sends until it finishes.
    pub(crate) fn collect(
        overflow: Overflow,
        shutdown: Shutdown,
        run: impl FnOnce(SourceContext) -> Result<(), ComponentError> + Send + 'static,
    ) -> Collected {
        let metrics = Metrics::new();
        let src = metrics.component("src", "source", "test");
        let inbox = Inbox::new(100_000, metrics.component("sink", "sink", "test"));
        let mut outputs = Outputs::default();
        outputs.insert("", Output::new(vec![inbox.sender()], overflow, src.clone()));
        let ctx = SourceContext {
            id: "src".into(),
            outputs,
            shutdown,
            metrics: src.clone(),
            resume: ResumeLookup::default(),
        };
        let handle = std::thread::spawn(move || run(ctx));
        let mut batches = Vec::new();
        loop {
            match inbox.recv_timeout(Duration::from_secs(30)) {
                Recv::Data(b) => batches.push(b),
                Recv::Closed => break,
                Recv::Timeout => panic!("the source sent nothing for 30 s"),
            }
        }
        let result = handle.join().expect("source thread panicked");
        Collected {
            batches,
            metrics: src,
            result,
        }
    }

    pub(crate) fn info(n_ch: usize, rate: f64) -> ContinuousInfo {
        ContinuousInfo {
            stream_id: "src".into(),
            stream_kind: "ap".into(),
            sampling_hz_text: rate.to_string(),
            sampling_hz: rate,
            first_sample: 0,
            probe: None,
            channels: (0..n_ch)
                .map(|i| ChannelInfo {
                    name: format!("c{i}"),
                    kind: ChannelKind::Ap,
                    uv_per_bit: None,
                    x_um: None,
                    y_um: None,
                    shank: None,
                })
                .collect(),
        }
    }

    /// `n` samples of `n_ch` channels whose values encode (sample, channel) and cover negatives.
    pub(crate) fn synthetic(n: usize, n_ch: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * n_ch * 2);
        for s in 0..n {
            for c in 0..n_ch {
                let v = ((s * 7 + c * 1013) % 65536) as u16 as i16;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    fn replay_file(
        path: &Path,
        n_ch: usize,
        batch: usize,
        expected: Option<u64>,
        pace: Pace,
    ) -> Collected {
        let file = RawFile {
            path: path.to_path_buf(),
            info: info(n_ch, 1000.0),
            batch_samples: batch,
        };
        collect(Overflow::Block, Shutdown::new(), move |ctx| {
            run(
                file,
                Mode::Replay {
                    pace,
                    expected_bytes: expected,
                },
                ctx,
            )
        })
    }

    #[test]
    fn replay_is_exact_across_odd_batch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data = synthetic(1000, 3);
        std::fs::write(&path, &data).unwrap();
        for batch in [1, 7, 13, 999, 1000, 4096] {
            let got = replay_file(&path, 3, batch, Some(data.len() as u64), Pace::Max);
            got.result.as_ref().unwrap();
            assert_eq!(got.interleaved_bytes(), data, "batch {batch}");
            assert_eq!(got.indices(), (0..1000).collect::<Vec<i64>>());
            let sizes: Vec<usize> = got.batches.iter().map(|b| b.num_rows()).collect();
            let full = 1000 / batch.min(1000);
            assert!(
                sizes[..full].iter().all(|&s| s == batch.min(1000)),
                "{sizes:?}"
            );
            assert_eq!(sizes.len(), 1000usize.div_ceil(batch), "batch {batch}");
            assert_eq!(got.metrics.errors_total(), 0);
            assert_eq!(got.metrics.sent_rows(), 1000);
        }
    }

    #[test]
    fn realtime_replay_takes_the_recording_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        // 100 samples at 1 kHz: 0.1 s.
        std::fs::write(&path, synthetic(100, 2)).unwrap();
        let t = Instant::now();
        let got = replay_file(&path, 2, 10, None, Pace::Realtime);
        got.result.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(got.metrics.sent_rows(), 100);
    }

    #[test]
    fn truncated_file_emits_every_whole_sample_and_counts_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data = synthetic(100, 4);
        // 57 whole samples and 5 bytes of the 58th; the acquisition said 100 samples.
        let cut = 57 * 8 + 5;
        std::fs::write(&path, &data[..cut]).unwrap();
        let got = replay_file(&path, 4, 10, Some(data.len() as u64), Pace::Max);
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..57 * 8]);
        assert_eq!(got.indices().last(), Some(&56));
        assert_eq!(got.metrics.errors_total(), 1);

        // Without an expected size: a partial trailing sample alone is a truncation.
        let got = replay_file(&path, 4, 10, None, Pace::Max);
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..57 * 8]);
        assert_eq!(got.metrics.errors_total(), 1);
    }

    #[test]
    fn truncation_message_names_file_sizes_and_last_sample() {
        let m = truncation_message(
            Path::new("/d/x.bin"),
            "800 bytes (100 samples)",
            461,
            57,
            57,
            5,
        );
        assert_eq!(
            m,
            "/d/x.bin: truncated: expected 800 bytes (100 samples), found 461 bytes; the data \
             ends after sample_index 56 (57 whole samples emitted, a partial sample of 5 bytes \
             dropped)"
        );
        let m = truncation_message(Path::new("x.bin"), "8 bytes (1 samples)", 0, 0, 0, 0);
        assert!(
            m.contains("it holds no whole sample (0 whole samples emitted)"),
            "{m}"
        );
    }

    #[test]
    fn whole_but_short_file_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data = synthetic(30, 2);
        std::fs::write(&path, &data[..20 * 4]).unwrap();
        let got = replay_file(&path, 2, 7, Some(data.len() as u64), Pace::Max);
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..80]);
        assert_eq!(got.metrics.errors_total(), 1);
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.bin");
        let got = replay_file(&path, 2, 7, None, Pace::Max);
        let e = got.result.unwrap_err().to_string();
        assert!(e.contains("gone.bin"), "{e}");
    }

    /// Appends `data` to `path` in odd-sized chunks (splitting samples), pausing between them.
    pub(crate) fn write_slowly(path: &Path, data: &[u8], chunk: usize, pause: Duration) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        for part in data.chunks(chunk) {
            f.write_all(part).unwrap();
            f.flush().unwrap();
            std::thread::sleep(pause);
        }
    }

    fn follow_config(
        idle: Option<Duration>,
        watcher: impl FnMut() -> Option<Finished> + Send + 'static,
    ) -> Mode {
        Mode::Follow(FollowConfig {
            poll: Duration::from_millis(2),
            idle_timeout: idle,
            watcher: Box::new(watcher),
        })
    }

    #[test]
    fn follower_gets_every_sample_once_in_order_then_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.bin");
        let n_ch = 3;
        let data = synthetic(2000, n_ch);
        // The acquisition has written a bit and a partial sample before we start.
        std::fs::write(&path, &data[..17]).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (path, data, done) = (path.clone(), data.clone(), done.clone());
            std::thread::spawn(move || {
                write_slowly(&path, &data[17..], 37, Duration::from_micros(300));
                done.store(true, Ordering::SeqCst);
            })
        };
        let file = RawFile {
            path: path.clone(),
            info: info(n_ch, 30000.0),
            batch_samples: 50,
        };
        let total = data.len() as u64;
        let mode = follow_config(None, move || {
            done.load(Ordering::SeqCst).then_some(Finished {
                expected_bytes: Some(total),
            })
        });
        let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
            run(file, mode, ctx)
        });
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        assert_eq!(got.indices(), (0..2000).collect::<Vec<i64>>());
        assert_eq!(got.interleaved_bytes(), data);
        assert!(got.batches.iter().all(|b| b.num_rows() <= 50));
        assert_eq!(got.metrics.errors_total(), 0);
        assert_eq!(got.metrics.dropped_rows(), 0);
    }

    #[test]
    fn follower_ends_after_idle_timeout_dropping_a_partial_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.bin");
        let data = synthetic(500, 2);
        std::fs::write(&path, b"").unwrap();
        let writer = {
            let (path, data) = (path.clone(), data.clone());
            // Ends with 3 bytes of a 4-byte sample that never completes.
            std::thread::spawn(move || {
                write_slowly(&path, &data[..400 * 4 + 3], 29, Duration::from_micros(200))
            })
        };
        let file = RawFile {
            path: path.clone(),
            info: info(2, 30000.0),
            batch_samples: 64,
        };
        let mode = follow_config(Some(Duration::from_millis(500)), || None);
        let t = Instant::now();
        let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
            run(file, mode, ctx)
        });
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..400 * 4]);
        assert_eq!(got.indices(), (0..400).collect::<Vec<i64>>());
        assert!(t.elapsed() >= Duration::from_millis(500));
        assert_eq!(got.metrics.errors_total(), 0, "idle end is not an error");
    }

    #[test]
    fn finished_acquisition_shorter_than_announced_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.bin");
        let data = synthetic(100, 2);
        std::fs::write(&path, &data[..50 * 4]).unwrap();
        let file = RawFile {
            path,
            info: info(2, 30000.0),
            batch_samples: 64,
        };
        let mode = follow_config(None, || {
            Some(Finished {
                expected_bytes: Some(400),
            })
        });
        let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
            run(file, mode, ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..200]);
        assert_eq!(got.metrics.errors_total(), 1);
    }

    #[test]
    fn shutdown_stops_a_follower_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.bin");
        let data = synthetic(10, 2);
        std::fs::write(&path, &data).unwrap();
        let file = RawFile {
            path,
            info: info(2, 30000.0),
            batch_samples: 64,
        };
        let mode = Mode::Follow(FollowConfig {
            poll: Duration::from_secs(10),
            idle_timeout: None,
            watcher: Box::new(|| None),
        });
        let shutdown = Shutdown::new();
        let trigger = {
            let s = shutdown.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let t = Instant::now();
                s.trigger();
                t
            })
        };
        let got = collect(Overflow::DropOldest, shutdown, move |ctx| {
            run(file, mode, ctx)
        });
        let triggered_at = trigger.join().unwrap();
        got.result.as_ref().unwrap();
        assert!(
            triggered_at.elapsed() < Duration::from_secs(1),
            "took {:?} after shutdown",
            triggered_at.elapsed()
        );
        assert_eq!(got.interleaved_bytes(), data, "what was there is emitted");
    }

    #[test]
    fn growth_log_ages_the_newest_emitted_byte() {
        let mut g = GrowthLog::default();
        let t0 = Instant::now() - Duration::from_secs(2);
        g.observe(100, t0);
        g.observe(100, Instant::now()); // no growth: ignored
        g.observe(200, Instant::now());
        let age = g.age_of(80);
        assert!((1.9..3.0).contains(&age), "{age}");
        assert!(g.age_of(150) < 0.5);
    }

    #[test]
    fn options_are_checked() {
        let o = ReadOptions {
            batch_ms: 0.5,
            poll_ms: 0.0,
            idle_timeout_s: -1.0,
            ..ReadOptions::default()
        };
        assert_eq!(o.problems().len(), 3, "{:?}", o.problems());
        assert!(ReadOptions::default().problems().is_empty());
        assert_eq!(ReadOptions::default().batch_samples(29999.757983), 300);
        assert_eq!(ReadOptions::default().batch_samples(40.0), 1);
        assert_eq!(ReadOptions::default().overflow(), Overflow::Block);
    }
}
