//! A check of a TIFF's first directory before the `tiff` crate reads it.
//!
//! `tiff::decoder::Decoder::new` reads the first directory with the crate's default limits
//! (`Decoder::with_limits` applies only after it): one entry claiming 10 million offsets makes
//! it reserve 256 MiB, from a file of a few hundred bytes. Here every entry's values must fit
//! in the file, which a real TIFF's always do; the decoder's own limits (set from the file's
//! size) cover the directories it reads later.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use tiff::decoder::{Decoder, Limits};

/// Opens a TIFF for decoding, its first directory checked first. A strip's compressed bytes and
/// a tag's values are read whole, and neither can be larger than the file (the crate's defaults,
/// 128 and 256 MiB, let a few bytes of header claim that much); a whole image decoded by the
/// crate (`read_image`) may hold at most `max_decoded` bytes.
pub fn open_decoder(path: &Path, max_decoded: usize) -> Result<Decoder<BufReader<File>>, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let on_disk = file
        .metadata()
        .map_err(|e| format!("cannot open: {e}"))?
        .len();
    check_first_directory(&mut file, on_disk).map_err(|e| format!("cannot read: {e}"))??;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut limits = Limits::default();
    limits.intermediate_buffer_size = (on_disk as usize).max(16 << 20);
    limits.decoding_buffer_size = max_decoded.max(16 << 20);
    Decoder::new(BufReader::new(file))
        .map(|d| d.with_limits(limits))
        .map_err(|e| format!("no readable TIFF header and first page: {e}"))
}

/// Bytes per value of each TIFF field type (0: unknown type, whose values the crate skips).
fn type_size(field_type: u16) -> u64 {
    match field_type {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => 0,
    }
}

/// `Err(why)` if an entry of the first directory claims more value bytes than the file has.
/// A file too short or not a TIFF passes: the decoder reports those itself.
fn check_first_directory<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
) -> io::Result<Result<(), String>> {
    let mut header = [0u8; 16];
    r.seek(SeekFrom::Start(0))?;
    if r.read(&mut header)? < 16 {
        return Ok(Ok(()));
    }
    let little = match &header[..2] {
        b"II" => true,
        b"MM" => false,
        _ => return Ok(Ok(())),
    };
    let u16_at = |b: &[u8]| {
        let a = [b[0], b[1]];
        if little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let u64_at = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    };
    let (big, first) = match u16_at(&header[2..]) {
        42 => (false, u64::from(u32_at(&header[4..]))),
        43 => (true, u64_at(&header[8..])),
        _ => return Ok(Ok(())),
    };
    let (count_bytes, entry_bytes) = if big { (8, 20) } else { (2, 12) };
    if first.saturating_add(count_bytes) > file_len {
        return Ok(Ok(()));
    }
    r.seek(SeekFrom::Start(first))?;
    let mut count = [0u8; 8];
    r.read_exact(&mut count[..count_bytes as usize])?;
    let entries = if big {
        u64_at(&count)
    } else {
        u64::from(u16_at(&count))
    };
    // Only the entries the file holds: a cut directory is the decoder's error to report.
    let available = (file_len - first - count_bytes) / entry_bytes;
    let mut entry = [0u8; 20];
    for _ in 0..entries.min(available) {
        r.read_exact(&mut entry[..entry_bytes as usize])?;
        let tag = u16_at(&entry);
        let size = type_size(u16_at(&entry[2..]));
        let n = if big {
            u64_at(&entry[4..])
        } else {
            u64::from(u32_at(&entry[4..]))
        };
        let bytes = n.saturating_mul(size);
        if bytes > file_len {
            return Ok(Err(format!(
                "TIFF tag {tag} claims {n} values ({bytes} bytes) in a file of {file_len} bytes"
            )));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A little-endian classic TIFF whose first directory has one entry.
    fn one_entry(field_type: u16, count: u32) -> Vec<u8> {
        let mut b = b"II".to_vec();
        b.extend(42u16.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(1u16.to_le_bytes());
        b.extend(273u16.to_le_bytes()); // StripOffsets
        b.extend(field_type.to_le_bytes());
        b.extend(count.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // no next directory
        b
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        check_first_directory(&mut Cursor::new(bytes), bytes.len() as u64).unwrap()
    }

    #[test]
    fn an_entry_claiming_more_than_the_file_is_refused_naming_the_tag() {
        let e = check(&one_entry(4, 10_000_000)).unwrap_err();
        assert!(e.contains("tag 273") && e.contains("10000000"), "{e}");
        assert!(check(&one_entry(4, 1)).is_ok());
    }

    #[test]
    fn what_is_not_a_tiff_or_is_cut_is_left_to_the_decoder() {
        assert!(check(b"").is_ok());
        assert!(check(b"GIF89a and some more bytes").is_ok());
        let mut cut = one_entry(4, 10_000_000);
        cut.truncate(14);
        assert!(check(&cut).is_ok());
    }
}
