//! Segments: the live, append-only Arrow IPC stream of one stream directory.
//!
//! A segment is written one batch at a time and fsynced by the caller at each flush, so after
//! `kill -9` or a power cut it holds every flushed batch, maybe followed by part of one message.
//! [`SegmentReader`] reads complete batches until the first incomplete one and reports how many
//! bytes it had to leave behind.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use super::StoreError;

/// Collects the bytes the IPC writer produces for one message, so they reach the file in one
/// `write_all` (a few syscalls per batch instead of several per column) and a failed write can be
/// cut back to the previous message boundary. Unlike `BufWriter`, dropping it writes nothing.
struct MessageBuffer {
    file: File,
    buf: Vec<u8>,
}

impl Write for MessageBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer of one segment file.
pub struct SegmentWriter {
    path: PathBuf,
    schema: SchemaRef,
    writer: StreamWriter<MessageBuffer>,
    /// File length, always at the end of a complete message.
    len: u64,
    batches: usize,
    unsynced: bool,
    opened: Instant,
}

impl SegmentWriter {
    /// Creates the file (never overwriting one) and writes the schema message.
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "creating segment", e))?;
        let buffer = MessageBuffer {
            file,
            buf: Vec::new(),
        };
        let writer = StreamWriter::try_new(buffer, &schema)
            .map_err(|e| StoreError::arrow(path, "encoding the schema", e))?;
        let mut segment = SegmentWriter {
            path: path.to_path_buf(),
            schema,
            writer,
            len: 0,
            batches: 0,
            unsynced: false,
            opened: Instant::now(),
        };
        segment.commit()?;
        Ok(segment)
    }

    /// Writes the buffered message to the file; returns its length. On failure the file is cut
    /// back to the last complete message (best effort: a reader stops at a partial one anyway).
    fn commit(&mut self) -> Result<u64, StoreError> {
        let sink = self.writer.get_mut();
        if sink.buf.is_empty() {
            return Ok(0);
        }
        let n = sink.buf.len() as u64;
        let result = sink.file.write_all(&sink.buf);
        sink.buf.clear();
        match result {
            Ok(()) => {
                self.len += n;
                self.unsynced = true;
                Ok(n)
            }
            Err(e) => {
                let _ = sink.file.set_len(self.len);
                let _ = sink.file.seek(SeekFrom::Start(self.len));
                Err(StoreError::io(&self.path, "writing segment", e))
            }
        }
    }

    /// Appends one batch (whose schema must be the segment's); returns the bytes written.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<u64, StoreError> {
        if let Err(e) = self.writer.write(batch) {
            self.writer.get_mut().buf.clear();
            return Err(StoreError::arrow(&self.path, "encoding a batch", e));
        }
        let n = self.commit()?;
        self.batches += 1;
        Ok(n)
    }

    /// Makes everything written so far durable (`fdatasync`). A no-op when nothing is new.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.writer
                .get_ref()
                .file
                .sync_data()
                .map_err(|e| StoreError::io(&self.path, "syncing segment", e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Writes the end-of-stream marker and syncs; returns the marker's length.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        self.writer
            .finish()
            .map_err(|e| StoreError::arrow(&self.path, "ending the stream", e))?;
        let n = self.commit()?;
        self.sync()?;
        Ok(n)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }
    pub fn batches(&self) -> usize {
        self.batches
    }
    pub fn opened(&self) -> Instant {
        self.opened
    }
    pub fn has_unsynced_data(&self) -> bool {
        self.unsynced
    }
}

/// Counts the bytes the IPC reader consumed, to know where the last complete message ended.
struct CountingReader<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// What reading a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub batches: usize,
    /// Bytes after the last complete message that were not a clean end-of-stream marker: the
    /// partial message a crash cut (0 for a segment that was closed or flushed cleanly).
    pub discarded_bytes: u64,
}

/// Reads the complete batches of a segment, stopping quietly at a cut; see [`Self::finish`].
pub struct SegmentReader {
    path: PathBuf,
    reader: StreamReader<CountingReader<BufReader<File>>>,
    file_len: u64,
    /// Offset just after the last complete message.
    good_end: u64,
    batches: usize,
    done: bool,
    stop: Option<ArrowError>,
}

