//! The catalog: what a store holds, stream by stream, and the one way to open it.
//!
//! Used by `neurod ls`, by sources resuming after a reload or a crash ([`ResumeLookup`]), and
//! meant for the `replay` source, SQL and exports: [`list_store`] / [`list_data_dir`] give every
//! stored stream with its files in order; [`StoredStream::open`] reads them as Arrow record
//! batch readers. Stores written before manifests and reversible names are read from their
//! Parquet footers, each file under the `neurod.stream_id` its schema carries.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::layout::{legacy_stream_dir_name, segment_seq, stream_dir_name, PART_PREFIX};
use super::manifest::{build_manifest, read_manifest, FileEntry, SchemaJson, MANIFEST_FILE};
use super::segment::SegmentReader;
use super::StoreError;
use crate::stream::{stream_id_of, Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

/// One stream as stored: its finished files in order and any live (or crash-left) segments.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStream {
    pub stream_id: String,
    /// The stream directory (for a stream an old store split between two ids' shared directory,
    /// that directory).
    pub dir: PathBuf,
    pub layout: Option<String>,
    pub sampling_hz: Option<String>,
    /// Schema of the newest file.
    pub schema: Option<SchemaJson>,
    pub files: Vec<StoredFile>,
    /// `_segment-*.arrows` not yet converted: a sink writing now, or a crash not yet recovered.
    pub segments: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    pub path: PathBuf,
    pub entry: FileEntry,
}

impl StoredStream {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.entry.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.entry.bytes).sum()
    }
    /// Largest `sample_index`/`frame_index` in the finished files.
    pub fn last_index(&self) -> Option<i64> {
        self.files.iter().filter_map(|f| f.entry.last_index).max()
    }
    pub fn first_time_s(&self) -> Option<f64> {
        self.files.iter().find_map(|f| f.entry.first_time_s)
    }
    pub fn last_time_s(&self) -> Option<f64> {
        self.files.iter().rev().find_map(|f| f.entry.last_time_s)
    }
    /// The finished files as Arrow record batch readers, in order (each with its own schema,
    /// which changes only where the stream's schema changed).
    pub fn open(&self) -> impl Iterator<Item = Result<StoredReader, StoreError>> + '_ {
        self.files.iter().map(|f| open_parquet(&f.path))
    }
}

/// The batches of one Parquet file with the file's whole Arrow schema, metadata included (the
/// parquet crate's reader hands out batches whose schema has lost it).
pub struct StoredReader {
    schema: SchemaRef,
    inner: ParquetRecordBatchReader,
}

impl Iterator for StoredReader {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.inner
                .next()?
                .and_then(|b| b.with_schema(self.schema.clone())),
        )
    }
}

impl RecordBatchReader for StoredReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// One Parquet file as an Arrow record batch reader.
pub fn open_parquet(path: &Path) -> Result<StoredReader, StoreError> {
    open_parquet_batched(path, None)
}

/// One Parquet file as an Arrow record batch reader whose batches hold about `batch_bytes`
/// (uncompressed, from the footer's sizes; at least one row), so that a reader of wide rows
/// (image frames) keeps little in memory. `None`: the reader's default row count.
pub fn open_parquet_batched(
    path: &Path,
    batch_bytes: Option<u64>,
) -> Result<StoredReader, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, "opening", e))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| StoreError::parquet(path, "reading", e))?;
    if let Some(target) = batch_bytes {
        let meta = builder.metadata();
        let rows = u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
        let bytes: u64 = meta
            .row_groups()
            .iter()
            .map(|rg| u64::try_from(rg.total_byte_size()).unwrap_or(0))
            .sum();
        let per_row = bytes.checked_div(rows).unwrap_or(1).max(1);
        let batch_rows = (target / per_row).clamp(1, 1 << 16);
        builder = builder.with_batch_size(usize::try_from(batch_rows).unwrap_or(1));
    }
    let schema = builder.schema().clone();
    let inner = builder
        .build()
        .map_err(|e| StoreError::parquet(path, "reading", e))?;
    Ok(StoredReader { schema, inner })
}

/// Uncompressed bytes of selected columns per batch of [`open_parquet_columns`]: bounded memory
/// whatever the row width.
const COLUMNS_BATCH_BYTES: usize = 4 << 20;

