//! The first entry and length of `sample_numbers.npy`, which is valid only once the GUI
//! stops recording.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

pub(super) struct SampleNumbers {
    pub(super) count: u64,
    pub(super) first: Option<i64>,
}

/// Reads the length and first entry of a 1-D int64 `.npy`, checking that the header is complete
/// and the file holds exactly the data it announces (the GUI finalises it on stop).
pub(super) fn read_sample_numbers(path: &Path) -> Result<SampleNumbers, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    // Check the announced header length before letting ndarray-npy allocate it.
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut f, &mut pre).map_err(|e| e.to_string())?;
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let header_end = match pre[6] {
        1 => 10 + u64::from(u16::from_le_bytes([pre[8], pre[9]])),
        2 | 3 if got == 12 => {
            12 + u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if header_end > file_len {
        return Err("truncated .npy header".into());
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let header =
        ndarray_npy::npy::header::Header::from_reader(&mut f).map_err(|e| e.to_string())?;
    let data_start = f.stream_position().map_err(|e| e.to_string())?;
    let count = match header.shape.as_slice() {
        [n] => *n as u64,
        other => return Err(format!("shape {other:?} is not one-dimensional")),
    };
    let expected = count
        .checked_mul(8)
        .and_then(|b| b.checked_add(data_start))
        .ok_or("shape overflows")?;
    if expected != file_len {
        return Err(format!(
            "{file_len} bytes but the header announces {count} int64 entries ({expected} bytes)"
        ));
    }
    let first = if count > 0 {
        let v = <i64 as ndarray_npy::ReadableElement>::read_to_end_exact_vec(
            (&mut f).take(8),
            &header.type_descriptor,
            1,
        )
        .map_err(|e| e.to_string())?;
        v.first().copied()
    } else {
        None
    };
    Ok(SampleNumbers { count, first })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
