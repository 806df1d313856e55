//! The probe view: the last seconds of a continuous stream, a few channels chosen by depth,
//! decimated to a min/max envelope per screen column, with the spikes detected on it.

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int16Type, Int32Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use pipelines::stream::{keys, parse_rate, ChannelKind, SAMPLE_INDEX};
use serde::{Deserialize, Serialize};

/// Most channels one view draws, columns per channel and spikes: with these an update stays
/// under 256 KB of JSON (µV as integers; the test asks for the most).
pub const MAX_CHANNELS: usize = 32;
pub const MAX_BUCKETS: usize = 500;
pub const MAX_SPIKES: usize = 3000;
pub const MAX_SECONDS: f64 = 10.0;

#[derive(Debug, Clone, Deserialize)]
pub struct ProbeQuery {
    pub stream: String,
    #[serde(default = "default_seconds")]
    pub seconds: f64,
    #[serde(default = "default_channels")]
    pub channels: usize,
    #[serde(default = "default_buckets")]
    pub buckets: usize,
    /// Depth range along the probe, µm (default: all of it).
    pub from_um: Option<f64>,
    pub to_um: Option<f64>,
}

fn default_seconds() -> f64 {
    2.0
}
fn default_channels() -> usize {
    24
}
fn default_buckets() -> usize {
    400
}

#[derive(Debug, Serialize)]
pub struct Channel {
    pub name: String,
    pub y_um: f64,
    pub x_um: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Spikes {
    pub t: Vec<f64>,
    pub y_um: Vec<f64>,
    pub amplitude_uv: Vec<f32>,
}

#[derive(Debug, Serialize)]
pub struct ProbeView {
    pub stream: String,
    /// Window start and end, seconds (`sample_index` / rate).
    pub t0: f64,
    pub t1: f64,
    /// The depth span of the probe's electrodes, µm, for the depth picker.
    pub probe_um: (f64, f64),
    pub channels: Vec<Channel>,
    /// Per channel, per column: the lowest and highest value, µV (`null`: no sample).
    pub min_uv: Vec<Vec<Option<i32>>>,
    pub max_uv: Vec<Vec<Option<i32>>>,
    pub spikes: Spikes,
}

/// An electrode column of the schema: its position in the batch and its geometry.
struct Electrode {
    column: usize,
    name: String,
    y_um: f64,
    x_um: f64,
    uv_per_bit: f64,
}

fn electrodes(schema: &Schema) -> Vec<Electrode> {
    let num = |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok());
    let mut out: Vec<Electrode> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(column, f)| {
            let m = f.metadata();
            let kind = ChannelKind::parse(m.get(keys::CHANNEL_KIND)?)?;
            kind.is_electrode().then(|| Electrode {
                column,
                name: f.name().clone(),
                y_um: num(m, keys::Y_UM).unwrap_or(column as f64),
                x_um: num(m, keys::X_UM).unwrap_or(0.0),
                uv_per_bit: num(m, keys::UV_PER_BIT).unwrap_or(1.0),
            })
        })
        .collect();
    out.sort_by(|a, b| a.y_um.total_cmp(&b.y_um).then(a.x_um.total_cmp(&b.x_um)));
    out
}

/// `n` of `items`, evenly spread (all of them if there are fewer).
fn spread<T>(items: Vec<T>, n: usize) -> Vec<T> {
    if items.len() <= n || n == 0 {
        return items;
    }
    let last = items.len() - 1;
    let picks: Vec<usize> = (0..n).map(|i| i * last / (n - 1).max(1)).collect();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| picks.binary_search(i).is_ok())
        .map(|(_, e)| e)
        .collect()
}

