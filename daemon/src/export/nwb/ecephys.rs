//! Probes in NWB: a `Device` per probe, an `ElectrodeGroup` per shank, the electrodes table from
//! the probe geometry the store keeps, the raw samples as an `ElectricalSeries` and the
//! detected spikes as `units`.

use arrow::datatypes::{Float32Type, Float64Type, Int16Type, Int32Type, Int64Type};
use pipelines::storage::StoredStream;
use rust_hdf5::H5Group;

use super::hdmf::{self, typed_group, Table, CORE};
use crate::export::h5::Column;
use crate::export::units::{channels_of, probe_channels, Channel};
use crate::export::SOURCE_STREAM_KEY;
use crate::export::{keys, meta, rate_of, typed, ExportError, Failed, Progress, Selection};

const ELECTRODES: &str = "/general/extracellular_ephys/electrodes";
/// Spikes held in memory at once while grouping them by unit (12 bytes each): a session with
/// more is grouped in several passes over the spike streams.
const SPIKES_PER_PASS: u64 = 1 << 23;
/// Raw samples per chunk: about 1 MiB of them.
const RAW_CHUNK_BYTES: usize = 1 << 20;
/// Raw chunks are deflated at level 2: on the simulated probe it
/// packs them to 0.375 of their size, as zlib's level 1 does, where rust-hdf5's level 1 (miniz's
/// fast mode) leaves 0.61, and level 4 gains 6 % more for nearly twice the time. A byte shuffle
/// first made them larger.
const RAW_DEFLATE: u32 = 2;

/// A probe: its channels (electrodes), and the raw and spike streams stored of it.
pub(super) struct Probe {
    /// The device's name: the raw stream's id (or the spike stream's, with no raw stream).
    id: String,
    model: String,
    channels: Vec<Channel>,
    raw: Option<StoredStream>,
    spikes: Option<StoredStream>,
    /// Its first row in the electrodes table.
    first_row: usize,
}

/// The probes of the chosen raw and spike streams.
pub(super) fn probes(sel: &Selection) -> Result<Vec<Probe>, ExportError> {
    let model_of = |s: &StoredStream| meta(s, keys::PROBE).unwrap_or("unknown").to_string();
    let mut out: Vec<Probe> = Vec::new();
    for s in &sel.chosen {
        let Some(schema) = s
            .schema
            .as_ref()
            .filter(|_| s.layout.as_deref() == Some("continuous"))
        else {
            continue;
        };
        let channels = probe_channels(&s.stream_id, schema);
        if !channels.is_empty() {
            out.push(Probe {
                id: s.stream_id.clone(),
                model: model_of(s),
                channels,
                raw: Some(s.clone()),
                spikes: None,
                first_row: 0,
            });
        }
    }
    for s in sel.of_kind("spikes") {
        let source = meta(&s, SOURCE_STREAM_KEY).map(str::to_string);
        if let Some(p) = out
            .iter_mut()
            .find(|p| source.as_ref() == Some(&p.id) && p.spikes.is_none())
        {
            p.spikes = Some(s);
            continue;
        }
        out.push(Probe {
            id: source.unwrap_or_else(|| s.stream_id.clone()),
            model: model_of(&s),
            channels: channels_of(sel, &s)?,
            raw: None,
            spikes: Some(s),
            first_row: 0,
        });
    }
    let mut row = 0;
    for p in &mut out {
        p.first_row = row;
        row += p.channels.len();
    }
    Ok(out)
}

pub(super) fn write(
    root: &H5Group,
    probes: &[Probe],
    sel: &Selection,
    progress: &Progress,
    location: &str,
) -> Result<(), Failed> {
    if probes.is_empty() {
        return Ok(());
    }
    electrodes(root, probes, location)?;
    for p in probes {
        if let Some(raw) = &p.raw {
            write_raw(root, p, raw, sel, progress)?;
        }
    }
    if probes.iter().any(|p| p.spikes.is_some()) {
        write_units(root, probes, sel, progress)?;
    }
    Ok(())
}

