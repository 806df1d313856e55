//! A stored session as one temporaldata `Data` HDF5 file (what POYO's tooling, torch_brain and
//! brainsets, loads with `Data.from_hdf5`):
//! - `spikes`: `IrregularTimeSeries` of every spike stream, merged in time order: `timestamps`
//!   (s), `unit_index` (into `units`), `amplitude_uv`;
//! - `units`: `ArrayDict`, the probes' channels then the ROIs: `id`, `kind` (`channel`/`roi`),
//!   `channel`, `roi`, `x_um`, `y_um`, `shank`, `label`, `skew`, `excess_kurtosis`,
//!   `trace_index` (the unit's column in `calcium_traces.df_over_f`, −1 for channels);
//! - `calcium_traces`: `RegularTimeSeries` `df_over_f` (frames × ROIs) at the imaging rate;
//! - behaviour streams as `IrregularTimeSeries` named after their id's last part;
//! - `domain`: the session's time span; `session_id`, `probes`, `neurod_version` attributes.
//!
//! With a population, only the ROIs labelled so (their last label in the `.neurons` table) are
//! written; channels are not labelled and are left out.

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Float64Type, Int32Type};
use arrow::record_batch::RecordBatch;
use pipelines::storage::StoredStream;
use rust_hdf5::H5File;

use super::frames::{behaviour_batches, behaviour_columns, dff_rows};
use super::h5::{self, AnyColumn, Column};
use super::units::{channels_of, dff_streams, has_column, rois_of, write_units, Plane, Probe};
use super::{
    keys, meta, object_name, rate_of, ExportError, Failed, Population, Progress, Selection, Subject,
};

pub fn export(
    sel: &Selection,
    out: &Path,
    progress: &Progress,
    subject: &Subject,
) -> Result<(), ExportError> {
    let h5err = |e: rust_hdf5::Hdf5Error| ExportError::Write(out.to_path_buf(), e.to_string());
    let mut probes = Vec::new();
    let mut units = 0;
    for s in sel.of_kind("spikes") {
        let channels = channels_of(sel, &s)?;
        let n = channels.len();
        probes.push(Probe {
            spikes: s,
            channels,
            first_unit: units,
        });
        units += n;
    }
    let mut planes = Vec::new();
    for s in dff_streams(sel) {
        let rois = rois_of(sel, &s)?;
        let rate_hz = rate_of(&s)?;
        planes.push(Plane {
            traces: s,
            rate_hz,
            rois,
        });
    }
    if sel.population != Population::All {
        probes.clear();
    }
    if probes.is_empty() && planes.is_empty() {
        return Err(ExportError::Nothing(
            "no spike stream and no dF/F traces stored (in the selection)".into(),
        ));
    }
    let file = H5File::create(out).map_err(h5err)?;
    let (mut start, mut end) = (f64::INFINITY, f64::NEG_INFINITY);
    if !probes.is_empty() {
        let (s, e) = write_spikes(&file, &probes, sel, progress).map_err(|e| e.at(out))?;
        start = start.min(s);
        end = end.max(e);
    }
    if let Some(plane) = planes.first() {
        // One plane per file: temporaldata has one `calcium_traces`.
        let (s, e) = write_traces(&file, plane, sel, progress).map_err(|e| e.at(out))?;
        start = start.min(s);
        end = end.max(e);
    }
    if sel.population == Population::All {
        for b in sel.of_kind("behaviour") {
            write_behaviour(&file, &b, sel, progress).map_err(|e| e.at(out))?;
        }
    }
    write_units(&file, &probes, planes.first()).map_err(h5err)?;
    let probe_names: Vec<String> = probes
        .iter()
        .map(|p| {
            let model = meta(&p.spikes, keys::PROBE);
            format!(
                "{}: {}",
                p.spikes.stream_id,
                model.unwrap_or("unknown probe")
            )
        })
        .collect();
    let probe_refs: Vec<&str> = probe_names.iter().map(String::as_str).collect();
    file.set_attr_string_array("probes", &probe_refs)
        .map_err(h5err)?;
    if !start.is_finite() {
        (start, end) = (sel.from_s.unwrap_or(0.0), sel.to_s.unwrap_or(0.0));
    }
    let domain = file.create_group("domain").map_err(h5err)?;
    h5::interval(&domain, &[start], &[end]).map_err(h5err)?;
    file.set_attr_string("session_id", &sel.session)
        .map_err(h5err)?;
    file.set_attr_string("neurod_version", env!("CARGO_PKG_VERSION"))
        .map_err(h5err)?;
    for (name, value) in subject.fields() {
        let name = if name == "subject_id" {
            name.to_string()
        } else {
            format!("subject_{name}")
        };
        file.set_attr_string(&name, value).map_err(h5err)?;
    }
    file.set_attr_string("object", "Data").map_err(h5err)?;
    file.set_attr_numeric("absolute_start", &0.0f64)
        .map_err(h5err)?;
    file.close().map_err(h5err)
}

/// A spike stream read batch by batch, one row at a time.
struct Cursor<'a> {
    batches: Box<dyn Iterator<Item = Result<RecordBatch, ExportError>> + 'a>,
    batch: Option<RecordBatch>,
    row: usize,
    first_unit: usize,
}

