//! Spreading the rows of a few Parquet files over the query threads.
//!
//! DataFusion hands each thread whole files, or byte ranges of one file row group by row group,
//! so a query whose rows lie in one row group (the last minute of spikes, a second of raw
//! samples: a few pages of one group) ran on one thread while the other waited. Here the rows a
//! query may need are found from each file's page index (the pages of the filtered column whose
//! min/max overlap the query's bounds) and cut, at page boundaries, into one contiguous share
//! per thread, each handed to the reader as a [`ParquetAccessPlan`]. The footers come from the
//! engine's footer cache, the one the reader itself uses, so this costs no extra reading.

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::FileGroup;
use datafusion::execution::object_store::ObjectStoreUrl;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;

use super::rows::Bounds;

/// More files than this are spread file by file: each thread already has several.
const MAX_FILES_TO_SPLIT: usize = 16;

/// Rows of one row group, `start..start + len` within it: a page, or the whole group.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rows {
    file: usize,
    row_group: usize,
    start: usize,
    len: usize,
}

/// `files` as `partitions` groups of about equal rows, in file and row order; `limits` are the
/// query's bounds on columns (the first one the files have decides where shares are cut).
pub(super) async fn file_groups(
    state: &dyn Session,
    files: Vec<PartitionedFile>,
    limits: &[(&str, &Bounds)],
    partitions: usize,
) -> Result<Vec<FileGroup>> {
    if partitions > 1 && files.len() < MAX_FILES_TO_SPLIT {
        // No group at all (every page pruned): the files as they are, which the reader prunes.
        if let Some(groups) = by_pages(state, &files, limits, partitions)
            .await
            .filter(|g| !g.is_empty())
        {
            return Ok(groups);
        }
    }
    let per_group = files.len().div_ceil(partitions.max(1)).max(1);
    Ok(files
        .chunks(per_group)
        .map(|c| FileGroup::new(c.to_vec()))
        .collect())
}

/// The split by pages, or `None` where a footer cannot be read (the scan then reports it).
async fn by_pages(
    state: &dyn Session,
    files: &[PartitionedFile],
    limits: &[(&str, &Bounds)],
    partitions: usize,
) -> Option<Vec<FileGroup>> {
    let env = state.runtime_env();
    let store = env.object_store(ObjectStoreUrl::local_filesystem()).ok()?;
    let cache = env.cache_manager.get_file_metadata_cache();
    let mut footers = Vec::with_capacity(files.len());
    let mut runs = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let md = DFParquetMetadata::new(store.as_ref(), &f.object_meta)
            .with_file_metadata_cache(Some(cache.clone()))
            .fetch_metadata()
            .await
            .ok()?;
        runs.extend(wanted_rows(i, &md, limits));
        footers.push(md);
    }
    let shares = shares(&runs, partitions);
    Some(
        shares
            .iter()
            .map(|share| FileGroup::new(share_files(files, &footers, share)))
            .filter(|g| !g.is_empty())
            .collect(),
    )
}

/// The rows of file `file` that may hold rows within `limits`: row groups whose statistics
/// overlap, and within them the pages of the first limited column (or of the first column)
/// whose page index overlaps; whole row groups where a file has no page index.
fn wanted_rows(file: usize, md: &ParquetMetaData, limits: &[(&str, &Bounds)]) -> Vec<Rows> {
    let columns = md.file_metadata().schema_descr();
    let leaf = |name: &str| (0..columns.num_columns()).find(|&i| columns.column(i).name() == name);
    let limited: Vec<(usize, &Bounds)> = limits
        .iter()
        .filter(|(_, b)| b.lo.is_some() || b.hi.is_some())
        .filter_map(|(name, b)| Some((leaf(name)?, *b)))
        .collect();
    let paged = limited.first().map(|(c, _)| *c).unwrap_or(0);
    let mut out: Vec<Rows> = Vec::new();
    for (g, rg) in md.row_groups().iter().enumerate() {
        let in_bounds = limited.iter().all(|&(c, b)| {
            let (lo, hi) = rg
                .column(c)
                .statistics()
                .map(min_max)
                .unwrap_or((None, None));
            b.overlaps(lo, hi)
        });
        let group_rows = usize::try_from(rg.num_rows()).unwrap_or(0);
        if !in_bounds || group_rows == 0 {
            continue;
        }
        let pages = md
            .offset_index()
            .and_then(|o| o.get(g))
            .and_then(|c| c.get(paged))
            .map(|o| o.page_locations());
        let Some(pages) = pages.filter(|p| !p.is_empty()) else {
            out.push(Rows {
                file,
                row_group: g,
                start: 0,
                len: group_rows,
            });
            continue;
        };
        let index = md
            .column_index()
            .and_then(|c| c.get(g))
            .and_then(|c| c.get(paged));
        let bounds = limited.first().map(|(_, b)| *b);
        for (p, page) in pages.iter().enumerate() {
            let start = usize::try_from(page.first_row_index).unwrap_or(0);
            let end = pages
                .get(p + 1)
                .map(|n| usize::try_from(n.first_row_index).unwrap_or(group_rows))
                .unwrap_or(group_rows);
            let keep = match (bounds, index) {
                (Some(b), Some(ix)) => {
                    let (lo, hi) = page_min_max(ix, p);
                    b.overlaps(lo, hi)
                }
                _ => true,
            };
            if keep && end > start {
                out.push(Rows {
                    file,
                    row_group: g,
                    start,
                    len: end - start,
                });
            }
        }
    }
    out
}