/// The view of `batches` (the stream's latest, oldest first) and of the spikes detected on it.
pub fn probe_view(
    q: &ProbeQuery,
    schema: &Schema,
    batches: &[RecordBatch],
    spikes: &[RecordBatch],
) -> Result<ProbeView, String> {
    let rate = schema
        .metadata()
        .get(keys::SAMPLING_HZ)
        .ok_or("the stream has no sampling rate")
        .and_then(|t| parse_rate(t).map_err(|_| "the stream's sampling rate is not a number"))?;
    let all = electrodes(schema);
    let probe_um = (
        all.first().map_or(0.0, |e| e.y_um),
        all.last().map_or(0.0, |e| e.y_um),
    );
    let (from, to) = (
        q.from_um.unwrap_or(f64::NEG_INFINITY),
        q.to_um.unwrap_or(f64::INFINITY),
    );
    let geometry: HashMap<usize, f64> = all.iter().map(|e| (e.column, e.y_um)).collect();
    let in_range: Vec<Electrode> = all
        .into_iter()
        .filter(|e| e.y_um >= from && e.y_um <= to)
        .collect();
    let chosen = spread(in_range, q.channels.clamp(1, MAX_CHANNELS));
    let buckets = q.buckets.clamp(10, MAX_BUCKETS);
    let seconds = q.seconds.clamp(0.05, MAX_SECONDS);

    let index = |b: &RecordBatch| {
        b.column_by_name(SAMPLE_INDEX)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .cloned()
    };
    let last = batches
        .iter()
        .rev()
        .find_map(|b| {
            index(b)
                .filter(|i| !i.is_empty())
                .map(|i| i.value(i.len() - 1))
        })
        .unwrap_or(0);
    let span = (seconds * rate).max(1.0);
    let start = last as f64 - span;
    let bucket_of = |s: i64| (((s as f64 - start) / span) * buckets as f64) as usize;
    let mut lo = vec![vec![i16::MAX; buckets]; chosen.len()];
    let mut hi = vec![vec![i16::MIN; buckets]; chosen.len()];
    let mut seen = vec![false; buckets];
    for b in batches {
        let Some(idx) = index(b) else { continue };
        let rows: Vec<(usize, usize)> = idx
            .values()
            .iter()
            .enumerate()
            .filter(|(_, &s)| s as f64 > start)
            .map(|(r, &s)| (r, bucket_of(s).min(buckets - 1)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        for &(_, bucket) in &rows {
            seen[bucket] = true;
        }
        for (k, e) in chosen.iter().enumerate() {
            let Some(values) = b.column(e.column).as_primitive_opt::<Int16Type>() else {
                continue;
            };
            let values = values.values();
            for &(r, bucket) in &rows {
                let v = values[r];
                lo[k][bucket] = lo[k][bucket].min(v);
                hi[k][bucket] = hi[k][bucket].max(v);
            }
        }
    }
    let to_uv = |e: &Electrode, values: &[i16]| -> Vec<Option<i32>> {
        values
            .iter()
            .zip(&seen)
            .map(|(&v, &seen)| seen.then(|| (v as f64 * e.uv_per_bit).round() as i32))
            .collect()
    };
    let min_uv = chosen.iter().zip(&lo).map(|(e, l)| to_uv(e, l)).collect();
    let max_uv = chosen.iter().zip(&hi).map(|(e, h)| to_uv(e, h)).collect();

    let mut found = Spikes::default();
    for b in spikes.iter().rev() {
        let (Some(s), Some(ch), Some(amp)) = (
            b.column_by_name(SAMPLE_INDEX)
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
            b.column_by_name("channel")
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            b.column_by_name("amplitude_uv")
                .and_then(|c| c.as_primitive_opt::<Float32Type>()),
        ) else {
            continue;
        };
        for r in (0..b.num_rows()).rev() {
            let sample = s.value(r);
            if (sample as f64) <= start || sample > last {
                continue;
            }
            // `channel` is the saved-channel index: column `channel + 1`, after sample_index.
            let Some(&y) = geometry.get(&(ch.value(r) as usize + 1)) else {
                continue;
            };
            if y < from || y > to || found.t.len() >= MAX_SPIKES {
                continue;
            }
            // Rounded to what a screen shows (0.1 ms, 0.1 µV): the JSON stays small.
            found.t.push((sample as f64 / rate * 1e4).round() / 1e4);
            found.y_um.push(y);
            found
                .amplitude_uv
                .push((amp.value(r) * 10.0).round() / 10.0);
        }
    }
    Ok(ProbeView {
        stream: q.stream.clone(),
        t0: start.max(0.0) / rate,
        t1: last as f64 / rate,
        probe_um,
        channels: chosen
            .iter()
            .map(|e| Channel {
                name: e.name.clone(),
                y_um: e.y_um,
                x_um: e.x_um,
            })
            .collect(),
        min_uv,
        max_uv,
        spikes: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float32Array, Int16Array, Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    /// Four AP channels listed out of depth order, 2 µV per bit, 1 kHz.
    fn schema() -> Arc<Schema> {
        let mut fields = vec![Field::new(SAMPLE_INDEX, DataType::Int64, false)];
        for (name, y) in [("AP0", 60.0), ("AP1", 0.0), ("AP2", 40.0), ("AP3", 20.0)] {
            fields.push(
                Field::new(name, DataType::Int16, false).with_metadata(HashMap::from([
                    (keys::CHANNEL_KIND.to_string(), "ap".to_string()),
                    (keys::Y_UM.to_string(), format!("{y}")),
                    (keys::UV_PER_BIT.to_string(), "2".to_string()),
                ])),
            );
        }
        Arc::new(Schema::new_with_metadata(
            fields,
            HashMap::from([(keys::SAMPLING_HZ.to_string(), "1000".to_string())]),
        ))
    }

    #[test]
    fn channels_by_depth_min_max_per_column_in_microvolts_and_spikes_on_their_channel() {
        let schema = schema();
        // 2000 samples; channel c holds c at every sample but one peak of -100 (sample 1500).
        let n = 2000i64;
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(0..n))];
        for c in 0..4i16 {
            cols.push(Arc::new(Int16Array::from_iter_values((0..n).map(|s| {
                if s == 1500 {
                    -100
                } else {
                    c
                }
            }))));
        }
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let spikes_schema = Arc::new(Schema::new(vec![
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new("channel", DataType::Int32, false),
            Field::new("amplitude_uv", DataType::Float32, false),
        ]));
        let spikes = RecordBatch::try_new(
            spikes_schema,
            vec![
                Arc::new(Int64Array::from(vec![500, 1500])),
                Arc::new(Int32Array::from(vec![0, 2])),
                Arc::new(Float32Array::from(vec![-80.0, -200.0])),
            ],
        )
        .unwrap();
        let q = ProbeQuery {
            stream: "p".into(),
            seconds: 1.0,
            channels: 3,
            buckets: 10,
            from_um: Some(0.0),
            to_um: Some(45.0),
        };
        let v = probe_view(&q, &schema, &[batch], &[spikes]).unwrap();
        // AP1 (0 µm), AP3 (20), AP2 (40): AP0 at 60 µm is outside the range.
        let names: Vec<&str> = v.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["AP1", "AP3", "AP2"]);
        assert_eq!(v.probe_um, (0.0, 60.0));
        assert_eq!((v.t0, v.t1), (0.999, 1.999));
        // The last second (samples 1000..=1999) in 10 columns; sample 1500 is in column 5.
        assert_eq!(v.max_uv[1], vec![Some(6); 10], "AP3 holds 3 = 6 µV");
        let col5: Vec<Option<i32>> = v.min_uv.iter().map(|m| m[5]).collect();
        assert_eq!(col5, vec![Some(-200); 3]);
        assert_eq!(v.min_uv[2][4], Some(4), "AP2 holds 2 = 4 µV");
        // Only the spike inside the window, on AP2's depth.
        assert_eq!(v.spikes.t, vec![1.5]);
        assert_eq!(v.spikes.y_um, vec![40.0]);
        assert_eq!(v.spikes.amplitude_uv, vec![-200.0]);
    }
}
