//! What travels on an edge: an Arrow [`RecordBatch`], or a continuous stream's samples as a file
//! source read them (whole samples, sample-major Int16) with the Arrow columns built once, on the
//! thread of the first consumer that asks for them.
//!
//! The detection chain takes samples sample-major, so `spike_detect` fed by a file source never
//! builds the columns, and a store fed by one builds them on its own thread instead of the
//! acquisition's. Building the columns and the chain's conversion back to rows were a fifth of
//! an end-to-end detection run.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::buffer::ScalarBuffer;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::buffer_pool::BufferPool;
use crate::metrics::batch_bytes;
use crate::stream::{batch_from_samples, samples_fitting};

/// A batch on an edge; cloning it is cheap (one reference count).
#[derive(Clone)]
pub struct Batch(Arc<Inner>);

struct Inner {
    schema: SchemaRef,
    rows: usize,
    /// Arrow bytes, as [`batch_bytes`] counts them (known without building the columns).
    bytes: u64,
    samples: Option<Samples>,
    columns: OnceLock<RecordBatch>,
}

struct Samples {
    first_index: i64,
    values: ScalarBuffer<i16>,
    /// Where the columns' buffer comes from (and goes back to).
    pool: Arc<BufferPool>,
}

/// A continuous batch's samples, sample-major (`values[t * n_channels + c]`), sample `t` being
/// `sample_index` `first_index + t`.
#[derive(Debug, Clone, Copy)]
pub struct SampleRows<'a> {
    pub first_index: i64,
    pub n_channels: usize,
    pub values: &'a [i16],
}

impl Batch {
    /// A continuous batch of `schema` (`sample_index` Int64, then Int16 channels) from whole
    /// samples, sample-major, starting at `first_index`. `pool` provides the columns' buffer if
    /// a consumer asks for them. Errors name what does not fit.
    pub fn from_samples(
        schema: &SchemaRef,
        first_index: i64,
        values: ScalarBuffer<i16>,
        pool: &Arc<BufferPool>,
    ) -> Result<Self, ArrowError> {
        let rows = samples_fitting(schema, first_index, values.len())?;
        let n_channels = schema.fields().len() - 1;
        Ok(Batch(Arc::new(Inner {
            schema: schema.clone(),
            rows,
            bytes: (rows * (8 + 2 * n_channels)) as u64,
            samples: Some(Samples {
                first_index,
                values,
                pool: pool.clone(),
            }),
            columns: OnceLock::new(),
        })))
    }

    pub fn schema_ref(&self) -> &SchemaRef {
        &self.0.schema
    }

    pub fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    pub fn num_rows(&self) -> usize {
        self.0.rows
    }

    /// Arrow bytes of the batch ([`batch_bytes`]), whether or not its columns are built.
    pub fn bytes(&self) -> u64 {
        self.0.bytes
    }