fn min_max(s: &Statistics) -> (Option<f64>, Option<f64>) {
    match s {
        Statistics::Int32(v) => (
            v.min_opt().map(|&x| x.into()),
            v.max_opt().map(|&x| x.into()),
        ),
        Statistics::Int64(v) => (
            v.min_opt().map(|&x| x as f64),
            v.max_opt().map(|&x| x as f64),
        ),
        Statistics::Float(v) => (
            v.min_opt().map(|&x| x.into()),
            v.max_opt().map(|&x| x.into()),
        ),
        Statistics::Double(v) => (v.min_opt().copied(), v.max_opt().copied()),
        _ => (None, None),
    }
}

fn page_min_max(ix: &ColumnIndexMetaData, p: usize) -> (Option<f64>, Option<f64>) {
    match ix {
        ColumnIndexMetaData::INT32(i) => (
            i.min_value(p).map(|&x| x.into()),
            i.max_value(p).map(|&x| x.into()),
        ),
        ColumnIndexMetaData::INT64(i) => (
            i.min_value(p).map(|&x| x as f64),
            i.max_value(p).map(|&x| x as f64),
        ),
        ColumnIndexMetaData::FLOAT(i) => (
            i.min_value(p).map(|&x| x.into()),
            i.max_value(p).map(|&x| x.into()),
        ),
        ColumnIndexMetaData::DOUBLE(i) => (i.min_value(p).copied(), i.max_value(p).copied()),
        _ => (None, None),
    }
}

/// `runs` (pages, or whole row groups) cut into at most `n` contiguous shares of about equal
/// rows; a share ends once it has its part.
fn shares(runs: &[Rows], n: usize) -> Vec<Vec<Rows>> {
    let total: usize = runs.iter().map(|r| r.len).sum();
    let target = total.div_ceil(n.max(1)).max(1);
    let mut out: Vec<Vec<Rows>> = vec![Vec::new()];
    let mut filled = 0;
    for &r in runs {
        if filled >= target && out.len() < n {
            out.push(Vec::new());
            filled = 0;
        }
        if let Some(share) = out.last_mut() {
            share.push(r);
        }
        filled += r.len;
    }
    out
}

/// The files one share reads, each with the plan naming its rows.
fn share_files(
    files: &[PartitionedFile],
    footers: &[Arc<ParquetMetaData>],
    share: &[Rows],
) -> Vec<PartitionedFile> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < share.len() {
        let file = share[at].file;
        let end = share[at..]
            .iter()
            .position(|r| r.file != file)
            .map_or(share.len(), |k| at + k);
        let md = &footers[file];
        let mut plan = ParquetAccessPlan::new_none(md.num_row_groups());
        for (g, rg) in md.row_groups().iter().enumerate() {
            let runs: Vec<&Rows> = share[at..end].iter().filter(|r| r.row_group == g).collect();
            if runs.is_empty() {
                continue;
            }
            let group_rows = usize::try_from(rg.num_rows()).unwrap_or(0);
            // Runs are distinct pages: as many rows as the group's are all of it.
            if runs.iter().map(|r| r.len).sum::<usize>() == group_rows {
                plan.scan(g);
                continue;
            }
            let mut selectors = Vec::new();
            let mut next = 0;
            for r in runs {
                selectors.push(RowSelector::skip(r.start - next));
                selectors.push(RowSelector::select(r.len));
                next = r.start + r.len;
            }
            selectors.push(RowSelector::skip(group_rows.saturating_sub(next)));
            plan.set(g, RowGroupAccess::Selection(RowSelection::from(selectors)));
        }
        out.push(files[file].clone().with_extension(plan));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(file: usize, row_group: usize, start: usize, len: usize) -> Rows {
        Rows {
            file,
            row_group,
            start,
            len,
        }
    }

    #[test]
    fn shares_are_contiguous_about_equal_and_cover_every_run_once() {
        let runs: Vec<Rows> = (0..10).map(|p| run(0, 0, p * 100, 100)).collect();
        let s = shares(&runs, 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].len(), 5);
        assert_eq!(s[1].len(), 5);
        let flat: Vec<Rows> = s.concat();
        assert_eq!(flat, runs);
        // Fewer runs than threads: one share each, none empty.
        let s = shares(&runs[..1], 4);
        assert_eq!(s, vec![vec![runs[0]]]);
    }
}

