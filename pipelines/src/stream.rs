//! What a stream is: its layout, rate, channels and geometry, carried in Arrow schema metadata so
//! that every batch, every stored file and every Python client sees the same description.
//!
//! Continuous layout: `sample_index: Int64` then one `Int16` column per saved channel, raw ADC
//! values. Frames layout: `frame_index: Int64`, `time_s: Float64`, `pixels: FixedSizeList<Int16>`
//! (row-major, height · width in the schema metadata). Traces layout (per-ROI fluorescence, one
//! row per ROI per frame, so that a changing set of neurons never changes the schema):
//! `frame_index: Int64`, `time_s: Float64`, `roi: Int32`, then Float32 value columns (`f`,
//! `fneu`, `dff`, ...). ROIs layout (one row per ROI pixel): `roi: Int32`, `y: Int32`, `x: Int32`,
//! `weight: Float32`, with the image height and width in the metadata.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

mod interleaved;
pub use interleaved::{
    batch_from_interleaved, batch_from_samples, deinterleave, deinterleave_into, samples_fitting,
    samples_from_le_bytes,
};

/// Schema-level metadata keys.
pub mod keys {
    pub const STREAM_ID: &str = "neurod.stream_id";
    /// `continuous`, `frames`, `events` or `table`.
    pub const LAYOUT: &str = "neurod.layout";
    /// Acquisition kind: `ap`, `lf`, `nidq`, `openephys`, `behaviour`, `twophoton`, ...
    pub const STREAM_KIND: &str = "neurod.stream_kind";
    /// Exact decimal text of the sampling rate (Hz), as the acquisition wrote it.
    pub const SAMPLING_HZ: &str = "neurod.sampling_hz";
    /// Acquisition's own index of the first sample of the file (SpikeGLX `firstSample`,
    /// Open Ephys `sample_numbers[0]`); `sample_index` itself counts from 0 at the file start.
    pub const FIRST_SAMPLE: &str = "neurod.first_sample";
    pub const PROBE: &str = "neurod.probe";
    pub const HEIGHT: &str = "neurod.height";
    pub const WIDTH: &str = "neurod.width";
    /// Field-level keys.
    pub const CHANNEL_KIND: &str = "neurod.channel_kind";
    pub const UV_PER_BIT: &str = "neurod.uv_per_bit";
    pub const X_UM: &str = "neurod.x_um";
    pub const Y_UM: &str = "neurod.y_um";
    pub const SHANK: &str = "neurod.shank";
}

pub const SAMPLE_INDEX: &str = "sample_index";
pub const FRAME_INDEX: &str = "frame_index";
pub const TIME_S: &str = "time_s";
pub const PIXELS: &str = "pixels";
pub const ROI: &str = "roi";
pub const ROI_Y: &str = "y";
pub const ROI_X: &str = "x";
pub const ROI_WEIGHT: &str = "weight";

fn metadata(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Schema of a frames stream: `frame_index`, `time_s`, `pixels` (row-major, height · width).
pub fn frames_schema(
    stream_id: &str,
    stream_kind: &str,
    height: usize,
    width: usize,
    rate_text: &str,
) -> SchemaRef {
    let md = metadata(&[
        (keys::STREAM_ID, stream_id.to_string()),
        (keys::LAYOUT, Layout::Frames.as_str().to_string()),
        (keys::STREAM_KIND, stream_kind.to_string()),
        (keys::SAMPLING_HZ, rate_text.to_string()),
        (keys::HEIGHT, height.to_string()),
        (keys::WIDTH, width.to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(FRAME_INDEX, DataType::Int64, false),
            Field::new(TIME_S, DataType::Float64, false),
            Field::new(
                PIXELS,
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Int16, false)),
                    // Sources check sizes against limits::MAX_FRAME_PIXELS; an unchecked
                    // size saturates and fails as a batch error instead of wrapping.
                    i32::try_from(height.saturating_mul(width)).unwrap_or(i32::MAX),
                ),
                false,
            ),
        ],
        md,
    ))
}

/// Schema of a traces stream: `frame_index`, `time_s`, `roi`, then one Float32 column per name
/// in `values` (e.g. `["f", "fneu"]`). `rate_text` is the frame rate.
pub fn traces_schema(stream_id: &str, rate_text: &str, values: &[&str]) -> SchemaRef {
    let md = metadata(&[
        (keys::STREAM_ID, stream_id.to_string()),
        (keys::LAYOUT, Layout::Traces.as_str().to_string()),
        (keys::STREAM_KIND, "traces".to_string()),
        (keys::SAMPLING_HZ, rate_text.to_string()),
    ]);
    let mut fields = vec![
        Field::new(FRAME_INDEX, DataType::Int64, false),
        Field::new(TIME_S, DataType::Float64, false),
        Field::new(ROI, DataType::Int32, false),
    ];
    fields.extend(
        values
            .iter()
            .map(|v| Field::new(*v, DataType::Float32, false)),
    );
    Arc::new(Schema::new_with_metadata(fields, md))
}

