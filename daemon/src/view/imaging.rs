//! The two-photon views: the latest frame, shrunk to at most [`MAX_SIDE`] pixels a side and
//! scaled to 8 bits, with the ROI outlines and their POYO-SSL labels and the motion trace; and
//! the dF/F traces of chosen neurons.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use pipelines::imaging::frames::Frames;
use pipelines::stream::{FRAME_INDEX, ROI, ROI_X, ROI_Y, TIME_S};
use serde::Serialize;

/// Longest side of the image sent; a 128 × 128 frame is 16 KB of pixels.
pub const MAX_SIDE: usize = 128;
pub const MAX_ROIS: usize = 1000;
/// Motion and trace points sent: the latest ones.
pub const MAX_POINTS: usize = 1200;
pub const MAX_TRACES: usize = 16;

#[derive(Debug, Serialize)]
pub struct Outline {
    pub roi: i32,
    /// `predictable`, `unpredictable`, `unlabelled`, or null before the rule has seen it.
    pub label: Option<String>,
    /// Boundary cells of the ROI in the shrunk image: y0, x0, y1, x1, ...
    pub cells: Vec<u16>,
}

#[derive(Debug, Default, Serialize)]
pub struct Motion {
    pub t: Vec<f64>,
    pub shift_y: Vec<f32>,
    pub shift_x: Vec<f32>,
}

#[derive(Debug, Serialize)]
pub struct FrameView {
    pub stream: String,
    pub frame_index: i64,
    pub time_s: f64,
    /// The frame's own size, and the image sent (each pixel the mean of `scale` × `scale`).
    pub height: usize,
    pub width: usize,
    pub scale: usize,
    pub image_height: usize,
    pub image_width: usize,
    /// Row-major, 0–255 between the image's 1st and 99th percentiles.
    pub pixels: Vec<u8>,
    pub rois: Vec<Outline>,
    pub motion: Motion,
}