#[cfg(test)]
mod scans {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use arrow::record_batch::RecordBatch;
    use pipelines::storage::layout::{segment_path, stream_dir_name};
    use pipelines::storage::{finish_segment, refresh_manifest, ParquetOptions, SegmentWriter};
    use pipelines::stream::keys;

    use crate::sql::{SqlEngine, SqlLimits};

    const ROWS_PER_FILE: i64 = 5_000;
    const COPIES: usize = 17;

    /// Three files of 5 000 rows (`sample_index` 0..15 000, `v` = index mod 7), in row
    /// groups of a few hundred rows and pages of 100.
    fn store() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("disk").join(stream_dir_name("t.events"));
        std::fs::create_dir_all(&dir).unwrap();
        // `v` and its copies `c0`..: enough columns that a read of all of them is a wide one,
        // which filters rows as it decodes them.
        let mut fields = vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("v", DataType::Int32, false),
        ];
        fields.extend((0..COPIES).map(|c| Field::new(format!("c{c}"), DataType::Int32, false)));
        let schema = Arc::new(
            Schema::new(fields)
                .with_metadata([(keys::STREAM_ID.to_string(), "t.events".to_string())].into()),
        );
        let opts = ParquetOptions {
            max_row_group_bytes: 2_000,
            data_page_rows: 100,
            ..ParquetOptions::default()
        };
        for file in 0..3 {
            let path = segment_path(&dir, file as u64);
            let mut seg = SegmentWriter::create(&path, schema.clone()).unwrap();
            for b in 0..ROWS_PER_FILE / 100 {
                let first = file * ROWS_PER_FILE + b * 100;
                let idx = Int64Array::from_iter_values(first..first + 100);
                let v: ArrayRef = Arc::new(Int32Array::from_iter_values(
                    (first..first + 100).map(|i| (i % 7) as i32),
                ));
                let mut columns: Vec<ArrayRef> = vec![Arc::new(idx), v.clone()];
                columns.extend((0..COPIES).map(|_| v.clone()));
                let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
                seg.write(&batch).unwrap();
            }
            seg.finish().unwrap();
            finish_segment(&path, &opts).unwrap();
        }
        refresh_manifest(&dir).unwrap();
        root
    }

    fn numbers(e: &SqlEngine, sql: &str) -> Vec<i64> {
        let r = e.block_on(e.query(sql)).unwrap();
        let b = &r.batches[0];
        (0..b.num_columns())
            .map(|c| b.column(c).as_primitive::<Int64Type>().value(0))
            .collect()
    }

    #[test]
    fn a_scan_split_over_threads_reads_every_row_in_range_once() {
        let root = store();
        let engine = SqlEngine::new(root.path().to_path_buf(), None, SqlLimits::default()).unwrap();
        let total = 3 * ROWS_PER_FILE;
        // Whole table; inside one page; across pages, row groups and files; past the end.
        for (lo, hi) in [
            (0, total),
            (120, 160),
            (250, 4_321),
            (4_990, 10_010),
            (14_000, 99_999),
        ] {
            let copies: Vec<String> = (0..COPIES)
                .map(|c| format!("CAST(c{c} AS BIGINT)"))
                .collect();
            let got = numbers(
                &engine,
                &format!(
                    "SELECT count(*), count(DISTINCT sample_index), min(sample_index), \
                     max(sample_index), sum(CAST(v AS BIGINT)), sum({}) FROM \"t.events\" \
                     WHERE sample_index >= {lo} AND sample_index < {hi}",
                    copies.join(" + ")
                ),
            );
            let hi = hi.min(total);
            let sum: i64 = (lo..hi).map(|i| i % 7).sum();
            let n = hi - lo;
            let all = sum * COPIES as i64;
            assert_eq!(got, vec![n, n, lo, hi - 1, sum, all], "range {lo}..{hi}");
        }
    }
}
