//! Reading a finished file once, paced.

use super::reader::{report_truncated, BatchEmitter, Flow, Reader};
use super::Env;
use crate::component::{ComponentError, Output};
use crate::pace::Pacer;

pub(super) fn replay(
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
            if emitter.emit(output, reader)? == Flow::Closed {
                tracing::info!("source `{}`: every consumer stopped", ctx.id);
                return Ok(());
            }
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
