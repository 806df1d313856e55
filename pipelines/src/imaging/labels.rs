//! Label images: one integer per pixel, 0 = background, k > 0 = ROI k. Read from a TIFF (first
//! page, greyscale, any integer type, or float holding whole numbers) or a 2-D `.npy` (any
//! integer dtype, or float holding whole numbers).

use std::path::Path;

use ndarray::Array2;

/// A label image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelImage {
    pub height: usize,
    pub width: usize,
    pub labels: Vec<i64>,
}

/// Reads a label image; the error names the file and the problem.
pub fn read(path: &Path) -> Result<LabelImage, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let r = match ext.as_deref() {
        Some("npy") => read_npy(path),
        Some("tif" | "tiff") => read_tiff(path),
        _ => Err("expected a .tif, .tiff or .npy file".to_string()),
    };
    let img = r.map_err(|e| format!("label image {}: {e}", path.display()))?;
    if let Some(bad) = img.labels.iter().find(|&&v| v < 0 || v > i32::MAX as i64) {
        return Err(format!(
            "label image {}: label {bad} is not a ROI number (0 = background, 1.. = ROIs)",
            path.display()
        ));
    }
    Ok(img)
}

fn whole(v: Vec<f64>) -> Result<Vec<i64>, String> {
    v.into_iter()
        .map(|x| {
            if x.fract() == 0.0 && x.is_finite() {
                Ok(x as i64)
            } else {
                Err(format!("{x} is not a whole number"))
            }
        })
        .collect()
}

fn read_tiff(path: &Path) -> Result<LabelImage, String> {
    use tiff::decoder::DecodingResult as D;
    use tiff::ColorType;
    // The crate decodes the whole image, within its usual limit of 256 MiB.
    let mut dec = crate::formats::tiff_guard::open_decoder(path, 256 << 20)?;
    let (w, h) = dec.dimensions().map_err(|e| e.to_string())?;
    match dec.colortype().map_err(|e| e.to_string())? {
        ColorType::Gray(_) => {}
        other => return Err(format!("{other:?} pixels; a label image is greyscale")),
    }
    let labels: Vec<i64> = match dec.read_image().map_err(|e| e.to_string())? {
        D::U8(v) => v.into_iter().map(i64::from).collect(),
        D::U16(v) => v.into_iter().map(i64::from).collect(),
        D::U32(v) => v.into_iter().map(i64::from).collect(),
        D::U64(v) => v
            .into_iter()
            .map(|x| x.min(i64::MAX as u64) as i64)
            .collect(),
        D::I8(v) => v.into_iter().map(i64::from).collect(),
        D::I16(v) => v.into_iter().map(i64::from).collect(),
        D::I32(v) => v.into_iter().map(i64::from).collect(),
        D::I64(v) => v,
        D::F32(v) => whole(v.into_iter().map(f64::from).collect())?,
        D::F64(v) => whole(v)?,
        D::F16(v) => whole(v.into_iter().map(f64::from).collect())?,
    };
    let (height, width) = (h as usize, w as usize);
    if labels.len() != height * width {
        return Err(format!(
            "{} values for {height}×{width} pixels",
            labels.len()
        ));
    }
    Ok(LabelImage {
        height,
        width,
        labels,
    })
}

fn read_npy(path: &Path) -> Result<LabelImage, String> {
    use ndarray_npy::{read_npy, ReadNpyError};
    fn take<T: Copy>(
        a: Array2<T>,
        f: impl Fn(T) -> Result<i64, String>,
    ) -> Result<LabelImage, String> {
        let (height, width) = a.dim();
        let labels = a.iter().map(|v| f(*v)).collect::<Result<_, _>>()?;
        Ok(LabelImage {
            height,
            width,
            labels,
        })
    }
    // ndarray-npy reads one dtype at a time: try each, stopping at the first error that is not
    // "wrong dtype".
    macro_rules! attempt {
        ($t:ty, $f:expr) => {
            match read_npy::<_, Array2<$t>>(path) {
                Ok(a) => return take(a, $f),
                Err(ReadNpyError::WrongDescriptor(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        };
    }
    attempt!(i64, Ok);
    attempt!(i32, |v| Ok(i64::from(v)));
    attempt!(u32, |v| Ok(i64::from(v)));
    attempt!(u16, |v| Ok(i64::from(v)));
    attempt!(i16, |v| Ok(i64::from(v)));
    attempt!(u8, |v| Ok(i64::from(v)));
    attempt!(i8, |v| Ok(i64::from(v)));
    attempt!(u64, |v| Ok(v.min(i64::MAX as u64) as i64));
    attempt!(f64, |v| whole(vec![v]).map(|w| w[0]));
    attempt!(f32, |v| whole(vec![f64::from(v)]).map(|w| w[0]));
    Err("dtype is not an integer or float type".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiff_and_npy_labels_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (3usize, 4usize);
        let labels: Vec<u16> = vec![0, 1, 1, 0, 0, 2, 2, 2, 3, 0, 0, 0];
        let tif = dir.path().join("labels.tif");
        let mut enc =
            tiff::encoder::TiffEncoder::new(std::fs::File::create(&tif).unwrap()).unwrap();
        enc.write_image::<tiff::encoder::colortype::Gray16>(w as u32, h as u32, &labels)
            .unwrap();
        let npy = dir.path().join("labels.npy");
        let a = Array2::from_shape_vec((h, w), labels.iter().map(|&v| v as i32).collect()).unwrap();
        ndarray_npy::write_npy(&npy, &a).unwrap();
        let want: Vec<i64> = labels.iter().map(|&v| v as i64).collect();
        for p in [&tif, &npy] {
            let img = read(p).unwrap();
            assert_eq!((img.height, img.width), (h, w));
            assert_eq!(img.labels, want);
        }
    }

    #[test]
    fn bad_label_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.tif");
        std::fs::write(&p, b"II*\0garbage").unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("broken.tif"), "{e}");
        let p = dir.path().join("neg.npy");
        ndarray_npy::write_npy(&p, &Array2::from_elem((2, 2), -1i32)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("neg.npy") && e.contains("-1"), "{e}");
        let e = read(&dir.path().join("x.png")).unwrap_err();
        assert!(e.contains(".npy"), "{e}");
    }
}