/// A reader of `columns` of one Parquet file (projection: nothing else is decoded), in batches of
/// about [`COLUMNS_BATCH_BYTES`] of them; with the file's whole schema. The batches keep the
/// file's column order: find columns by name.
pub fn open_parquet_columns(
    path: &Path,
    columns: &[&str],
) -> Result<(SchemaRef, ParquetRecordBatchReader), String> {
    let file = File::open(path).map_err(|e| format!("{}: opening: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: reading the footer: {e}", path.display()))?;
    let schema = builder.schema().clone();
    let mut roots = Vec::with_capacity(columns.len());
    for c in columns {
        let i = schema.index_of(c).map_err(|_| {
            format!(
                "{}: no column `{c}` (the stream's schema changed between files?)",
                path.display()
            )
        })?;
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let rows = (COLUMNS_BATCH_BYTES / (8 * columns.len().max(1))).clamp(256, 1 << 16);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(rows)
        .build()
        .map_err(|e| format!("{}: reading: {e}", path.display()))?;
    Ok((schema, reader))
}

/// Whether `dir` is one stream's directory in a store (it has a manifest, a finished file or a
/// segment).
pub fn is_stream_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name == MANIFEST_FILE || name.starts_with(PART_PREFIX) || segment_seq(&name).is_some()
    })
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, "listing", e)),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// The streams of one stream directory, read-only: its manifest, brought up to date in memory
/// when files were added since (or rebuilt from the footers when there is none). A directory an
/// old store shared between two ids gives one entry per id.
pub fn read_stream_dir(dir: &Path) -> Result<Vec<StoredStream>, StoreError> {
    let previous = read_manifest(dir).unwrap_or(None);
    let manifest = build_manifest(dir, previous.as_ref())?;
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, "listing a stream directory", e))?
        .flatten()
    {
        if segment_seq(&entry.file_name().to_string_lossy()).is_some() {
            segments.push(entry.path());
        }
    }
    segments.sort();
    let mut by_id: BTreeMap<String, StoredStream> = BTreeMap::new();
    // Each stream's newest schema, described once after the loop (wide probes' schemas are
    // large, and a query reads this for every stream it names).
    let mut newest: BTreeMap<String, usize> = BTreeMap::new();
    for f in &manifest.files {
        let schema = manifest.schemas.get(f.schema);
        let id = schema
            .and_then(SchemaJson::stream_id)
            .unwrap_or(&manifest.stream_id)
            .to_string();
        let s = by_id.entry(id.clone()).or_insert_with(|| StoredStream {
            stream_id: id.clone(),
            dir: dir.to_path_buf(),
            layout: None,
            sampling_hz: None,
            schema: None,
            files: Vec::new(),
            segments: Vec::new(),
        });
        s.files.push(StoredFile {
            path: dir.join(&f.name),
            entry: f.clone(),
        });
        newest.insert(id, f.schema);
    }
    for (id, at) in newest {
        let (Some(s), Some(schema)) = (by_id.get_mut(&id), manifest.schemas.get(at)) else {
            continue;
        };
        s.layout = schema.metadata.get(crate::stream::keys::LAYOUT).cloned();
        s.sampling_hz = schema
            .metadata
            .get(crate::stream::keys::SAMPLING_HZ)
            .cloned();
        s.schema = Some(schema.clone());
    }
    if !segments.is_empty() || by_id.is_empty() {
        let s = by_id
            .entry(manifest.stream_id.clone())
            .or_insert_with(|| StoredStream {
                stream_id: manifest.stream_id.clone(),
                dir: dir.to_path_buf(),
                layout: manifest.layout.clone(),
                sampling_hz: manifest.sampling_hz.clone(),
                schema: None,
                files: Vec::new(),
                segments: Vec::new(),
            });
        s.segments = segments;
    }
    Ok(by_id.into_values().collect())
}

/// Every stream of one store (a `store` sink's directory), by stream id.
pub fn list_store(store_dir: &Path) -> Result<Vec<StoredStream>, StoreError> {
    let mut out = Vec::new();
    for dir in subdirs(store_dir)? {
        out.extend(read_stream_dir(&dir)?);
    }
    out.sort_by(|a, b| a.stream_id.cmp(&b.stream_id).then(a.dir.cmp(&b.dir)));
    Ok(out)
}

/// The stream directories under a data directory (`<data_dir>/<store>/<stream>/`), or under one
/// store directory given directly, without reading them (SQL reads only those a query names).
pub fn stream_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let children = subdirs(dir)?;
    if children.iter().any(|c| is_stream_dir(c)) {
        return Ok(children);
    }
    let mut out = Vec::new();
    for store in children {
        out.extend(subdirs(&store)?);
    }
    Ok(out)
}