/// The devices, the electrode groups (a probe's shanks) and the electrodes table.
fn electrodes(root: &H5Group, probes: &[Probe], location: &str) -> hdmf::Result<()> {
    let general = root.group("general")?;
    let devices = general.group("devices")?;
    let ephys = general.create_group("extracellular_ephys")?;
    let group_name = |p: &Probe, shank: i64| {
        if shank < 0 {
            p.id.clone()
        } else {
            format!("{}.shank{shank}", p.id)
        }
    };
    for p in probes {
        let dev = typed_group(&devices, &p.id, CORE, "Device")?;
        dev.set_attr_string(
            "description",
            &format!("probe {} (stream {})", p.model, p.id),
        )?;
        if p.model.starts_with("NP") {
            dev.set_attr_string("manufacturer", "IMEC")?;
        }
        let mut shanks: Vec<i64> = p.channels.iter().map(|c| c.shank).collect();
        shanks.sort_unstable();
        shanks.dedup();
        for shank in shanks {
            let g = typed_group(&ephys, &group_name(p, shank), CORE, "ElectrodeGroup")?;
            g.set_attr_string(
                "description",
                &format!("shank {shank} of probe {} ({})", p.id, p.model),
            )?;
            g.set_attr_string("location", location)?;
            g.create_soft_link("device", &format!("/general/devices/{}", p.id))?;
        }
    }
    let channels: Vec<(&Probe, &Channel)> = probes
        .iter()
        .flat_map(|p| p.channels.iter().map(move |c| (p, c)))
        .collect();
    let names: Vec<String> = channels
        .iter()
        .map(|(p, c)| group_name(p, c.shank))
        .collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("/general/extracellular_ephys/{n}"))
        .collect();
    let ids: Vec<i64> = (0..channels.len() as i64).collect();
    let mut t = Table::create(
        &ephys,
        "/general/extracellular_ephys",
        "electrodes",
        (CORE, "ElectrodesTable"),
        "the probes' channels, positions from the stored channel maps",
        &ids,
    )?;
    t.texts(
        "location",
        "Location of the electrode (channel).",
        &vec![location.to_string(); channels.len()],
    )?;
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    t.refs("group", "Reference to the ElectrodeGroup.", &refs)?;
    t.texts("group_name", "Name of the ElectrodeGroup.", &names)?;
    let col = |f: fn(&Channel) -> f64| channels.iter().map(|(_, c)| f(c)).collect::<Vec<_>>();
    t.numbers("rel_x", "x position on the probe, µm", &col(|c| c.x_um))?;
    t.numbers(
        "rel_y",
        "y position on the probe (depth from the tip), µm",
        &col(|c| c.y_um),
    )?;
    let names: Vec<String> = channels.iter().map(|(_, c)| c.field.clone()).collect();
    t.texts(
        "channel_name",
        "the channel's name in the recording",
        &names,
    )?;
    let shank: Vec<i64> = channels.iter().map(|(_, c)| c.shank).collect();
    t.numbers("shank", "the probe shank (-1: not known)", &shank)?;
    t.finish()?;
    Ok(())
}

