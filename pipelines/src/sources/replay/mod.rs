//! `type = "replay"`: stored streams (and Parquet files written by anyone) sent again, in time
//! order across streams, with their original ids, schemas and metadata, so that a stored session
//! runs through new transforms as it ran live.
//!
//! ```toml
//! [sources.again]
//! type = "replay"
//! path = "/data/neurod"        # or ["/data/neurod/disk", "/lab/behaviour.parquet"]
//! streams = ["rig.imec0.ap", "rig.twophoton*"]   # ids or globs (`*`, `?`); default: all
//! pace = "realtime"            # or "max"
//! from_s = 10.0                # optional: rows with from_s <= time < to_s
//! to_s = 70.0
//! ```
//!
//! Each `path` is a data directory (every store in it), one store's directory, one stream
//! directory, a Parquet file, or a folder of Parquet files. Stored streams are listed through the
//! catalog ([`crate::storage::catalog`]); only finished Parquet files are replayed (a stream's
//! unconverted segments, from a store writing now or a crash not yet recovered, are named in a
//! warning). Parquet files whose schema has no `neurod.layout` are a lab's own data: each file
//! replays as a `table` stream named after the file (`running.parquet` → `running`), a folder of
//! them as one stream named after the folder, in file-name order; each needs a numeric `time_s`
//! column (seconds; sent as Float64), and gets `neurod.stream_id`/`neurod.layout` added to its
//! metadata.
//!
//! Order: every stream is read batch by batch (about [`cursor::BATCH_BYTES`] each: memory stays
//! bounded whatever the store's size), each batch is cut into slices of at most
//! [`cursor::SLICE_S`] of data, and the slice whose first row is earliest goes out next
//! ([`merge`]): streams stay within that span of true time order. A row's time is `sample_index / neurod.sampling_hz` for continuous streams and
//! `time_s` for the others; streams without either (ROI masks, tables without `time_s`) go out
//! whole at the start, and `from_s`/`to_s` do not apply to them. `realtime` spaces batches as
//! their times are spaced (from the first one sent); `max` sends as fast as consumers take.
//!
//! All streams go out on the default port, whose layouts are those of the streams selected.
//! Lossless (`Block`). Stores this source feeds directly are never read by it (a data directory
//! that also holds the store being written), and the source resumes from what they hold: rows
//! whose `sample_index`/`frame_index` (or, without one, `time_s`) is at or below what every such
//! store holds are not sent again; an untimed stream they all hold is not sent again. One stream
//! id held in two places is an error (give one store, or select with `streams`).

mod cursor;
mod merge;
mod plan;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, PortSpec, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::pace::Pace;
use crate::storage::{Held, SchemaJson};
use crate::stream::{Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};
use cursor::{Skip, StreamCursor, Window};
use merge::Merge;
use plan::Planned;

pub use plan::glob_match;
pub(crate) use plan::{is_parquet, name_of, parquet_files_in};

pub const TYPE: &str = "replay";

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: Paths,
    #[serde(default)]
    streams: Vec<String>,
    #[serde(default)]
    pace: Pace,
    #[serde(default)]
    from_s: Option<f64>,
    #[serde(default)]
    to_s: Option<f64>,
}

