//! Segment → Parquet conversion, and the Parquet settings chosen for neural data.
//!
//! Int16 encodings, measured on the Open Ephys example recording (16 channels × 40 kHz Int16,
//! 3.3 s, 4 259 840 bytes of `.dat`), zstd level 1 (the store's default), dictionary off,
//! `sample_index` in DELTA_BINARY_PACKED; see `tests::int16_encodings_on_the_real_recording`.
//! Ratio = Arrow bytes (Int16 channels + Int64 `sample_index`, what the `compression_ratio`
//! metric counts) / Parquet bytes, and in brackets `.dat` bytes / Parquet bytes:
//!
//! | Int16 encoding      | 20 000-row pages (parquet-rs default) | 1 MiB pages (ours) |
//! |---------------------|---------------------------------------|--------------------|
//! | PLAIN               | 1.312 (1.049)                         | 1.338 (1.070)      |
//! | DELTA_BINARY_PACKED | 2.166 (1.733)                         | 2.173 (1.738)      |
//! | BYTE_STREAM_SPLIT   | 1.851 (1.481)                         | 1.935 (1.548)      |
//!
//! At zstd level 3, DELTA_BINARY_PACKED gives the same 2.173 (zstd finds almost nothing left in
//! bit-packed deltas), PLAIN 1.483 and BYTE_STREAM_SPLIT 1.967.
//!
//! DELTA_BINARY_PACKED wins because at 40 kHz this signal moves little from one sample to the
//! next: the sample-to-sample differences have a tenth of the spread of the values (σ ≈ 77 vs
//! 772 ADC steps on CH1), so the deltas bit-pack into ~4 fewer bits than the values before zstd
//! even starts. PLAIN stores each Int16 in 4 bytes (see below) and leaves zstd to find both the
//! sign-extension bytes and the structure; BYTE_STREAM_SPLIT groups the high bytes so zstd
//! removes them, but does not exploit the correlation between neighbouring samples. On high-pass
//! filtered data (a Neuropixels AP band is close to white noise) differences are *wider* than
//! values and BYTE_STREAM_SPLIT should win instead: measure with this test before changing it.
//!
//! Parquet has no 16-bit physical type: Int16 is stored as INT32 annotated INT(16, signed), so
//! it reads back as Int16 exactly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowSchemaConverter;
use parquet::basic::{Compression, Encoding, LogicalType, Type as PhysicalType, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

use super::layout::{part_path, segment_seq, sync_dir, tmp_path};
use super::parquet_writer::ParquetWriter;
use super::segment::SegmentReader;
use super::StoreError;
use crate::stream::{keys, FRAME_INDEX, SAMPLE_INDEX};

/// Parquet encoding of Int16 columns (raw ADC samples, frame pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int16Encoding {
    Plain,
    DeltaBinaryPacked,
    ByteStreamSplit,
}

impl Int16Encoding {
    pub const ALL: [Int16Encoding; 3] = [
        Int16Encoding::Plain,
        Int16Encoding::DeltaBinaryPacked,
        Int16Encoding::ByteStreamSplit,
    ];
    pub fn encoding(self) -> Encoding {
        match self {
            Int16Encoding::Plain => Encoding::PLAIN,
            Int16Encoding::DeltaBinaryPacked => Encoding::DELTA_BINARY_PACKED,
            Int16Encoding::ByteStreamSplit => Encoding::BYTE_STREAM_SPLIT,
        }
    }
}

/// The Parquet settings of the store. `Default` is what the sink uses (but for the zstd level,
/// which is the sink's `zstd_level`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetOptions {
    pub zstd_level: i32,
    pub int16_encoding: Int16Encoding,
    /// A row group is closed once its encoded size passes this.
    pub max_row_group_bytes: usize,
    /// A data page (the unit zstd compresses) is closed once its encoded size passes this.
    pub data_page_bytes: usize,
    /// Rows per data page at most; `usize::MAX` lets `data_page_bytes` alone decide.
    pub data_page_rows: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            zstd_level: 1,
            int16_encoding: Int16Encoding::DeltaBinaryPacked,
            // 128 MiB row groups: the size Parquet writers commonly aim for, large enough that
            // per-row-group overhead (footer entries, one seek per column chunk) stays small for
            // 385-channel probes (~3 s of AP data per group), small enough that the writer's
            // buffered row group stays a bounded amount of memory. `sample_index` statistics
            // per row group and per page let readers skip to a time range.
            max_row_group_bytes: 128 << 20,
            // 1 MiB pages (the Parquet format's usual size) instead of parquet-rs' 20 000-row
            // cap: each page is compressed on its own, so longer pages give zstd more context
            // (1-7 % smaller files in the table above), while page statistics still let a
            // reader skip to a time range in steps of ~1 MiB.
            data_page_bytes: 1 << 20,
            // At most one second of a 30 kHz probe per page: Int16 delta-packed AP data
            // compresses so well that a 1 MiB page held a whole row group (~17 s), and a query
            // of one second decoded all of it; with the page index a time range now reads about
            // a second per column.
            data_page_rows: 30_000,
        }
    }
}

