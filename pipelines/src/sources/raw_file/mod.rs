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
//!   growing for `idle_timeout`, or shutdown (the loop is [`crate::sources::follow`], shared
//!   with the `tiff` source).
//!
//! One read buffer, sized for one batch, is allocated per run and reused for every batch.

mod follow;
mod reader;
mod replay;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use crate::component::{ComponentError, Shutdown, SourceContext};
use crate::edge::Overflow;
use crate::metrics::ComponentMetrics;
use crate::pace::{Pace, Pacer};
use crate::sources::follow::Timing;
use crate::stream::ContinuousInfo;
use reader::{BatchEmitter, Reader};

pub use crate::sources::follow::{FinishWatcher, Finished};

/// The `error_type` label counted when a file ends before its last sample.
pub const TRUNCATED_FILE: &str = "truncated_file";

/// Options shared by the file sources (`spikeglx`, `openephys`); each source's own option struct
/// carries the same keys (serde cannot combine `flatten` with `deny_unknown_fields`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadOptions {
    /// Replay speed; ignored when following (data is emitted as it arrives).
    pub pace: Pace,
    /// Tail a file that is still being written.
    pub follow: bool,
    /// Milliseconds of samples per batch, 1 to 100; unset: see [`ReadOptions::batch_ms`].
    pub batch_ms: Option<f64>,
    /// How often a follower looks for new bytes, in milliseconds.
    pub poll_ms: f64,
    /// A follower ends once the file has not grown for this long; 0 = never.
    pub idle_timeout_s: f64,
}

pub fn default_poll_ms() -> f64 {
    5.0
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            pace: Pace::Realtime,
            follow: false,
            batch_ms: None,
            poll_ms: default_poll_ms(),
            idle_timeout_s: 0.0,
        }
    }
}

impl ReadOptions {
    /// Every out-of-range option, one message each (the caller prefixes the component).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ms = self.batch_ms();
        if !(ms.is_finite() && (1.0..=100.0).contains(&ms)) {
            out.push(format!("`batch_ms` = {ms} must be between 1 and 100"));
        }
        out.extend(crate::sources::follow::option_problems(
            self.poll_ms,
            self.idle_timeout_s,
        ));
        out
    }

    /// Milliseconds per batch: as set, else 10 (what a live consumer waits at most for a
    /// sample), or 100 for a replay at `pace = "max"`, where nobody waits on a batch and each
    /// batch's fixed costs (an Arrow array per channel, a hand-over per hop, the metrics) are
    /// paid a tenth as often: 30 s of a 385-channel probe, one core, detected in 0.8 against
    /// 1.1 s and stored raw with a third less CPU time.
    pub fn batch_ms(&self) -> f64 {
        match self.batch_ms {
            Some(ms) => ms,
            None if self.pace == Pace::Max && !self.follow => 100.0,
            None => 10.0,
        }
    }

    /// Samples per batch at `rate_hz`: [`batch_ms`](Self::batch_ms) of data, at least one sample.
    pub fn batch_samples(&self, rate_hz: f64) -> usize {
        let n = (rate_hz * self.batch_ms() / 1000.0).round();
        if n.is_finite() && n >= 1.0 {
            n as usize
        } else {
            1
        }
    }

    pub fn timing(&self) -> Timing {
        Timing::from_options(self.poll_ms, self.idle_timeout_s)
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
    // The read buffer is one batch: a header claiming a huge rate or channel count shortens
    // the batches instead of allocating gigabytes.
    let most = (crate::limits::MAX_BATCH_BYTES / info.bytes_per_sample().max(1)).max(1);
    let file = RawFile {
        path,
        batch_samples: options.batch_samples(info.sampling_hz).min(most),
        info,
    };
    let mode = if options.follow {
        let Timing { poll, idle_timeout } = options.timing();
        Mode::Follow(FollowConfig {
            poll,
            idle_timeout,
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
    let pool = crate::buffer_pool::BufferPool::new();
    let mut reader = Reader {
        path: &file.path,
        file: handle,
        bps,
        buf: pool.take(file.batch_samples.max(1) * bps / 2),
        filled: 0,
        offset: 0,
    };
    let mut ctx = ctx;
    let start = crate::sources::resume_index(&ctx, &file.info.stream_id);
    let id = &ctx.id;
    let mut emitter = BatchEmitter {
        schema: file.info.schema(),
        path: &file.path,
        first_index: start,
        next_index: start,
        pool,
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
    let output = ctx.outputs.main();
    let ctx = Env {
        id,
        shutdown: &ctx.shutdown,
        metrics: &ctx.metrics,
    };
    match mode {
        Mode::Replay {
            pace,
            expected_bytes,
        } => replay::replay(
            &mut reader,
            &mut emitter,
            output,
            &ctx,
            Pacer::new(pace, file.info.sampling_hz),
            expected_bytes,
        ),
        Mode::Follow(cfg) => follow::follow(&mut reader, &mut emitter, output, &ctx, cfg),
    }
}

/// What the reading loops need of the [`SourceContext`] besides its output.
struct Env<'a> {
    id: &'a str,
    shutdown: &'a Shutdown,
    metrics: &'a ComponentMetrics,
}

#[cfg(test)]
pub(crate) mod tests;