impl SegmentReader {
    /// Opens a segment and reads its schema. A file cut inside its schema message has no
    /// complete batch: [`StoreError::NoCompleteBatch`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|e| StoreError::io(path, "opening segment", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| StoreError::io(path, "reading segment size", e))?
            .len();
        let counting = CountingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            consumed: 0,
        };
        let reader = match StreamReader::try_new(counting, None) {
            Ok(r) => r,
            Err(ArrowError::IoError(_, e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                return Err(StoreError::io(path, "reading segment", e))
            }
            Err(_) => {
                return Err(StoreError::NoCompleteBatch {
                    path: path.to_path_buf(),
                    discarded_bytes: file_len,
                })
            }
        };
        let good_end = reader.get_ref().consumed;
        Ok(SegmentReader {
            path: path.to_path_buf(),
            reader,
            file_len,
            good_end,
            batches: 0,
            done: false,
            stop: None,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.reader.schema()
    }

    /// How the reading ended. An error only if the disk failed (the file is then not a cut
    /// segment and must be kept).
    pub fn finish(self) -> Result<SegmentSummary, StoreError> {
        let clean_end = self.stop.is_none();
        let consumed = self.reader.get_ref().consumed;
        if let Some(ArrowError::IoError(_, io)) = self.stop {
            if io.kind() != io::ErrorKind::UnexpectedEof {
                return Err(StoreError::io(&self.path, "reading segment", io));
            }
        }
        let tail = self.file_len.saturating_sub(self.good_end);
        // A clean end consumed an end-of-stream marker: 0xFFFFFFFF 0x00000000, or the legacy
        // 4-byte 0x00000000. Anything else after the last message is a cut message.
        let marker = consumed.saturating_sub(self.good_end);
        let discarded = if clean_end && (marker == 8 || marker == 4) {
            tail - marker.min(tail)
        } else {
            tail
        };
        Ok(SegmentSummary {
            batches: self.batches,
            discarded_bytes: discarded,
        })
    }
}

impl Iterator for SegmentReader {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        if self.done {
            return None;
        }
        match self.reader.next() {
            Some(Ok(batch)) => {
                self.good_end = self.reader.get_ref().consumed;
                self.batches += 1;
                Some(batch)
            }
            Some(Err(e)) => {
                self.done = true;
                self.stop = Some(e);
                None
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int16Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, start: i64, rows: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(start..start + rows)),
                Arc::new(Int16Array::from_iter_values(
                    (start..start + rows).map(|v| (v * 7 % 1000) as i16),
                )),
            ],
        )
        .unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("c0", DataType::Int16, false),
        ]))
    }

    #[test]
    fn closed_segment_reads_back_with_nothing_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_segment-000000.arrows");
        let s = schema();
        let mut w = SegmentWriter::create(&path, s.clone()).unwrap();
        let after_schema = w.len();
        for i in 0..3 {
            w.write(&batch(&s, i * 10, 10)).unwrap();
        }
        w.sync().unwrap();
        let eos = w.finish().unwrap();
        assert_eq!(eos, 8);
        assert!(after_schema > 0);
        let mut r = SegmentReader::open(&path).unwrap();
        let got: Vec<RecordBatch> = r.by_ref().collect();
        assert_eq!(
            got,
            (0..3).map(|i| batch(&s, i * 10, 10)).collect::<Vec<_>>()
        );
        assert_eq!(
            r.finish().unwrap(),
            SegmentSummary {
                batches: 3,
                discarded_bytes: 0
            }
        );
    }

    #[test]
    fn segment_cut_inside_its_schema_has_no_complete_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrows");
        let w = SegmentWriter::create(&path, schema()).unwrap();
        let len = w.len();
        drop(w);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        match SegmentReader::open(&path) {
            Err(StoreError::NoCompleteBatch {
                discarded_bytes, ..
            }) => assert_eq!(discarded_bytes, len - 3),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a cut schema must not open"),
        }
    }
}
