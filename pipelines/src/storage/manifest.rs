//! The manifest of a stream directory: `_manifest.json`, a small description of what the
//! directory holds, rewritten after every file the store finishes (conversion and recovery).
//!
//! It is derived from the finished Parquet files alone (their footers: row counts, schema, and
//! the column statistics of `sample_index`/`frame_index` and `time_s`), so it can always be
//! rebuilt: a store written before manifests existed, or a manifest lost to a crash between a
//! rename and its rewrite, is read by scanning the footers instead. It is written like a Parquet
//! file: temporary file, fsync, atomic rename, directory fsync; its leading `_` hides it from
//! pyarrow's and DataFusion's dataset discovery.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};

use super::layout::{
    legacy_stream_dir_name, part_seq, stream_dir_name, stream_id_from_dir_name, sync_dir, tmp_path,
};
use super::StoreError;
use crate::stream::{keys, Layout, FRAME_INDEX, SAMPLE_INDEX, TIME_S};

pub const MANIFEST_FILE: &str = "_manifest.json";
/// Bumped when a field changes meaning; readers rebuild manifests of another format.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The stream the directory is named after (for a store written before reversible names,
    /// the id of its newest file).
    pub stream_id: String,
    /// `neurod.layout` of the newest file.
    pub layout: Option<String>,
    /// `neurod.sampling_hz` of the newest file (exact text).
    pub sampling_hz: Option<String>,
    /// The distinct schemas of the files, oldest first; each file names its own by index.
    pub schemas: Vec<SchemaJson>,
    /// Finished files in sequence order.
    pub files: Vec<FileEntry>,
}

/// An Arrow schema with all its metadata, in readable JSON (the types as Arrow prints them; each
/// Parquet file carries the exact schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaJson {
    pub metadata: BTreeMap<String, String>,
    pub fields: Vec<FieldJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldJson {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl SchemaJson {
    pub fn of(schema: &Schema) -> Self {
        SchemaJson {
            metadata: schema.metadata().clone().into_iter().collect(),
            fields: schema
                .fields()
                .iter()
                .map(|f| FieldJson {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                    metadata: f.metadata().clone().into_iter().collect(),
                })
                .collect(),
        }
    }
    pub fn stream_id(&self) -> Option<&str> {
        self.metadata.get(keys::STREAM_ID).map(String::as_str)
    }
}

/// One finished file. Index and time bounds are the smallest and largest values in the file
/// (for the streams neurod writes, its first and last rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the stream directory (`part-000042.parquet`).
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// Index into [`Manifest::schemas`].
    pub schema: usize,
    /// `sample_index` or `frame_index`, whichever the schema has.
    pub index_column: Option<String>,
    pub first_index: Option<i64>,
    pub last_index: Option<i64>,
    /// From the `time_s` column, or for continuous streams `sample_index / sampling_hz`.
    pub first_time_s: Option<f64>,
    pub last_time_s: Option<f64>,
}

/// The manifest of `dir`; `Ok(None)` when there is none (or it has another format).
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, "reading the manifest", e)),
    };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        StoreError::io(
            &path,
            "parsing the manifest",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok((manifest.format == MANIFEST_FORMAT).then_some(manifest))
}

/// Writes the manifest of `dir` atomically: temporary file, fsync, rename, directory fsync.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = tmp_path(&path);
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| {
        StoreError::io(
            &path,
            "encoding the manifest",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&text)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(&path, "writing the manifest", e));
    }
    sync_dir(dir).map_err(|e| StoreError::io(dir, "syncing directory", e))
}

/// The finished Parquet files of `dir`, in sequence order.
pub fn part_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, "listing a stream directory", e))?;
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, "listing a stream directory", e))?;
        if let Some(seq) = part_seq(&entry.file_name().to_string_lossy()) {
            parts.push((seq, entry.path()));
        }
    }
    parts.sort();
    Ok(parts)
}

