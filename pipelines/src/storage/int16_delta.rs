//! DELTA_BINARY_PACKED pages of Int16 values, the store's raw samples. parquet-rs' encoder is
//! generic (64-bit deltas, one value at a time through a bit writer) and took a third of a
//! probe's store time; this one packs each miniblock with its bit width known at compile time.
//! Its bytes are parquet-rs' own (`parquet_writer`'s tests compare them), so every Parquet
//! reader decodes them.
//!
//! Layout (parquet-format, Encodings.md): a header `<block size> <miniblocks per block> <value
//! count> <first value>` (ULEB128, the first value zigzag), then for each block of up to 128
//! deltas: the smallest delta (zigzag ULEB128), one bit-width byte per miniblock, and each
//! miniblock's 32 `delta - min` packed LSB first. Miniblocks past the last delta have width 0
//! and no bytes; the last one holding deltas is padded with zeros to 32.

/// Values per block, and miniblocks per block: parquet-rs' and Arrow C++'s choice.
const BLOCK: usize = 128;
const MINIBLOCKS: usize = 4;
const MINI: usize = BLOCK / MINIBLOCKS;

/// Appends the DELTA_BINARY_PACKED encoding of `values` (one page) to `out`.
pub fn encode(values: &[i16], out: &mut Vec<u8>) {
    uleb(out, BLOCK as u64);
    uleb(out, MINIBLOCKS as u64);
    uleb(out, values.len() as u64);
    uleb(out, zigzag(values.first().copied().unwrap_or(0).into()));
    // Deltas of Int16 lie in ±65 535 and `delta - min` below 2^17: i32/u32 never overflow.
    let mut deltas = [0i32; BLOCK];
    let count = values.len().saturating_sub(1);
    for start in (0..count).step_by(BLOCK) {
        let n = BLOCK.min(count - start);
        for (d, pair) in deltas.iter_mut().zip(values[start..=start + n].windows(2)) {
            *d = i32::from(pair[1]) - i32::from(pair[0]);
        }
        let min = deltas[..n].iter().copied().min().unwrap_or(0);
        uleb(out, zigzag(min.into()));
        let widths_at = out.len();
        out.extend_from_slice(&[0; MINIBLOCKS]);
        for (m, mini) in deltas[..n].chunks(MINI).enumerate() {
            let mut packed = [0u32; MINI];
            for (p, &d) in packed.iter_mut().zip(mini) {
                *p = d.abs_diff(min);
            }
            let width = 32 - packed.iter().fold(0, |a, &p| a | p).leading_zeros();
            out[widths_at + m] = width as u8;
            pack(&packed, width, out);
        }
    }
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Packs 32 values of `width` bits (all below 2^width) LSB first: `4 * width` bytes.
fn pack(values: &[u32; MINI], width: u32, out: &mut Vec<u8>) {
    macro_rules! widths {
        ($($w:literal)*) => {
            match width {
                $($w => pack_width::<$w>(values, out),)*
                _ => pack_width::<32>(values, out),
            }
        };
    }
    widths!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
}

/// With `W` a constant the loop unrolls into fixed shifts.
#[inline(always)]
fn pack_width<const W: u32>(values: &[u32; MINI], out: &mut Vec<u8>) {
    let mut words = [0u32; MINI];
    let (mut acc, mut bits, mut k) = (0u64, 0u32, 0usize);
    for &v in values {
        acc |= u64::from(v) << bits;
        bits += W;
        if bits >= 32 {
            words[k] = acc as u32;
            k += 1;
            acc >>= 32;
            bits -= 32;
        }
    }
    for w in &words[..W as usize] {
        out.extend_from_slice(&w.to_le_bytes());
    }
}
