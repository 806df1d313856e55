//! Multipage TIFF stacks of two-photon frames (ScanImage and most microscopes write one page per
//! frame), read page by page into a reused buffer with the `tiff` crate, and folders of such
//! files (ScanImage starts a new numbered file every N frames).
//!
//! Pages must be one-sample 16-bit greyscale, signed (ScanImage's int16) or unsigned; any
//! compression the `tiff` crate decodes (none, LZW, deflate, PackBits) is fine. **uint16 pages
//! are mapped to int16 by saturation**: 0–32767 stay exact and larger values become 32767 (and
//! are counted). Most uint16 microscopes digitise 12–14 bits, so their values pass unchanged;
//! an offset (v − 32768) would change every value instead. Other pixel types are refused
//! with an error naming the file and page.
//!
//! A page is *incomplete* when its directory or pixels lie beyond the end of the file (the
//! acquisition is still writing it, or the file was cut): [`TiffPages::read_next`] says so
//! without failing, so that a follower can retry and a replay can report a truncated file.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use tiff::decoder::Decoder;
use tiff::tags::Tag;
use tiff::{ColorType, TiffError, TiffFormatError};

/// How much of a file's start is searched for ScanImage's frame rate.
const METADATA_SCAN_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TiffStackError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: page {page}: {why}", .path.display())]
    Unsupported {
        path: PathBuf,
        page: usize,
        why: String,
    },
    #[error("{}: no .tif or .tiff files", .path.display())]
    NoFiles { path: PathBuf },
}

/// Signedness of the 16-bit pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    Int16,
    Uint16,
}

impl PixelType {
    pub fn as_str(self) -> &'static str {
        match self {
            PixelType::Int16 => "int16",
            PixelType::Uint16 => "uint16",
        }
    }
}

/// The size and type every page of a stack shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageGeometry {
    pub height: usize,
    pub width: usize,
    pub pixel: PixelType,
}

impl PageGeometry {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

/// What [`TiffPages::read_next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// A page was decoded into the output; the number of uint16 pixels clipped to 32767.
    Read { saturated: usize },
    /// The file holds no further page (its last directory points nowhere).
    End,
    /// The next page is not (wholly) in the file: why.
    Incomplete(String),
}

/// Reads one TIFF file's pages in order. Re-reading the last directory's link lets a follower
/// see pages appended after it reached the end.
pub struct TiffPages {
    path: PathBuf,
    decoder: Option<Decoder<BufReader<File>>>,
    /// Whether the open decoder stands on page `next` already (just opened at page 0).
    positioned: bool,
    next: usize,
    geometry: Option<PageGeometry>,
    bytes: Vec<u8>,
}

