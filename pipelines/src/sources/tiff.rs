//! `type = "tiff"`: two-photon frames from a multipage TIFF stack, or from a folder of stacks
//! (ScanImage writes `name_00001.tif`, `name_00002.tif`, ... and starts a new file every N
//! frames), replayed at `pace` or followed while the microscope writes them.
//!
//! ```toml
//! [sources.scope]
//! type = "tiff"
//! path = "/data/mouse1/session1"   # a .tif/.tiff file, or a folder of them (natural name order)
//! rate_hz = 30.0                   # frame rate; optional when ScanImage metadata gives it
//! pace = "realtime"                # replay speed, or "max"; ignored when following
//! follow = false                   # true: tail the stack / folder while it is being written
//! batch_frames = 1                 # frames per batch (a follower sends what it has sooner)
//! poll_ms = 20                     # how often a follower looks for new pages and files
//! idle_timeout_s = 0               # a follower stops when nothing new came for this long; 0 = never
//! ```
//!
//! Default port, frames layout ([`stream::frames_schema`], stream kind `twophoton`, stream id =
//! the component id): `frame_index` (counting from 0 across the files), `time_s` (= frame_index /
//! rate), `pixels` (height × width Int16, row-major). Pages are 16-bit greyscale; int16 pages are
//! kept as they are and uint16 pages saturate at 32767 ([`crate::formats::tiff_stack`]).
//! ScanImage's interleaved channels and planes are not separated: every page is a frame.
//!
//! Replay reads every whole page. A page cut short (a truncated file) is counted as
//! `truncated_file` and ends that file; the replay goes on with the next file. A page the source
//! cannot read (another pixel type or size) is counted as `unsupported_page` and ends that file.
//!
//! Follow emits pages as they become whole: a page being written (its directory or pixels not
//! yet in the file) waits for the next poll. In a folder, a newer file means the current one is
//! finished: its remaining whole pages are read, an incomplete last page is counted as
//! truncated, and the follower moves on. It stops on shutdown, when every consumer has stopped,
//! or after `idle_timeout_s` without a new page.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float64Array, Int16Array, Int64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, Output, PortSpec, Shutdown, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::formats::tiff_stack::{
    is_tiff_name, list_tiffs, scanimage_frame_rate, Page, PageGeometry, TiffPages,
};
use crate::metrics::ComponentMetrics;
use crate::pace::{Pace, Pacer};
use crate::sources::follow::{self, Followed, Step, Timing};
use crate::sources::raw_file::TRUNCATED_FILE;
use crate::stream::{self, Layout};

pub const TYPE: &str = "tiff";
pub const STREAM_KIND: &str = "twophoton";
/// The `error_type` counted for a page of another type or size than the stack's.
pub const UNSUPPORTED_PAGE: &str = "unsupported_page";

fn default_batch_frames() -> usize {
    1
}
fn default_poll_ms() -> f64 {
    20.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: PathBuf,
    #[serde(default)]
    rate_hz: Option<f64>,
    #[serde(default)]
    pace: Pace,
    #[serde(default)]
    follow: bool,
    #[serde(default = "default_batch_frames")]
    batch_frames: usize,
    #[serde(default = "default_poll_ms")]
    poll_ms: f64,
    #[serde(default)]
    idle_timeout_s: f64,
}

