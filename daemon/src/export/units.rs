//! Who the units of an export are: a probe's channels (from the stored raw stream's channel
//! map) and an imaging plane's ROIs (with their last POYO-SSL label), and the `units` table
//! that lists them.

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use pipelines::storage::{SchemaJson, StoredStream};
use pipelines::stream::ChannelKind;
use rust_hdf5::H5File;

use super::h5;
use super::{keys, meta, rate_of, typed, ExportError, Selection, SOURCE_STREAM_KEY};

/// One probe's channels as units.
pub(super) struct Probe {
    pub(super) spikes: StoredStream,
    pub(super) channels: Vec<Channel>,
    pub(super) first_unit: usize,
}

/// A probe channel: its name (`<raw stream>/<field>`), the raw stream's field holding its
/// samples, its position on the probe and its gain (NaN where the store does not say).
#[derive(Debug, Clone)]
pub(super) struct Channel {
    pub(super) name: String,
    pub(super) field: String,
    pub(super) x_um: f64,
    pub(super) y_um: f64,
    pub(super) shank: i64,
    pub(super) uv_per_bit: f64,
}

/// One imaging plane's ROIs as units.
pub(super) struct Plane {
    pub(super) traces: StoredStream,
    pub(super) rate_hz: f64,
    /// The ROIs exported, ascending, with (label, skew, excess kurtosis).
    pub(super) rois: Vec<(i32, String, f64, f64)>,
}

pub(super) fn has_column(s: &StoredStream, name: &str) -> bool {
    s.schema
        .as_ref()
        .is_some_and(|sc| sc.fields.iter().any(|f| f.name == name))
}

/// The chosen dF/F streams, one per imaging plane: a population's copy of a plane's traces
/// (`<traces>.predictable`, stored by a POYO-SSL port) is left out when the plane is chosen too.
pub(super) fn dff_streams(sel: &Selection) -> Vec<StoredStream> {
    let all: Vec<StoredStream> = sel
        .of_kind("traces")
        .into_iter()
        .filter(|s| has_column(s, "dff"))
        .collect();
    all.iter()
        .filter(|s| {
            !all.iter()
                .any(|p| s.stream_id.starts_with(&format!("{}.", p.stream_id)))
        })
        .cloned()
        .collect()
}

/// The probe's channels, from the stored raw stream's field metadata (`neurod.x_um`...), else
/// numbered from the spikes seen.
pub(super) fn channels_of(
    sel: &Selection,
    spikes: &StoredStream,
) -> Result<Vec<Channel>, ExportError> {
    if let Some(raw) = meta(spikes, SOURCE_STREAM_KEY).and_then(|id| sel.stream(id)) {
        if let Some(schema) = &raw.schema {
            let chans = probe_channels(&raw.stream_id, schema);
            if !chans.is_empty() {
                return Ok(chans);
            }
        }
    }
    let mut max = -1i64;
    for batch in sel.batches(spikes, &["channel"]) {
        let batch = batch?;
        if let Some(c) = batch.column(0).as_primitive_opt::<Int32Type>() {
            max = max.max(c.iter().flatten().map(i64::from).max().unwrap_or(-1));
        }
    }
    Ok((0..=max)
        .map(|c| Channel {
            name: format!("{}/ch{c}", spikes.stream_id),
            field: format!("ch{c}"),
            x_um: f64::NAN,
            y_um: f64::NAN,
            shank: -1,
            uv_per_bit: f64::NAN,
        })
        .collect())
}