fn is_int16(col: &parquet::schema::types::ColumnDescriptor) -> bool {
    col.physical_type() == PhysicalType::INT32
        && matches!(
            col.logical_type_ref(),
            Some(LogicalType::Integer(int)) if int.bit_width == 16 && int.is_signed
        )
}

/// Writer properties for a schema: zstd everywhere; Int16 leaf columns (top-level channels or
/// nested, like frame pixels) in `opts.int16_encoding` without a dictionary (noisy ADC values
/// have thousands of distinct values, a dictionary only costs); `sample_index`/`frame_index` in
/// DELTA_BINARY_PACKED (a step of 1 packs to almost nothing). Other columns keep the defaults
/// (dictionary on, good for labels in event tables). Fails on a schema Parquet cannot store.
pub fn writer_properties(
    schema: &Schema,
    opts: &ParquetOptions,
) -> Result<WriterProperties, ParquetError> {
    let parquet_schema = ArrowSchemaConverter::new().convert(schema)?;
    let mut builder: WriterPropertiesBuilder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(opts.zstd_level)?))
        .set_max_row_group_bytes(Some(opts.max_row_group_bytes.max(1)))
        .set_data_page_size_limit(opts.data_page_bytes)
        .set_data_page_row_count_limit(opts.data_page_rows)
        .set_created_by(format!("neurod {}", env!("CARGO_PKG_VERSION")));
    for col in parquet_schema.columns() {
        let path: &ColumnPath = col.path();
        let top_level_index = path.parts().len() == 1
            && matches!(path.parts()[0].as_str(), SAMPLE_INDEX | FRAME_INDEX)
            && col.physical_type() == PhysicalType::INT64;
        if is_int16(col) {
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path.clone(), opts.int16_encoding.encoding());
        } else if top_level_index {
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path.clone(), Encoding::DELTA_BINARY_PACKED);
        } else if matches!(
            col.physical_type(),
            PhysicalType::FLOAT | PhysicalType::DOUBLE
        ) {
            // Measured values (amplitudes, times, dF/F) hardly repeat: a dictionary only grows
            // to its limit and falls back, making files larger and slower to decode.
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
        }
    }
    Ok(builder.build())
}

/// What one conversion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertStats {
    pub batches: usize,
    pub rows: u64,
    /// Bytes of the Arrow arrays converted (Int16 at 2 bytes a value, Int64 at 8, ...).
    pub raw_bytes: u64,
    /// Size of the Parquet file.
    pub parquet_bytes: u64,
    /// Bytes of a cut last message left out (see [`SegmentReader`]).
    pub discarded_bytes: u64,
    /// The stream id the segment's schema carries.
    pub stream_id: Option<String>,
}

impl ConvertStats {
    pub fn compression_ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.parquet_bytes.max(1) as f64
    }
}

/// Converts a segment (complete batches up to any cut) into the Parquet file `out`, written as
/// `.<name>.tmp` beside it, fsynced, atomically renamed, and the directory fsynced. The segment
/// is left in place. [`StoreError::NoCompleteBatch`] when it holds no complete batch (nothing is
/// written then).
pub fn convert_segment(
    segment: &Path,
    out: &Path,
    zstd_level: i32,
) -> Result<ConvertStats, StoreError> {
    let opts = ParquetOptions {
        zstd_level,
        ..ParquetOptions::default()
    };
    convert_segment_with(segment, out, &opts)
}