pub struct TiffSource {
    path: PathBuf,
    folder: bool,
    rate_hz: f64,
    pace: Pace,
    follow: bool,
    batch_frames: usize,
    timing: Timing,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let cfg: Config = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("source `{}` (type `{TYPE}`)", ctx.id);
    let mut errors = Vec::new();
    if !(1..=10_000).contains(&cfg.batch_frames) {
        errors.push(format!(
            "{prefix}: `batch_frames` = {} must be between 1 and 10000",
            cfg.batch_frames
        ));
    }
    errors.extend(
        follow::option_problems(cfg.poll_ms, cfg.idle_timeout_s)
            .into_iter()
            .map(|p| format!("{prefix}: {p}")),
    );
    if let Some(r) = cfg.rate_hz {
        if let Err(why) = crate::limits::check_rate(r) {
            errors.push(format!("{prefix}: `rate_hz` = {r}: {why}"));
        }
    }
    let folder = cfg.path.is_dir();
    let first_file = if folder {
        match list_tiffs(&cfg.path) {
            Ok(files) => files.into_iter().next(),
            Err(e) => {
                errors.push(format!("{prefix}: {e}"));
                None
            }
        }
    } else if cfg.path.is_file() {
        Some(cfg.path.clone())
    } else {
        errors.push(format!(
            "{prefix}: {}: no such TIFF file or folder",
            cfg.path.display()
        ));
        None
    };
    if folder && first_file.is_none() && !cfg.follow {
        errors.push(format!(
            "{prefix}: {}: no .tif or .tiff files to replay",
            cfg.path.display()
        ));
    }
    if !folder && cfg.path.is_file() && !is_tiff_name(&cfg.path) {
        tracing::warn!(
            "{prefix}: {} does not end in .tif or .tiff; reading it as TIFF",
            cfg.path.display()
        );
    }
    // A replayed stack must have a readable first page now; a followed one may still be empty.
    if let (Some(f), false) = (&first_file, cfg.follow) {
        match TiffPages::new(f.clone(), None).peek_geometry() {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => errors.push(format!("{prefix}: {}: {why}", f.display())),
            Err(e) => errors.push(format!("{prefix}: {e}")),
        }
    }
    let rate_hz = cfg
        .rate_hz
        .or_else(|| first_file.as_deref().and_then(scanimage_frame_rate));
    if rate_hz.is_none() && errors.is_empty() {
        errors.push(format!(
            "{prefix}: {}: no usable frame rate in ScanImage metadata; set `rate_hz`",
            cfg.path.display()
        ));
    }
    let (Some(rate_hz), true) = (rate_hz, errors.is_empty()) else {
        return Err(errors);
    };
    Ok(Box::new(TiffSource {
        path: cfg.path,
        folder,
        rate_hz,
        pace: cfg.pace,
        follow: cfg.follow,
        batch_frames: cfg.batch_frames,
        timing: Timing::from_options(cfg.poll_ms, cfg.idle_timeout_s),
    }))
}

impl Source for TiffSource {
    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Frames])]
    }

    fn overflow(&self) -> Overflow {
        if self.follow {
            Overflow::DropOldest
        } else {
            Overflow::Block
        }
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let mut ctx = ctx;
        let mut batch = FrameBatch::new(self.batch_frames, self.rate_hz, &ctx.id);
        // Frames the stores fed by this source hold are read again (frame_index follows the
        // order of pages and files) but not sent.
        batch.skip_until = crate::sources::resume_index(&ctx, &ctx.id);
        if batch.skip_until > 0 {
            tracing::info!(component = %ctx.id, "resuming at frame_index {}: the stores it feeds hold every frame before", batch.skip_until);
        }
        let mut run = Run {
            id: &ctx.id,
            shutdown: &ctx.shutdown,
            metrics: &ctx.metrics,
            output: ctx.outputs.main(),
            batch,
            frame: Vec::new(),
            saturated: 0,
        };
        if self.follow {
            run.follow(&self)
        } else {
            run.replay(&self)
        }
    }
}

/// Frames gathered for the next batch; the schema is made once the page size is known.
struct FrameBatch {
    capacity: usize,
    rate_hz: f64,
    stream_id: String,
    schema: Option<(SchemaRef, Arc<Field>, usize)>,
    next_index: i64,
    first_index: i64,
    /// Frames before this index are already stored (a resumed run) and are not sent.
    skip_until: i64,
    pixels: Vec<i16>,
}

impl FrameBatch {
    fn new(capacity: usize, rate_hz: f64, stream_id: &str) -> Self {
        FrameBatch {
            capacity,
            rate_hz,
            stream_id: stream_id.to_string(),
            schema: None,
            next_index: 0,
            first_index: 0,
            skip_until: 0,
            pixels: Vec::new(),
        }
    }

    /// Pixels reserved for a batch: all its frames, up to limits::MAX_BATCH_BYTES (a larger
    /// batch grows as its frames come, rather than reserving gigabytes up front).
    fn reserve(&self, frame_pixels: usize) -> usize {
        (self.capacity.saturating_mul(frame_pixels)).min(crate::limits::MAX_BATCH_BYTES / 2)
    }

