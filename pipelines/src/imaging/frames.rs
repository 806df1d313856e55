//! A frames batch's columns, checked once for every transform that reads frames.

use arrow::array::{Array, FixedSizeListArray, Float64Array, Int16Array, Int64Array};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

use crate::component::ComponentError;
use crate::stream::{keys, Layout, FRAME_INDEX, PIXELS, TIME_S};

/// A frames batch's columns, checked.
pub struct Frames<'a> {
    /// Frame height and width (pixels), from the schema metadata.
    pub h: usize,
    pub w: usize,
    pub index: &'a Int64Array,
    pub time: &'a Float64Array,
    pub list: &'a FixedSizeListArray,
    /// Every frame's pixels, row-major, one after the other (`list.len() · h · w`).
    pub pixels: &'a [i16],
}

/// `neurod.height` × `neurod.width` of a frames or ROIs schema, each positive and their product
/// within [`crate::limits::MAX_FRAME_PIXELS`] (so that `h · w` neither wraps nor allocates
/// gigabytes).
pub fn image_dims(schema: &Schema) -> Result<(usize, usize), String> {
    let dim = |k: &'static str| -> Result<u64, String> {
        let text = schema
            .metadata()
            .get(k)
            .ok_or_else(|| format!("no `{k}` in the schema metadata"))?;
        text.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{k}` = {text:?} is not a positive integer"))
    };
    let (h, w) = (dim(keys::HEIGHT)?, dim(keys::WIDTH)?);
    crate::limits::frame_pixels(h, w)?;
    Ok((h as usize, w as usize))
}

/// Checks a frames schema once for everyone (the `arrow_ipc` source at ingest, every transform
/// that reads frames): layout `frames`, `neurod.height` × `neurod.width` within
/// [`crate::limits::MAX_FRAME_PIXELS`], and the columns `frame_index: Int64`, `time_s: Float64`,
/// `pixels: FixedSizeList<Int16, height·width>`. Returns (height, width).
pub fn check_frames_schema(schema: &Schema) -> Result<(usize, usize), String> {
    if Layout::of(schema) != Some(Layout::Frames) {
        return Err("not a frames stream".into());
    }
    let (h, w) = image_dims(schema)?;
    let n = h * w;
    let column = |name: &str, want: &str, ok: &dyn Fn(&DataType) -> bool| {
        let field = schema
            .field_with_name(name)
            .map_err(|_| format!("no column `{name}`"))?;
        if ok(field.data_type()) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` must be {want}, found {}",
                field.data_type()
            ))
        }
    };
    column(FRAME_INDEX, "Int64", &|t| *t == DataType::Int64)?;
    column(TIME_S, "Float64", &|t| *t == DataType::Float64)?;
    column(
        PIXELS,
        "FixedSizeList<Int16> (cast uint16 pixels to int16 before sending)",
        &|t| matches!(t, DataType::FixedSizeList(item, _) if *item.data_type() == DataType::Int16),
    )?;
    match schema.field_with_name(PIXELS).map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(_, size)) if usize::try_from(*size).ok() == Some(n) => {
            Ok((h, w))
        }
        Ok(DataType::FixedSizeList(_, size)) => Err(format!(
            "frames of {size} pixels, but the metadata says {h}×{w}"
        )),
        _ => Err(format!("no column `{PIXELS}`")),
    }
}

impl<'a> Frames<'a> {
    /// The frames of `batch` (stream `sid`, named in errors): its schema checked by
    /// [`check_frames_schema`], then its columns (no nulls, whole frames).
    pub fn of(batch: &'a RecordBatch, sid: &str) -> Result<Self, ComponentError> {
        let bad = |why: String| ComponentError::Other(format!("stream `{sid}`: {why}"));
        let schema = batch.schema_ref();
        let (h, w) = check_frames_schema(schema).map_err(bad)?;
        let col = |name: &str| {
            schema
                .index_of(name)
                .map(|i| batch.column(i))
                .map_err(|_| bad(format!("no column `{name}`")))
        };
        let index = col(FRAME_INDEX)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad(format!("`{FRAME_INDEX}` is not Int64")))?;
        let time = col(TIME_S)?
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| bad(format!("`{TIME_S}` is not Float64")))?;
        let list = col(PIXELS)?
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| bad(format!("`{PIXELS}` is not a fixed-size list")))?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Int16Array>()
            .ok_or_else(|| bad(format!("`{PIXELS}` items are not Int16")))?;
        if list.null_count() > 0
            || values.null_count() > 0
            || index.null_count() > 0
            || time.null_count() > 0
        {
            return Err(bad("null frames or pixels".into()));
        }
        // A sliced batch starts its list at an offset.
        let start = list.offset() * h * w;
        let pixels = values
            .values()
            .get(start..start + list.len() * h * w)
            .ok_or_else(|| bad("pixel buffer shorter than its frames".into()))?;
        Ok(Frames {
            h,
            w,
            index,
            time,
            list,
            pixels,
        })
    }
}