/// [`convert_segment`] with every Parquet setting given.
pub fn convert_segment_with(
    segment: &Path,
    out: &Path,
    opts: &ParquetOptions,
) -> Result<ConvertStats, StoreError> {
    let mut reader = SegmentReader::open(segment)?;
    let schema = reader.schema();
    let Some(first) = reader.next() else {
        let summary = reader.finish()?;
        return Err(StoreError::NoCompleteBatch {
            path: segment.to_path_buf(),
            discarded_bytes: summary.discarded_bytes,
        });
    };
    let props = writer_properties(&schema, opts)
        .map_err(|e| StoreError::parquet(out, "choosing writer properties", e))?;
    let tmp = tmp_path(out);
    let written = write_parquet(
        &tmp,
        &schema,
        props,
        std::iter::once(first).chain(&mut reader),
    )
    .and_then(|stats| {
        let summary = reader.finish()?;
        Ok(ConvertStats {
            discarded_bytes: summary.discarded_bytes,
            ..stats
        })
    });
    let stats = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(out, "renaming the finished file into place", e)
    })?;
    let dir = out.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(|e| StoreError::io(dir, "syncing directory", e))?;
    Ok(ConvertStats {
        stream_id: schema.metadata().get(keys::STREAM_ID).cloned(),
        ..stats
    })
}

/// Writes batches to a new Parquet file at `path` and fsyncs it.
fn write_parquet(
    path: &Path,
    schema: &arrow::datatypes::SchemaRef,
    props: WriterProperties,
    batches: impl Iterator<Item = RecordBatch>,
) -> Result<ConvertStats, StoreError> {
    let file = File::create(path).map_err(|e| StoreError::io(path, "creating", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut stats = ConvertStats {
        batches: 0,
        rows: 0,
        raw_bytes: 0,
        parquet_bytes: 0,
        discarded_bytes: 0,
        stream_id: None,
    };
    {
        let mut writer = ParquetWriter::try_new(&mut out, schema.clone(), props)
            .map_err(|e| StoreError::parquet(path, "starting the Parquet file", e))?;
        for batch in batches {
            writer
                .write(&batch)
                .map_err(|e| StoreError::parquet(path, "writing", e))?;
            stats.batches += 1;
            stats.rows += batch.num_rows() as u64;
            stats.raw_bytes += crate::metrics::batch_bytes(&batch);
        }
        writer
            .close()
            .map_err(|e| StoreError::parquet(path, "writing the footer", e))?;
    }
    out.flush()
        .map_err(|e| StoreError::io(path, "writing", e))?;
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(path, "writing", e.into_error()))?;
    file.sync_all()
        .map_err(|e| StoreError::io(path, "syncing", e))?;
    stats.parquet_bytes = file
        .metadata()
        .map_err(|e| StoreError::io(path, "reading size", e))?
        .len();
    Ok(stats)
}

/// The outcome of [`finish_segment`].
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// Converted into `part`; the segment is gone.
    Converted { part: PathBuf, stats: ConvertStats },
    /// The segment held no complete batch and was removed.
    Empty { discarded_bytes: u64 },
}

