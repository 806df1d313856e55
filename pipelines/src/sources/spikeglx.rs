//! `type = "spikeglx"`: replays a finished SpikeGLX `.bin`, or follows one SpikeGLX is still
//! writing (`follow = true`), as one continuous stream named after the component.
//!
//! SpikeGLX writes the `.meta` without `fileSizeBytes` when a recording starts and rewrites it
//! with `fileSizeBytes` when it stops; a follower re-reads the meta while the `.bin` is quiet and
//! ends once that size has been read.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, PortSpec, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::formats::spikeglx::{pair_paths, SpikeGlxMeta};
use crate::pace::Pace;
use crate::sources::raw_file::{self, default_poll_ms, Finished, ReadOptions};
use crate::stream::{ContinuousInfo, Layout};

const TYPE: &str = "spikeglx";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The `.bin` or the `.meta` (the other is found next to it).
    path: PathBuf,
    #[serde(default)]
    pace: Pace,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    batch_ms: Option<f64>,
    #[serde(default = "default_poll_ms")]
    poll_ms: f64,
    #[serde(default)]
    idle_timeout_s: f64,
}

impl Config {
    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            pace: self.pace,
            follow: self.follow,
            batch_ms: self.batch_ms,
            poll_ms: self.poll_ms,
            idle_timeout_s: self.idle_timeout_s,
        }
    }
}

pub struct SpikeGlxSource {
    meta_path: PathBuf,
    bin_path: PathBuf,
    info: ContinuousInfo,
    /// `fileSizeBytes` of the meta at build time; `None` while SpikeGLX is writing.
    expected_bytes: Option<u64>,
    options: ReadOptions,
}

/// Checks everything that can be checked without reading samples, reporting every problem.
pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let cfg: Config = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("source `{}` (type `{TYPE}`)", ctx.id);
    let read_options = cfg.read_options();
    let mut errors: Vec<String> = read_options
        .problems()
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();

    let (meta_path, bin_path) = pair_paths(&cfg.path);
    let meta = SpikeGlxMeta::read(&meta_path)
        .map_err(|e| errors.push(format!("{prefix}: {e}")))
        .ok();
    let bin_len = match std::fs::metadata(&bin_path) {
        Ok(m) if m.is_file() => Some(m.len()),
        Ok(_) => {
            errors.push(format!("{prefix}: {}: not a file", bin_path.display()));
            None
        }
        Err(e) => {
            errors.push(format!(
                "{prefix}: {}: cannot open the .bin: {e}",
                bin_path.display()
            ));
            None
        }
    };
    let info = meta.as_ref().and_then(|m| {
        m.info(ctx.id)
            .map_err(|e| errors.push(format!("{prefix}: {e}")))
            .ok()
    });
    if let (Some(meta), Some(bin_len)) = (&meta, bin_len) {
        errors.extend(
            check_sizes(meta, &meta_path, &bin_path, bin_len, cfg.follow)
                .into_iter()
                .map(|p| format!("{prefix}: {p}")),
        );
    }
    match info {
        Some(info) if errors.is_empty() => Ok(Box::new(SpikeGlxSource {
            expected_bytes: meta.and_then(|m| m.file_size_bytes()),
            meta_path,
            bin_path,
            info,
            options: read_options,
        })),
        _ => Err(errors),
    }
}