pub struct ReplaySource {
    planned: Vec<Planned>,
    pace: Pace,
    window: Window,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let cfg: Config = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("source `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    for (name, v) in [("from_s", cfg.from_s), ("to_s", cfg.to_s)] {
        if v.is_some_and(|v| !v.is_finite()) {
            errors.push(format!(
                "{prefix}: `{name}` must be a finite number of seconds"
            ));
        }
    }
    if let (Some(f), Some(t)) = (cfg.from_s, cfg.to_s) {
        if f >= t {
            errors.push(format!(
                "{prefix}: `from_s` = {f} must be below `to_s` = {t}"
            ));
        }
    }
    let paths = match cfg.path {
        Paths::One(p) => vec![p],
        Paths::Many(p) => p,
    };
    if paths.is_empty() {
        errors.push(format!("{prefix}: `path` names nothing"));
    }
    if cfg.streams.iter().any(String::is_empty) {
        errors.push(format!("{prefix}: `streams` holds an empty pattern"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let planned = plan::resolve(&paths, &cfg.streams).map_err(|e| {
        e.into_iter()
            .map(|e| format!("{prefix}: {e}"))
            .collect::<Vec<_>>()
    })?;
    Ok(Box::new(ReplaySource {
        planned,
        pace: cfg.pace,
        window: Window {
            from_s: cfg.from_s,
            to_s: cfg.to_s,
        },
    }))
}

fn layout_of(p: &Planned) -> Layout {
    match (
        p.foreign,
        p.stream.layout.as_deref().and_then(Layout::parse),
    ) {
        (false, Some(l)) => l,
        _ => Layout::Table,
    }
}

/// Whether the stream's rows carry their own index, and a `time_s`.
fn columns(schema: Option<&SchemaJson>) -> (bool, bool) {
    let has = |name: &str, ty: Option<&str>| {
        schema.is_some_and(|s| {
            s.fields
                .iter()
                .any(|f| f.name == name && ty.is_none_or(|t| f.data_type == t))
        })
    };
    (
        has(SAMPLE_INDEX, Some("Int64")) || has(FRAME_INDEX, Some("Int64")),
        has(TIME_S, None),
    )
}

/// Realtime pacing on the data's own times, from the first timed batch sent.
struct Clock {
    pace: Pace,
    start: Instant,
    first: Option<f64>,
}

/// The longest a realtime replay waits for one batch (a file's times can be absurd).
const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Clock {
    /// Waits until a batch starting at `t` is due; `false` if shutdown fired.
    fn wait(&mut self, t: f64, source: &SourceContext) -> bool {
        if self.pace == Pace::Max || !t.is_finite() {
            return !source.shutdown.is_triggered();
        }
        let t0 = *self.first.get_or_insert(t);
        let offset = Duration::try_from_secs_f64((t - t0).max(0.0)).unwrap_or(MAX_WAIT);
        let due = offset.saturating_sub(self.start.elapsed()).min(MAX_WAIT);
        source
            .metrics
            .set_lag((self.start.elapsed().as_secs_f64() - offset.as_secs_f64()).max(0.0));
        if due.is_zero() {
            !source.shutdown.is_triggered()
        } else {
            !source.shutdown.sleep(due)
        }
    }
}

fn canonical(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl ReplaySource {
    /// One cursor per stream, leaving out the stores this source writes into and what the
    /// stores it feeds already hold.
    fn cursors(self, ctx: &SourceContext) -> Result<Vec<StreamCursor>, ComponentError> {
        let destinations: Vec<PathBuf> = ctx.resume.stores().iter().map(|s| canonical(s)).collect();
        let (own, planned): (Vec<Planned>, Vec<Planned>) = self
            .planned
            .into_iter()
            .partition(|p| !p.foreign && destinations.contains(&canonical(&p.store)));
        if let Some(p) = own.first() {
            tracing::info!(component = %ctx.id, store = %p.store.display(), "not replaying the store this source writes into ({} streams)", own.len());
        }
        plan::check_unique(&planned).map_err(ComponentError::Other)?;
        let mut cursors = Vec::with_capacity(planned.len());
        for p in planned {
            let id = &p.stream.stream_id;
            if !p.stream.segments.is_empty() {
                tracing::warn!(component = %ctx.id, stream = %id, "{}: {} segment(s) not converted yet (a store writing now, or a crash not yet recovered) are not replayed", p.stream.dir.display(), p.stream.segments.len());
            }
            if p.stream.files.is_empty() {
                continue;
            }
            let held = ctx.resume.held_by_all(id).unwrap_or_else(|e| {
                ctx.metrics.error(e.error_type(), "reading the catalog", e.to_string());
                tracing::error!(component = %ctx.id, stream = %id, "cannot tell what the store holds ({e}); sending every row");
                Held::default()
            });
            let (indexed, timed) = columns(p.stream.schema.as_ref());
            let skip = Skip::from_held(held, indexed, timed);
            if skip != Skip::Nothing {
                tracing::info!(component = %ctx.id, stream = %id, "resuming: the store already holds {skip:?}");
            }
            cursors.push(StreamCursor::new(p.stream, p.foreign, self.window, skip));
        }
        Ok(cursors)
    }
}

impl Source for ReplaySource {
    fn ports(&self) -> Vec<PortSpec> {
        let mut layouts: Vec<Layout> = Vec::new();
        for l in self.planned.iter().map(layout_of) {
            if !layouts.contains(&l) {
                layouts.push(l);
            }
        }
        vec![PortSpec::default_port(&layouts)]
    }

    fn overflow(&self) -> Overflow {
        Overflow::Block
    }

    fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), ComponentError> {
        let mut clock = Clock {
            pace: self.pace,
            start: Instant::now(),
            first: None,
        };
        let cursors = (*self).cursors(&ctx)?;
        tracing::info!(component = %ctx.id, "replaying {} streams", cursors.len());
        let mut merge = Merge::new(cursors);
        let mut sent = 0u64;
        while let Some((i, item)) = merge.next() {
            let batch = match item {
                Ok(k) => {
                    if !clock.wait(k.time_s, &ctx) {
                        tracing::info!(component = %ctx.id, "stopped by shutdown");
                        return Ok(());
                    }
                    k.batch
                }
                Err(e) => {
                    let stream = merge.cursors().get(i).map_or("", |c| c.stream_id.as_str());
                    ctx.metrics.error(e.error_type, "reading", e.to_string());
                    tracing::error!(component = %ctx.id, %stream, "{e}; going on with the stream's next file");
                    continue;
                }
            };
            if ctx.outputs.main().send(batch).is_err() {
                tracing::info!(component = %ctx.id, "every consumer stopped");
                return Ok(());
            }
            sent += 1;
        }
        tracing::info!(component = %ctx.id, batches = sent, "replay finished");
        Ok(())
    }
}