/// The manifest `dir` should have now, from its Parquet files: entries of `previous` whose file
/// still has the same name and size are kept, other files' footers are read.
pub fn build_manifest(dir: &Path, previous: Option<&Manifest>) -> Result<Manifest, StoreError> {
    let mut schemas: Vec<SchemaJson> = Vec::new();
    // (index in `previous`, index in `schemas`) of the schemas kept so far.
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut files = Vec::new();
    for (_, path) in part_files(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::metadata(&path)
            .map_err(|e| StoreError::io(&path, "reading size", e))?
            .len();
        let known = previous.and_then(|m| {
            let f = m
                .files
                .iter()
                .find(|f| f.name == name && f.bytes == bytes)?;
            Some((f.clone(), m.schemas.get(f.schema)?))
        });
        // Schemas are compared (wide probes have hundreds of fields) only once per distinct
        // schema of `previous`, not once per file: a query reads this for every stream it names.
        let entry = match known {
            Some((mut entry, schema)) => {
                let at = match kept.iter().find(|(old, _)| *old == entry.schema) {
                    Some(&(_, at)) => at,
                    None => {
                        let at = intern(&mut schemas, schema.clone());
                        kept.push((entry.schema, at));
                        at
                    }
                };
                entry.schema = at;
                entry
            }
            None => {
                let (mut entry, schema) = describe_part(&path)?;
                entry.schema = intern(&mut schemas, schema);
                entry
            }
        };
        files.push(entry);
    }
    let newest = files.last().and_then(|f| schemas.get(f.schema));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The files' own id when the directory is named after it (by today's rule or the old lossy
    // one), else what the name decodes to.
    let stream_id = newest
        .and_then(SchemaJson::stream_id)
        .filter(|id| stream_dir_name(id) == name || legacy_stream_dir_name(id) == name)
        .map(str::to_string)
        .or_else(|| stream_id_from_dir_name(&name))
        .unwrap_or(name);
    Ok(Manifest {
        format: MANIFEST_FORMAT,
        stream_id,
        layout: newest.and_then(|s| s.metadata.get(keys::LAYOUT).cloned()),
        sampling_hz: newest.and_then(|s| s.metadata.get(keys::SAMPLING_HZ).cloned()),
        schemas,
        files,
    })
}

/// The index of `schema` in `schemas`, added if new.
fn intern(schemas: &mut Vec<SchemaJson>, schema: SchemaJson) -> usize {
    match schemas.iter().position(|s| *s == schema) {
        Some(i) => i,
        None => {
            schemas.push(schema);
            schemas.len() - 1
        }
    }
}

/// Brings the manifest of `dir` up to date with its files, writing it only if it changed.
pub fn refresh_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    // A manifest that cannot be read is rebuilt from the files, which are the truth.
    let previous = read_manifest(dir).unwrap_or_else(|e| {
        tracing::warn!("{e}; rebuilding it from the Parquet files");
        None
    });
    let manifest = build_manifest(dir, previous.as_ref())?;
    // A directory that never held a finished file gets none (a crash left only an empty segment).
    let nothing = previous.is_none() && manifest.files.is_empty();
    if previous.as_ref() != Some(&manifest) && !nothing {
        write_manifest(dir, &manifest)?;
    }
    Ok(manifest)
}

/// The entry and schema of one Parquet file, from its footer.
pub fn describe_part(path: &Path) -> Result<(FileEntry, SchemaJson), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, "opening", e))?;
    let bytes = file
        .metadata()
        .map_err(|e| StoreError::io(path, "reading size", e))?
        .len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| StoreError::parquet(path, "reading the footer", e))?;
    let schema = builder.schema().clone();
    let meta = builder.metadata();
    let index_column = [SAMPLE_INDEX, FRAME_INDEX]
        .into_iter()
        .find(|c| {
            schema
                .field_with_name(c)
                .is_ok_and(|f| f.data_type() == &DataType::Int64)
        })
        .map(str::to_string);
    let (first_index, last_index) = match &index_column {
        Some(c) => int64_bounds(meta, c),
        None => (None, None),
    };
    let (mut first_time_s, mut last_time_s) = if schema
        .field_with_name(TIME_S)
        .is_ok_and(|f| f.data_type() == &DataType::Float64)
    {
        f64_bounds(meta, TIME_S)
    } else {
        (None, None)
    };
    let rate = schema
        .metadata()
        .get(keys::SAMPLING_HZ)
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0);
    let continuous = schema.metadata().get(keys::LAYOUT).map(String::as_str)
        == Some(Layout::Continuous.as_str());
    if let (true, Some(rate), None) = (continuous, rate, first_time_s) {
        first_time_s = first_index.map(|i| i as f64 / rate);
        last_time_s = last_index.map(|i| i as f64 / rate);
    }
    let entry = FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rows: u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0),
        bytes,
        schema: 0,
        index_column,
        first_index,
        last_index,
        first_time_s,
        last_time_s,
    };
    Ok((entry, SchemaJson::of(&schema)))
}

/// Min and max over the row groups' statistics of a top-level column.
fn column_bounds<T: Copy + PartialOrd>(
    meta: &ParquetMetaData,
    column: &str,
    pick: impl Fn(&Statistics) -> Option<(T, T)>,
) -> (Option<T>, Option<T>) {
    let mut lo: Option<T> = None;
    let mut hi: Option<T> = None;
    for rg in meta.row_groups() {
        let Some(chunk) = rg.columns().iter().find(|c| {
            let parts = c.column_path().parts();
            parts.len() == 1 && parts.first().is_some_and(|p| p == column)
        }) else {
            continue;
        };
        if let Some((min, max)) = chunk.statistics().and_then(&pick) {
            lo = Some(lo.map_or(min, |l| if min < l { min } else { l }));
            hi = Some(hi.map_or(max, |h| if max > h { max } else { h }));
        }
    }
    (lo, hi)
}