impl TiffPages {
    /// Nothing is read until the first [`read_next`](Self::read_next); `geometry`, when given,
    /// is what every page must have (the first file's, for the files of a folder).
    pub fn new(path: PathBuf, geometry: Option<PageGeometry>) -> Self {
        TiffPages {
            path,
            decoder: None,
            positioned: false,
            next: 0,
            geometry,
            bytes: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pages read so far.
    pub fn pages_read(&self) -> usize {
        self.next
    }

    /// The pages' geometry, once a page was read (or as given).
    pub fn geometry(&self) -> Option<PageGeometry> {
        self.geometry
    }

    /// Opens the file (if needed) and reads the first page's geometry without consuming it.
    pub fn peek_geometry(&mut self) -> Result<Result<PageGeometry, String>, TiffStackError> {
        if let Some(g) = self.geometry {
            return Ok(Ok(g));
        }
        if let Err(why) = self.position() {
            return Ok(Err(why));
        }
        let g = self.check_page()?;
        self.geometry = Some(g);
        Ok(Ok(g))
    }

    /// Decodes the next page into `out` (row-major, `height · width` values; resized on the
    /// first page only).
    pub fn read_next(&mut self, out: &mut Vec<i16>) -> Result<Page, TiffStackError> {
        if let Err(why) = self.position() {
            return Ok(if why.is_empty() {
                Page::End
            } else {
                Page::Incomplete(why)
            });
        }
        let g = self.check_page()?;
        self.geometry = Some(g);
        let n = g.pixels();
        if let Err(why) = self.fits_in_file(n * 2) {
            self.reset();
            return Ok(Page::Incomplete(format!("page {}: {why}", self.next)));
        }
        self.bytes.resize(n * 2, 0);
        out.resize(n, 0);
        let decoder = self.decoder.as_mut().expect("positioned");
        if let Err(e) = decoder.read_image_bytes(&mut self.bytes) {
            self.reset();
            return Ok(Page::Incomplete(format!(
                "page {}: pixels not readable: {e}",
                self.next
            )));
        }
        // The decoder hands samples over in the host's byte order.
        let mut saturated = 0;
        for (dst, b) in out.iter_mut().zip(self.bytes.chunks_exact(2)) {
            let raw = [b[0], b[1]];
            *dst = match g.pixel {
                PixelType::Int16 => i16::from_ne_bytes(raw),
                PixelType::Uint16 => {
                    let v = u16::from_ne_bytes(raw);
                    if v > i16::MAX as u16 {
                        saturated += 1;
                        i16::MAX
                    } else {
                        v as i16
                    }
                }
            };
        }
        self.next += 1;
        self.positioned = false;
        Ok(Page::Read { saturated })
    }

    /// Whether the file, as long as it is now, can hold a page of `bytes` pixel bytes with the
    /// page's compression at its most effective, so that a header of a few bytes cannot make us
    /// allocate a whole frame (a page still being written fits once its data is there).
    fn fits_in_file(&mut self, bytes: usize) -> Result<(), String> {
        let decoder = self.decoder.as_mut().expect("positioned");
        let compression: Option<u16> = decoder
            .find_tag_unsigned(Tag::Compression)
            .map_err(|e| e.to_string())?;
        // The largest expansion of each scheme the decoder reads: none, PackBits (one byte
        // repeated 128 times from two), Deflate (1032:1), TIFF's LZW (12-bit codes of at most
        // 4096 bytes, so below 4096:1).
        let expansion: u64 = match compression {
            None | Some(1) => 1,
            Some(32773) => 64,
            Some(8) | Some(32946) => 1032,
            Some(_) => 4096,
        };
        let on_disk = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if bytes as u64 > on_disk.saturating_mul(expansion) {
            return Err(format!(
                "its {bytes} pixel bytes cannot come from the file's {on_disk} bytes \
                 (compression {})",
                compression.unwrap_or(1)
            ));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.decoder = None;
        self.positioned = false;
    }

    /// Puts the decoder on page `next`. `Err("")`: there is no such page (yet); `Err(why)`: it
    /// is there but not wholly readable.
    fn position(&mut self) -> Result<(), String> {
        if self.positioned {
            return Ok(());
        }
        let Some(decoder) = self.decoder.as_mut() else {
            // Pages are decoded into our own buffer (bounded by `fits_in_file`), so the crate
            // decodes nothing whole but tag values.
            self.decoder = Some(super::tiff_guard::open_decoder(&self.path, 0)?);
            if self.next == 0 {
                self.positioned = true;
                return Ok(());
            }
            return self.position();
        };
        match decoder.seek_to_image(self.next) {
            Ok(()) => {
                self.positioned = true;
                Ok(())
            }
            Err(TiffError::FormatError(TiffFormatError::ImageFileDirectoryNotFound)) => {
                // The previous page's link was read when it pointed nowhere; read it again.
                let refreshed = decoder.seek_to_image(self.next - 1);
                if refreshed.is_ok() && !decoder.more_images() {
                    return Err(String::new());
                }
                match refreshed.and_then(|()| decoder.seek_to_image(self.next)) {
                    Ok(()) => {
                        self.positioned = true;
                        Ok(())
                    }
                    Err(e) => {
                        self.reset();
                        Err(format!("page {}: {e}", self.next))
                    }
                }
            }
            Err(e) => {
                self.reset();
                Err(format!("page {}: {e}", self.next))
            }
        }
    }

    /// The current page's geometry, which must be 16-bit greyscale and match the stack's.
    fn check_page(&mut self) -> Result<PageGeometry, TiffStackError> {
        let page = self.next;
        let path = &self.path;
        let unsupported = |why: String| TiffStackError::Unsupported {
            path: path.clone(),
            page,
            why,
        };
        let decoder = self.decoder.as_mut().expect("positioned");
        let (w, h) = decoder
            .dimensions()
            .map_err(|e| unsupported(e.to_string()))?;
        let colortype = decoder
            .colortype()
            .map_err(|e| unsupported(e.to_string()))?;
        if colortype != ColorType::Gray(16) {
            return Err(unsupported(format!(
                "pixels are {colortype:?}; only 16-bit greyscale (int16 or uint16) is supported"
            )));
        }
        let format: Option<u16> = decoder
            .find_tag_unsigned(Tag::SampleFormat)
            .map_err(|e| unsupported(e.to_string()))?;
        let pixel = match format {
            None | Some(1) => PixelType::Uint16,
            Some(2) => PixelType::Int16,
            Some(3) => {
                return Err(unsupported(
                    "16-bit floating-point pixels are not supported (int16 or uint16 only)".into(),
                ))
            }
            Some(f) => return Err(unsupported(format!("unknown SampleFormat {f}"))),
        };
        // Checked before anything is allocated: a header may claim any size.
        crate::limits::frame_pixels(u64::from(h), u64::from(w)).map_err(unsupported)?;
        let g = PageGeometry {
            height: h as usize,
            width: w as usize,
            pixel,
        };
        if let Some(first) = self.geometry {
            if first != g {
                return Err(unsupported(format!(
                    "{}×{} {} pixels, but the stack's pages are {}×{} {}",
                    g.height,
                    g.width,
                    g.pixel.as_str(),
                    first.height,
                    first.width,
                    first.pixel.as_str()
                )));
            }
        }
        Ok(g)
    }
}

/// Sorts names with digit runs compared as numbers (`file_9.tif` before `file_10.tif`).
fn natural_key(name: &str) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digit {
                break;
            }
            run.push(c);
            chars.next();
        }
        if digit {
            let trimmed = run.trim_start_matches('0');
            // Longer numbers sort after shorter ones; same length compares as text.
            out.push((1, format!("{:020}{trimmed}", trimmed.len())));
        } else {
            out.push((0, run));
        }
    }
    out
}

