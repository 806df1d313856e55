//! Recovery after a crash: finish what the store left half-done, so that afterwards every file
//! in a stream directory is a complete Parquet file and no flushed batch is lost.

use std::path::{Path, PathBuf};

use super::convert::{finish_segment, ConvertStats, Finished, ParquetOptions};
use super::layout::{is_tmp, segment_seq, sync_dir};
use super::manifest::refresh_manifest;
use super::StoreError;

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Temporary files of conversions a crash interrupted, deleted.
    pub removed_tmp: Vec<PathBuf>,
    /// Segments converted to Parquet (and then removed): segment, Parquet file, what was written.
    pub converted: Vec<(PathBuf, PathBuf, ConvertStats)>,
    /// Segments without one complete batch, removed, with their size.
    pub removed_empty: Vec<(PathBuf, u64)>,
    /// Files that could not be handled (a failing disk); they are left as they are.
    pub failed: Vec<StoreError>,
}

/// Recovers every stream directory under a store directory: deletes leftover `.tmp` files and
/// converts every leftover segment to Parquet (keeping each complete batch before a cut; a
/// segment with none is removed). A missing `dir` is an empty store. Only an unreadable `dir`
/// itself is an error; per-file failures are in the report.
pub fn recover(dir: &Path, zstd_level: i32) -> Result<RecoveryReport, StoreError> {
    let opts = ParquetOptions {
        zstd_level,
        ..ParquetOptions::default()
    };
    recover_with(dir, &opts)
}

/// [`recover`] with every Parquet setting given.
pub fn recover_with(dir: &Path, opts: &ParquetOptions) -> Result<RecoveryReport, StoreError> {
    let mut report = RecoveryReport::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(StoreError::io(dir, "listing the store directory", e)),
    };
    let mut stream_dirs = Vec::new();
    for entry in entries {
        match entry {
            // Hidden directories are not streams (the store's `.spool`); stream directory names
            // never start with `.`.
            Ok(entry) if entry.file_name().to_string_lossy().starts_with('.') => {}
            Ok(entry) if entry.path().is_dir() => stream_dirs.push(entry.path()),
            Ok(_) => {}
            Err(e) => report
                .failed
                .push(StoreError::io(dir, "listing the store directory", e)),
        }
    }
    stream_dirs.sort();
    for stream_dir in stream_dirs {
        recover_stream_dir(&stream_dir, opts, &mut report);
    }
    Ok(report)
}

fn recover_stream_dir(dir: &Path, opts: &ParquetOptions, report: &mut RecoveryReport) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            report
                .failed
                .push(StoreError::io(dir, "listing a stream directory", e));
            return;
        }
    };
    let mut tmps = Vec::new();
    let mut segments = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report
                    .failed
                    .push(StoreError::io(dir, "listing a stream directory", e));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_tmp(&name) {
            tmps.push(entry.path());
        } else if let Some(seq) = segment_seq(&name) {
            segments.push((seq, entry.path()));
        }
    }
    let mut removed_any = false;
    for tmp in tmps {
        match std::fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::info!(file = %tmp.display(), "removed the temporary file of an interrupted conversion");
                removed_any = true;
                report.removed_tmp.push(tmp);
            }
            Err(e) => report
                .failed
                .push(StoreError::io(&tmp, "removing a temporary file", e)),
        }
    }
    if removed_any {
        if let Err(e) = sync_dir(dir) {
            report
                .failed
                .push(StoreError::io(dir, "syncing directory", e));
        }
    }
    segments.sort();
    for (_, segment) in segments {
        match finish_segment(&segment, opts) {
            Ok(Finished::Converted { part, stats }) => {
                if stats.discarded_bytes > 0 {
                    tracing::warn!(
                        segment = %segment.display(),
                        batches = stats.batches,
                        discarded_bytes = stats.discarded_bytes,
                        "recovered a segment cut mid-message: kept every complete batch, discarded the partial one"
                    );
                } else {
                    tracing::info!(segment = %segment.display(), part = %part.display(), batches = stats.batches, "recovered a segment");
                }
                report.converted.push((segment, part, stats));
            }
            Ok(Finished::Empty { discarded_bytes }) => {
                tracing::warn!(
                    segment = %segment.display(),
                    discarded_bytes,
                    "removed a segment without one complete batch"
                );
                report.removed_empty.push((segment, discarded_bytes));
            }
            Err(e) => {
                tracing::error!("recovering {}: {e}; left in place", segment.display());
                report.failed.push(e);
            }
        }
    }
    // Also gives a store written before manifests its first one.
    if let Err(e) = refresh_manifest(dir) {
        tracing::error!("recovering {}: {e}", dir.display());
        report.failed.push(e);
    }
}
