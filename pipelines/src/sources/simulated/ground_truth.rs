//! What the simulator knows and a sorter or a detector should find: every true spike (events) and
//! every unit or ROI behind them (a table, sent once at the start).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::stream::{keys, Layout, SAMPLE_INDEX, TIME_S};

fn metadata(stream_id: &str, layout: Layout, kind: &str) -> HashMap<String, String> {
    [
        (keys::STREAM_ID, stream_id),
        (keys::LAYOUT, layout.as_str()),
        (keys::STREAM_KIND, kind),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `stream, sample_index, time_s, unit, channel`: one row per true spike.
pub fn events_schema(stream_id: &str) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("stream", DataType::Utf8, false),
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new(TIME_S, DataType::Float64, false),
            Field::new("unit", DataType::Int32, false),
            Field::new("channel", DataType::Int32, false),
        ],
        metadata(stream_id, Layout::Events, "ground_truth"),
    ))
}

/// One row per simulated unit (probes) or ROI (two-photon).
pub fn units_schema(stream_id: &str) -> SchemaRef {
    let f = |name: &str, t: DataType| Field::new(name, t, false);
    Arc::new(Schema::new_with_metadata(
        vec![
            f("stream", DataType::Utf8),
            f("unit", DataType::Int32),
            f("channel", DataType::Int32),
            f("x_um", DataType::Float64),
            f("y_um", DataType::Float64),
            f("amplitude_uv", DataType::Float64),
            f("rate_hz", DataType::Float64),
            f("bursty", DataType::Boolean),
            f("driver", DataType::Boolean),
        ],
        metadata(stream_id, Layout::Table, "ground_truth_units"),
    ))
}

/// One true spike, for the events stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TrueSpike {
    /// Index into the rig's stream ids.
    pub stream: usize,
    /// Probe sample of the trough, or the first frame that shows the spike.
    pub sample_index: i64,
    pub time_s: f64,
    pub unit: i32,
    /// Peak channel (probe) or ROI index (two-photon).
    pub channel: i32,
}

pub fn events_batch(
    schema: &SchemaRef,
    streams: &[String],
    spikes: &[TrueSpike],
) -> Result<RecordBatch, ArrowError> {
    let name = |i: usize| streams.get(i).map(String::as_str).unwrap_or("");
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                spikes.iter().map(|s| name(s.stream)),
            )),
            Arc::new(Int64Array::from_iter_values(
                spikes.iter().map(|s| s.sample_index),
            )),
            Arc::new(Float64Array::from_iter_values(
                spikes.iter().map(|s| s.time_s),
            )),
            Arc::new(Int32Array::from_iter_values(spikes.iter().map(|s| s.unit))),
            Arc::new(Int32Array::from_iter_values(
                spikes.iter().map(|s| s.channel),
            )),
        ],
    )
}

/// One row of the units table. For ROIs: channel = ROI index, x/y = centre in pixels,
/// amplitude_uv = dF/F of one spike's transient, rate_hz = mean spike rate.
/// For driver units rate_hz is the rate at rest (running raises it).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRow {
    pub stream: String,
    pub unit: i32,
    pub channel: i32,
    pub x_um: f64,
    pub y_um: f64,
    pub amplitude_uv: f64,
    pub rate_hz: f64,
    pub bursty: bool,
    pub driver: bool,
}

pub fn units_batch(schema: &SchemaRef, rows: &[UnitRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.stream.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.unit))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.channel))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.x_um))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.y_um))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.amplitude_uv),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.rate_hz),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.bursty).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.driver).collect::<Vec<_>>(),
            )),
        ],
    )
}