/// Every stream under a data directory (`<data_dir>/<store>/<stream>/`), or under one store
/// directory given directly, as (store directory, stream).
pub fn list_data_dir(dir: &Path) -> Result<Vec<(PathBuf, StoredStream)>, StoreError> {
    let mut out = Vec::new();
    let children = subdirs(dir)?;
    if children.iter().any(|c| is_stream_dir(c)) {
        for s in list_store(dir)? {
            out.push((dir.to_path_buf(), s));
        }
        return Ok(out);
    }
    for store in children {
        for s in list_store(&store)? {
            out.push((store.clone(), s));
        }
    }
    Ok(out)
}

/// Every stream under `path`, whichever of these it is: one stream directory, one store, or a
/// data directory; as (store directory, stream). Nothing stored: an empty list.
pub fn list_path(path: &Path) -> Result<Vec<(PathBuf, StoredStream)>, StoreError> {
    if is_stream_dir(path) {
        let store = path.parent().unwrap_or(path).to_path_buf();
        return Ok(read_stream_dir(path)?
            .into_iter()
            .map(|s| (store.clone(), s))
            .collect());
    }
    list_data_dir(path)
}

/// Parquet files written by anyone, described from their footers as one stream `stream_id`
/// (in the order given; `layout` and schema as the newest file has them).
pub fn foreign_stream(stream_id: &str, files: &[PathBuf]) -> Result<StoredStream, StoreError> {
    let mut stream = StoredStream {
        stream_id: stream_id.to_string(),
        dir: files
            .first()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        layout: None,
        sampling_hz: None,
        schema: None,
        files: Vec::new(),
        segments: Vec::new(),
    };
    for path in files {
        let (entry, schema) = super::manifest::describe_part(path)?;
        stream.layout = schema.metadata.get(crate::stream::keys::LAYOUT).cloned();
        stream.sampling_hz = schema
            .metadata
            .get(crate::stream::keys::SAMPLING_HZ)
            .cloned();
        stream.schema = Some(schema);
        stream.files.push(StoredFile {
            path: path.clone(),
            entry,
        });
    }
    Ok(stream)
}

/// What a store holds of one stream: whether anything, and the largest index and `time_s`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Held {
    pub any: bool,
    /// Largest `sample_index` (continuous, events) or `frame_index` (frames, traces).
    pub last_index: Option<i64>,
    pub last_time_s: Option<f64>,
}

impl Held {
    fn max(self, other: Held) -> Held {
        Held {
            any: self.any || other.any,
            last_index: self.last_index.max(other.last_index),
            last_time_s: max_f64(self.last_time_s, other.last_time_s),
        }
    }
    /// What two stores both hold.
    fn min(self, other: Held) -> Held {
        let lo = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| a.min(b));
        Held {
            any: self.any && other.any,
            last_index: lo(self.last_index, other.last_index),
            last_time_s: self
                .last_time_s
                .zip(other.last_time_s)
                .map(|(a, b)| a.min(b)),
        }
    }
}

fn max_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The largest `sample_index` (continuous streams, events) or `frame_index` (frames, traces)
/// a store holds for a stream: in its finished files and in the complete batches of segments not
/// yet converted (a sink writing now, or a crash its next start has not recovered yet). Looks in
/// the stream's directory and in the one the old lossy rule gave it. `None`: nothing held.
pub fn held_index(store_dir: &Path, stream_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(held(store_dir, stream_id)?.last_index)
}

/// What a store holds of a stream ([`held_index`], plus whether anything and the largest
/// `time_s`), finished files and complete segment batches alike.
pub fn held(store_dir: &Path, stream_id: &str) -> Result<Held, StoreError> {
    let mut dirs = vec![store_dir.join(stream_dir_name(stream_id))];
    let legacy = store_dir.join(legacy_stream_dir_name(stream_id));
    if !dirs.contains(&legacy) {
        dirs.push(legacy);
    }
    let mut held = Held::default();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        // A segment converted (and removed) while we look is found as a part on the next pass.
        let mut tries = 0;
        let found = loop {
            match held_in_dir(dir, stream_id) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && tries < 5 =>
                {
                    tries += 1;
                }
                other => break other?,
            }
        };
        held = held.max(found);
    }
    Ok(held)
}

