//! Interleaved Int16 samples (the SpikeGLX `.bin` and Open Ephys `continuous.dat` layout) into
//! the continuous layout's Arrow channel columns.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int16Array, Int64Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::SAMPLE_INDEX;
use crate::buffer_pool::BufferPool;

/// Builds a continuous batch from interleaved little-endian Int16 samples (the SpikeGLX `.bin`
/// and Open Ephys `continuous.dat` layout). `bytes` must hold whole samples.
pub fn batch_from_interleaved(
    schema: &SchemaRef,
    first_index: i64,
    bytes: &[u8],
) -> Result<RecordBatch, ArrowError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{} bytes is not a whole number of Int16 values",
            bytes.len()
        )));
    }
    let mut values = Vec::new();
    samples_from_le_bytes(bytes, &mut values);
    batch_from_samples(schema, first_index, &values, &BufferPool::new())
}

/// Interleaved little-endian Int16 bytes as values, in `out` (a plain copy on little-endian
/// machines). A trailing odd byte is ignored.
pub fn samples_from_le_bytes<'a>(bytes: &[u8], out: &'a mut Vec<i16>) -> &'a [i16] {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]])),
    );
    out
}

/// The samples in `len` values of `schema`'s channels from `first_index` on, once they are
/// known to fit: `sample_index` (Int64) then Int16 channels, whole samples, and indices that do
/// not overflow. Whatever passes here, [`batch_from_samples`] turns into a batch.
pub fn samples_fitting(
    schema: &SchemaRef,
    first_index: i64,
    len: usize,
) -> Result<usize, ArrowError> {
    let bad = |why: String| Err(ArrowError::InvalidArgumentError(why));
    let fields = schema.fields();
    match fields.first() {
        Some(f) if f.name() == SAMPLE_INDEX && *f.data_type() == DataType::Int64 => {}
        _ => return bad(format!("column 0 must be `{SAMPLE_INDEX}` (Int64)")),
    }
    if let Some(f) = fields[1..]
        .iter()
        .find(|f| *f.data_type() != DataType::Int16)
    {
        return bad(format!("channel column `{}` is not Int16", f.name()));
    }
    let n_ch = fields.len() - 1;
    if n_ch == 0 || !len.is_multiple_of(n_ch) {
        return bad(format!(
            "{len} values is not a whole number of {n_ch}-channel samples"
        ));
    }
    let rows = len / n_ch;
    if first_index.checked_add(rows as i64).is_none() {
        return bad(format!("`{SAMPLE_INDEX}` overflows after {first_index}"));
    }
    Ok(rows)
}

/// Builds a continuous batch of `schema` (`sample_index`, then one Int16 column per channel)
/// from whole samples, sample-major (`values[t * C + c]`), into a buffer of `pool`, which gets
/// it back when the batch's last user drops it.
pub fn batch_from_samples(
    schema: &SchemaRef,
    first_index: i64,
    values: &[i16],
    pool: &Arc<BufferPool>,
) -> Result<RecordBatch, ArrowError> {
    let n = samples_fitting(schema, first_index, values.len())?;
    let n_ch = schema.fields().len() - 1;
    // One allocation for the whole batch, each channel's column a slice of it: a 385-channel
    // batch made 385 allocations and as many frees (the allocator took a fifth of an end-to-end
    // detection run).
    let mut columns = pool.take(n * n_ch);
    deinterleave_into(values, n_ch, &mut columns);
    let values = pool.share(columns);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(n_ch + 1);
    arrays.push(Arc::new(Int64Array::from_iter_values(
        first_index..first_index + n as i64,
    )));
    arrays.extend((0..n_ch).map(|c| {
        let column = ScalarBuffer::<i16>::new(values.clone(), c * n, n);
        Arc::new(Int16Array::new(column, None)) as ArrayRef
    }));
    RecordBatch::try_new(schema.clone(), arrays)
}

/// Samples per block of [`deinterleave`]: a block of a 385-channel probe is 193 KiB, which stays
/// in the L2 cache while each channel's values are gathered from it, and each column is then
/// written 512 bytes at a time. With 64-sample blocks (48 KiB, 128 bytes per column) the
/// de-interleave of 30 s of a 385-channel probe took 1.5–2× as long (0.13–0.19 s against
/// 0.07–0.10 s, one core, batches of 3000 samples): each block touches every column once.
const DEINTERLEAVE_BLOCK: usize = 256;

