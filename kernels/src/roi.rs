//! Sparse ROI extraction over a batch of frames: per ROI the weighted sum of its pixels (F) and
//! the plain mean of its neuropil pixels (Fneu). CPU twin of `shaders/roi.wgsl`
//! ([`crate::gpu::roi::GpuRoiExtractor`]) and the specification both follow.
//!
//! Frames are i16, `n_frames × n_pixels` row-major; outputs are `n_frames × K` (frame-major).
//! F = Σ wᵢ·xᵢ in pixel order, f32, each product rounded before it is added (weights already
//! normalised by the caller); Fneu = (Σ xᵢ as an exact integer) / n in f64, rounded to f32;
//! NaN where a ROI has no neuropil pixels.

/// K ROIs in compressed rows: ROI `i`'s pixels are
/// `cell_pixels[cell_offsets[i]..cell_offsets[i + 1]]` with `cell_weights` alongside, its
/// neuropil `np_pixels[np_offsets[i]..np_offsets[i + 1]]`. Pixel indices are row-major within a
/// frame of `n_pixels`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiTable {
    pub n_pixels: usize,
    pub cell_offsets: Vec<u32>,
    pub cell_pixels: Vec<u32>,
    pub cell_weights: Vec<f32>,
    pub np_offsets: Vec<u32>,
    pub np_pixels: Vec<u32>,
}

impl RoiTable {
    /// An empty table (no ROIs) for frames of `n_pixels`; ROIs are added with [`Self::push`].
    pub fn new(n_pixels: usize) -> Self {
        RoiTable {
            n_pixels,
            cell_offsets: vec![0],
            cell_pixels: Vec::new(),
            cell_weights: Vec::new(),
            np_offsets: vec![0],
            np_pixels: Vec::new(),
        }
    }

    /// Appends one ROI. Pixels must be below `n_pixels` (checked: an error names the ROI).
    pub fn push(
        &mut self,
        cell: impl IntoIterator<Item = (u32, f32)>,
        neuropil: &[u32],
    ) -> Result<(), String> {
        let roi = self.len();
        let start = self.cell_pixels.len();
        for (p, w) in cell {
            self.cell_pixels.push(p);
            self.cell_weights.push(w);
        }
        self.np_pixels.extend_from_slice(neuropil);
        let n = self.n_pixels;
        let bad = self.cell_pixels[start..]
            .iter()
            .chain(neuropil)
            .find(|&&p| p as usize >= n);
        if let Some(p) = bad {
            let p = *p;
            self.cell_pixels.truncate(start);
            self.cell_weights.truncate(start);
            self.np_pixels
                .truncate(self.np_pixels.len() - neuropil.len());
            return Err(format!(
                "ROI {roi}: pixel {p} is outside a frame of {n} pixels"
            ));
        }
        if self.cell_pixels.len() > u32::MAX as usize || self.np_pixels.len() > u32::MAX as usize {
            return Err(format!("ROI {roi}: more than 2³² pixels in the table"));
        }
        self.cell_offsets.push(self.cell_pixels.len() as u32);
        self.np_offsets.push(self.np_pixels.len() as u32);
        Ok(())
    }

    /// Number of ROIs, K.
    pub fn len(&self) -> usize {
        self.cell_offsets.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// ROI `i`'s pixels and weights.
    pub fn cell(&self, i: usize) -> (&[u32], &[f32]) {
        let r = self.cell_offsets[i] as usize..self.cell_offsets[i + 1] as usize;
        (&self.cell_pixels[r.clone()], &self.cell_weights[r])
    }

    /// ROI `i`'s neuropil pixels.
    pub fn neuropil(&self, i: usize) -> &[u32] {
        &self.np_pixels[self.np_offsets[i] as usize..self.np_offsets[i + 1] as usize]
    }

    /// F and Fneu of every ROI in each whole frame of `frames`: `f` and `fneu` hold at least
    /// `n_frames × K` values (frame-major); frames beyond what they hold are not read.
    pub fn extract(&self, frames: &[i16], f: &mut [f32], fneu: &mut [f32]) {
        let k = self.len();
        if k == 0 || self.n_pixels == 0 {
            return;
        }
        let rows = f.chunks_exact_mut(k).zip(fneu.chunks_exact_mut(k));
        for (frame, (f, fneu)) in frames.chunks_exact(self.n_pixels).zip(rows) {
            self.extract_frame(frame, f, fneu);
        }
    }

    /// One frame: `f` and `fneu` hold K values.
    pub fn extract_frame(&self, frame: &[i16], f: &mut [f32], fneu: &mut [f32]) {
        for (i, (f, fneu)) in f.iter_mut().zip(fneu.iter_mut()).enumerate() {
            let (px, w) = self.cell(i);
            let mut s = 0f32;
            for (&p, &w) in px.iter().zip(w) {
                s += w * f32::from(frame[p as usize]);
            }
            *f = s;
            let np = self.neuropil(i);
            // Integer sum: exact, so the order of summation (the GPU's) cannot change it.
            let sum: i64 = np.iter().map(|&p| i64::from(frame[p as usize])).sum();
            *fneu = neuropil_mean(sum, np.len());
        }
    }
}

/// Fneu from the exact integer sum of `n` pixels; NaN for none.
pub fn neuropil_mean(sum: i64, n: usize) -> f32 {
    if n == 0 {
        f32::NAN
    } else {
        (sum as f64 / n as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_means_and_empty_annulus() {
        // 2 frames of 2×2; ROI 0: pixels 0 (w 0.25) and 1 (w 0.75), neuropil 2, 3; ROI 1: pixel
        // 3, no neuropil.
        let mut t = RoiTable::new(4);
        t.push([(0, 0.25), (1, 0.75)], &[2, 3]).unwrap();
        t.push([(3, 1.0)], &[]).unwrap();
        let frames: Vec<i16> = vec![4, 8, -3, 6, 0, -32768, 32767, 32767];
        let (mut f, mut fneu) = ([0f32; 4], [0f32; 4]);
        t.extract(&frames, &mut f, &mut fneu);
        assert_eq!(f, [7.0, 6.0, -24576.0, 32767.0]);
        assert_eq!(fneu[0], 1.5);
        assert_eq!(fneu[2], 32767.0);
        assert!(fneu[1].is_nan() && fneu[3].is_nan());
        let e = t.push([(4, 1.0)], &[]).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert_eq!(t.len(), 2);
    }
}
