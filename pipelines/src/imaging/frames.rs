//! A frames batch's columns, checked once for every transform that reads frames.

use arrow::array::{Array, FixedSizeListArray, Float64Array, Int16Array, Int64Array};
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

impl<'a> Frames<'a> {
    /// The frames of `batch` (stream `sid`, named in errors), its layout, sizes and columns
    /// checked.
    pub fn of(batch: &'a RecordBatch, sid: &str) -> Result<Self, ComponentError> {
        let bad = |why: String| ComponentError::Other(format!("stream `{sid}`: {why}"));
        let schema = batch.schema_ref();
        if Layout::of(schema) != Some(Layout::Frames) {
            return Err(bad("not a frames stream".into()));
        }
        let dim = |k: &'static str| -> Result<usize, ComponentError> {
            schema
                .metadata()
                .get(k)
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| bad(format!("no valid `{k}` in the schema metadata")))
        };
        let (h, w) = (dim(keys::HEIGHT)?, dim(keys::WIDTH)?);
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
        if list.value_length() as usize != h * w {
            return Err(bad(format!(
                "frames of {} pixels, but the metadata says {h}×{w}",
                list.value_length()
            )));
        }
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