/// Schema of a ROI-mask table: one row per ROI pixel, `roi`, `y`, `x`, `weight`, on an image of
/// `height` × `width`.
pub fn rois_schema(stream_id: &str, height: usize, width: usize) -> SchemaRef {
    let md = metadata(&[
        (keys::STREAM_ID, stream_id.to_string()),
        (keys::LAYOUT, Layout::Rois.as_str().to_string()),
        (keys::HEIGHT, height.to_string()),
        (keys::WIDTH, width.to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(ROI, DataType::Int32, false),
            Field::new(ROI_Y, DataType::Int32, false),
            Field::new(ROI_X, DataType::Int32, false),
            Field::new(ROI_WEIGHT, DataType::Float32, false),
        ],
        md,
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema metadata lacks `{0}`")]
    Missing(&'static str),
    #[error("schema metadata `{key}` = {value:?} is not valid: {why}")]
    Invalid {
        key: String,
        value: String,
        why: String,
    },
    #[error("column `{0}` has the wrong type or position: {1}")]
    Column(String, String),
    #[error("not a valid frames stream: {0}")]
    Frames(String),
}

/// Layout of the rows of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One row per time sample, one Int16 column per channel.
    Continuous,
    /// One row per image frame.
    Frames,
    /// One row per event (spikes, ground-truth spikes, TTLs).
    Events,
    /// One row per ROI per frame: fluorescence traces.
    Traces,
    /// One row per ROI pixel: ROI masks with weights.
    Rois,
    /// Anything else tabular.
    Table,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Continuous => "continuous",
            Layout::Frames => "frames",
            Layout::Events => "events",
            Layout::Traces => "traces",
            Layout::Rois => "rois",
            Layout::Table => "table",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "continuous" => Layout::Continuous,
            "frames" => Layout::Frames,
            "events" => Layout::Events,
            "traces" => Layout::Traces,
            "rois" => Layout::Rois,
            "table" => Layout::Table,
            _ => return None,
        })
    }
    /// The layout a batch's schema declares, if any.
    pub fn of(schema: &Schema) -> Option<Self> {
        schema
            .metadata()
            .get(keys::LAYOUT)
            .and_then(|s| Layout::parse(s))
    }
}

/// What a saved channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Ap,
    Lf,
    Sync,
    Analog,
    Digital,
}

impl ChannelKind {
    /// A probe contact's signal (AP or LF band), as opposed to sync, analog and digital lines.
    pub fn is_electrode(self) -> bool {
        matches!(self, ChannelKind::Ap | ChannelKind::Lf)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Ap => "ap",
            ChannelKind::Lf => "lf",
            ChannelKind::Sync => "sync",
            ChannelKind::Analog => "analog",
            ChannelKind::Digital => "digital",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ap" => ChannelKind::Ap,
            "lf" => ChannelKind::Lf,
            "sync" => ChannelKind::Sync,
            "analog" => ChannelKind::Analog,
            "digital" => ChannelKind::Digital,
            _ => return None,
        })
    }
}

/// One saved channel. Positions are probe-contact coordinates in µm (x across, y along the
/// shank from the tip), as probeinterface reports them; `None` where the acquisition has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    pub kind: ChannelKind,
    /// Microvolts per ADC step (for analog NI-DAQ channels: µV at the input).
    pub uv_per_bit: Option<f64>,
    pub x_um: Option<f64>,
    pub y_um: Option<f64>,
    pub shank: Option<u32>,
}

/// Description of a continuous stream: enough to build its schema and to interpret raw values.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuousInfo {
    pub stream_id: String,
    /// `ap`, `lf`, `nidq`, `openephys`, `behaviour`, ...
    pub stream_kind: String,
    /// Exact decimal text of the sampling rate, kept so that 29999.757983 stays that.
    pub sampling_hz_text: String,
    pub sampling_hz: f64,
    pub first_sample: i64,
    /// Probe part number or model, where known.
    pub probe: Option<String>,
    pub channels: Vec<ChannelInfo>,
}

impl ContinuousInfo {
    /// Bytes of one interleaved Int16 sample across all saved channels.
    pub fn bytes_per_sample(&self) -> usize {
        self.channels.len() * 2
    }