/// The probe's raw samples, bit for bit as stored, time by channel.
fn write_raw(
    root: &H5Group,
    p: &Probe,
    raw: &StoredStream,
    sel: &Selection,
    progress: &Progress,
) -> Result<(), Failed> {
    let id = &raw.stream_id;
    let rate = rate_of(raw)?;
    // Sample indices in the time range asked for: t = index / rate, from ≤ t < to.
    let lo = sel.from_s.map_or(i64::MIN, |a| (a * rate).ceil() as i64);
    let hi = sel.to_s.map_or(i64::MAX, |z| (z * rate).ceil() as i64);
    let in_range = |idx: &[i64]| {
        (
            idx.partition_point(|&i| i < lo),
            idx.partition_point(|&i| i < hi),
        )
    };
    // A first pass over the index alone: a gap (samples lost) means timestamps are written
    // instead of a start and a rate.
    let (mut first, mut last, mut contiguous) = (None::<i64>, None::<i64>, true);
    for batch in sel.batches(raw, &["sample_index"]) {
        let b = batch?;
        let idx = typed::<Int64Type>(&b, 0, id, "sample_index")?.values();
        let (a, z) = in_range(idx);
        for &i in &idx[a..z] {
            contiguous &= last.is_none_or(|l| i == l + 1);
            first.get_or_insert(i);
            last = Some(i);
        }
    }
    let acquisition = root.group("acquisition")?;
    let g = typed_group(&acquisition, id, CORE, "ElectricalSeries")?;
    hdmf::series_attrs(
        &g,
        &format!("raw samples of probe {} ({}), as stored", p.id, p.model),
    )?;
    let n = p.channels.len();
    let mut data = Column::<i16>::chunked(&g, "data", n, RAW_CHUNK_BYTES / (2 * n), RAW_DEFLATE)?;
    let gains: Vec<f64> = p.channels.iter().map(|c| c.uv_per_bit).collect();
    let same = gains.windows(2).all(|w| w[0] == w[1]);
    if same && gains[0].is_finite() {
        hdmf::data_attrs(data.dataset(), "volts", gains[0] * 1e-6)?;
    } else {
        hdmf::data_attrs(data.dataset(), "volts", 1e-6)?;
        let per_channel: Vec<f32> = gains
            .iter()
            .map(|g| if g.is_finite() { *g as f32 } else { 1.0 })
            .collect();
        let cc = hdmf::small(&g, "channel_conversion", &per_channel)?;
        cc.new_attr::<i32>()
            .shape(())
            .create("axis")?
            .write_numeric(&1i32)?;
    }
    let rows: Vec<i64> = (p.first_row as i64..(p.first_row + n) as i64).collect();
    hdmf::region(
        &g,
        "electrodes",
        "the probe's channels, in data's column order",
        &rows,
        ELECTRODES,
    )?;
    let mut timestamps = if contiguous {
        None
    } else {
        Some(hdmf::timestamps(&g)?)
    };
    let mut columns: Vec<&str> = vec!["sample_index"];
    columns.extend(p.channels.iter().map(|c| c.field.as_str()));
    let mut row = vec![0i16; n];
    for batch in sel.batches(raw, &columns) {
        let b = batch?;
        let idx = typed::<Int64Type>(&b, 0, id, "sample_index")?.values();
        let mut values = Vec::with_capacity(n);
        for (k, c) in p.channels.iter().enumerate() {
            values.push(typed::<Int16Type>(&b, k + 1, id, &c.field)?.values());
        }
        let (a, z) = in_range(idx);
        for r in a..z {
            for (v, column) in row.iter_mut().zip(&values) {
                *v = column[r];
            }
            data.push(&row)?;
            if let Some(ts) = &mut timestamps {
                ts.push(&[idx[r] as f64 / rate])?;
            }
        }
        progress.rows((z - a) as u64);
    }
    data.flush()?;
    match &mut timestamps {
        Some(ts) => ts.flush()?,
        None => hdmf::starting_time(&g, first.unwrap_or(0) as f64 / rate, rate)?,
    }
    Ok(())
}

