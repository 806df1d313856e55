//! Reading the traces layout (stream.rs: `frame_index`, `time_s`, `roi`, Float32 values) for the
//! calcium transforms (`dff`, `moments`, `predictability`), with errors that name the stream.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int32Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

use crate::component::ComponentError;
use crate::stream::{self, keys, parse_rate, FRAME_INDEX, ROI, TIME_S};

pub(crate) fn err(stream: &str, msg: impl std::fmt::Display) -> ComponentError {
    ComponentError::Other(format!("stream `{stream}`: {msg}"))
}

/// The stream id a batch carries (`unnamed` without one).
pub(crate) fn stream_id(schema: &Schema) -> String {
    stream::stream_id_of(schema)
        .unwrap_or("unnamed")
        .to_string()
}

/// The stream's rate (frames per second) from its schema.
pub(crate) fn rate(schema: &Schema, sid: &str) -> Result<f64, ComponentError> {
    let text = schema
        .metadata()
        .get(keys::SAMPLING_HZ)
        .ok_or_else(|| err(sid, format!("no `{}` (the frame rate)", keys::SAMPLING_HZ)))?;
    parse_rate(text).map_err(|e| err(sid, format!("frame rate: {e}")))
}

/// A non-null Int64 column.
pub(crate) fn int64<'a>(
    batch: &'a RecordBatch,
    name: &str,
    sid: &str,
) -> Result<&'a Int64Array, ComponentError> {
    batch
        .schema()
        .index_of(name)
        .ok()
        .and_then(|i| batch.column(i).as_any().downcast_ref::<Int64Array>())
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| err(sid, format!("`{name}` must be a non-null Int64 column")))
}

pub(crate) fn frame_index<'a>(
    batch: &'a RecordBatch,
    sid: &str,
) -> Result<&'a Int64Array, ComponentError> {
    int64(batch, FRAME_INDEX, sid)
}

pub(crate) fn roi<'a>(batch: &'a RecordBatch, sid: &str) -> Result<&'a Int32Array, ComponentError> {
    batch
        .schema()
        .index_of(ROI)
        .ok()
        .and_then(|i| batch.column(i).as_any().downcast_ref::<Int32Array>())
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| err(sid, format!("`{ROI}` must be a non-null Int32 column")))
}

pub(crate) fn time_s<'a>(
    batch: &'a RecordBatch,
    sid: &str,
) -> Result<&'a Float64Array, ComponentError> {
    batch
        .schema()
        .index_of(TIME_S)
        .ok()
        .and_then(|i| batch.column(i).as_any().downcast_ref::<Float64Array>())
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| err(sid, format!("`{TIME_S}` must be a non-null Float64 column")))
}

/// A numeric column as f64, nulls as NaN (missing); `None` when the batch has no such column.
pub(crate) fn values_f64(
    batch: &RecordBatch,
    name: &str,
    sid: &str,
) -> Result<Option<Arc<Float64Array>>, ComponentError> {
    let Ok(i) = batch.schema().index_of(name) else {
        return Ok(None);
    };
    let col = batch.column(i);
    if !col.data_type().is_numeric() {
        return Err(err(
            sid,
            format!("`{name}` is {}, not a numeric column", col.data_type()),
        ));
    }
    let c =
        cast(col, &DataType::Float64).map_err(|e| err(sid, format!("`{name}` as Float64: {e}")))?;
    let a = c
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| err(sid, format!("`{name}` as Float64")))?;
    if a.null_count() == 0 {
        return Ok(Some(Arc::new(a.clone())));
    }
    Ok(Some(Arc::new(Float64Array::from_iter_values(
        a.iter().map(|v| v.unwrap_or(f64::NAN)),
    ))))
}
