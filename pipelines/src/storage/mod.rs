//! The storage layer under the `store` sink: append-only Arrow IPC segments that survive a crash,
//! their conversion to Parquet, and the recovery of whatever a crash left behind.
//!
//! On disk, one directory per stream (see [`layout`] for the names):
//!
//! ```text
//! <store dir>/
//!   <stream dir>/                   the stream id, reversibly escaped (see [`layout::stream_dir_name`])
//!     _manifest.json                what the directory holds (see [`manifest`])
//!     part-000000.parquet           finished, immutable; readable by pyarrow / DataFusion
//!     part-000001.parquet
//!     _segment-000002.arrows        the live segment (Arrow IPC stream), fsynced every flush
//!     .part-000001.parquet.tmp      a conversion in progress (renamed when complete)
//! ```
//!
//! A segment and the Parquet file made from it share their sequence number. Every file a reader
//! sees without a `_` or `.` prefix is complete: Parquet files appear by atomic rename only.

pub mod catalog;
pub mod convert;
mod int16_delta;
pub mod layout;
pub mod manifest;
pub mod parquet_writer;
pub mod recover;
pub mod segment;

use std::path::{Path, PathBuf};

pub use catalog::{
    foreign_stream, held, held_index, is_stream_dir, list_data_dir, list_path, list_store,
    open_parquet, open_parquet_batched, open_parquet_columns, Held, ResumeLookup, StoredFile,
    StoredReader, StoredStream,
};
pub use convert::{
    convert_segment, convert_segment_with, finish_segment, writer_properties, ConvertStats,
    Finished, Int16Encoding, ParquetOptions,
};
pub use manifest::{refresh_manifest, FileEntry, Manifest, SchemaJson};
pub use recover::{recover, recover_with, RecoveryReport};
pub use segment::{SegmentReader, SegmentWriter};

/// A storage failure, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {op}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{}: {op}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: no complete record batch ({discarded_bytes} bytes discarded)", path.display())]
    NoCompleteBatch { path: PathBuf, discarded_bytes: u64 },
}

impl StoreError {
    pub fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
    pub(crate) fn arrow(path: &Path, op: &'static str, source: arrow::error::ArrowError) -> Self {
        StoreError::Arrow {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
    pub(crate) fn parquet(
        path: &Path,
        op: &'static str,
        source: parquet::errors::ParquetError,
    ) -> Self {
        StoreError::Parquet {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
    /// The `error_type` label for the metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            // A full disk is told apart: it needs space, not repair, and storing resumes by itself.
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                "disk_full"
            }
            StoreError::Io { .. } => "io",
            StoreError::Arrow { .. } => "arrow",
            StoreError::Parquet { .. } => "parquet",
            StoreError::NoCompleteBatch { .. } => "truncated_segment",
        }
    }
}

/// Test data shared by the storage and sink tests.
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::PathBuf;

    use arrow::datatypes::SchemaRef;
    use arrow::record_batch::RecordBatch;

    use crate::stream::{batch_from_interleaved, ChannelInfo, ChannelKind, ContinuousInfo};

    /// The Open Ephys example recording: 16 channels of Int16 at 40 kHz, interleaved.
    pub fn openephys_dat() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
            "../../shared/data/openephys-16ch-40khz/experiment1/recording1/continuous/\
             File_Reader-100.example_data/continuous.dat",
        )
    }

    /// The recording as a continuous stream cut in batches of `samples_per_batch`, and the size
    /// of the `.dat` it came from; `None` (said loudly) when the data is absent, a failure under CI.
    pub fn openephys_batches(
        stream_id: &str,
        samples_per_batch: usize,
    ) -> Option<(SchemaRef, Vec<RecordBatch>, u64)> {
        let path = openephys_dat();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{}: {e} (required under CI)",
                    path.display()
                );
                eprintln!(
                    "\n!!!!! SKIPPED: real recording {} is missing: {e} !!!!!\n",
                    path.display()
                );
                return None;
            }
        };
        let info = ContinuousInfo {
            stream_id: stream_id.into(),
            stream_kind: "openephys".into(),
            sampling_hz_text: "40000.0".into(),
            sampling_hz: 40000.0,
            first_sample: 0,
            probe: None,
            channels: (1..=16)
                .map(|i| ChannelInfo {
                    name: format!("CH{i}"),
                    kind: ChannelKind::Analog,
                    uv_per_bit: Some(0.05000000074505806),
                    x_um: None,
                    y_um: None,
                    shank: None,
                })
                .collect(),
        };
        let schema = info.schema();
        let stride = info.bytes_per_sample() * samples_per_batch;
        let whole = bytes.len() - bytes.len() % info.bytes_per_sample();
        let batches = bytes[..whole]
            .chunks(stride)
            .enumerate()
            .map(|(i, chunk)| {
                batch_from_interleaved(&schema, (i * samples_per_batch) as i64, chunk).unwrap()
            })
            .collect();
        Some((schema, batches, bytes.len() as u64))
    }

    /// Every batch of a Parquet file, read with the parquet crate's Arrow reader, and its schema.
    pub fn read_parquet(path: &std::path::Path) -> (SchemaRef, Vec<RecordBatch>) {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = std::fs::File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let schema = builder.schema().clone();
        let batches = builder
            .build()
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (schema, batches)
    }

    /// All rows of some batches as one batch (batch boundaries differ between Arrow and Parquet).
    pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(schema, batches).unwrap()
    }
}
