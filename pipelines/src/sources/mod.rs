//! Sources: where streams enter the daemon.

pub mod arrow_ipc;
pub mod follow;
pub mod openephys;
pub mod raw_file;
pub mod replay;
pub mod simulated;
pub mod spikeglx;
pub mod suite2p;
pub mod tiff;

use crate::component::SourceContext;

/// The first `sample_index` (or `frame_index`) a file source sends: one past what every store it
/// feeds holds of `stream_id` (the store is the checkpoint: durable, and exactly what was
/// stored). When the catalog cannot tell, 0, counted and logged: the stores drop rows they hold.
pub(crate) fn resume_index(ctx: &SourceContext, stream_id: &str) -> i64 {
    match ctx.resume.next_index(stream_id) {
        Ok(n) => n.max(0),
        Err(e) => {
            ctx.metrics.error(e.error_type(), "resuming", e.to_string());
            tracing::error!(
                "source `{}`: cannot tell what the store holds of `{stream_id}` ({e}); \
                 sending from the start",
                ctx.id
            );
            0
        }
    }
}
