//! A set of ROIs on one image size, with each ROI's pixel weights and its neuropil pixels, ready
//! to turn frames into per-ROI fluorescence.
//!
//! F of a ROI is Σ wᵢ·xᵢ / Σ wᵢ over its pixels (the plain mean with unit weights; Suite2p's
//! `lam` weights otherwise, normalised to sum 1 as Suite2p does). Its neuropil is the plain mean
//! over an annulus (Suite2p `create_neuropil_masks`, with Euclidean distances instead of its
//! square growth steps): pixels farther than `inner_px` from every pixel of the ROI, belonging to
//! no ROI at all, and out to the smallest radius that holds `min_pixels` of them (all pixels at
//! that distance included), never beyond `max_radius_px`. Suite2p's defaults: a 2 px gap and 350
//! pixels.

use std::collections::BTreeMap;

use kernels::roi::RoiTable;

/// How neuropil annuli are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeuropilParams {
    /// Gap between the ROI and its annulus, pixels (Suite2p `inner_neuropil_radius`, 2).
    pub inner_px: f32,
    /// Pixels the annulus grows to (Suite2p `min_neuropil_pixels`, 350).
    pub min_pixels: usize,
    /// Farthest an annulus reaches from its ROI, pixels, whether or not it has `min_pixels`.
    pub max_radius_px: f32,
}

impl Default for NeuropilParams {
    fn default() -> Self {
        NeuropilParams {
            inner_px: 2.0,
            min_pixels: 350,
            max_radius_px: 50.0,
        }
    }
}

/// ROIs ready for extraction: pixel lists in compressed rows, as the extraction kernels take them
/// ([`kernels::roi::RoiTable`], whose CPU twin and GPU shader do the sums).
#[derive(Debug, Clone, PartialEq)]
pub struct RoiSet {
    pub height: usize,
    pub width: usize,
    /// ROI numbers, ascending, as they come in (`roi` column or label value).
    pub ids: Vec<i32>,
    /// Weights normalised: each ROI's sum to 1.
    table: RoiTable,
}

impl RoiSet {
    /// Builds the set from (roi, y, x, weight) rows; with `weighted = false` the weights are
    /// ignored (plain means). Rows with weight 0 are not part of their ROI. Errors name the
    /// first bad row.
    pub fn from_pixels(
        height: usize,
        width: usize,
        rows: impl IntoIterator<Item = (i32, i32, i32, f32)>,
        weighted: bool,
        np: NeuropilParams,
    ) -> Result<Self, String> {
        if height == 0 || width == 0 || height * width > u32::MAX as usize {
            return Err(format!("an image of {height}×{width} cannot carry ROIs"));
        }
        let mut by_roi: BTreeMap<i32, Vec<(u32, f32)>> = BTreeMap::new();
        for (i, (roi, y, x, w)) in rows.into_iter().enumerate() {
            if y < 0 || x < 0 || y as usize >= height || x as usize >= width {
                return Err(format!(
                    "row {i}: pixel (y {y}, x {x}) of ROI {roi} is outside the {height}×{width} image"
                ));
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "row {i}: ROI {roi} has weight {w} (weights are finite and ≥ 0)"
                ));
            }
            let w = if weighted { w } else { 1.0 };
            if w > 0.0 {
                by_roi
                    .entry(roi)
                    .or_default()
                    .push((y as u32 * width as u32 + x as u32, w));
            }
        }
        let mut ids = Vec::with_capacity(by_roi.len());
        let mut cells: Vec<Vec<(u32, f32)>> = Vec::with_capacity(by_roi.len());
        let mut occupied = vec![false; height * width];
        for (roi, mut px) in by_roi {
            // Sorted for memory order; a pixel listed twice counts once with its weights summed.
            px.sort_unstable_by_key(|p| p.0);
            px.dedup_by(|b, a| {
                let same = a.0 == b.0;
                if same {
                    a.1 += b.1;
                }
                same
            });
            let total: f64 = px.iter().map(|p| f64::from(p.1)).sum();
            for p in &mut px {
                occupied[p.0 as usize] = true;
                p.1 = (f64::from(p.1) / total) as f32;
            }
            cells.push(px);
            ids.push(roi);
        }
        let mut table = RoiTable::new(height * width);
        let mut annulus = Annulus::default();
        let (mut px, mut np_pixels) = (Vec::new(), Vec::new());
        for cell in cells {
            px.clear();
            px.extend(cell.iter().map(|p| p.0));
            np_pixels.clear();
            annulus.draw(&px, height, width, &occupied, np, &mut np_pixels);
            table.push(cell, &np_pixels)?;
        }
        let set = RoiSet {
            height,
            width,
            ids,
            table,
        };
        Ok(set)
    }

    /// Builds the set from a label image (label k → ROI k, unit weights).
    pub fn from_labels(
        height: usize,
        width: usize,
        labels: &[i64],
        np: NeuropilParams,
    ) -> Result<Self, String> {
        if labels.len() != height * width {
            return Err(format!(
                "{} labels for a {height}×{width} image",
                labels.len()
            ));
        }
        let rows = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > 0)
            .map(|(p, &l)| {
                (
                    l.min(i32::MAX as i64) as i32,
                    (p / width) as i32,
                    (p % width) as i32,
                    1.0,
                )
            });
        Self::from_pixels(height, width, rows, false, np)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// ROI `i`'s pixels (row-major indices) and normalised weights.
    pub fn cell(&self, i: usize) -> (&[u32], &[f32]) {
        self.table.cell(i)
    }

    /// ROI `i`'s neuropil pixels (row-major indices, ascending).
    pub fn neuropil(&self, i: usize) -> &[u32] {
        self.table.neuropil(i)
    }

    /// The compressed rows, for the GPU extraction kernel.
    pub fn table(&self) -> &RoiTable {
        &self.table
    }

    /// F and neuropil of every ROI in one frame (`frame.len()` = height · width). A ROI without
    /// neuropil pixels gets NaN there.
    pub fn extract(&self, frame: &[i16], f: &mut [f32], fneu: &mut [f32]) {
        debug_assert!(frame.len() >= self.height * self.width);
        self.table.extract_frame(frame, f, fneu);
    }
}