fn held_in_dir(dir: &Path, stream_id: &str) -> Result<Held, StoreError> {
    let mut held = Held::default();
    for s in read_stream_dir(dir)? {
        if s.stream_id == stream_id {
            held = held.max(Held {
                any: !s.files.is_empty(),
                last_index: s.last_index(),
                last_time_s: s
                    .files
                    .iter()
                    .filter_map(|f| f.entry.last_time_s)
                    .reduce(f64::max),
            });
        }
        for seg in &s.segments {
            held = held.max(segment_held(seg, stream_id)?);
        }
    }
    Ok(held)
}

/// The index column of a batch of a stream whose rows each have their own index.
fn index_values(batch: &RecordBatch) -> Option<&arrow::array::PrimitiveArray<Int64Type>> {
    let column = match Layout::of(batch.schema_ref())? {
        Layout::Continuous | Layout::Events => SAMPLE_INDEX,
        Layout::Frames | Layout::Traces => FRAME_INDEX,
        _ => return None,
    };
    batch
        .column_by_name(column)?
        .as_primitive_opt::<Int64Type>()
}

/// The largest index of a batch, if its layout has an index column.
pub fn batch_max_index(batch: &RecordBatch) -> Option<i64> {
    let values = index_values(batch)?;
    if values.null_count() > 0 {
        return values.iter().flatten().max();
    }
    values.values().iter().copied().max()
}

/// The largest `time_s` of a batch, if it has that column as Float64.
fn batch_max_time_s(batch: &RecordBatch) -> Option<f64> {
    let values = batch
        .column_by_name(TIME_S)?
        .as_primitive_opt::<arrow::datatypes::Float64Type>()?;
    values.iter().flatten().reduce(f64::max)
}

fn segment_held(segment: &Path, stream_id: &str) -> Result<Held, StoreError> {
    let reader = match SegmentReader::open(segment) {
        Ok(r) => r,
        Err(StoreError::NoCompleteBatch { .. }) => return Ok(Held::default()),
        Err(e) => return Err(e),
    };
    if stream_id_of(&reader.schema()) != Some(stream_id) {
        return Ok(Held::default());
    }
    Ok(reader
        .map(|b| Held {
            any: b.num_rows() > 0,
            last_index: batch_max_index(&b),
            last_time_s: batch_max_time_s(&b),
        })
        .fold(Held::default(), Held::max))
}

/// How a source learns what the stores it feeds hold for its streams: the directories of the
/// `store` sinks that take its output directly (the daemon fills them in). Empty: no store, so
/// nothing to resume from.
#[derive(Debug, Clone, Default)]
pub struct ResumeLookup {
    stores: Vec<PathBuf>,
}

impl ResumeLookup {
    pub fn new(stores: Vec<PathBuf>) -> Self {
        ResumeLookup { stores }
    }

    pub fn stores(&self) -> &[PathBuf] {
        &self.stores
    }