/// The frame in the last row of `batches`, with `rois` (a ROIs stream's batches) outlined and
/// labelled from `labels` (unit = the ROI index as text, as `predictability` names it).
pub fn frame_view(
    stream: &str,
    batches: &[RecordBatch],
    rois: &[RecordBatch],
    labels: &HashMap<String, String>,
) -> Result<FrameView, String> {
    let batch = batches
        .iter()
        .rev()
        .find(|b| b.num_rows() > 0)
        .ok_or("no frame yet")?;
    // The columns every transform that reads frames checks the same way.
    let frames = Frames::of(batch, stream).map_err(|e| e.to_string())?;
    let (height, width) = (frames.h, frames.w);
    let row = batch.num_rows() - 1;
    let n = height * width;
    let frame = &frames.pixels[row * n..(row + 1) * n];
    let scale = height.max(width).div_ceil(MAX_SIDE).max(1);
    let (ih, iw) = (height.div_ceil(scale), width.div_ceil(scale));
    let mut sums = vec![(0f64, 0u32); ih * iw];
    for y in 0..height {
        for x in 0..width {
            let cell = &mut sums[(y / scale) * iw + x / scale];
            cell.0 += frame[y * width + x] as f64;
            cell.1 += 1;
        }
    }
    let means: Vec<f64> = sums.iter().map(|(s, c)| s / (*c).max(1) as f64).collect();
    let mut sorted = means.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let (lo, hi) = (pct(0.01), pct(0.99));
    let range = (hi - lo).max(1e-9);
    let image = means
        .iter()
        .map(|v| ((v - lo) / range * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    Ok(FrameView {
        stream: stream.to_string(),
        frame_index: frames.index.value(row),
        time_s: frames.time.value(row),
        height,
        width,
        scale,
        image_height: ih,
        image_width: iw,
        pixels: image,
        rois: outlines(rois, scale, labels),
        motion: motion(batches),
    })
}

/// Each ROI's boundary cells in the shrunk image: the cells it covers with a neighbour it does
/// not (4-connected).
fn outlines(rois: &[RecordBatch], scale: usize, labels: &HashMap<String, String>) -> Vec<Outline> {
    let mut cells: BTreeMap<i32, HashSet<(u16, u16)>> = BTreeMap::new();
    for b in rois {
        let col = |name| {
            b.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
        };
        let (Some(roi), Some(y), Some(x)) = (col(ROI), col(ROI_Y), col(ROI_X)) else {
            continue;
        };
        for r in 0..b.num_rows() {
            let (yy, xx) = (y.value(r), x.value(r));
            if yy < 0 || xx < 0 {
                continue;
            }
            let cell = ((yy as usize / scale) as u16, (xx as usize / scale) as u16);
            cells.entry(roi.value(r)).or_default().insert(cell);
        }
    }
    cells
        .into_iter()
        .take(MAX_ROIS)
        .map(|(roi, set)| {
            let mut boundary: Vec<(u16, u16)> = set
                .iter()
                .copied()
                .filter(|&(y, x)| {
                    let outside = |dy: i32, dx: i32| {
                        let (ny, nx) = (y as i32 + dy, x as i32 + dx);
                        ny < 0 || nx < 0 || !set.contains(&(ny as u16, nx as u16))
                    };
                    outside(-1, 0) || outside(1, 0) || outside(0, -1) || outside(0, 1)
                })
                .collect();
            boundary.sort_unstable();
            Outline {
                roi,
                label: labels.get(&roi.to_string()).cloned(),
                cells: boundary.into_iter().flat_map(|(y, x)| [y, x]).collect(),
            }
        })
        .collect()
}

/// The shifts motion correction found, if the stream carries them (its registered output).
fn motion(batches: &[RecordBatch]) -> Motion {
    let mut m = Motion::default();
    for b in batches {
        let f32col = |name| {
            b.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float32Type>())
        };
        let (Some(t), Some(y), Some(x)) = (
            b.column_by_name(TIME_S)
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
            f32col("shift_y"),
            f32col("shift_x"),
        ) else {
            continue;
        };
        m.t.extend(t.values().iter());
        m.shift_y.extend(y.values().iter());
        m.shift_x.extend(x.values().iter());
    }
    let cut = m.t.len().saturating_sub(MAX_POINTS);
    m.t.drain(..cut);
    m.shift_y.drain(..cut);
    m.shift_x.drain(..cut);
    m
}

#[derive(Debug, Serialize)]
pub struct Trace {
    pub roi: i32,
    /// One value per time of [`TracesView::t`] (null: no row for that frame).
    pub values: Vec<Option<f32>>,
}

#[derive(Debug, Serialize)]
pub struct TracesView {
    pub stream: String,
    pub column: String,
    pub t: Vec<f64>,
    pub traces: Vec<Trace>,
}

/// `column` (e.g. `dff`) of the chosen ROIs from a traces stream's batches, by frame.
pub fn traces_view(
    stream: &str,
    batches: &[RecordBatch],
    rois: &[i32],
    column: &str,
) -> Result<TracesView, String> {
    let chosen: Vec<i32> = rois.iter().copied().take(MAX_TRACES).collect();
    let mut by_frame: BTreeMap<i64, (f64, HashMap<i32, f32>)> = BTreeMap::new();
    for b in batches {
        let (Some(f), Some(t), Some(roi), Some(v)) = (
            b.column_by_name(FRAME_INDEX)
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
            b.column_by_name(TIME_S)
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
            b.column_by_name(ROI)
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            b.column_by_name(column)
                .and_then(|c| c.as_primitive_opt::<Float32Type>()),
        ) else {
            return Err(format!(
                "not a traces stream with a Float32 `{column}` column"
            ));
        };
        for r in 0..b.num_rows() {
            if !chosen.contains(&roi.value(r)) || v.is_null(r) {
                continue;
            }
            let entry = by_frame
                .entry(f.value(r))
                .or_insert_with(|| (t.value(r), HashMap::new()));
            entry.1.insert(roi.value(r), v.value(r));
        }
    }
    let frames: Vec<&(f64, HashMap<i32, f32>)> = by_frame.values().collect();
    let frames = &frames[frames.len().saturating_sub(MAX_POINTS)..];
    Ok(TracesView {
        stream: stream.to_string(),
        column: column.to_string(),
        t: frames.iter().map(|(t, _)| *t).collect(),
        traces: chosen
            .iter()
            .map(|&roi| Trace {
                roi,
                values: frames.iter().map(|(_, v)| v.get(&roi).copied()).collect(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::FixedSizeListArray;
    use arrow::array::{ArrayRef, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use pipelines::stream::{keys, PIXELS};
    use std::sync::Arc;

    #[test]
    fn a_square_roi_is_outlined_by_its_edge_cells_with_its_label() {
        // ROI 7: the 3 × 3 square at (1..4, 2..5); its middle cell is not on the outline.
        let schema = Arc::new(Schema::new(vec![
            Field::new(ROI, DataType::Int32, false),
            Field::new(ROI_Y, DataType::Int32, false),
            Field::new(ROI_X, DataType::Int32, false),
        ]));
        let cells: Vec<(i32, i32)> = (1..4).flat_map(|y| (2..5).map(move |x| (y, x))).collect();
        let rois = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![7; cells.len()])) as ArrayRef,
                Arc::new(Int32Array::from_iter_values(cells.iter().map(|c| c.0))),
                Arc::new(Int32Array::from_iter_values(cells.iter().map(|c| c.1))),
            ],
        )
        .unwrap();
        let labels = HashMap::from([("7".to_string(), "predictable".to_string())]);
        let out = outlines(&[rois], 1, &labels);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].label.as_deref(), Some("predictable"));
        assert_eq!(out[0].cells.len(), 2 * 8);
        assert!(
            !out[0].cells.chunks(2).any(|c| c == [2, 3]),
            "the middle is inside"
        );
    }

    #[test]
    fn the_latest_frame_is_shrunk_and_scaled_to_8_bits_with_its_shifts() {
        // Two frames of 300 × 2; the second is a ramp over x. 300 px shrink by 3 to 100 × 1.
        let (h, w) = (300usize, 2usize);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new(FRAME_INDEX, DataType::Int64, false),
                Field::new(TIME_S, DataType::Float64, false),
                Field::new(
                    PIXELS,
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", DataType::Int16, false)),
                        (h * w) as i32,
                    ),
                    false,
                ),
                Field::new("shift_y", DataType::Float32, false),
                Field::new("shift_x", DataType::Float32, false),
            ],
            HashMap::from([
                (keys::LAYOUT.to_string(), "frames".to_string()),
                (keys::HEIGHT.to_string(), h.to_string()),
                (keys::WIDTH.to_string(), w.to_string()),
            ]),
        ));
        let mut values: Vec<i16> = vec![0; h * w];
        values.extend((0..h * w).map(|i| (i / w) as i16));
        let pixels = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Int16, false)),
            (h * w) as i32,
            Arc::new(Int16Array::from(values)),
            None,
        )
        .unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![10, 11])),
                Arc::new(Float64Array::from(vec![0.0, 0.1])),
                Arc::new(pixels),
                Arc::new(Float32Array::from(vec![0.5, -0.25])),
                Arc::new(Float32Array::from(vec![1.0, 2.0])),
            ],
        )
        .unwrap();
        let v = frame_view("f", &[batch], &[], &HashMap::new()).unwrap();
        assert_eq!(
            (v.frame_index, v.scale, v.image_height, v.image_width),
            (11, 3, 100, 1)
        );
        assert_eq!(v.pixels.len(), 100);
        assert!(
            v.pixels.windows(2).all(|p| p[0] <= p[1]),
            "a ramp stays a ramp"
        );
        assert_eq!((v.pixels[0], v.pixels[99]), (0, 255));
        assert_eq!(v.motion.shift_y, vec![0.5, -0.25]);
        assert_eq!(v.motion.t, vec![0.0, 0.1]);
    }
}
