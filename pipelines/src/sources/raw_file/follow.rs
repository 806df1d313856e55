//! Following a raw file the acquisition is still writing, through the shared
//! [`crate::sources::follow`] loop: a step emits every whole sample the file holds now.

use std::time::Instant;

use super::reader::{report_truncated, BatchEmitter, Flow, Reader};
use super::{Env, FinishWatcher, FollowConfig};
use crate::component::{ComponentError, Output};
use crate::sources::follow::{self, End, Finished, Followed, GrowthLog, Step, Timing};

/// The raw file's part of the follow loop.
struct RawFollower<'r, 'a, 'e> {
    reader: &'r mut Reader<'a>,
    emitter: &'r mut BatchEmitter<'e>,
    output: &'r mut Output,
    ctx: &'r Env<'r>,
    watcher: Box<dyn FinishWatcher>,
    growth: GrowthLog,
}

impl Followed for RawFollower<'_, '_, '_> {
    fn step(&mut self) -> Result<Step, ComponentError> {
        let len = self.reader.file_len()?;
        if len < self.reader.offset {
            let msg = format!(
                "{}: shrank from {} to {len} bytes while being followed (replaced?); stopping",
                self.reader.path.display(),
                self.reader.offset
            );
            tracing::error!("source `{}`: {msg}", self.ctx.id);
            self.ctx.metrics.error("file_shrank", "reading", msg);
            return Ok(Step::Stop);
        }
        self.growth.observe(len, Instant::now());
        Ok(match self.drain(u64::MAX)? {
            None => Step::Stop,
            Some(0) => Step::Nothing,
            Some(_) => Step::Grew,
        })
    }

    fn finished(&mut self) -> Option<Finished> {
        self.watcher.check()
    }
}

impl RawFollower<'_, '_, '_> {
    /// Reads everything the file holds now (at most `limit` bytes), emitting full batches as
    /// the buffer fills and the whole samples left at the end. Returns the bytes read, or
    /// `None` once every consumer has stopped.
    fn drain(&mut self, limit: u64) -> Result<Option<u64>, ComponentError> {
        let reader = &mut *self.reader;
        let mut total = 0u64;
        loop {
            let read = reader.fill(limit - total)? as u64;
            total += read;
            // Bytes that appeared after the last stat were first seen now.
            self.growth.observe(reader.offset, Instant::now());
            let whole = reader.whole_bytes();
            let more = read > 0 && total < limit;
            if whole > 0 && (reader.is_full() || !more) {
                let emitted_end = reader.offset - (reader.filled - whole) as u64;
                if self.emitter.emit(self.output, reader)? == Flow::Closed {
                    return Ok(None);
                }
                self.ctx.metrics.set_lag(self.growth.age_of(emitted_end));
            }
            if !more {
                return Ok(Some(total));
            }
        }
    }

    /// The acquisition stopped: reads the bytes that landed after the last step, up to the
    /// size it reported. `false` when the follow ends here (consumers gone, or truncated).
    fn finish(&mut self, f: Finished) -> Result<bool, ComponentError> {
        let limit = f
            .expected_bytes
            .map_or(u64::MAX, |b| b.saturating_sub(self.reader.offset));
        if self.drain(limit)?.is_none() {
            return Ok(false);
        }
        let (reader, ctx) = (&*self.reader, self.ctx);
        let bps = reader.bps as u64;
        match f.expected_bytes {
            Some(expected) if reader.offset < expected => {
                report_truncated(
                    ctx,
                    reader.path,
                    &format!("{expected} bytes ({} samples)", expected / bps),
                    reader.offset,
                    self.emitter,
                    reader.filled as u64,
                );
                return Ok(false);
            }
            Some(expected) if reader.file_len()? > expected => tracing::warn!(
                "source `{}`: {} holds more than the {expected} bytes the acquisition \
                 reported; read only those",
                ctx.id,
                reader.path.display()
            ),
            _ => {}
        }
        Ok(true)
    }
}

pub(super) fn follow(
    reader: &mut Reader,
    emitter: &mut BatchEmitter,
    output: &mut Output,
    ctx: &Env,
    cfg: FollowConfig,
) -> Result<(), ComponentError> {
    tracing::info!(
        "source `{}`: following {} ({} channels)",
        ctx.id,
        reader.path.display(),
        reader.bps / 2
    );
    let timing = Timing {
        poll: cfg.poll,
        idle_timeout: cfg.idle_timeout,
    };
    let mut raw = RawFollower {
        reader,
        emitter,
        output,
        ctx,
        watcher: cfg.watcher,
        growth: GrowthLog::default(),
    };
    let end = follow::follow(&mut raw, timing, ctx.shutdown)?;
    match end {
        End::Stopped => {
            tracing::info!("source `{}`: stopped following", ctx.id);
            return Ok(());
        }
        End::Finished(f) if !raw.finish(f)? => return Ok(()),
        _ => {}
    }
    let (reader, emitter) = (&*raw.reader, &*raw.emitter);
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
        "source `{}`: stopped following {} ({}) after {} samples",
        ctx.id,
        reader.path.display(),
        end.describe(),
        emitter.samples_emitted()
    );
    Ok(())
}