/// Whole samples of `n_ch` channels, sample-major, as columns, one after the other in one
/// vector (channel c's values at `c * n..(c + 1) * n`, n samples).
/// Cache-blocked: a block of samples stays in the cache while it is transposed, 8 samples × 8
/// channels at a time, so that each column is written 16 bytes at a time, where a
/// sample-by-sample loop writes to all columns at once and thrashes the cache and TLB with ~385
/// write streams (1.6× faster, `cargo bench -p pipelines --bench ingest_store`).
pub fn deinterleave(values: &[i16], n_ch: usize) -> Vec<i16> {
    let n = values.len().checked_div(n_ch).unwrap_or(0);
    let mut out = vec![0i16; n_ch * n];
    deinterleave_into(values, n_ch, &mut out);
    out
}

/// [`deinterleave`] into `out`, which holds `n_ch` × the whole samples in `values`.
pub fn deinterleave_into(values: &[i16], n_ch: usize, out: &mut [i16]) {
    let n = values.len().checked_div(n_ch).unwrap_or(0);
    if n == 0 {
        return;
    }
    for (b, block) in values[..n * n_ch]
        .chunks(n_ch * DEINTERLEAVE_BLOCK)
        .enumerate()
    {
        let base = b * DEINTERLEAVE_BLOCK;
        let rows = block.len() / n_ch;
        // Tiles of 8 samples × 8 channels in SSE2 registers (every x86-64 has it), the rest of
        // the channels and samples one value at a time.
        #[cfg(target_arch = "x86_64")]
        let (tiled_ch, tiled_rows) = sse2::tiles(block, n_ch, out, n, base);
        #[cfg(not(target_arch = "x86_64"))]
        let (tiled_ch, tiled_rows) = (0, 0);
        for (c, column) in out.chunks_exact_mut(n).enumerate() {
            let first = if c < tiled_ch { tiled_rows } else { 0 };
            let values = column[base + first..base + rows].iter_mut();
            for (v, sample) in values.zip(block.chunks_exact(n_ch).skip(first)) {
                *v = sample[c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// De-interleaves the whole 8 × 8 tiles of `block` (`rows` samples of `n_ch` channels)
    /// into `out` (columns of `n` values; the block's first sample is `base`).
    /// Returns the channels and samples covered: channels `0..ch`, samples `0..rows` of them.
    pub(super) fn tiles(
        block: &[i16],
        n_ch: usize,
        out: &mut [i16],
        n: usize,
        base: usize,
    ) -> (usize, usize) {
        let rows = block.len() / n_ch / 8 * 8;
        let ch = n_ch / 8 * 8;
        assert!(block.len() >= rows * n_ch && out.len() >= n_ch * n && base + rows <= n);
        for c0 in (0..ch).step_by(8) {
            for s in (0..rows).step_by(8) {
                // SAFETY: SSE2 is part of x86-64. Loads: sample s + k < rows, values
                // c0..c0 + 8 ≤ n_ch of it, all within `block` (asserted above). Stores:
                // column c0 + k < n_ch, values base + s..base + s + 8 ≤ n, within `out`.
                unsafe {
                    let src = block.as_ptr().add(s * n_ch + c0);
                    let r: [__m128i; 8] = std::array::from_fn(|k| {
                        _mm_loadu_si128(src.add(k * n_ch) as *const __m128i)
                    });
                    // Channel c0 + k's 8 samples.
                    let columns = kernels::columns::transpose8_i16(r);
                    for (k, v) in columns.iter().enumerate() {
                        let dst = out.as_mut_ptr().add((c0 + k) * n + base + s);
                        _mm_storeu_si128(dst as *mut __m128i, *v);
                    }
                }
            }
        }
        (ch, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deinterleave_equals_a_sample_by_sample_reading() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        // Sizes around and across block boundaries, channel counts of real probes and odd ones.
        let sizes = [
            (0, 385),
            (1, 1),
            (63, 385),
            (64, 385),
            (65, 3),
            (255, 385),
            (256, 385),
            (513, 9),
            (1000, 17),
            (130, 16),
        ];
        for (samples, n_ch) in sizes {
            let values: Vec<i16> = (0..samples * n_ch).map(|_| rng.random()).collect();
            let got = deinterleave(&values, n_ch);
            assert_eq!(got.len(), n_ch * samples);
            for c in 0..n_ch {
                let column = &got[c * samples..(c + 1) * samples];
                for (s, v) in column.iter().enumerate() {
                    assert_eq!(*v, values[s * n_ch + c], "{s} {c}");
                }
            }
        }
    }
}