/// The `.bin`'s size against the meta. A `.bin` larger than `fileSizeBytes` means the pair does
/// not belong together (an error); a shorter one is a truncated copy, which replays what is there
/// and counts `truncated_file` (a warning now).
fn check_sizes(
    meta: &SpikeGlxMeta,
    meta_path: &Path,
    bin_path: &Path,
    bin_len: u64,
    follow: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let bps = 2 * meta.n_saved_chans() as u64;
    match meta.file_size_bytes() {
        Some(expected) if expected % bps != 0 => problems.push(format!(
            "{}: `fileSizeBytes` = {expected} is not a whole number of {}-channel samples \
             ({bps} bytes each)",
            meta_path.display(),
            meta.n_saved_chans()
        )),
        Some(expected) if bin_len > expected => problems.push(format!(
            "{} is {bin_len} bytes but {} says `fileSizeBytes` = {expected}: the meta does not \
             describe this .bin",
            bin_path.display(),
            meta_path.display()
        )),
        Some(expected) if bin_len < expected => tracing::warn!(
            "{} is {bin_len} bytes but {} says `fileSizeBytes` = {expected}: the file is \
             truncated; its {} whole samples will be replayed and the truncation counted",
            bin_path.display(),
            meta_path.display(),
            bin_len / bps
        ),
        Some(_) => {}
        None if !follow => tracing::warn!(
            "{} has no `fileSizeBytes`: SpikeGLX is still writing {} (or crashed); replaying \
             the samples present at start (set `follow = true` to follow it)",
            meta_path.display(),
            bin_path.display()
        ),
        None => {}
    }
    problems
}

impl Source for SpikeGlxSource {
    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Continuous])]
    }

    fn overflow(&self) -> Overflow {
        self.options.overflow()
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        raw_file::run_source(
            self.bin_path,
            self.info,
            &self.options,
            self.expected_bytes,
            Box::new(MetaWatcher {
                meta_path: self.meta_path,
            }),
            ctx,
        )
    }
}

/// Re-reads the `.meta`: SpikeGLX adds `fileSizeBytes` when the recording stops.
struct MetaWatcher {
    meta_path: PathBuf,
}

impl raw_file::FinishWatcher for MetaWatcher {
    fn check(&mut self) -> Option<Finished> {
        match SpikeGlxMeta::read(&self.meta_path) {
            Ok(meta) => meta.file_size_bytes().map(|b| Finished {
                expected_bytes: Some(b),
            }),
            // Caught mid-rewrite, most likely: ask again at the next quiet poll.
            Err(e) => {
                tracing::debug!("re-reading {}: {e}", self.meta_path.display());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Shutdown;
    use crate::sources::raw_file::tests::{collect, synthetic, write_slowly};
    use crate::stream::keys;
    use std::time::{Duration, Instant};

    fn real_meta() -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/spikeglx-meta/ibl-neuropixel/sample3B_g0_t0.imec1.ap.meta");
        if p.is_file() {
            Some(p)
        } else if std::env::var_os("CI").is_some() {
            panic!("test data missing: {}", p.display());
        } else {
            eprintln!(
                "!!! SKIPPED: test data missing: {} (CI would fail)",
                p.display()
            );
            None
        }
    }

    /// A copy of the real NP1.0 meta (385 saved channels) with `fileSizeBytes` set to
    /// `file_size` (or removed, as while acquiring), next to a `.bin` holding `bin`.
    fn pair(dir: &Path, meta_src: &Path, file_size: Option<u64>, bin: &[u8]) -> (PathBuf, PathBuf) {
        let text = std::fs::read_to_string(meta_src).unwrap();
        let meta = dir.join("run_g0_t0.imec1.ap.meta");
        std::fs::write(&meta, with_file_size(&text, file_size)).unwrap();
        let bin_path = dir.join("run_g0_t0.imec1.ap.bin");
        std::fs::write(&bin_path, bin).unwrap();
        (meta, bin_path)
    }

    fn with_file_size(text: &str, file_size: Option<u64>) -> String {
        let mut out: String = text
            .lines()
            .filter(|l| !l.starts_with("fileSizeBytes="))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some(b) = file_size {
            out.push_str(&format!("fileSizeBytes={b}\n"));
        }
        out
    }

    fn options(path: &Path, extra: &str) -> toml::Table {
        let mut t: toml::Table = toml::from_str(extra).unwrap();
        t.insert("path".into(), path.display().to_string().into());
        t
    }

    fn build_source(opts: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
        build(
            &BuildContext {
                id: "probe0",
                data_dir: Path::new("/nonexistent"),
                inputs: &[],
            },
            opts,
        )
    }

    #[test]
    fn replays_a_bin_next_to_a_real_meta_exactly() {
        let Some(src) = real_meta() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic(1234, 385);
        let (_, bin) = pair(dir.path(), &src, Some(data.len() as u64), &data);
        // Giving the .bin finds the .meta next to it.
        let source = build_source(options(&bin, "pace = 'max'\nbatch_ms = 1")).unwrap();
        assert_eq!(source.overflow(), Overflow::Block);
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), data);
        assert_eq!(got.indices(), (0..1234).collect::<Vec<i64>>());
        // 1 ms at 30000.390639481 Hz is 30 samples.
        assert_eq!(got.batches[0].num_rows(), 30);
        let schema = got.batches[0].schema();
        let md = schema.metadata();
        assert_eq!(md[keys::SAMPLING_HZ], "30000.390639481");
        assert_eq!(md[keys::FIRST_SAMPLE], "1738008");
        assert_eq!(md[keys::STREAM_ID], "probe0");
        assert_eq!(md[keys::STREAM_KIND], "ap");
        assert_eq!(schema.fields().len(), 386);
    }

