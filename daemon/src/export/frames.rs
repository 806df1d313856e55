//! What both formats read the same way: dF/F frame by frame (frames × ROIs), and a behaviour
//! stream's numeric columns batch by batch.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use pipelines::storage::StoredStream;

use super::units::{has_column, Plane};
use super::{rate_of, typed, ExportError, Failed, Progress, Selection};

/// The plane's dF/F frame by frame: `on_row` gets each frame's values for the plane's ROIs in
/// order (NaN where a ROI has none), and a row of NaN for each frame missing in between (none
/// normally). Returns the first frame's time, if any frame was read.
pub(super) fn dff_rows(
    sel: &Selection,
    plane: &Plane,
    progress: &Progress,
    mut on_row: impl FnMut(&[f32]) -> Result<(), Failed>,
) -> Result<Option<f64>, Failed> {
    let n = plane.rois.len();
    let at: std::collections::HashMap<i32, usize> = plane
        .rois
        .iter()
        .enumerate()
        .map(|(k, r)| (r.0, k))
        .collect();
    let mut row = vec![f32::NAN; n];
    let mut frame: Option<i64> = None;
    let mut first = None;
    let cols = ["frame_index", "time_s", "roi", "dff"];
    for batch in sel.batches(&plane.traces, &cols) {
        let b = sel.in_time(&batch?, 1)?;
        let id = &plane.traces.stream_id;
        let fi = typed::<Int64Type>(&b, 0, id, "frame_index")?;
        let t = typed::<Float64Type>(&b, 1, id, "time_s")?;
        let roi = typed::<Int32Type>(&b, 2, id, "roi")?;
        let v = typed::<Float32Type>(&b, 3, id, "dff")?;
        for i in 0..b.num_rows() {
            let f = fi.value(i);
            match frame {
                Some(cur) if cur == f => {}
                Some(cur) => {
                    on_row(&row)?;
                    row.fill(f32::NAN);
                    for _ in cur + 1..f {
                        on_row(&row)?;
                    }
                    frame = Some(f);
                }
                None => {
                    frame = Some(f);
                    first = Some(t.value(i));
                }
            }
            if let Some(&k) = at.get(&roi.value(i)) {
                row[k] = if v.is_null(i) { f32::NAN } else { v.value(i) };
            }
        }
        progress.rows(b.num_rows() as u64);
    }
    if frame.is_some() {
        on_row(&row)?;
    }
    Ok(first)
}

/// A behaviour stream's numeric columns (but its index and time), each with the type it is
/// written as: `Float32`, `Float64`, or `Int64` for integers.
pub(super) fn behaviour_columns(
    stream: &StoredStream,
) -> Result<Vec<(String, DataType)>, ExportError> {
    if !has_column(stream, "time_s") {
        return Err(ExportError::Stream(
            stream.stream_id.clone(),
            "no `time_s` column".into(),
        ));
    }
    let Some(schema) = &stream.schema else {
        return Ok(Vec::new());
    };
    Ok(schema
        .fields
        .iter()
        .filter(|f| !matches!(f.name.as_str(), "time_s" | "sample_index" | "frame_index"))
        .filter_map(|f| {
            let ty = match f.data_type.as_str() {
                "Float32" => DataType::Float32,
                "Float64" => DataType::Float64,
                "Int8" | "Int16" | "Int32" | "Int64" | "UInt8" | "UInt16" | "UInt32" => {
                    DataType::Int64
                }
                _ => return None,
            };
            Some((f.name.clone(), ty))
        })
        .collect())
}

/// The stream's `columns` batch by batch, in the time range: `on_batch` gets the times and each
/// column cast to its type.
pub(super) fn behaviour_batches(
    sel: &Selection,
    stream: &StoredStream,
    columns: &[(String, DataType)],
    progress: &Progress,
    mut on_batch: impl FnMut(&[f64], &[ArrayRef]) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let mut names: Vec<&str> = vec!["time_s"];
    names.extend(columns.iter().map(|(n, _)| n.as_str()));
    let id = &stream.stream_id;
    for batch in sel.batches(stream, &names) {
        let b = sel.in_time(&batch?, 0)?;
        let t = typed::<Float64Type>(&b, 0, id, "time_s")?;
        let mut cast = Vec::with_capacity(columns.len());
        for (k, (_, ty)) in columns.iter().enumerate() {
            cast.push(
                arrow::compute::cast(b.column(k + 1), ty)
                    .map_err(|e| ExportError::Stream(id.clone(), e.to_string()))?,
            );
        }
        on_batch(t.values(), &cast)?;
        progress.rows(b.num_rows() as u64);
    }
    Ok(())
}

/// The first time of a stream's rows in the time range, when they are sampled at the stream's
/// rate (each within a thousandth of a period of `first + i / rate`), so that a start and a
/// rate can stand for their timestamps.
pub(super) fn regular_start(
    sel: &Selection,
    stream: &StoredStream,
) -> Result<Option<(f64, f64)>, ExportError> {
    let Ok(rate) = rate_of(stream) else {
        return Ok(None);
    };
    let mut first = None;
    let mut i = 0u64;
    for batch in sel.batches(stream, &["time_s"]) {
        let b = sel.in_time(&batch?, 0)?;
        for &t in typed::<Float64Type>(&b, 0, &stream.stream_id, "time_s")?.values() {
            let t0 = *first.get_or_insert(t);
            if (t - (t0 + i as f64 / rate)).abs() > 1e-3 / rate {
                return Ok(None);
            }
            i += 1;
        }
    }
    Ok(first.map(|t0| (t0, rate)))
}