    fn frames(&self) -> usize {
        (self.next_index - self.first_index) as usize
    }

    fn push(&mut self, g: PageGeometry, frame: &[i16]) {
        if self.next_index < self.skip_until {
            self.next_index += 1;
            self.first_index = self.next_index;
            return;
        }
        if self.schema.is_none() {
            let schema = stream::frames_schema(
                &self.stream_id,
                STREAM_KIND,
                g.height,
                g.width,
                &self.rate_hz.to_string(),
            );
            let item = match schema.field(2).data_type() {
                DataType::FixedSizeList(f, _) => f.clone(),
                _ => Arc::new(Field::new("item", DataType::Int16, false)),
            };
            self.pixels.reserve(self.reserve(g.pixels()));
            self.schema = Some((schema, item, g.pixels()));
        }
        self.pixels.extend_from_slice(frame);
        self.next_index += 1;
    }

    /// The gathered frames as a batch (`None` when there are none).
    fn take(&mut self) -> Option<Result<RecordBatch, arrow::error::ArrowError>> {
        let n = self.frames();
        let (schema, item, size) = self.schema.as_ref()?;
        if n == 0 {
            return None;
        }
        let indices: Vec<i64> = (self.first_index..self.next_index).collect();
        let times: Vec<f64> = indices.iter().map(|&k| k as f64 / self.rate_hz).collect();
        let next = Vec::with_capacity(self.reserve(*size));
        let values = std::mem::replace(&mut self.pixels, next);
        self.first_index = self.next_index;
        let list = match FixedSizeListArray::try_new(
            item.clone(),
            *size as i32,
            Arc::new(Int16Array::from(values)) as ArrayRef,
            None,
        ) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(indices)),
                Arc::new(Float64Array::from(times)),
                Arc::new(list),
            ],
        ))
    }
}

/// Why a loop over a file's pages stopped.
enum Stop {
    /// No further page now (end of the chain, or an incomplete page: why).
    End(Option<String>),
    /// Every consumer stopped, or shutdown.
    Quit,
    /// A page of another kind; the file is abandoned.
    Bad,
}

struct Run<'a> {
    id: &'a str,
    shutdown: &'a Shutdown,
    metrics: &'a ComponentMetrics,
    output: &'a mut Output,
    batch: FrameBatch,
    frame: Vec<i16>,
    /// uint16 pixels clipped so far (logged once per file).
    saturated: u64,
}