    pub fn schema(&self) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.channels.len() + 1);
        fields.push(Field::new(SAMPLE_INDEX, DataType::Int64, false));
        for ch in &self.channels {
            let mut md = HashMap::new();
            md.insert(keys::CHANNEL_KIND.to_string(), ch.kind.as_str().to_string());
            if let Some(v) = ch.uv_per_bit {
                md.insert(keys::UV_PER_BIT.to_string(), v.to_string());
            }
            if let Some(v) = ch.x_um {
                md.insert(keys::X_UM.to_string(), v.to_string());
            }
            if let Some(v) = ch.y_um {
                md.insert(keys::Y_UM.to_string(), v.to_string());
            }
            if let Some(v) = ch.shank {
                md.insert(keys::SHANK.to_string(), v.to_string());
            }
            fields.push(Field::new(&ch.name, DataType::Int16, false).with_metadata(md));
        }
        let mut md = HashMap::new();
        md.insert(keys::STREAM_ID.into(), self.stream_id.clone());
        md.insert(keys::LAYOUT.into(), Layout::Continuous.as_str().into());
        md.insert(keys::STREAM_KIND.into(), self.stream_kind.clone());
        md.insert(keys::SAMPLING_HZ.into(), self.sampling_hz_text.clone());
        md.insert(keys::FIRST_SAMPLE.into(), self.first_sample.to_string());
        if let Some(p) = &self.probe {
            md.insert(keys::PROBE.into(), p.clone());
        }
        Arc::new(Schema::new_with_metadata(fields, md))
    }

    /// Reads the description back from a schema (e.g. one pushed by a client over Arrow IPC).
    pub fn from_schema(schema: &Schema) -> Result<Self, SchemaError> {
        let md = schema.metadata();
        let get = |k: &'static str| md.get(k).ok_or(SchemaError::Missing(k));
        match Layout::of(schema) {
            Some(Layout::Continuous) | None => {}
            Some(other) => {
                return Err(SchemaError::Invalid {
                    key: keys::LAYOUT.into(),
                    value: other.as_str().into(),
                    why: "expected a continuous stream".into(),
                })
            }
        }
        let sampling_hz_text = get(keys::SAMPLING_HZ)?.clone();
        let sampling_hz = parse_rate(&sampling_hz_text).map_err(|why| SchemaError::Invalid {
            key: keys::SAMPLING_HZ.into(),
            value: sampling_hz_text.clone(),
            why,
        })?;
        let first = schema.fields().first().ok_or_else(|| {
            SchemaError::Column(SAMPLE_INDEX.into(), "schema has no columns".into())
        })?;
        if first.name() != SAMPLE_INDEX || first.data_type() != &DataType::Int64 {
            return Err(SchemaError::Column(
                first.name().clone(),
                format!("the first column must be `{SAMPLE_INDEX}: Int64`"),
            ));
        }
        let mut channels = Vec::with_capacity(schema.fields().len() - 1);
        for f in schema.fields().iter().skip(1) {
            if f.data_type() != &DataType::Int16 {
                return Err(SchemaError::Column(
                    f.name().clone(),
                    format!("channel columns must be Int16, found {}", f.data_type()),
                ));
            }
            let fm = f.metadata();
            let num = |k: &str| fm.get(k).and_then(|v| v.parse::<f64>().ok());
            channels.push(ChannelInfo {
                name: f.name().clone(),
                kind: fm
                    .get(keys::CHANNEL_KIND)
                    .and_then(|s| ChannelKind::parse(s))
                    .unwrap_or(ChannelKind::Analog),
                uv_per_bit: num(keys::UV_PER_BIT),
                x_um: num(keys::X_UM),
                y_um: num(keys::Y_UM),
                shank: fm.get(keys::SHANK).and_then(|v| v.parse().ok()),
            });
        }
        if channels.is_empty() {
            return Err(SchemaError::Column(
                "<channels>".into(),
                "a continuous stream needs at least one Int16 channel column".into(),
            ));
        }
        Ok(ContinuousInfo {
            stream_id: md.get(keys::STREAM_ID).cloned().unwrap_or_default(),
            stream_kind: md
                .get(keys::STREAM_KIND)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            sampling_hz_text,
            sampling_hz,
            first_sample: md
                .get(keys::FIRST_SAMPLE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            probe: md.get(keys::PROBE).cloned(),
            channels,
        })
    }
}

/// Parses a sampling rate, which must be within [`crate::limits::check_rate`]'s bounds.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) => crate::limits::check_rate(v),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// Replaces the stream id in a schema's metadata (sources rename streams after their component).
pub fn with_stream_id(schema: &Schema, stream_id: &str) -> SchemaRef {
    let mut md = schema.metadata().clone();
    md.insert(keys::STREAM_ID.into(), stream_id.into());
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), md))
}

