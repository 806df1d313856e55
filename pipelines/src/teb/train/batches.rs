//! Truncated-backpropagation windows. The bins of a split (its segments, in order) are cut into
//! `B` contiguous lanes that run side by side; each lane is read in windows of `T` steps and
//! its recurrent state carries from one window to the next. The state resets where a segment
//! starts (and where a lane starts); a step has a loss only if the next bin is in its segment.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::model::CResult;

/// One window of `T` steps for `B` lanes, time-major.
pub struct Window {
    /// `[T, B, Dx]`, normalised (zeros on padding).
    pub x: Tensor,
    /// `[T, B, Dy]`, normalised.
    pub y: Tensor,
    /// `[T·B, Dy]`: `y` of the next bin (zeros where there is none).
    pub y_next: Tensor,
    /// `[T, B, 1]`: 0 where the state resets before the step.
    pub keep: Tensor,
    /// `[T·B]`: 1 where the step has a next bin to predict.
    pub mask: Tensor,
    /// Number of steps with a loss.
    pub count: usize,
}

/// The windows of a split; `lanes` is `B`.
pub struct Windows {
    pub lanes: usize,
    pub windows: Vec<Window>,
}

/// A step of a lane: bin index, whether the state resets before it, whether it has a target.
#[derive(Clone, Copy)]
struct Step {
    bin: usize,
    reset: bool,
    has_next: bool,
}

/// `x` (`bins × dx`) and `y` (`bins × dy`) are the normalised data of all bins; `segments`
/// the runs (within one split) to cut into `lanes` lanes of windows of `t_len` steps.
pub fn windows(
    x: &[f32],
    dx: usize,
    y: &[f32],
    dy: usize,
    segments: &[Range<usize>],
    lanes: usize,
    t_len: usize,
) -> CResult<Windows> {
    let steps: Vec<Step> = segments
        .iter()
        .flat_map(|s| {
            let (start, end) = (s.start, s.end);
            s.clone().map(move |bin| Step {
                bin,
                reset: bin == start,
                has_next: bin + 1 < end,
            })
        })
        .collect();
    let total = steps.len();
    let per_lane = total.div_ceil(lanes.max(1)).max(1);
    let lane_steps: Vec<&[Step]> = steps.chunks(per_lane).collect();
    let b = lane_steps.len().max(1);
    let n_windows = per_lane.div_ceil(t_len);
    let mut out = Vec::with_capacity(n_windows);
    for w in 0..n_windows {
        let rows = t_len * b;
        let mut xs = vec![0f32; rows * dx];
        let mut ys = vec![0f32; rows * dy];
        let mut next = vec![0f32; rows * dy];
        let mut keep = vec![0f32; rows];
        let mut mask = vec![0f32; rows];
        let mut count = 0;
        for t in 0..t_len {
            for (lane, ls) in lane_steps.iter().enumerate() {
                let pos = w * t_len + t;
                let Some(step) = ls.get(pos) else { continue };
                let r = t * b + lane;
                let bin = step.bin;
                xs[r * dx..(r + 1) * dx].copy_from_slice(&x[bin * dx..(bin + 1) * dx]);
                ys[r * dy..(r + 1) * dy].copy_from_slice(&y[bin * dy..(bin + 1) * dy]);
                keep[r] = if step.reset || pos == 0 { 0.0 } else { 1.0 };
                if step.has_next {
                    next[r * dy..(r + 1) * dy].copy_from_slice(&y[(bin + 1) * dy..(bin + 2) * dy]);
                    mask[r] = 1.0;
                    count += 1;
                }
            }
        }
        let dev = &Device::Cpu;
        out.push(Window {
            x: Tensor::from_vec(xs, (t_len, b, dx), dev)?,
            y: Tensor::from_vec(ys, (t_len, b, dy), dev)?,
            y_next: Tensor::from_vec(next, (rows, dy), dev)?,
            keep: Tensor::from_vec(keep, (t_len, b, 1), dev)?,
            mask: Tensor::from_vec(mask, rows, dev)?,
            count,
        });
    }
    Ok(Windows {
        lanes: b,
        windows: out,
    })
}

/// The runs of `segments` that fall in `range` (a split), each cut to it.
pub fn clip(segments: &[Range<usize>], range: Range<usize>) -> Vec<Range<usize>> {
    segments
        .iter()
        .map(|s| s.start.max(range.start)..s.end.min(range.end))
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_reset_at_segment_and_lane_starts_and_mask_the_last_bin_of_a_segment() {
        // 10 bins, 1 column each: segments 0..4 and 4..10, 2 lanes of 5, windows of 3.
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let w = windows(&x, 1, &x, 1, &[0..4, 4..10], 2, 3).unwrap();
        assert_eq!((w.lanes, w.windows.len()), (2, 2));
        let keep: Vec<f32> = w.windows[0].keep.flatten_all().unwrap().to_vec1().unwrap();
        // time-major [t][lane]: lane 0 = bins 0,1,2; lane 1 = bins 5,6,7 (a lane start resets).
        assert_eq!(keep, vec![0., 0., 1., 1., 1., 1.]);
        let keep: Vec<f32> = w.windows[1].keep.flatten_all().unwrap().to_vec1().unwrap();
        // lane 0 = bins 3, 4 (segment start), then padding; lane 1 = bins 8, 9, padding.
        assert_eq!(keep, vec![1., 1., 0., 1., 0., 0.]);
        let mask: Vec<f32> = w.windows[1].mask.to_vec1().unwrap();
        // bin 3 ends its segment, bin 9 ends the data: no next bin.
        assert_eq!(mask, vec![0., 1., 1., 0., 0., 0.]);
        let next: Vec<f32> = w.windows[1]
            .y_next
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(next, vec![0., 9., 5., 0., 0., 0.]);
        assert_eq!(w.windows[1].count, 2);
        assert_eq!(clip(&[0..4, 4..10], 3..8), vec![3..4, 4..8]);
    }
}