impl Run<'_> {
    fn files(&self, src: &TiffSource) -> Result<Vec<PathBuf>, ComponentError> {
        if src.folder {
            list_tiffs(&src.path).map_err(|e| ComponentError::Other(e.to_string()))
        } else {
            Ok(vec![src.path.clone()])
        }
    }

    /// Sends the gathered frames; `false` once every consumer has stopped.
    fn flush(&mut self) -> Result<bool, ComponentError> {
        match self.batch.take() {
            None => Ok(true),
            Some(Ok(b)) => Ok(self.output.send(b).is_ok()),
            Some(Err(e)) => Err(ComponentError::arrow(
                format!("source `{}`: building a frames batch", self.id),
                e,
            )),
        }
    }

    /// Reads whole pages of `pages` until none is left now; full batches are sent (after
    /// `pacer`, when replaying).
    fn drain(
        &mut self,
        pages: &mut TiffPages,
        pacer: Option<&Pacer>,
    ) -> Result<(Stop, usize), ComponentError> {
        let mut read = 0;
        loop {
            let page = match pages.read_next(&mut self.frame) {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("{e}; skipping the rest of this file");
                    tracing::error!("source `{}`: {msg}", self.id);
                    self.metrics.error(UNSUPPORTED_PAGE, "reading", msg);
                    return Ok((Stop::Bad, read));
                }
            };
            match page {
                Page::Read { saturated } => {
                    read += 1;
                    if saturated > 0 {
                        if self.saturated == 0 {
                            tracing::warn!(
                                "source `{}`: {}: uint16 pixels above 32767 are clipped to 32767",
                                self.id,
                                pages.path().display()
                            );
                        }
                        self.saturated += saturated as u64;
                    }
                    let g = pages.geometry().expect("a page was read");
                    self.batch.push(g, &self.frame);
                    if self.batch.frames() >= self.batch.capacity {
                        if let Some(p) = pacer {
                            if !p.wait_for(self.batch.next_index as u64, self.shutdown) {
                                return Ok((Stop::Quit, read));
                            }
                        }
                        if !self.flush()? {
                            return Ok((Stop::Quit, read));
                        }
                        if let Some(p) = pacer {
                            self.metrics
                                .set_lag(p.lag_seconds(self.batch.next_index as u64));
                        }
                    }
                    if self.shutdown.is_triggered() {
                        return Ok((Stop::Quit, read));
                    }
                }
                Page::End => return Ok((Stop::End(None), read)),
                Page::Incomplete(why) => return Ok((Stop::End(Some(why)), read)),
            }
        }
    }

    fn truncated(&self, path: &Path, pages: usize, why: &str) {
        let msg = format!(
            "{}: truncated: {why} ({pages} whole pages read; frame_index continues at {})",
            path.display(),
            self.batch.next_index
        );
        tracing::error!("source `{}`: {msg}", self.id);
        self.metrics.error(TRUNCATED_FILE, "reading", msg);
    }

    fn replay(&mut self, src: &TiffSource) -> Result<(), ComponentError> {
        let files = self.files(src)?;
        tracing::info!(
            "source `{}`: replaying {} ({} file(s) at {} Hz)",
            self.id,
            src.path.display(),
            files.len(),
            src.rate_hz
        );
        let pacer = Pacer::new(src.pace, src.rate_hz);
        let mut geometry = None;
        for f in files {
            let mut pages = TiffPages::new(f.clone(), geometry);
            let (stop, _) = self.drain(&mut pages, Some(&pacer))?;
            geometry = geometry.or(pages.geometry());
            match stop {
                Stop::Quit => return Ok(()),
                Stop::End(Some(why)) => self.truncated(&f, pages.pages_read(), &why),
                Stop::End(None) | Stop::Bad => {}
            }
        }
        if pacer.wait_for(self.batch.next_index as u64, self.shutdown) {
            self.flush()?;
        }
        tracing::info!(
            "source `{}`: finished {} ({} frames)",
            self.id,
            src.path.display(),
            self.batch.next_index
        );
        Ok(())
    }

    fn follow(&mut self, src: &TiffSource) -> Result<(), ComponentError> {
        tracing::info!(
            "source `{}`: following {} at {} Hz",
            self.id,
            src.path.display(),
            src.rate_hz
        );
        let shutdown = self.shutdown;
        let mut follower = TiffFollower {
            run: self,
            src,
            files: Vec::new(),
            current: None,
            abandoned: false,
            geometry: None,
        };
        let end = follow::follow(&mut follower, src.timing, shutdown)?;
        tracing::info!(
            "source `{}`: stopped following {} ({}) after {} frames",
            self.id,
            src.path.display(),
            end.describe(),
            self.batch.next_index
        );
        Ok(())
    }
}

/// The TIFF part of the follow loop: a step emits every whole page there is now, and moves to
/// the next file of a folder once one appears.
struct TiffFollower<'r, 'a> {
    run: &'r mut Run<'a>,
    src: &'r TiffSource,
    /// The folder's files at the last listing.
    files: Vec<PathBuf>,
    /// Index in `files` and pages of the file being read.
    current: Option<(usize, TiffPages)>,
    /// The current file had a page of another kind: only a newer file is awaited.
    abandoned: bool,
    /// The first file's page geometry, which every later file must share.
    geometry: Option<PageGeometry>,
}