    /// The samples as the source read them, for a batch made by [`Batch::from_samples`].
    pub fn sample_rows(&self) -> Option<SampleRows<'_>> {
        self.0.samples.as_ref().map(|s| SampleRows {
            first_index: s.first_index,
            n_channels: self.0.schema.fields().len() - 1,
            values: &s.values,
        })
    }

    /// First and last `sample_index` of a batch made from samples (without building columns).
    pub fn sample_index_ends(&self) -> Option<(i64, i64)> {
        let s = self.0.samples.as_ref()?;
        (self.0.rows > 0).then(|| (s.first_index, s.first_index + self.0.rows as i64 - 1))
    }

    /// The Arrow batch, built on the first call for a batch made from samples.
    pub fn record_batch(&self) -> &RecordBatch {
        self.0.columns.get_or_init(|| {
            let s = self
                .0
                .samples
                .as_ref()
                .expect("a batch without samples is made with its columns");
            // `from_samples` checked the samples with `samples_fitting`, as this does.
            batch_from_samples(&self.0.schema, s.first_index, &s.values, &s.pool)
                .expect("the samples' shape was checked when the batch was made")
        })
    }

    pub fn into_record_batch(self) -> RecordBatch {
        self.record_batch().clone()
    }

    /// Whether the Arrow columns exist (always, for a batch made from a [`RecordBatch`]).
    pub fn has_columns(&self) -> bool {
        self.0.columns.get().is_some()
    }

    /// The same batch holding its columns only, once they are built and it still holds the
    /// samples too: for a holder that keeps it long (the hub's retention), so that it keeps one
    /// copy of the data rather than two. `None` when there is nothing to drop.
    pub fn columns_only(&self) -> Option<Batch> {
        let columns = self.0.columns.get()?;
        self.0.samples.as_ref()?;
        Some(Batch::from(columns.clone()))
    }

    /// Whether both are the same batch (clones of one another).
    pub fn ptr_eq(&self, other: &Batch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<RecordBatch> for Batch {
    fn from(batch: RecordBatch) -> Self {
        Batch(Arc::new(Inner {
            schema: batch.schema(),
            rows: batch.num_rows(),
            bytes: batch_bytes(&batch),
            samples: None,
            columns: OnceLock::from(batch),
        }))
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("stream", &crate::stream::stream_id_of(&self.0.schema))
            .field("rows", &self.0.rows)
            .field("samples", &self.0.samples.is_some())
            .field("columns", &self.has_columns())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{batch_from_interleaved, SAMPLE_INDEX};
    use arrow::datatypes::DataType;

    fn schema(channels: usize) -> SchemaRef {
        crate::sources::raw_file::tests::info(channels, 30000.0).schema()
    }

    #[test]
    fn samples_give_the_columns_of_the_interleaved_file_once() {
        let s = schema(11);
        let values: Vec<i16> = (0..11 * 300).map(|v| (v * 7 - 5000) as i16).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let pool = BufferPool::new();
        let b = Batch::from_samples(&s, 40, ScalarBuffer::from(values.clone()), &pool).unwrap();
        assert!(!b.has_columns());
        assert_eq!(
            (b.num_rows(), b.sample_index_ends()),
            (300, Some((40, 339)))
        );
        let rows = b.sample_rows().unwrap();
        assert_eq!((rows.first_index, rows.n_channels), (40, 11));
        assert_eq!(rows.values, &values[..]);
        let expected = batch_from_interleaved(&s, 40, &bytes).unwrap();
        assert_eq!(b.bytes(), batch_bytes(&expected));
        assert!(!b.has_columns(), "nothing above builds them");
        let copy = b.clone();
        assert!(b.columns_only().is_none(), "no columns to keep yet");
        assert_eq!(b.record_batch(), &expected);
        assert!(copy.has_columns(), "built once, for every holder");
        assert!(std::ptr::eq(b.record_batch(), copy.record_batch()));
        assert!(b.ptr_eq(&copy));
        let kept = b.columns_only().unwrap();
        assert!(kept.sample_rows().is_none() && !kept.ptr_eq(&b));
        assert_eq!((kept.record_batch(), kept.bytes()), (&expected, b.bytes()));
    }

    #[test]
    fn a_record_batch_is_kept_as_it_is() {
        let s = schema(2);
        let rb = batch_from_interleaved(&s, 0, &[1, 0, 2, 0, 3, 0, 4, 0]).unwrap();
        let b = Batch::from(rb.clone());
        assert!(b.has_columns() && b.sample_rows().is_none() && b.columns_only().is_none());
        assert_eq!((b.num_rows(), b.bytes()), (2, batch_bytes(&rb)));
        assert_eq!(b.into_record_batch(), rb);
    }

    #[test]
    fn samples_that_do_not_fit_the_schema_are_refused() {
        let pool = BufferPool::new();
        let three = ScalarBuffer::from(vec![1i16, 2, 3]);
        let e = Batch::from_samples(&schema(2), 0, three.clone(), &pool).unwrap_err();
        assert!(e.to_string().contains("3 values"), "{e}");
        let e = Batch::from_samples(&schema(3), i64::MAX, three, &pool).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let no_index = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("AP0", DataType::Int16, false),
        ]));
        let e = Batch::from_samples(&no_index, 0, ScalarBuffer::from(vec![1i16]), &pool);
        assert!(e.unwrap_err().to_string().contains(SAMPLE_INDEX));
    }
}