/// Working memory for drawing annuli, reused from one ROI to the next.
#[derive(Default)]
struct Annulus {
    boundary: Vec<(i32, i32)>,
    own: Vec<bool>,
    candidates: Vec<(f32, u32)>,
}

impl Annulus {
    fn draw(
        &mut self,
        px: &[u32],
        height: usize,
        width: usize,
        occupied: &[bool],
        np: NeuropilParams,
        out: &mut Vec<u32>,
    ) {
        if px.is_empty() {
            return;
        }
        let (w, h) = (width as i32, height as i32);
        let yx = |p: u32| ((p / width as u32) as i32, (p % width as u32) as i32);
        let (mut y0, mut y1, mut x0, mut x1) = (i32::MAX, i32::MIN, i32::MAX, i32::MIN);
        for &p in px {
            let (y, x) = yx(p);
            (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
        }
        // The ROI's own mask over its bounding box, then its boundary: the nearest ROI pixel of
        // any outside pixel is one with a 4-neighbour outside the ROI.
        let (bw, bh) = ((x1 - x0 + 1) as usize, (y1 - y0 + 1) as usize);
        self.own.clear();
        self.own.resize(bw * bh, false);
        for &p in px {
            let (y, x) = yx(p);
            self.own[(y - y0) as usize * bw + (x - x0) as usize] = true;
        }
        let own = |y: i32, x: i32| {
            y >= y0
                && y <= y1
                && x >= x0
                && x <= x1
                && self.own[(y - y0) as usize * bw + (x - x0) as usize]
        };
        self.boundary.clear();
        for &p in px {
            let (y, x) = yx(p);
            if !(own(y - 1, x) && own(y + 1, x) && own(y, x - 1) && own(y, x + 1)) {
                self.boundary.push((y, x));
            }
        }
        let inner2 = np.inner_px * np.inner_px;
        let max_r = np.max_radius_px.max(np.inner_px);
        // A first guess at the reach that holds `min_pixels`, doubled until it does.
        let mut reach = np.inner_px + (np.min_pixels as f32 / std::f32::consts::PI).sqrt() + 2.0;
        loop {
            reach = reach.min(max_r);
            let m = reach.ceil() as i32;
            let (ya, yb, xa, xb) = (
                (y0 - m).max(0),
                (y1 + m).min(h - 1),
                (x0 - m).max(0),
                (x1 + m).min(w - 1),
            );
            let reach2 = reach * reach;
            self.candidates.clear();
            for y in ya..=yb {
                for x in xa..=xb {
                    let p = y as usize * width + x as usize;
                    if occupied[p] {
                        continue;
                    }
                    let d2 = self
                        .boundary
                        .iter()
                        .map(|&(by, bx)| ((by - y) * (by - y) + (bx - x) * (bx - x)) as f32)
                        .fold(f32::INFINITY, f32::min);
                    if d2 > inner2 && d2 <= reach2 {
                        self.candidates.push((d2, p as u32));
                    }
                }
            }
            let whole_image = ya == 0 && xa == 0 && yb == h - 1 && xb == w - 1;
            if self.candidates.len() >= np.min_pixels || reach >= max_r || whole_image {
                break;
            }
            reach *= 2.0;
        }
        self.candidates
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut n = self.candidates.len().min(np.min_pixels);
        // Everything at the last radius taken, so that the annulus is a true annulus.
        if n > 0 {
            let r = self.candidates[n - 1].0;
            while n < self.candidates.len() && self.candidates[n].0 == r {
                n += 1;
            }
        }
        let start = out.len();
        out.extend(self.candidates[..n].iter().map(|c| c.1));
        out[start..].sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(roi: i32, cy: i32, cx: i32, r: i32) -> Vec<(i32, i32, i32, f32)> {
        let mut v = Vec::new();
        for y in cy - r..=cy + r {
            for x in cx - r..=cx + r {
                if (y - cy).pow(2) + (x - cx).pow(2) <= r * r {
                    v.push((roi, y, x, 1.0 + (x - cx).abs() as f32));
                }
            }
        }
        v
    }

    #[test]
    fn annulus_keeps_its_gap_avoids_other_rois_and_reaches_its_size() {
        let (h, w) = (64, 64);
        let mut rows = disk(3, 30, 30, 4);
        rows.extend(disk(8, 30, 42, 4));
        let np = NeuropilParams {
            inner_px: 2.0,
            min_pixels: 200,
            max_radius_px: 50.0,
        };
        let set = RoiSet::from_pixels(h, w, rows.clone(), true, np).unwrap();
        assert_eq!(set.ids, [3, 8]);
        let all: Vec<u32> = rows.iter().map(|r| (r.1 * w as i32 + r.2) as u32).collect();
        for i in 0..2 {
            let n = set.neuropil(i);
            assert!(n.len() >= 200 && n.len() < 260, "{}", n.len());
            let (cell, weights) = set.cell(i);
            assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            for &p in n {
                assert!(!all.contains(&p), "neuropil pixel {p} is in a ROI");
                let (y, x) = ((p / w as u32) as i32, (p % w as u32) as i32);
                let d2 = cell
                    .iter()
                    .map(|&c| {
                        let (cy, cx) = ((c / w as u32) as i32, (c % w as u32) as i32);
                        (cy - y).pow(2) + (cx - x).pow(2)
                    })
                    .min()
                    .unwrap();
                assert!(d2 > 4, "pixel ({y}, {x}) within the 2 px gap");
            }
        }
    }

    #[test]
    fn extraction_is_the_weighted_mean() {
        let rows = vec![(0, 0, 0, 1.0), (0, 0, 1, 3.0), (1, 2, 2, 2.0)];
        let np = NeuropilParams {
            inner_px: 0.5,
            min_pixels: 4,
            max_radius_px: 1.0,
        };
        let set = RoiSet::from_pixels(3, 3, rows, true, np).unwrap();
        let frame: Vec<i16> = (0..9).map(|v| v * 10).collect();
        let (mut f, mut fneu) = ([0f32; 2], [0f32; 2]);
        set.extract(&frame, &mut f, &mut fneu);
        assert_eq!(f, [0.25 * 0.0 + 0.75 * 10.0, 80.0]);
        // ROI 0's neighbours within 1 px: (0,2), (1,0), (1,1) and (1,2) at distances 1, 1, 1, √2
        // → only those at 1 px: (0,2)=20, (1,0)=30, (1,1)=40.
        assert_eq!(set.neuropil(0), &[2, 3, 4]);
        assert_eq!(fneu[0], 30.0);
        let e = RoiSet::from_pixels(3, 3, vec![(0, 3, 0, 1.0)], true, np).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }
}