impl Followed for TiffFollower<'_, '_> {
    fn step(&mut self) -> Result<Step, ComponentError> {
        if self.current.is_none() {
            self.files = self.run.files(self.src)?;
            if let Some(f) = self.files.first() {
                self.current = Some((0, TiffPages::new(f.clone(), self.geometry)));
            }
        }
        let Some((index, pages)) = self.current.as_mut() else {
            return Ok(Step::Nothing);
        };
        let mut progressed = false;
        let stop = if self.abandoned {
            Stop::End(None)
        } else {
            let (stop, read) = self.run.drain(pages, None)?;
            progressed = read > 0;
            stop
        };
        self.geometry = self.geometry.or(pages.geometry());
        // Live frames go out as soon as the file has no more.
        if !self.run.flush()? {
            return Ok(Step::Stop);
        }
        match stop {
            Stop::Quit => return Ok(Step::Stop),
            Stop::Bad => self.abandoned = true,
            Stop::End(incomplete) => {
                if self.src.folder && *index + 1 >= self.files.len() {
                    self.files = self.run.files(self.src)?;
                }
                // A newer file means this one is finished.
                if let Some(next) = self.files.get(*index + 1) {
                    if let (Some(why), false) = (incomplete, self.abandoned) {
                        self.run.truncated(pages.path(), pages.pages_read(), &why);
                    }
                    *pages = TiffPages::new(next.clone(), self.geometry);
                    *index += 1;
                    self.abandoned = false;
                    progressed = true;
                }
            }
        }
        // Whole pages may wait right behind what was read (or in the next file): look again now.
        Ok(if progressed {
            Step::GrewMore
        } else {
            Step::Nothing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::suite2p::run_python;
    use crate::formats::tiff_stack::tests::{frame_values, int16_stack, thunder};
    use crate::sources::raw_file::tests::{collect, write_slowly, Collected};
    use crate::stream::keys;
    use arrow::array::Array;
    use std::time::Duration;

    fn build_source(path: &Path, extra: &str) -> Result<Box<dyn Source>, Vec<String>> {
        let mut t: toml::Table = toml::from_str(extra).unwrap();
        t.insert("path".into(), path.display().to_string().into());
        build(
            &BuildContext {
                id: "scope",
                data_dir: Path::new("/nonexistent"),
                inputs: &[],
            },
            t,
        )
    }

    fn run(source: Box<dyn Source>) -> Collected {
        collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        })
    }

    /// (frame_index, pixels) of every frame received.
    fn frames(got: &Collected) -> Vec<(i64, Vec<i16>)> {
        let mut out = Vec::new();
        for b in &got.batches {
            let idx = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let px = b
                .column(2)
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                let v = px.value(i);
                let v = v.as_any().downcast_ref::<Int16Array>().unwrap();
                out.push((idx.value(i), v.values().to_vec()));
            }
        }
        out
    }

    #[test]
    fn thunder_stack_equals_tifffile() {
        let Some(t) = thunder() else { return };
        let code = "import sys, tifffile, numpy as np\n\
                    a = tifffile.imread(sys.argv[1]).astype(np.int64)\n\
                    w = np.arange(a.shape[1] * a.shape[2]).reshape(a.shape[1:]) % 97 + 1\n\
                    print(a.shape[0], a.shape[1], a.shape[2])\n\
                    print(' '.join(str(int(x)) for x in (a * w).sum(axis=(1, 2))))";
        let Some(out) = run_python(code, &[t.to_str().unwrap()]) else {
            return;
        };
        let mut lines = out.lines();
        let shape: Vec<usize> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let sums: Vec<i64> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let source = build_source(&t, "rate_hz = 30.0\npace = 'max'\nbatch_frames = 64").unwrap();
        let got = run(source);
        got.result.as_ref().unwrap();
        let md = got.batches[0].schema().metadata().clone();
        assert_eq!(md[keys::HEIGHT], shape[1].to_string());
        assert_eq!(md[keys::WIDTH], shape[2].to_string());
        assert_eq!(md[keys::SAMPLING_HZ], "30");
        assert_eq!(md[keys::STREAM_KIND], STREAM_KIND);
        let fr = frames(&got);
        assert_eq!(fr.len(), shape[0]);
        for (k, (idx, px)) in fr.iter().enumerate() {
            assert_eq!(*idx, k as i64);
            // A position-weighted sum: a transposed or shifted frame would not match.
            let s: i64 = px
                .iter()
                .enumerate()
                .map(|(i, &v)| i64::from(v) * ((i % 97) as i64 + 1))
                .sum();
            assert_eq!(s, sums[k], "frame {k}");
        }
        assert_eq!(got.metrics.errors_total(), 0);
    }