/// The stream id a batch's schema carries.
pub fn stream_id_of(schema: &Schema) -> Option<&str> {
    schema.metadata().get(keys::STREAM_ID).map(String::as_str)
}

/// Where a continuous batch lies in its stream, by `sample_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSpan {
    pub first: i64,
    /// One past the last sample.
    pub end: i64,
    /// Samples missing between the previous batch and this one (live sources drop batches when
    /// a consumer falls behind, and count them there).
    pub gap: i64,
}

/// The one `sample_index` check of continuous batches, made at ingest and by every transform
/// that reads them: column 0 is a non-null Int64 of consecutive samples, starting at or after
/// `next` (the previous batch's [`SampleSpan::end`]). A gap is allowed; a repeat is not.
pub fn sample_span(batch: &RecordBatch, next: Option<i64>) -> Result<SampleSpan, String> {
    let index = batch
        .columns()
        .first()
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| format!("`{SAMPLE_INDEX}` (column 0) must be a non-null Int64"))?;
    let values = index.values();
    let first = *values.first().ok_or("empty batch")?;
    for (row, pair) in values.windows(2).enumerate() {
        if pair[0].checked_add(1) != Some(pair[1]) {
            return Err(format!(
                "`{SAMPLE_INDEX}` must be consecutive: {} (row {} of the batch) follows {}",
                pair[1],
                row + 1,
                pair[0]
            ));
        }
    }
    let end = values
        .last()
        .and_then(|last| last.checked_add(1))
        .ok_or_else(|| format!("`{SAMPLE_INDEX}` overflows"))?;
    span_after(first, end, next)
}

/// [`sample_span`] of samples `first..end` (a batch known to be consecutive).
pub fn span_after(first: i64, end: i64, next: Option<i64>) -> Result<SampleSpan, String> {
    let gap = match next {
        Some(next) if first < next => {
            return Err(format!(
                "batch starts at sample {first}, but samples up to {} were already received",
                next - 1
            ))
        }
        Some(next) => first.saturating_sub(next),
        None => 0,
    };
    Ok(SampleSpan { first, end, gap })
}

/// What `neurod inspect --json` prints for a continuous stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamDescription {
    pub path: String,
    pub stream_kind: String,
    pub sampling_hz: f64,
    pub saved_channels: usize,
    /// `None` while the file is still being written ("growing").
    pub duration_s: Option<f64>,
    pub probe: Option<String>,
    pub channels: Vec<ChannelDescription>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelDescription {
    pub index: usize,
    pub name: String,
    pub kind: ChannelKind,
    pub x_um: Option<f64>,
    pub y_um: Option<f64>,
    pub shank: Option<u32>,
    pub uv_per_bit: Option<f64>,
}

impl StreamDescription {
    pub fn new(path: String, info: &ContinuousInfo, duration_s: Option<f64>) -> Self {
        StreamDescription {
            path,
            stream_kind: info.stream_kind.clone(),
            sampling_hz: info.sampling_hz,
            saved_channels: info.channels.len(),
            duration_s,
            probe: info.probe.clone(),
            channels: info
                .channels
                .iter()
                .enumerate()
                .map(|(index, c)| ChannelDescription {
                    index,
                    name: c.name.clone(),
                    kind: c.kind,
                    x_um: c.x_um,
                    y_um: c.y_um,
                    shank: c.shank,
                    uv_per_bit: c.uv_per_bit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_round_trip_keeps_exact_rate_and_geometry() {
        let info = ContinuousInfo {
            stream_id: "probe0".into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "29999.757983".into(),
            sampling_hz: 29999.757983,
            first_sample: 12,
            probe: Some("NP1000".into()),
            channels: vec![
                ChannelInfo {
                    name: "AP0".into(),
                    kind: ChannelKind::Ap,
                    uv_per_bit: Some(2.34375),
                    x_um: Some(16.0),
                    y_um: Some(0.0),
                    shank: Some(0),
                },
                ChannelInfo {
                    name: "SY0".into(),
                    kind: ChannelKind::Sync,
                    uv_per_bit: None,
                    x_um: None,
                    y_um: None,
                    shank: None,
                },
            ],
        };
        let back = ContinuousInfo::from_schema(&info.schema()).unwrap();
        assert_eq!(back, info);
        assert_eq!(
            info.schema().metadata()[keys::SAMPLING_HZ],
            "29999.757983",
            "rate text must not be rounded"
        );
    }

    #[test]
    fn schema_without_rate_is_rejected() {
        let s = Schema::new(vec![
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new("c0", DataType::Int16, false),
        ]);
        let e = ContinuousInfo::from_schema(&s).unwrap_err();
        assert!(e.to_string().contains(keys::SAMPLING_HZ), "{e}");
    }
}