pub fn is_tiff_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"))
}

/// The `.tif`/`.tiff` files of a folder in acquisition order (natural order of their names).
pub fn list_tiffs(dir: &Path) -> Result<Vec<PathBuf>, TiffStackError> {
    let io = |source| TiffStackError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if is_tiff_name(&p) && p.is_file() {
            files.push(p);
        }
    }
    files.sort_by_cached_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    Ok(files)
}

/// The frame rate ScanImage records, searched for in the file's first MiB (its header
/// metadata, `Software` tag or first `ImageDescription`): `SI.hRoiManager.scanFrameRate = R`
/// (ScanImage 2015+) or `state.acq.frameRate=R` (ScanImage 3). `None` when absent or outside
/// [`crate::limits::check_rate`]'s bounds.
pub fn scanimage_frame_rate(path: &Path) -> Option<f64> {
    use std::io::Read;
    let mut head = Vec::new();
    File::open(path)
        .ok()?
        .take(METADATA_SCAN_BYTES)
        .read_to_end(&mut head)
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    for key in ["hRoiManager.scanFrameRate", "state.acq.frameRate"] {
        if let Some(at) = text.find(key) {
            let rest = text[at + key.len()..].trim_start_matches([' ', '=', '\t']);
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
                .unwrap_or(rest.len());
            if let Some(v) = rest
                .get(..end)
                .and_then(|t| t.parse::<f64>().ok())
                .and_then(|v| crate::limits::check_rate(v).ok())
            {
                return Some(v);
            }
        }
    }
    None
}

/// A stack's extent, for `neurod inspect`.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSummary {
    pub files: Vec<PathBuf>,
    /// Whole pages, over all files.
    pub frames: usize,
    pub geometry: PageGeometry,
    /// From ScanImage metadata, when present.
    pub rate_hz: Option<f64>,
    /// Why reading stopped early (a truncated or still-growing last page).
    pub incomplete: Option<String>,
}