    #[test]
    fn truncated_stack_emits_whole_pages_and_counts_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.tif");
        let bytes = int16_stack(10, 8, 8);
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let got = run(build_source(&p, "rate_hz = 10\npace = 'max'\nbatch_frames = 3").unwrap());
        got.result.as_ref().unwrap();
        let fr = frames(&got);
        assert!((8..10).contains(&fr.len()), "{}", fr.len());
        for (k, (idx, px)) in fr.iter().enumerate() {
            assert_eq!((*idx, px), (k as i64, &frame_values(k, 64)));
        }
        assert_eq!(got.metrics.errors_total(), 1);
    }

    #[test]
    fn folder_replay_continues_frame_index_across_files() {
        let dir = tempfile::tempdir().unwrap();
        // 3 + 2 frames; the second file's frames are the stack's frames 0 and 1 again.
        std::fs::write(dir.path().join("s_00002.tif"), int16_stack(2, 4, 5)).unwrap();
        std::fs::write(dir.path().join("s_00001.tif"), int16_stack(3, 4, 5)).unwrap();
        let got =
            run(build_source(dir.path(), "rate_hz = 5\npace = 'max'\nbatch_frames = 2").unwrap());
        got.result.as_ref().unwrap();
        let fr = frames(&got);
        let idx: Vec<i64> = fr.iter().map(|f| f.0).collect();
        assert_eq!(idx, [0, 1, 2, 3, 4]);
        assert_eq!(fr[3].1, frame_values(0, 20));
        let sizes: Vec<usize> = got.batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn follows_a_growing_stack_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("live.tif");
        let bytes = int16_stack(40, 16, 16);
        std::fs::write(&p, &bytes[..100]).unwrap();
        let writer = {
            let (p, bytes) = (p.clone(), bytes.clone());
            // Odd chunks: directories and pixels land in pieces.
            std::thread::spawn(move || {
                write_slowly(&p, &bytes[100..], 333, Duration::from_micros(500))
            })
        };
        let source = build_source(
            &p,
            "rate_hz = 30\nfollow = true\npoll_ms = 1\nidle_timeout_s = 0.5",
        )
        .unwrap();
        assert_eq!(source.overflow(), Overflow::DropOldest);
        let got = run(source);
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        let fr = frames(&got);
        assert_eq!(fr.len(), 40);
        for (k, (idx, px)) in fr.iter().enumerate() {
            assert_eq!((*idx, px), (k as i64, &frame_values(k, 256)), "frame {k}");
        }
        assert!(got.batches.len() > 1, "frames went out while the file grew");
        assert_eq!(got.metrics.errors_total(), 0);
    }

    #[test]
    fn follows_a_folder_where_new_files_appear() {
        let dir = tempfile::tempdir().unwrap();
        let writer = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                for n in 1..=3 {
                    let p = dir.join(format!("scan_{n:05}.tif"));
                    std::fs::write(&p, b"").unwrap();
                    write_slowly(&p, &int16_stack(4, 8, 8), 97, Duration::from_micros(300));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let source = build_source(
            dir.path(),
            "rate_hz = 30\nfollow = true\npoll_ms = 2\nidle_timeout_s = 0.5",
        )
        .unwrap();
        let got = run(source);
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        let fr = frames(&got);
        let idx: Vec<i64> = fr.iter().map(|f| f.0).collect();
        assert_eq!(idx, (0..12).collect::<Vec<i64>>());
        for (k, (_, px)) in fr.iter().enumerate() {
            assert_eq!(px, &frame_values(k % 4, 64), "frame {k}");
        }
        assert_eq!(got.metrics.errors_total(), 0);
    }

    #[test]
    fn validation_reports_missing_path_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let e = build_source(&dir.path().join("gone.tif"), "batch_frames = 0")
            .err()
            .unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e
            .iter()
            .any(|m| m.contains("scope") && m.contains("gone.tif")));
        let p = dir.path().join("s.tif");
        std::fs::write(&p, int16_stack(1, 2, 2)).unwrap();
        let e = build_source(&p, "").err().unwrap();
        assert!(e[0].contains("rate_hz"), "{e:?}");
        std::fs::write(&p, b"II*\0garbage").unwrap();
        let e = build_source(&p, "rate_hz = 1").err().unwrap();
        assert!(e[0].contains("s.tif"), "{e:?}");
        let e = build_source(dir.path().join("empty").as_path(), "rate_hz = 1").err();
        assert!(e.is_some());
    }
}
