//! The read buffer, the batches built from it, and the truncation report, shared by replay and
//! follow.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::buffer::ScalarBuffer;
use arrow::datatypes::SchemaRef;

use super::{Env, TRUNCATED_FILE};
use crate::batch::Batch;
use crate::buffer_pool::BufferPool;
use crate::component::{ComponentError, Output};

/// Reads the file straight into the buffer its next batch will hand on: the samples travel as
/// the file holds them (see [`crate::batch`]), so the bytes are copied once, by the kernel.
pub(super) struct Reader<'a> {
    pub(super) path: &'a Path,
    pub(super) file: File,
    pub(super) bps: usize,
    /// One batch of Int16 values, from the batches' pool.
    pub(super) buf: Vec<i16>,
    /// Bytes of `buf` holding data not yet emitted (whole samples, then at most a partial one).
    pub(super) filled: usize,
    /// Bytes read from the file so far.
    pub(super) offset: u64,
}

impl Reader<'_> {
    pub(super) fn io_error(&self, what: &str, e: io::Error) -> ComponentError {
        ComponentError::io(format!("{}: {what}", self.path.display()), e)
    }

    /// Reads into the free part of the buffer, at most `limit` bytes, until it is full, `limit`
    /// is reached or the file has no more bytes now. Returns the bytes read.
    pub(super) fn fill(&mut self, limit: u64) -> Result<usize, ComponentError> {
        let room =
            (self.capacity() - self.filled).min(usize::try_from(limit).unwrap_or(usize::MAX));
        let end = self.filled + room;
        let mut total = 0;
        while self.filled < end {
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut self.buf);
            match self.file.read(&mut buf[self.filled..end]) {
                Ok(0) => break,
                Ok(n) => {
                    self.filled += n;
                    self.offset += n as u64;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("cannot read", e)),
            }
        }
        Ok(total)
    }

    pub(super) fn whole_bytes(&self) -> usize {
        self.filled - self.filled % self.bps
    }

    pub(super) fn is_full(&self) -> bool {
        self.filled == self.capacity()
    }

    /// Bytes the buffer holds.
    fn capacity(&self) -> usize {
        std::mem::size_of_val(self.buf.as_slice())
    }

    /// The whole samples read and not yet emitted, as values, from the file's little-endian
    /// bytes. A partial sample after them moves to the front of a fresh buffer from `pool`.
    pub(super) fn take_whole(&mut self, pool: &BufferPool) -> Vec<i16> {
        let whole = self.whole_bytes();
        let rest = self.filled - whole;
        let mut next = pool.take(self.buf.len());
        let partial = &bytemuck::cast_slice::<i16, u8>(&self.buf)[whole..self.filled];
        bytemuck::cast_slice_mut::<i16, u8>(&mut next)[..rest].copy_from_slice(partial);
        let mut taken = std::mem::replace(&mut self.buf, next);
        self.filled = rest;
        // `bps` is even (Int16 channels), so `whole` is too.
        taken.truncate(whole / 2);
        if cfg!(target_endian = "big") {
            taken.iter_mut().for_each(|v| *v = i16::from_le(*v));
        }
        taken
    }

    pub(super) fn file_len(&self) -> Result<u64, ComponentError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io_error("cannot stat", e))
    }
}

/// Whether to keep going after sending a batch.
#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// Every consumer has stopped.
    Closed,
}

pub(super) struct BatchEmitter<'a> {
    pub(super) schema: SchemaRef,
    pub(super) path: &'a Path,
    /// `sample_index` this run started at (0, or where it resumed).
    pub(super) first_index: i64,
    /// `sample_index` of the next sample (0 at the file's first sample).
    pub(super) next_index: i64,
    /// The batches' buffers, reused once their consumers are done with them.
    pub(super) pool: Arc<BufferPool>,
}

impl BatchEmitter<'_> {
    /// Samples emitted by this run (the pacer's clock starts with the run).
    pub(super) fn samples_emitted(&self) -> u64 {
        (self.next_index - self.first_index) as u64
    }

    /// Sends the whole samples `reader` holds as one batch.
    pub(super) fn emit(
        &mut self,
        output: &mut Output,
        reader: &mut Reader,
    ) -> Result<Flow, ComponentError> {
        let values = reader.take_whole(&self.pool);
        let len = values.len();
        let values = ScalarBuffer::new(self.pool.share(values), 0, len);
        let batch = Batch::from_samples(&self.schema, self.next_index, values, &self.pool)
            .map_err(|e| {
                ComponentError::arrow(format!("{}: building a batch", self.path.display()), e)
            })?;
        self.next_index += batch.num_rows() as i64;
        match output.send(batch) {
            Ok(()) => Ok(Flow::Continue),
            Err(_) => Ok(Flow::Closed),
        }
    }
}

/// Counts and logs a file that ended before its last sample.
pub(super) fn report_truncated(
    ctx: &Env,
    path: &Path,
    expected: &str,
    actual_bytes: u64,
    emitter: &BatchEmitter,
    partial_bytes: u64,
) {
    let msg = truncation_message(
        path,
        expected,
        actual_bytes,
        emitter.next_index as u64,
        emitter.samples_emitted(),
        partial_bytes,
    );
    tracing::error!("source `{}`: {msg}", ctx.id);
    ctx.metrics.error(TRUNCATED_FILE, "reading", msg);
}

pub(super) fn truncation_message(
    path: &Path,
    expected: &str,
    actual_bytes: u64,
    end_index: u64,
    samples: u64,
    partial_bytes: u64,
) -> String {
    let end = match end_index {
        0 => "it holds no whole sample".to_string(),
        n => format!("the data ends after sample_index {}", n - 1),
    };
    let partial = if partial_bytes > 0 {
        format!(", a partial sample of {partial_bytes} bytes dropped")
    } else {
        String::new()
    };
    format!(
        "{}: truncated: expected {expected}, found {actual_bytes} bytes; {end} \
         ({samples} whole samples emitted{partial})",
        path.display()
    )
}