fn int64_bounds(meta: &ParquetMetaData, column: &str) -> (Option<i64>, Option<i64>) {
    column_bounds(meta, column, |s| match s {
        Statistics::Int64(v) => Some((*v.min_opt()?, *v.max_opt()?)),
        _ => None,
    })
}

fn f64_bounds(meta: &ParquetMetaData, column: &str) -> (Option<f64>, Option<f64>) {
    column_bounds(meta, column, |s| match s {
        Statistics::Double(v) => Some((*v.min_opt()?, *v.max_opt()?)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::convert::finish_segment;
    use crate::storage::layout::{part_path, segment_path};
    use crate::storage::segment::SegmentWriter;
    use crate::storage::ParquetOptions;
    use crate::stream::{batch_from_interleaved, ChannelInfo, ChannelKind, ContinuousInfo};
    use arrow::record_batch::RecordBatch;

    fn info(id: &str) -> ContinuousInfo {
        ContinuousInfo {
            stream_id: id.into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "1000".into(),
            sampling_hz: 1000.0,
            first_sample: 0,
            probe: None,
            channels: (0..2)
                .map(|i| ChannelInfo {
                    name: format!("c{i}"),
                    kind: ChannelKind::Ap,
                    uv_per_bit: Some(0.5),
                    x_um: None,
                    y_um: None,
                    shank: None,
                })
                .collect(),
        }
    }

    /// A finished part `seq` of `rows` samples starting at `first`.
    fn write_part(dir: &Path, id: &str, seq: u64, first: i64, rows: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let schema = info(id).schema();
        let bytes: Vec<u8> = (0..rows * 4).map(|i| (i % 251) as u8).collect();
        let batch: RecordBatch = batch_from_interleaved(&schema, first, &bytes).unwrap();
        let seg = segment_path(dir, seq);
        let mut w = SegmentWriter::create(&seg, schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        finish_segment(&seg, &ParquetOptions::default()).unwrap();
    }

    #[test]
    fn manifest_describes_every_file_and_reads_back() {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join(stream_dir_name("rig/probe"));
        write_part(&dir, "rig/probe", 0, 0, 1000);
        write_part(&dir, "rig/probe", 1, 1000, 500);
        let m = refresh_manifest(&dir).unwrap();
        assert_eq!(m.stream_id, "rig/probe");
        assert_eq!(m.layout.as_deref(), Some("continuous"));
        assert_eq!(m.sampling_hz.as_deref(), Some("1000"));
        assert_eq!(m.schemas.len(), 1, "both files share one schema");
        assert_eq!(m.schemas[0].stream_id(), Some("rig/probe"));
        assert_eq!(m.schemas[0].fields[1].metadata["neurod.uv_per_bit"], "0.5");
        let f: Vec<_> = m
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.rows, f.first_index, f.last_index))
            .collect();
        assert_eq!(
            f,
            [
                ("part-000000.parquet", 1000, Some(0), Some(999)),
                ("part-000001.parquet", 500, Some(1000), Some(1499)),
            ]
        );
        assert_eq!(m.files[1].first_time_s, Some(1.0));
        assert_eq!(m.files[1].last_time_s, Some(1.499));
        let size = std::fs::metadata(part_path(&dir, 1)).unwrap().len();
        assert_eq!(m.files[1].bytes, size);
        assert_eq!(read_manifest(&dir).unwrap().as_ref(), Some(&m));
        // Written atomically: no temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn refresh_follows_new_files_and_rewrites_only_on_change() {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join("s");
        write_part(&dir, "s", 0, 0, 100);
        let first = refresh_manifest(&dir).unwrap();
        let path = dir.join(MANIFEST_FILE);
        let stamp = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(refresh_manifest(&dir).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            stamp,
            "an unchanged manifest is not rewritten"
        );
        write_part(&dir, "s", 1, 100, 100);
        let second = refresh_manifest(&dir).unwrap();
        assert_eq!(second.files.len(), 2);
        assert_eq!(second.files[0], first.files[0]);
    }

    #[test]
    fn a_store_without_manifest_or_with_a_broken_one_is_rebuilt_from_the_files() {
        let store = tempfile::tempdir().unwrap();
        // An old store: lossy directory name, no manifest; the id is in the Parquet metadata.
        let dir = store.path().join("rig_1_probe_0");
        write_part(&dir, "rig 1/probe:0", 0, 0, 300);
        assert_eq!(read_manifest(&dir).unwrap(), None);
        let m = build_manifest(&dir, None).unwrap();
        assert_eq!(m.stream_id, "rig 1/probe:0");
        assert_eq!(m.schemas[0].stream_id(), Some("rig 1/probe:0"));
        assert_eq!(m.files[0].last_index, Some(299));
        std::fs::write(dir.join(MANIFEST_FILE), b"{ cut").unwrap();
        assert!(read_manifest(&dir).is_err());
        assert_eq!(refresh_manifest(&dir).unwrap(), m);
        assert_eq!(read_manifest(&dir).unwrap(), Some(m));
    }
}