    #[test]
    fn build_reports_every_problem_naming_component_and_file() {
        let Some(src) = real_meta() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic(10, 385);
        // A .bin larger than fileSizeBytes: the meta is not this file's.
        let (meta, _) = pair(dir.path(), &src, Some(770 * 4), &data);
        let e = build_source(options(&meta, "batch_ms = 500"))
            .err()
            .unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|m| m.contains("probe0")), "{e:?}");
        assert!(e[0].contains("batch_ms"), "{e:?}");
        assert!(
            e[1].contains("run_g0_t0.imec1.ap.bin") && e[1].contains("3080"),
            "{e:?}"
        );

        let e = build_source(options(&dir.path().join("nope.ap.bin"), ""))
            .err()
            .unwrap();
        assert_eq!(e.len(), 2, "meta and bin both missing: {e:?}");
        assert!(
            e[0].contains("nope.ap.meta") && e[1].contains("nope.ap.bin"),
            "{e:?}"
        );

        let e = build_source(options(&meta, "speed = 2")).err().unwrap();
        assert!(e[0].contains("speed"), "{e:?}");
    }

    #[test]
    fn truncated_bin_replays_what_is_there_and_counts_it() {
        let Some(src) = real_meta() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic(100, 385);
        // The meta says 100 samples; the copy stopped inside sample 60.
        let (meta, _) = pair(
            dir.path(),
            &src,
            Some(data.len() as u64),
            &data[..60 * 770 + 11],
        );
        let source = build_source(options(&meta, "pace = 'max'")).unwrap();
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..60 * 770]);
        assert_eq!(got.metrics.errors_total(), 1);
    }

    #[test]
    fn follows_until_spikeglx_writes_file_size_into_the_meta() {
        let Some(src) = real_meta() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic(600, 385);
        let text = std::fs::read_to_string(&src).unwrap();
        // While acquiring: no fileSizeBytes, a .bin with a sample and a bit.
        let (meta, bin) = pair(dir.path(), &src, None, &data[..1000]);
        let source = build_source(options(&bin, "follow = true\npoll_ms = 1")).unwrap();
        assert_eq!(source.overflow(), Overflow::DropOldest);
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                // 997-byte chunks split samples (770 bytes each) everywhere.
                write_slowly(&bin, &data[1000..], 997, Duration::from_micros(500));
                std::thread::sleep(Duration::from_millis(30));
                std::fs::write(&meta, with_file_size(&text, Some(data.len() as u64))).unwrap();
            })
        };
        let t = Instant::now();
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        assert_eq!(got.indices(), (0..600).collect::<Vec<i64>>());
        assert_eq!(got.interleaved_bytes(), data);
        assert_eq!(got.metrics.errors_total(), 0);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn follow_ends_on_idle_timeout() {
        let Some(src) = real_meta() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = synthetic(50, 385);
        let (_, bin) = pair(dir.path(), &src, None, &data[..30 * 770 + 5]);
        let source = build_source(options(&bin, "follow = true\nidle_timeout_s = 0.2")).unwrap();
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), &data[..30 * 770]);
    }
}
