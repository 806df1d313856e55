//! Layout changes between channel columns (Arrow's layout: one Int16 array per channel) and the
//! sample-major chunks the chain works on (`data[t * C + c]`), in cache-sized tiles: a channel
//! at a time would write one value per cache line of the output.
//!
//! With AVX2, tiles of 8 samples × 8 channels are transposed as Int16 in registers, then each
//! sample's 8 channels are widened to f32 and scaled at once (eight values per load and per
//! store); elsewhere tiles of 16 × 16 go through a local array. The
//! arithmetic is the scalar `raw as f32 * µV per bit` either way (the conversion is exact and the
//! product rounds once), so the result does not depend on the path.

/// A chunk as one Int16 column per channel, each holding the chunk's samples.
pub trait Columns {
    fn n_columns(&self) -> usize;
    /// Samples of the chunk; every column holds at least this many.
    fn rows(&self) -> usize;
    /// Column `channel < n_columns()`.
    fn column(&self, channel: usize) -> &[i16];
}

/// A slice of column slices (`&columns[..]`, passed as `&&columns[..]`).
impl Columns for &[&[i16]] {
    fn n_columns(&self) -> usize {
        self.len()
    }
    fn rows(&self) -> usize {
        self.first().map_or(0, |c| c.len())
    }
    fn column(&self, channel: usize) -> &[i16] {
        self[channel]
    }
}

/// `Some(rows)` when there are `n_channels` columns of at least `rows()` samples each.
pub fn check_columns(columns: &dyn Columns, n_channels: usize) -> Option<usize> {
    let rows = columns.rows();
    (columns.n_columns() == n_channels && (0..n_channels).all(|c| columns.column(c).len() >= rows))
        .then_some(rows)
}

/// Tile edge of the portable paths.
const WIDE: usize = 16;

/// Columns → sample-major Int16 (`out` is resized to `rows × n_columns`).
pub fn columns_to_rows(columns: &dyn Columns, out: &mut Vec<i16>) {
    let (c, n) = (columns.n_columns(), columns.rows());
    out.clear();
    out.resize(n * c, 0);
    let mut ch0 = 0;
    while ch0 + WIDE <= c {
        let cols: [&[i16]; WIDE] = std::array::from_fn(|j| columns.column(ch0 + j));
        let mut t0 = 0;
        // Whole 16 × 16 tiles through a local array: fixed bounds, no checks in the loops.
        while t0 + WIDE <= n {
            let mut tile = [[0i16; WIDE]; WIDE];
            for (line, col) in tile.iter_mut().zip(&cols) {
                if let Some(src) = col.get(t0..t0 + WIDE) {
                    line.copy_from_slice(src);
                }
            }
            for (k, row) in out[t0 * c..(t0 + WIDE) * c].chunks_exact_mut(c).enumerate() {
                for (j, d) in row[ch0..ch0 + WIDE].iter_mut().enumerate() {
                    *d = tile[j][k];
                }
            }
            t0 += WIDE;
        }
        for t in t0..n {
            for (d, col) in out[t * c + ch0..t * c + ch0 + WIDE].iter_mut().zip(&cols) {
                *d = col.get(t).copied().unwrap_or(0);
            }
        }
        ch0 += WIDE;
    }
    for ch in ch0..c {
        let col = columns.column(ch);
        for (row, v) in out.chunks_exact_mut(c).zip(col) {
            row[ch] = *v;
        }
    }
}

/// Columns → sample-major f32 µV, `out[t * C + c] = column(c)[t] as f32 * uv_per_bit[c]`, for
/// `rows()` samples of `C = uv_per_bit.len()` channels. `columns` must pass [`check_columns`] for
/// C, and `out` hold `rows × C` values (else this panics).
pub fn columns_to_microvolts(columns: &dyn Columns, uv_per_bit: &[f32], out: &mut [f32]) {
    let (c, n) = (uv_per_bit.len(), columns.rows());
    assert!(check_columns(columns, c).is_some() && out.len() == n * c);
    #[allow(unused_mut)]
    let mut ch0 = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        ch0 = unsafe { x86::to_microvolts_avx2(columns, uv_per_bit, out) };
    }
    while ch0 + WIDE <= c {
        let cols: [&[i16]; WIDE] = std::array::from_fn(|j| &columns.column(ch0 + j)[..n]);
        let k: [f32; WIDE] = std::array::from_fn(|j| uv_per_bit[ch0 + j]);
        let mut t0 = 0;
        while t0 + WIDE <= n {
            let mut tile = [[0f32; WIDE]; WIDE];
            for ((line, col), &k) in tile.iter_mut().zip(&cols).zip(&k) {
                for (d, &s) in line.iter_mut().zip(&col[t0..t0 + WIDE]) {
                    *d = s as f32 * k;
                }
            }
            for (i, row) in out[t0 * c..(t0 + WIDE) * c].chunks_exact_mut(c).enumerate() {
                for (j, d) in row[ch0..ch0 + WIDE].iter_mut().enumerate() {
                    *d = tile[j][i];
                }
            }
            t0 += WIDE;
        }
        for t in t0..n {
            for ((d, col), &k) in out[t * c + ch0..t * c + ch0 + WIDE]
                .iter_mut()
                .zip(&cols)
                .zip(&k)
            {
                *d = col[t] as f32 * k;
            }
        }
        ch0 += WIDE;
    }
    for ch in ch0..c {
        let k = uv_per_bit[ch];
        for (row, &s) in out.chunks_exact_mut(c).zip(&columns.column(ch)[..n]) {
            row[ch] = s as f32 * k;
        }
    }
}

