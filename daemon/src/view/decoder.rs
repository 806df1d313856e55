//! The decoder view: a `teb_decode` output's live transfer-entropy rate and its prediction of
//! each target column against the actual value.

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Float64Type};
use arrow::record_batch::RecordBatch;
use pipelines::stream::TIME_S;
use serde::Serialize;

use super::imaging::MAX_POINTS;

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub predicted: Vec<Option<f32>>,
    pub actual: Vec<Option<f32>>,
}

#[derive(Debug, Serialize)]
pub struct DecoderView {
    pub stream: String,
    pub t: Vec<f64>,
    pub rate_bits_per_s: Vec<Option<f32>>,
    pub targets: Vec<Target>,
}

fn floats(batches: &[RecordBatch], name: &str) -> Vec<Option<f32>> {
    batches
        .iter()
        .flat_map(|b| {
            match b
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float32Type>())
            {
                Some(c) => c.iter().collect::<Vec<_>>(),
                None => vec![None; b.num_rows()],
            }
        })
        .collect()
}

/// The latest rows of a `teb_decode` output (`batches`, oldest first).
pub fn decoder_view(stream: &str, batches: &[RecordBatch]) -> Result<DecoderView, String> {
    let schema = batches.first().ok_or("no decoded bin yet")?.schema();
    let t: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(TIME_S)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .map(|c| c.values().to_vec())
                .unwrap_or_default()
        })
        .collect();
    let keep = t.len().saturating_sub(MAX_POINTS);
    let last = |v: Vec<Option<f32>>| v.get(keep..).map(<[_]>::to_vec).unwrap_or_default();
    let targets = schema
        .fields()
        .iter()
        .filter_map(|f| f.name().strip_prefix("predicted_"))
        .map(|name| Target {
            name: name.to_string(),
            predicted: last(floats(batches, &format!("predicted_{name}"))),
            actual: last(floats(batches, &format!("actual_{name}"))),
        })
        .collect();
    Ok(DecoderView {
        stream: stream.to_string(),
        t: t[keep..].to_vec(),
        rate_bits_per_s: last(floats(batches, "rate_bits_per_s")),
        targets,
    })
}