/// A unit per channel of every probe with a spike stream: its spike times and amplitudes (in
/// time order) and its electrode. The spike streams are in time order, not by unit, so spikes
/// are counted per unit first, then grouped a bounded number at a time.
fn write_units(
    root: &H5Group,
    probes: &[Probe],
    sel: &Selection,
    progress: &Progress,
) -> Result<(), Failed> {
    // (probe, its first unit) for the probes with spikes.
    let mut spiking: Vec<(&Probe, &StoredStream, usize)> = Vec::new();
    let mut total = 0;
    for p in probes {
        if let Some(s) = &p.spikes {
            spiking.push((p, s, total));
            total += p.channels.len();
        }
    }
    let mut counts = vec![0u64; total];
    for &(p, s, base) in &spiking {
        for_spikes(sel, p, s, progress, |ch, _, _| counts[base + ch] += 1)?;
    }
    let ids: Vec<i64> = (0..total as i64).collect();
    let mut t = Table::create(
        root,
        "",
        "units",
        (CORE, "Units"),
        "every probe channel as a unit, with the spikes detected on it (threshold crossings, \
         not sorted units)",
        &ids,
    )?;
    let mut times = Column::<f64>::create(&t.group, "spike_times", 0)?;
    let mut amps = Column::<f32>::create(&t.group, "amplitude_uv", 0)?;
    let mut start = 0;
    while start < total {
        // Units start..end hold at most SPIKES_PER_PASS spikes (or one unit, however many).
        let mut end = start + 1;
        let mut held = counts[start];
        while end < total && held + counts[end] <= SPIKES_PER_PASS {
            held += counts[end];
            end += 1;
        }
        let mut by_unit: Vec<Vec<(f64, f32)>> = counts[start..end]
            .iter()
            .map(|&c| Vec::with_capacity(c as usize))
            .collect();
        for &(p, s, base) in &spiking {
            if base + p.channels.len() <= start || base >= end {
                continue;
            }
            for_spikes(sel, p, s, &Progress::hidden(), |ch, t, a| {
                let u = base + ch;
                if (start..end).contains(&u) {
                    by_unit[u - start].push((t, a));
                }
            })?;
        }
        for spikes in by_unit {
            for (t, a) in spikes {
                times.push(&[t])?;
                amps.push(&[a])?;
            }
        }
        start = end;
    }
    let ends: Vec<u64> = counts
        .iter()
        .scan(0, |sum, c| {
            *sum += c;
            Some(*sum)
        })
        .collect();
    t.appended(
        &mut times,
        "spike_times",
        "the spike times for each unit in seconds",
    )?;
    // The smallest difference between two spike times: a sample (of the fastest probe).
    let rate = spiking
        .iter()
        .filter_map(|(_, s, _)| rate_of(s).ok())
        .fold(0.0, f64::max);
    if rate > 0.0 {
        hdmf::f64_attr(times.dataset(), "resolution", 1.0 / rate)?;
    }
    t.index("spike_times", &ends)?;
    t.appended(&mut amps, "amplitude_uv", "each spike's amplitude, µV")?;
    t.index("amplitude_uv", &ends)?;
    let rows: Vec<i64> = spiking
        .iter()
        .flat_map(|(p, _, _)| (p.first_row..p.first_row + p.channels.len()).map(|r| r as i64))
        .collect();
    t.region(
        "electrodes",
        "the electrode each unit is",
        &rows,
        ELECTRODES,
    )?;
    let one_each: Vec<u64> = (1..=total as u64).collect();
    t.index("electrodes", &one_each)?;
    let channel: Vec<i64> = spiking
        .iter()
        .flat_map(|(p, _, _)| 0..p.channels.len() as i64)
        .collect();
    t.numbers("channel", "the unit's channel on its probe", &channel)?;
    t.finish()?;
    Ok(())
}

/// Every spike of `s` in the time range: (channel, time s, amplitude µV).
fn for_spikes(
    sel: &Selection,
    p: &Probe,
    s: &StoredStream,
    progress: &Progress,
    mut each: impl FnMut(usize, f64, f32),
) -> Result<(), Failed> {
    let id = &s.stream_id;
    for batch in sel.batches(s, &["time_s", "channel", "amplitude_uv"]) {
        let b = sel.in_time(&batch?, 0)?;
        let t = typed::<Float64Type>(&b, 0, id, "time_s")?;
        let ch = typed::<Int32Type>(&b, 1, id, "channel")?;
        let amp = typed::<Float32Type>(&b, 2, id, "amplitude_uv")?;
        for i in 0..b.num_rows() {
            let c = usize::try_from(ch.value(i)).unwrap_or(usize::MAX);
            if c >= p.channels.len() {
                return Err(ExportError::Stream(
                    id.clone(),
                    format!(
                        "a spike on channel {c}, past the probe's {} channels",
                        p.channels.len()
                    ),
                )
                .into());
            }
            each(c, t.value(i), amp.value(i));
        }
        progress.rows(b.num_rows() as u64);
    }
    Ok(())
}