/// Gathers `group`'s channels of sample-major `block` (whole samples of `n_channels`) into
/// columns: `columns[j * stride + offset + t] = block[t * n_channels + group[j]]`, NaN for a
/// channel `>= n_channels`. `columns` must hold them all (else this panics).
pub fn gather_columns(
    block: &[f32],
    n_channels: usize,
    group: &[usize],
    columns: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let rows = block.len() / n_channels;
    let mut j = 0;
    while j < group.len() {
        // Eight consecutive channels in range go through the vector path.
        #[cfg(target_arch = "x86_64")]
        if j + 8 <= group.len()
            && group[j] + 8 <= n_channels
            && (1..8).all(|i| group[j + i] == group[j] + i)
            && std::arch::is_x86_feature_detected!("avx2")
        {
            let dst = &mut columns[j * stride..(j + 7) * stride + offset + rows];
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { x86::gather8_avx2(block, n_channels, group[j], dst, stride, offset) };
            j += 8;
            continue;
        }
        let ch = group[j];
        let dst = &mut columns[j * stride + offset..j * stride + offset + rows];
        if ch < n_channels {
            for (d, row) in dst.iter_mut().zip(block.chunks_exact(n_channels)) {
                *d = row[ch];
            }
        } else {
            dst.fill(f32::NAN);
        }
        j += 1;
    }
}