/// Counts the pages of a TIFF file or folder of TIFF files (decoding each, so that a page whose
/// pixels are cut short is not counted).
pub fn summarize(path: &Path) -> Result<StackSummary, TiffStackError> {
    let files = if path.is_dir() {
        list_tiffs(path)?
    } else {
        std::fs::metadata(path).map_err(|source| TiffStackError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        vec![path.to_path_buf()]
    };
    let Some(first) = files.first() else {
        return Err(TiffStackError::NoFiles {
            path: path.to_path_buf(),
        });
    };
    let rate_hz = scanimage_frame_rate(first);
    let mut geometry = None;
    let mut frames = 0;
    let mut incomplete = None;
    let mut buf = Vec::new();
    'files: for f in &files {
        let mut pages = TiffPages::new(f.clone(), geometry);
        loop {
            match pages.read_next(&mut buf)? {
                Page::Read { .. } => frames += 1,
                Page::End => break,
                Page::Incomplete(why) => {
                    incomplete = Some(format!("{}: {why}", f.display()));
                    break 'files;
                }
            }
        }
        geometry = geometry.or(pages.geometry());
    }
    let geometry = geometry.ok_or_else(|| TiffStackError::Unsupported {
        path: first.clone(),
        page: 0,
        why: incomplete
            .clone()
            .unwrap_or_else(|| "the file holds no page".into()),
    })?;
    Ok(StackSummary {
        files,
        frames,
        geometry,
        rate_hz,
        incomplete,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tiff::encoder::{colortype, TiffEncoder};

    pub(crate) fn thunder() -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/twophoton-thunder/thunder_mouse_500x64x64_int16.tif");
        if p.exists() {
            Some(p)
        } else if std::env::var_os("CI").is_some() {
            panic!("test data missing: {}", p.display());
        } else {
            eprintln!(
                "!!! SKIPPED: test data missing: {} (CI would fail)",
                p.display()
            );
            None
        }
    }

    /// A TIFF of `frames` int16 pages of `h` × `w`, pixel value = f(frame, index), in memory.
    pub(crate) fn int16_stack(frames: usize, h: usize, w: usize) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut out).unwrap();
        for f in 0..frames {
            enc.write_image::<colortype::GrayI16>(w as u32, h as u32, &frame_values(f, h * w))
                .unwrap();
        }
        out.into_inner()
    }

    pub(crate) fn frame_values(frame: usize, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((frame * 7919 + i * 31) % 65536) as u16 as i16)
            .collect()
    }

    fn read_all(path: &Path) -> (Vec<Vec<i16>>, Page) {
        let mut pages = TiffPages::new(path.to_path_buf(), None);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match pages.read_next(&mut buf).unwrap() {
                Page::Read { .. } => out.push(buf.clone()),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn pages_round_trip_and_a_cut_file_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.tif");
        let bytes = int16_stack(5, 6, 7);
        std::fs::write(&p, &bytes).unwrap();
        let (pages, end) = read_all(&p);
        assert_eq!(end, Page::End);
        assert_eq!(pages.len(), 5);
        for (f, page) in pages.iter().enumerate() {
            assert_eq!(page, &frame_values(f, 42));
        }
        // Cut inside the last page: the first four pages, then an incomplete one.
        std::fs::write(&p, &bytes[..bytes.len() - 60]).unwrap();
        let (pages, end) = read_all(&p);
        assert!(pages.len() < 5, "{}", pages.len());
        assert!(matches!(end, Page::Incomplete(_)), "{end:?}");
        for (f, page) in pages.iter().enumerate() {
            assert_eq!(page, &frame_values(f, 42));
        }
    }

    #[test]
    fn uint16_saturates_and_other_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.tif");
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut out).unwrap();
        enc.write_image::<colortype::Gray16>(2, 2, &[0, 32767, 32768, 65535])
            .unwrap();
        std::fs::write(&p, out.into_inner()).unwrap();
        let mut pages = TiffPages::new(p.clone(), None);
        let mut buf = Vec::new();
        assert_eq!(
            pages.read_next(&mut buf).unwrap(),
            Page::Read { saturated: 2 }
        );
        assert_eq!(buf, [0, 32767, 32767, 32767]);
        assert_eq!(pages.geometry().unwrap().pixel, PixelType::Uint16);

        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut out).unwrap();
        enc.write_image::<colortype::Gray8>(2, 2, &[0, 1, 2, 3])
            .unwrap();
        std::fs::write(&p, out.into_inner()).unwrap();
        let e = TiffPages::new(p, None)
            .read_next(&mut buf)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("u.tif") && e.contains("page 0") && e.contains("16-bit"),
            "{e}"
        );
    }

    #[test]
    fn natural_order_of_scanimage_names() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "a_00010.tif",
            "a_00002.tif",
            "a_9.TIFF",
            "notes.txt",
            "a_00001.tif",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let names: Vec<String> = list_tiffs(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["a_00001.tif", "a_00002.tif", "a_9.TIFF", "a_00010.tif"]
        );
    }

    #[test]
    fn scanimage_rate_from_metadata_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("si.tif");
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut out).unwrap();
        let mut img = enc.new_image::<colortype::GrayI16>(2, 1).unwrap();
        img.encoder()
            .write_tag(
                Tag::Software,
                "SI.VERSION_MAJOR = 2022\nSI.hRoiManager.scanFrameRate = 30.0126\n",
            )
            .unwrap();
        img.write_data(&[1, 2]).unwrap();
        std::fs::write(&p, out.into_inner()).unwrap();
        assert_eq!(scanimage_frame_rate(&p), Some(30.0126));
        let s = summarize(&p).unwrap();
        assert_eq!((s.frames, s.rate_hz), (1, Some(30.0126)));
        let Some(t) = thunder() else { return };
        assert_eq!(scanimage_frame_rate(&t), None);
    }

    #[test]
    fn thunder_stack_summary() {
        let Some(t) = thunder() else { return };
        let s = summarize(&t).unwrap();
        assert_eq!(s.frames, 500);
        assert_eq!(
            s.geometry,
            PageGeometry {
                height: 64,
                width: 64,
                pixel: PixelType::Int16
            }
        );
        assert_eq!(s.incomplete, None);
    }
}