impl Cursor<'_> {
    /// The current row, reading the next batch where needed: (time, channel, amplitude).
    fn peek(&mut self) -> Result<Option<(f64, i32, f32)>, ExportError> {
        loop {
            if let Some(b) = &self.batch {
                if self.row < b.num_rows() {
                    let t = b.column(0).as_primitive::<Float64Type>().value(self.row);
                    let c = b.column(1).as_primitive::<Int32Type>().value(self.row);
                    let a = b
                        .column(2)
                        .as_primitive_opt::<Float32Type>()
                        .map_or(f32::NAN, |a| a.value(self.row));
                    return Ok(Some((t, c, a)));
                }
            }
            match self.batches.next() {
                None => return Ok(None),
                Some(b) => {
                    let b = b?;
                    self.row = 0;
                    self.batch = Some(b);
                }
            }
        }
    }
}

/// Every spike of every probe in time order (a merge of the streams, each sorted by time).
fn write_spikes(
    file: &H5File,
    probes: &[Probe],
    sel: &Selection,
    progress: &Progress,
) -> Result<(f64, f64), Failed> {
    let g = file.create_group("spikes")?;
    let mut ts = h5::Timestamps::create(&g, sel.span)?;
    let mut unit = Column::<i64>::create(&g, "unit_index", 0)?;
    let mut amp = Column::<f32>::create(&g, "amplitude_uv", 0)?;
    let mut cursors: Vec<Cursor> = Vec::new();
    for p in probes {
        for name in ["time_s", "channel", "amplitude_uv"] {
            if !has_column(&p.spikes, name) {
                return Err(ExportError::Stream(
                    p.spikes.stream_id.clone(),
                    format!("no `{name}` column: not a spike stream"),
                )
                .into());
            }
        }
        let batches = sel.batches(&p.spikes, &["time_s", "channel", "amplitude_uv"]);
        cursors.push(Cursor {
            batches: Box::new(batches.map(|b| b.and_then(|b| sel.in_time(&b, 0)))),
            batch: None,
            row: 0,
            first_unit: p.first_unit,
        });
    }
    let n_channels: Vec<usize> = probes.iter().map(|p| p.channels.len()).collect();
    let mut seen = 0u64;
    loop {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some((t, _, _)) = c.peek()? {
                if best.is_none_or(|(_, bt)| t < bt) {
                    best = Some((i, t));
                }
            }
        }
        let Some((i, _)) = best else { break };
        let c = &mut cursors[i];
        if let Some((t, ch, a)) = c.peek()? {
            let ch = usize::try_from(ch).unwrap_or(usize::MAX);
            if ch >= n_channels[i] {
                return Err(ExportError::Stream(
                    probes[i].spikes.stream_id.clone(),
                    format!(
                        "a spike on channel {ch}, past the probe's {} channels",
                        n_channels[i]
                    ),
                )
                .into());
            }
            ts.push(t)?;
            unit.push(&[(c.first_unit + ch) as i64])?;
            amp.push(&[a])?;
            c.row += 1;
            seen += 1;
            if seen.is_multiple_of(65_536) {
                progress.rows(65_536);
            }
        }
    }
    progress.rows(seen % 65_536);
    unit.flush()?;
    amp.flush()?;
    ts.finish(&g, &[])?;
    Ok(sel.span)
}

/// dF/F as frames × ROIs, a row per frame of the plane's rate (a frame no ROI has is NaN).
fn write_traces(
    file: &H5File,
    plane: &Plane,
    sel: &Selection,
    progress: &Progress,
) -> Result<(f64, f64), Failed> {
    let g = file.create_group("calcium_traces")?;
    let mut dff = Column::<f32>::create(&g, "df_over_f", plane.rois.len().max(1))?;
    let first = dff_rows(sel, plane, progress, |row| {
        if row.is_empty() {
            dff.push(&[f32::NAN])
        } else {
            dff.push(row)
        }
        .map_err(Failed::from)
    })?;
    dff.flush()?;
    let start = first.unwrap_or(0.0);
    let end = start + dff.rows() as f64 / plane.rate_hz;
    let domain = g.create_group("domain")?;
    h5::interval(&domain, &[start], &[end])?;
    h5::regular(&g, plane.rate_hz)?;
    Ok((start, end))
}

/// A behaviour stream (running speed, licks...) as an `IrregularTimeSeries` named after the
/// stream's last id part: `timestamps` and each numeric column but the index.
fn write_behaviour(
    file: &H5File,
    stream: &StoredStream,
    sel: &Selection,
    progress: &Progress,
) -> Result<(), Failed> {
    let columns = behaviour_columns(stream)?;
    let g = file.create_group(&object_name(&stream.stream_id))?;
    let mut values = Vec::new();
    for (name, ty) in &columns {
        values.push(AnyColumn::create(&g, name, ty)?);
    }
    let mut ts = h5::Timestamps::create(&g, sel.span)?;
    behaviour_batches(sel, stream, &columns, progress, |t, cols| {
        for v in t {
            ts.push(*v)?;
        }
        for (w, c) in values.iter_mut().zip(cols) {
            w.push_all(c)?;
        }
        Ok(())
    })?;
    for c in &mut values {
        c.flush()?;
    }
    ts.finish(&g, &[]).map_err(Failed::from)
}