/// Converts a closed (or crash-cut) segment into the `part-<seq>.parquet` of the same sequence
/// number, then removes the segment. Run again after a crash at any point, it gives the same
/// result: the rename is atomic and a second conversion replaces the part with the same data.
pub fn finish_segment(segment: &Path, opts: &ParquetOptions) -> Result<Finished, StoreError> {
    let dir = segment.parent().unwrap_or(Path::new("."));
    let seq = segment
        .file_name()
        .and_then(|n| segment_seq(&n.to_string_lossy()))
        .ok_or_else(|| {
            StoreError::io(
                segment,
                "naming the Parquet file",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a `_segment-<seq>.arrows` file",
                ),
            )
        })?;
    let part = part_path(dir, seq);
    let outcome = match convert_segment_with(segment, &part, opts) {
        Ok(stats) => Finished::Converted { part, stats },
        Err(StoreError::NoCompleteBatch {
            discarded_bytes, ..
        }) => Finished::Empty { discarded_bytes },
        Err(e) => return Err(e),
    };
    std::fs::remove_file(segment).map_err(|e| StoreError::io(segment, "removing segment", e))?;
    sync_dir(dir).map_err(|e| StoreError::io(dir, "syncing directory", e))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::segment_path;
    use crate::storage::segment::SegmentWriter;
    use crate::storage::testdata::{concat, openephys_batches, read_parquet};
    use arrow::datatypes::SchemaRef;

    fn write_segment(path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) {
        let mut w = SegmentWriter::create(path, schema.clone()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn parquet_keeps_int16_values_and_all_metadata() {
        let Some((schema, batches, _)) = openephys_batches("oe", 4000) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 0);
        write_segment(&seg, &schema, &batches[..5]);
        let out = dir.path().join("part-000000.parquet");
        let stats = convert_segment(&seg, &out, 3).unwrap();
        assert_eq!(stats.batches, 5);
        assert_eq!(stats.rows, 20_000);
        assert_eq!(stats.raw_bytes, 20_000 * (8 + 16 * 2));
        assert_eq!(stats.stream_id.as_deref(), Some("oe"));
        assert_eq!(stats.parquet_bytes, std::fs::metadata(&out).unwrap().len());
        let (back_schema, back) = read_parquet(&out);
        assert_eq!(
            back_schema.fields(),
            schema.fields(),
            "field types and metadata"
        );
        for (k, v) in schema.metadata() {
            assert_eq!(
                back_schema.metadata().get(k),
                Some(v),
                "schema metadata {k}"
            );
        }
        assert_eq!(concat(&schema, &back), concat(&schema, &batches[..5]));
        assert!(seg.exists(), "convert_segment leaves the segment");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn finish_segment_replaces_the_segment_by_its_numbered_part() {
        let Some((schema, batches, _)) = openephys_batches("oe", 1000) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 12);
        write_segment(&seg, &schema, &batches[..3]);
        let Finished::Converted { part, stats } =
            finish_segment(&seg, &ParquetOptions::default()).unwrap()
        else {
            panic!("expected a conversion");
        };
        assert_eq!(part, dir.path().join("part-000012.parquet"));
        assert_eq!(stats.rows, 3000);
        assert!(!seg.exists());
    }

    /// Compares the Int16 encodings on real data; the default must be the best of them, and
    /// one-second pages (the default, for time-range queries) may cost at most 10 % over 1 MiB
    /// pages.
    #[test]
    fn int16_encodings_on_the_real_recording() {
        let Some((schema, batches, dat_bytes)) = openephys_batches("oe", 4000) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 0);
        write_segment(&seg, &schema, &batches);
        let expected = concat(&schema, &batches);
        let mut results = Vec::new();
        let pages_of = [
            ("20k-row pages", 20_000),
            ("1 s pages", 30_000),
            ("1 MiB pages", usize::MAX),
        ];
        for (pages, page_rows) in pages_of {
            for enc in Int16Encoding::ALL {
                let opts = ParquetOptions {
                    int16_encoding: enc,
                    data_page_rows: page_rows,
                    ..ParquetOptions::default()
                };
                let out = dir.path().join(format!("{enc:?}-{page_rows}.parquet"));
                let stats = convert_segment_with(&seg, &out, &opts).unwrap();
                let (_, back) = read_parquet(&out);
                assert_eq!(concat(&schema, &back), expected, "{enc:?} must be lossless");
                let vs_dat = dat_bytes as f64 / stats.parquet_bytes as f64;
                println!(
                    "{enc:>20?} {pages:>14}: {:>9} bytes, ratio {:.3} (Arrow) / {:.3} (.dat)",
                    stats.parquet_bytes,
                    stats.compression_ratio(),
                    vs_dat
                );
                results.push((enc, page_rows, stats.parquet_bytes));
            }
        }
        let defaults = ParquetOptions::default();
        let size = |enc: Int16Encoding, rows: usize| {
            results
                .iter()
                .find(|(e, r, _)| *e == enc && *r == rows)
                .map(|r| r.2)
                .unwrap()
        };
        let default_size = size(defaults.int16_encoding, defaults.data_page_rows);
        let best_here = Int16Encoding::ALL
            .iter()
            .map(|e| size(*e, defaults.data_page_rows))
            .min()
            .unwrap();
        assert_eq!(
            default_size, best_here,
            "the default encoding must be the smallest: {results:?}"
        );
        let long_pages = size(defaults.int16_encoding, usize::MAX);
        assert!(
            default_size as f64 <= 1.10 * long_pages as f64,
            "one-second pages cost {default_size} bytes against {long_pages}"
        );
    }
}