/// The channels of a raw stream: its probe contacts (AP and LF channels), in order.
pub(super) fn probe_channels(raw_id: &str, schema: &SchemaJson) -> Vec<Channel> {
    schema
        .fields
        .iter()
        .filter(|f| {
            f.metadata
                .get(keys::CHANNEL_KIND)
                .and_then(|k| ChannelKind::parse(k))
                .is_some_and(ChannelKind::is_electrode)
        })
        .map(|f| {
            let num = |k: &str| f.metadata.get(k).and_then(|v| v.parse::<f64>().ok());
            Channel {
                name: format!("{raw_id}/{}", f.name),
                field: f.name.clone(),
                x_um: num(keys::X_UM).unwrap_or(f64::NAN),
                y_um: num(keys::Y_UM).unwrap_or(f64::NAN),
                shank: num(keys::SHANK).map_or(-1, |s| s as i64),
                uv_per_bit: num(keys::UV_PER_BIT).unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The plane's ROIs with their last label, skewness and kurtosis (from `<traces>.neurons`), or
/// the last by `--labels-at`, those of the selected population only.
pub(super) fn rois_of(
    sel: &Selection,
    traces: &StoredStream,
) -> Result<Vec<(i32, String, f64, f64)>, ExportError> {
    let mut last: std::collections::BTreeMap<i32, (i64, String, f64, f64)> = Default::default();
    // The last frame whose labels count (frame k is at k / rate).
    let limit = match sel.labels_at {
        Some(t) => (t * rate_of(traces)?).floor() as i64,
        None => i64::MAX,
    };
    let unlabelled = (i64::MIN, "unlabelled".to_string(), f64::NAN, f64::NAN);
    if let Some(neurons) = sel.stream(&format!("{}.neurons", traces.stream_id)) {
        let cols = ["frame_index", "unit", "label", "skew", "excess_kurtosis"];
        for batch in sel.batches(&neurons, &cols) {
            let b = batch?;
            let id = &neurons.stream_id;
            let text = |at: usize, name: &str| {
                b.column(at).as_string_opt::<i32>().ok_or_else(|| {
                    ExportError::Stream(id.clone(), format!("column `{name}` is not text"))
                })
            };
            let frame = typed::<Int64Type>(&b, 0, id, "frame_index")?;
            let unit = text(1, "unit")?;
            let label = text(2, "label")?;
            let skew = typed::<Float64Type>(&b, 3, id, "skew")?;
            let kurt = typed::<Float64Type>(&b, 4, id, "excess_kurtosis")?;
            for i in 0..b.num_rows() {
                // A unit of a trace stream is its ROI (groups, named otherwise, are not ROIs).
                let Ok(roi) = unit.value(i).parse::<i32>() else {
                    continue;
                };
                let entry = (
                    frame.value(i),
                    label.value(i).to_string(),
                    skew.value(i),
                    kurt.value(i),
                );
                // A ROI labelled only later is listed, unlabelled.
                let e = last.entry(roi).or_insert_with(|| unlabelled.clone());
                if entry.0 <= limit && entry.0 >= e.0 {
                    *e = entry;
                }
            }
        }
    } else {
        let mut max = -1;
        for batch in sel.batches(traces, &["roi"]) {
            if let Some(c) = batch?.column(0).as_primitive_opt::<Int32Type>() {
                max = max.max(c.iter().flatten().max().unwrap_or(-1));
            }
        }
        for r in 0..=max {
            last.insert(r, unlabelled.clone());
        }
    }
    Ok(last
        .into_iter()
        .filter(|(_, (_, label, _, _))| sel.population.admits(label))
        .map(|(roi, (_, label, skew, kurt))| (roi, label, skew, kurt))
        .collect())
}

pub(super) fn write_units(
    file: &H5File,
    probes: &[Probe],
    plane: Option<&Plane>,
) -> h5::Result<()> {
    let g = file.create_group("units")?;
    let mut id = Vec::new();
    let mut kind = Vec::new();
    let mut label = Vec::new();
    let (mut channel, mut roi, mut shank, mut trace) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut x, mut y, mut skew, mut kurt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in probes {
        for (c, ch) in p.channels.iter().enumerate() {
            id.push(ch.name.clone());
            kind.push("channel".to_string());
            label.push("unlabelled".to_string());
            channel.push(c as i64);
            roi.push(-1i64);
            shank.push(ch.shank);
            trace.push(-1i64);
            x.push(ch.x_um);
            y.push(ch.y_um);
            skew.push(f64::NAN);
            kurt.push(f64::NAN);
        }
    }
    if let Some(plane) = plane {
        for (k, (r, l, s, ku)) in plane.rois.iter().enumerate() {
            id.push(format!("{}/roi{r}", plane.traces.stream_id));
            kind.push("roi".to_string());
            label.push(l.clone());
            channel.push(-1);
            roi.push(i64::from(*r));
            shank.push(-1);
            trace.push(k as i64);
            x.push(f64::NAN);
            y.push(f64::NAN);
            skew.push(*s);
            kurt.push(*ku);
        }
    }
    h5::strings(&g, "id", &id)?;
    h5::strings(&g, "kind", &kind)?;
    h5::strings(&g, "label", &label)?;
    h5::array(&g, "channel", &channel)?;
    h5::array(&g, "roi", &roi)?;
    h5::array(&g, "shank", &shank)?;
    h5::array(&g, "trace_index", &trace)?;
    h5::array(&g, "x_um", &x)?;
    h5::array(&g, "y_um", &y)?;
    h5::array(&g, "skew", &skew)?;
    h5::array(&g, "excess_kurtosis", &kurt)?;
    h5::array_dict(&g, &["id", "kind", "label"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::storage::manifest::FieldJson;

    fn field(name: &str, kind: Option<&str>, x: &str) -> FieldJson {
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(k) = kind {
            metadata.insert(keys::CHANNEL_KIND.to_string(), k.to_string());
            metadata.insert(keys::X_UM.to_string(), x.to_string());
            metadata.insert(keys::UV_PER_BIT.to_string(), "2.5".to_string());
        }
        FieldJson {
            name: name.into(),
            data_type: "Int16".into(),
            nullable: false,
            metadata,
        }
    }

    #[test]
    fn probe_channels_are_the_ap_and_lf_contacts_in_order() {
        let schema = SchemaJson {
            metadata: Default::default(),
            fields: vec![
                field("sample_index", None, ""),
                field("AP0", Some("ap"), "16"),
                field("LF0", Some("lf"), "48"),
                field("SY0", Some("sync"), "0"),
                field("AI0", Some("analog"), "0"),
            ],
        };
        let got = probe_channels("p", &schema);
        let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["p/AP0", "p/LF0"]);
        assert_eq!((got[1].field.as_str(), got[1].x_um), ("LF0", 48.0));
        assert_eq!(got[0].uv_per_bit, 2.5);
        assert!(got[0].y_um.is_nan() && got[0].shank == -1);
    }
}