    /// Where a source with a position resumes `stream_id`: one past the largest index that
    /// *every* store holds (0 when one of them holds nothing, or there is no store), so no store
    /// misses a row; a store already further on drops what it holds (its own guard).
    pub fn next_index(&self, stream_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .held_by_all(stream_id)?
            .last_index
            .map_or(0, |i| i.saturating_add(1)))
    }

    /// What *every* store holds of `stream_id` (nothing when there is no store): a source
    /// resuming after it misses no row in any store.
    pub fn held_by_all(&self, stream_id: &str) -> Result<Held, StoreError> {
        let mut all: Option<Held> = None;
        for store in &self.stores {
            let here = held(store, stream_id)?;
            all = Some(all.map_or(here, |a| a.min(here)));
        }
        Ok(all.unwrap_or_default())
    }

    /// Whether any store holds something of `stream_id` (a failing disk counts as holding, so
    /// a new run is started rather than rows being refused).
    pub fn holds(&self, stream_id: &str) -> bool {
        self.stores.iter().any(|store| {
            let dirs = [
                stream_dir_name(stream_id),
                legacy_stream_dir_name(stream_id),
            ];
            dirs.iter().any(|d| {
                read_stream_dir(&store.join(d)).map_or_else(
                    |_| store.join(d).is_dir(),
                    |streams| {
                        streams.iter().any(|s| {
                            s.stream_id == stream_id
                                && (!s.files.is_empty() || !s.segments.is_empty())
                        })
                    },
                )
            })
        })
    }

    /// For a source that cannot resume: the prefix of a new run. `base` (its component id) if no
    /// store holds any of `base + suffix`, else the first free `base-run2`, `base-run3`, ...
    pub fn new_run_prefix(&self, base: &str, suffixes: &[String]) -> String {
        let taken = |p: &str| suffixes.iter().any(|s| self.holds(&format!("{p}{s}")));
        if !taken(base) {
            return base.to_string();
        }
        (2u64..)
            .map(|n| format!("{base}-run{n}"))
            .find(|p| !taken(p))
            .unwrap_or_else(|| base.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::segment_path;
    use crate::storage::segment::SegmentWriter;
    use crate::storage::{finish_segment, ParquetOptions};
    use crate::stream::{batch_from_interleaved, ChannelInfo, ChannelKind, ContinuousInfo};

    fn schema(id: &str) -> arrow::datatypes::SchemaRef {
        ContinuousInfo {
            stream_id: id.into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "100".into(),
            sampling_hz: 100.0,
            first_sample: 0,
            probe: None,
            channels: vec![ChannelInfo {
                name: "c0".into(),
                kind: ChannelKind::Ap,
                uv_per_bit: None,
                x_um: None,
                y_um: None,
                shank: None,
            }],
        }
        .schema()
    }

    /// A segment of `rows` samples from `first`; converted to Parquet when `finish`.
    fn write(dir: &Path, id: &str, seq: u64, first: i64, rows: usize, finish: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let s = schema(id);
        let batch = batch_from_interleaved(&s, first, &vec![1u8; rows * 2]).unwrap();
        let seg = segment_path(dir, seq);
        let mut w = SegmentWriter::create(&seg, s).unwrap();
        w.write(&batch).unwrap();
        w.sync().unwrap();
        if finish {
            w.finish().unwrap();
            finish_segment(&seg, &ParquetOptions::default()).unwrap();
        }
    }

    #[test]
    fn ids_that_sanitise_alike_are_listed_apart_and_old_stores_are_read() {
        let store = tempfile::tempdir().unwrap();
        write(
            &store.path().join(stream_dir_name("a/b")),
            "a/b",
            0,
            0,
            10,
            true,
        );
        write(
            &store.path().join(stream_dir_name("a_b")),
            "a_b",
            0,
            0,
            20,
            true,
        );
        // An old store: two ids that shared one lossy directory.
        let shared = store.path().join("x_y");
        write(&shared, "x y", 0, 0, 5, true);
        write(&shared, "x:y", 1, 0, 7, true);
        let listed: Vec<(String, u64)> = list_store(store.path())
            .unwrap()
            .iter()
            .map(|s| (s.stream_id.clone(), s.rows()))
            .collect();
        assert_eq!(
            listed,
            [
                ("a/b".to_string(), 10),
                ("a_b".to_string(), 20),
                ("x y".to_string(), 5),
                ("x:y".to_string(), 7)
            ]
        );
        let a = &list_store(store.path()).unwrap()[0];
        let rows: usize = a
            .open()
            .map(|r| r.unwrap().map(|b| b.unwrap().num_rows()).sum::<usize>())
            .sum();
        assert_eq!(rows, 10);
        assert_eq!(held_index(store.path(), "x:y").unwrap(), Some(6));
        assert_eq!(held_index(store.path(), "x y").unwrap(), Some(4));
        // A data directory lists the same streams under their store.
        let all = list_data_dir(store.path()).unwrap();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn resume_point_counts_segments_and_takes_the_store_furthest_behind() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dir = a.path().join("p");
        write(&dir, "p", 0, 0, 100, true);
        write(&dir, "p", 1, 100, 50, false); // live, not converted
        assert_eq!(held_index(a.path(), "p").unwrap(), Some(149));
        let one = ResumeLookup::new(vec![a.path().to_path_buf()]);
        assert_eq!(one.next_index("p").unwrap(), 150);
        assert_eq!(one.next_index("q").unwrap(), 0);
        let both = ResumeLookup::new(vec![a.path().to_path_buf(), b.path().to_path_buf()]);
        assert_eq!(
            both.next_index("p").unwrap(),
            0,
            "store b holds nothing yet"
        );
        write(&b.path().join("p"), "p", 0, 0, 30, true);
        assert_eq!(both.next_index("p").unwrap(), 30);
        assert_eq!(ResumeLookup::default().next_index("p").unwrap(), 0);
        assert!(one.holds("p") && !one.holds("q"));
        let suffixes = [".x".to_string()];
        write(&a.path().join("sim.x"), "sim.x", 0, 0, 1, true);
        write(&a.path().join("sim-run2.x"), "sim-run2.x", 0, 0, 1, true);
        assert_eq!(one.new_run_prefix("sim", &suffixes), "sim-run3");
        assert_eq!(one.new_run_prefix("other", &suffixes), "other");
    }
}