/// 8 × 8 Int16 transpose in SSE2 registers (every x86-64 has them): lane i of output k is lane k
/// of input i. The source's de-interleave (`pipelines::stream`) and the chain's conversion to µV
/// both go through it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn transpose8_i16(r: [std::arch::x86_64::__m128i; 8]) -> [std::arch::x86_64::__m128i; 8] {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of every x86-64 CPU; these only shuffle lanes between registers.
    unsafe {
        let a = [
            _mm_unpacklo_epi16(r[0], r[1]),
            _mm_unpackhi_epi16(r[0], r[1]),
            _mm_unpacklo_epi16(r[2], r[3]),
            _mm_unpackhi_epi16(r[2], r[3]),
            _mm_unpacklo_epi16(r[4], r[5]),
            _mm_unpackhi_epi16(r[4], r[5]),
            _mm_unpacklo_epi16(r[6], r[7]),
            _mm_unpackhi_epi16(r[6], r[7]),
        ];
        let b = [
            _mm_unpacklo_epi32(a[0], a[2]),
            _mm_unpackhi_epi32(a[0], a[2]),
            _mm_unpacklo_epi32(a[1], a[3]),
            _mm_unpackhi_epi32(a[1], a[3]),
            _mm_unpacklo_epi32(a[4], a[6]),
            _mm_unpackhi_epi32(a[4], a[6]),
            _mm_unpacklo_epi32(a[5], a[7]),
            _mm_unpackhi_epi32(a[5], a[7]),
        ];
        [
            _mm_unpacklo_epi64(b[0], b[4]),
            _mm_unpackhi_epi64(b[0], b[4]),
            _mm_unpacklo_epi64(b[1], b[5]),
            _mm_unpackhi_epi64(b[1], b[5]),
            _mm_unpacklo_epi64(b[2], b[6]),
            _mm_unpackhi_epi64(b[2], b[6]),
            _mm_unpacklo_epi64(b[3], b[7]),
            _mm_unpackhi_epi64(b[3], b[7]),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Columns;
    use std::arch::x86_64::*;

    /// 8 × 8 transpose: lane i of output k is lane k of input i.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Asks for cache line `line` of `v`, if `v` has it.
    #[inline(always)]
    fn prefetch_line(v: &[i16], line: usize) {
        let at = line * (64 / std::mem::size_of::<i16>());
        if at < v.len() {
            // SAFETY: the address lies within `v`; a prefetch never faults anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(at).cast()) };
        }
    }

    /// The channels of whole groups of 8 (the caller does the rest); returns how many.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_microvolts_avx2(
        columns: &dyn Columns,
        uv_per_bit: &[f32],
        out: &mut [f32],
    ) -> usize {
        let (c, n) = (uv_per_bit.len(), columns.rows());
        let mut ch0 = 0;
        while ch0 + 8 <= c {
            let cols: [&[i16]; 8] = std::array::from_fn(|j| &columns.column(ch0 + j)[..n]);
            // The columns two groups ahead are short separate streams the hardware prefetcher
            // does not pick up in time: ask for one line of each per tile while this group is
            // converted (asking for all at once overruns the miss buffers). Batches out of cache,
            // 10 ms × 385 channels, one core: 0.37–0.40 against 0.46 ns per value.
            let ahead: [&[i16]; 8] = std::array::from_fn(|j| {
                let ch = ch0 + 16 + j;
                if ch < c {
                    columns.column(ch)
                } else {
                    &[]
                }
            });
            let mut tile = 0;
            // The 8 channels' µV per bit, in channel order: the lanes of each sample's row.
            let k = _mm256_loadu_ps(uv_per_bit[ch0..ch0 + 8].as_ptr());
            let mut t0 = 0;
            while t0 + 8 <= n {
                for a in &ahead {
                    prefetch_line(a, tile);
                }
                tile += 1;
                // 8 samples of each channel, transposed as Int16 (half the width of f32) into
                // 8 channels of each sample, then widened, converted and scaled row by row.
                let r: [__m128i; 8] = std::array::from_fn(|j| {
                    let src = &cols[j][t0..t0 + 8];
                    // SAFETY: `src` holds 8 i16 = 16 bytes; unaligned load.
                    unsafe { _mm_loadu_si128(src.as_ptr().cast()) }
                });
                for (i, row) in super::transpose8_i16(r).into_iter().enumerate() {
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(row)), k);
                    let dst = &mut out[(t0 + i) * c + ch0..(t0 + i) * c + ch0 + 8];
                    // SAFETY: `dst` holds 8 f32; unaligned store.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
                }
                t0 += 8;
            }
            for t in t0..n {
                for (j, col) in cols.iter().enumerate() {
                    out[t * c + ch0 + j] = col[t] as f32 * uv_per_bit[ch0 + j];
                }
            }
            ch0 += 8;
        }
        ch0
    }

    /// Channels `ch0..ch0 + 8` (all `< n_channels`) of `block` into `dst[j * stride + offset..]`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather8_avx2(
        block: &[f32],
        n_channels: usize,
        ch0: usize,
        dst: &mut [f32],
        stride: usize,
        offset: usize,
    ) {
        let rows = block.len() / n_channels;
        let mut t0 = 0;
        while t0 + 8 <= rows {
            let v: [__m256; 8] = std::array::from_fn(|i| {
                let src = &block[(t0 + i) * n_channels + ch0..(t0 + i) * n_channels + ch0 + 8];
                // SAFETY: `src` holds 8 f32; unaligned load.
                unsafe { _mm256_loadu_ps(src.as_ptr()) }
            });
            for (j, r) in transpose8(v).into_iter().enumerate() {
                let at = j * stride + offset + t0;
                let d = &mut dst[at..at + 8];
                // SAFETY: `d` holds 8 f32; unaligned store.
                unsafe { _mm256_storeu_ps(d.as_mut_ptr(), r) };
            }
            t0 += 8;
        }
        for t in t0..rows {
            for j in 0..8 {
                dst[j * stride + offset + t] = block[t * n_channels + ch0 + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(c: usize, n: usize) -> Vec<Vec<i16>> {
        (0..c)
            .map(|ch| {
                (0..n)
                    .map(|t| ((ch * 7919 + t * 104729) % 65536) as i32 as i16)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_path_matches_the_plain_loops() {
        for (c, n) in [
            (385, 300),
            (385, 30),
            (9, 7),
            (16, 16),
            (33, 17),
            (1, 5),
            (24, 1),
        ] {
            let cols = columns(c, n);
            let refs: Vec<&[i16]> = cols.iter().map(|v| v.as_slice()).collect();
            let uv: Vec<f32> = (0..c).map(|ch| 0.195 + ch as f32 * 0.37).collect();
            let mut rows = Vec::new();
            columns_to_rows(&refs.as_slice(), &mut rows);
            let mut uv_out = vec![0.0f32; n * c];
            columns_to_microvolts(&refs.as_slice(), &uv, &mut uv_out);
            for t in 0..n {
                for ch in 0..c {
                    assert_eq!(rows[t * c + ch], cols[ch][t], "({t}, {ch}) of {n} × {c}");
                    let want = cols[ch][t] as f32 * uv[ch];
                    assert_eq!(uv_out[t * c + ch].to_bits(), want.to_bits());
                }
            }
            // Gather: consecutive runs, a jump, and a channel out of range.
            let group: Vec<usize> = (0..c).chain((0..c.min(20)).rev()).chain([c + 3]).collect();
            let (stride, offset) = (n + 5, 2);
            let mut gathered = vec![0.0f32; group.len() * stride];
            gather_columns(&uv_out, c, &group, &mut gathered, stride, offset);
            for (j, &ch) in group.iter().enumerate() {
                for t in 0..n {
                    let got = gathered[j * stride + offset + t];
                    if ch < c {
                        assert_eq!(got.to_bits(), uv_out[t * c + ch].to_bits());
                    } else {
                        assert!(got.is_nan());
                    }
                }
            }
        }
    }
}
