//! A stored session as an NWB 2.x file (what DANDI and pynwb read):
//! - `acquisition/<raw stream>`: `ElectricalSeries` of the raw samples as stored (int16, with
//!   the gain as `conversion` to volts), chunked and compressed; rows of the electrodes table
//!   (`general/extracellular_ephys/electrodes`, from the probe geometry the store keeps), one
//!   `ElectrodeGroup` per shank and a `Device` per probe ([`ecephys`]);
//! - `units`: a unit per probe channel with its detected spike times and amplitudes (threshold
//!   crossings, not sorted units) and its electrode;
//! - `processing/ophys`: per imaging plane, the `PlaneSegmentation` (ROI pixel masks where the
//!   ROI stream is stored, POYO-SSL label, skew, kurtosis) and dF/F as a `RoiResponseSeries`
//!   ([`ophys`]);
//! - `processing/behavior`: each behaviour column as a `TimeSeries`.
//!
//! With a population, only the ROIs labelled so are written, as in temporaldata.

mod ecephys;
mod hdmf;
mod ophys;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use chrono::{DateTime, FixedOffset, Utc};
use pipelines::storage::StoredStream;
use rust_hdf5::{H5File, H5Group};

use super::frames::{behaviour_batches, behaviour_columns, regular_start};
use super::h5::AnyColumn;
use super::{object_name, ExportError, Failed, Population, Progress, Selection, Subject};
use hdmf::{mark_group, text, typed_group, CORE};

/// The NWB version whose types the file uses (that of pynwb 4.2).
const NWB_VERSION: &str = "2.11.0";
/// The schema of those types, cached in each file as pynwb caches it (`/specifications`: a JSON
/// text per schema file of nwb-schema 2.11.0, hdmf-common 1.10.0 and hdmf-experimental 0.6.0,
/// BSD-3-Clause, copied from a file pynwb 4.2 wrote), so that a reader built for another NWB
/// version reads the file by the schema it was written with, as DANDI expects.
const SCHEMA: &str = include_str!("schema.json");

pub fn export(
    sel: &Selection,
    out: &Path,
    progress: &Progress,
    about: &About,
) -> Result<(), ExportError> {
    let h5err = |e: rust_hdf5::Hdf5Error| ExportError::Write(out.to_path_buf(), e.to_string());
    let probes = if sel.population == Population::All {
        ecephys::probes(sel)?
    } else {
        Vec::new()
    };
    let planes = ophys::planes(sel)?;
    let behaviour = if sel.population == Population::All {
        sel.of_kind("behaviour")
    } else {
        Vec::new()
    };
    if probes.is_empty() && planes.is_empty() && behaviour.is_empty() {
        return Err(ExportError::Nothing(
            "no raw or spike stream, no dF/F traces and no behaviour stored (in the selection)"
                .into(),
        ));
    }
    let file = H5File::create(out).map_err(h5err)?;
    let root = file.root_group();
    skeleton(&root, sel, about.start).map_err(h5err)?;
    write_subject(&root, about.subject).map_err(h5err)?;
    let written = (|| -> Result<(), Failed> {
        ecephys::write(&root, &probes, sel, progress, about.location)?;
        ophys::write(&root, &planes, sel, progress, about.location)?;
        write_behaviour(&root, &behaviour, sel, progress)
    })();
    written.map_err(|e| e.at(out))?;
    file.close().map_err(h5err)
}

/// What the store does not hold and NWB asks for, from the command line.
pub struct About<'a> {
    pub start: &'a SessionStart,
    pub subject: &'a Subject,
    /// The brain area of the probes and planes.
    pub location: &'a str,
}

/// When the session began, which NWB requires. The store keeps times relative to the start
/// of acquisition, not the wall clock, so unless given it is estimated: the first stored file's
/// modification time less the time its rows span.
pub struct SessionStart {
    pub time: DateTime<FixedOffset>,
    pub estimated: bool,
}

impl SessionStart {
    pub fn new(given: Option<&str>, sel: &Selection) -> Result<Self, ExportError> {
        if let Some(text) = given {
            let time = DateTime::parse_from_rfc3339(text).map_err(|e| {
                ExportError::Store(format!(
                    "--session-start {text}: not an RFC 3339 time (2026-12-05T09:30:00+01:00): {e}"
                ))
            })?;
            return Ok(SessionStart {
                time,
                estimated: false,
            });
        }
        let earliest = sel
            .chosen
            .iter()
            .filter_map(|s| {
                let f = s.files.first()?;
                let modified = std::fs::metadata(&f.path).ok()?.modified().ok()?;
                let span = f.entry.last_time_s.unwrap_or(0.0).max(0.0);
                modified.checked_sub(std::time::Duration::from_secs_f64(span))
            })
            .min()
            .unwrap_or_else(SystemTime::now);
        Ok(SessionStart {
            time: DateTime::<Utc>::from(earliest).fixed_offset(),
            estimated: true,
        })
    }
}

/// The file's root: its type, the required groups and the session's metadata.
fn skeleton(root: &H5Group, sel: &Selection, start: &SessionStart) -> hdmf::Result<()> {
    mark_group(root, CORE, "NWBFile")?;
    root.set_attr_string("nwb_version", NWB_VERSION)?;
    let now = DateTime::<Utc>::from(SystemTime::now()).to_rfc3339();
    root.write_vlen_strings("file_create_date", &[&now])?;
    text(root, "identifier", &uuid::Uuid::new_v4().to_string())?;
    text(
        root,
        "session_description",
        &format!(
            "Session `{}` recorded by neurod {} (streams: {})",
            sel.session,
            env!("CARGO_PKG_VERSION"),
            sel.chosen
                .iter()
                .map(|s| s.stream_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    let t0 = start.time.to_rfc3339();
    text(root, "session_start_time", &t0)?;
    text(root, "timestamps_reference_time", &t0)?;
    for g in ["acquisition", "analysis", "processing"] {
        root.create_group(g)?;
    }
    let stimulus = root.create_group("stimulus")?;
    stimulus.create_group("presentation")?;
    stimulus.create_group("templates")?;
    let general = root.create_group("general")?;
    text(&general, "session_id", &sel.session)?;
    let mut notes = format!(
        "Exported by neurod {} from its store. Units are probe channels with their detected \
         threshold crossings, not sorted neurons.",
        env!("CARGO_PKG_VERSION")
    );
    if start.estimated {
        notes.push_str(
            " session_start_time is estimated from the stored files' times (the store keeps \
             times relative to the start of acquisition).",
        );
    }
    if sel.population != Population::All {
        notes.push_str(&format!(
            " Only the {:?} POYO-SSL population of ROIs is exported.",
            sel.population
        ));
    }
    text(&general, "notes", &notes)?;
    general.create_group("devices")?;
    cache_schema(root)
}

/// `/specifications/<namespace>/<version>/<schema file>`, and the root's `.specloc` to it.
fn cache_schema(root: &H5Group) -> hdmf::Result<()> {
    let files: BTreeMap<String, String> = serde_json::from_str(SCHEMA)
        .map_err(|e| rust_hdf5::Hdf5Error::InvalidState(format!("the NWB schema: {e}")))?;
    let specs = root.create_group("specifications")?;
    // Paths come sorted, so a namespace's versions, and a version's files, come together.
    let mut ns_group: Option<(&str, H5Group)> = None;
    let mut version_group: Option<(&str, H5Group)> = None;
    for (path, json) in &files {
        let Some((dir, name)) = path.rsplit_once('/') else {
            continue;
        };
        let ns = dir.split('/').next().unwrap_or(dir);
        if ns_group.as_ref().is_none_or(|(n, _)| *n != ns) {
            ns_group = Some((ns, specs.create_group(ns)?));
        }
        if version_group.as_ref().is_none_or(|(d, _)| *d != dir) {
            if let Some((_, parent)) = &ns_group {
                let version = dir.rsplit('/').next().unwrap_or(dir);
                version_group = Some((dir, parent.create_group(version)?));
            }
        }
        if let Some((_, g)) = &version_group {
            text(g, name, json)?;
        }
    }
    root.set_attr_object_reference(".specloc", "/specifications")
}

/// `general/subject`, from what was given; what DANDI requires and was not given is named on
/// stderr (the file is valid NWB without it).
fn write_subject(root: &H5Group, subject: &Subject) -> hdmf::Result<()> {
    let g = typed_group(&root.group("general")?, "subject", CORE, "Subject")?;
    for (name, value) in subject.fields() {
        let ds = text(&g, name, value)?;
        if name == "age" {
            hdmf::text_attr(&ds, "reference", "birth")?;
        }
    }
    let missing: Vec<&str> = [
        ("--subject-id", subject.subject_id.is_none()),
        ("--species", subject.species.is_none()),
        ("--age", subject.age.is_none()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(f, _)| *f)
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "neurod export: no {} given: DANDI asks for the subject's id, species, sex and age",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Each numeric column of each behaviour stream as a `TimeSeries` in `processing/behavior`.
fn write_behaviour(
    root: &H5Group,
    streams: &[StoredStream],
    sel: &Selection,
    progress: &Progress,
) -> Result<(), Failed> {
    if streams.is_empty() {
        return Ok(());
    }
    let module = typed_group(
        &root.group("processing")?,
        "behavior",
        CORE,
        "ProcessingModule",
    )?;
    module.set_attr_string("description", "behaviour streams recorded with the session")?;
    let series = typed_group(
        &module,
        "BehavioralTimeSeries",
        CORE,
        "BehavioralTimeSeries",
    )?;
    let mut names: Vec<String> = Vec::new();
    for stream in streams {
        let columns = behaviour_columns(stream)?;
        let regular = regular_start(sel, stream)?;
        let mut writers = Vec::new();
        for (name, ty) in &columns {
            let mut ts_name = name.clone();
            if names.contains(&ts_name) {
                ts_name = format!("{}_{name}", object_name(&stream.stream_id));
            }
            names.push(ts_name.clone());
            let g = typed_group(&series, &ts_name, CORE, "TimeSeries")?;
            hdmf::series_attrs(&g, &format!("`{name}` of stream {}", stream.stream_id))?;
            let data = AnyColumn::create(&g, "data", ty)?;
            hdmf::data_attrs(data.dataset(), unit_of(name), 1.0)?;
            let ts = match regular {
                Some((start, rate)) => {
                    hdmf::starting_time(&g, start, rate)?;
                    None
                }
                None => Some(hdmf::timestamps(&g)?),
            };
            writers.push((data, ts));
        }
        behaviour_batches(sel, stream, &columns, progress, |t, cols| {
            for ((data, ts), c) in writers.iter_mut().zip(cols) {
                data.push_all(c)?;
                if let Some(ts) = ts {
                    for v in t {
                        ts.push(&[*v])?;
                    }
                }
            }
            Ok(())
        })?;
        for (data, ts) in &mut writers {
            data.flush()?;
            if let Some(ts) = ts {
                ts.flush()?;
            }
        }
    }
    Ok(())
}

/// The unit a behaviour column's name ends in (`running_speed_cm_s` → `cm/s`).
fn unit_of(column: &str) -> &'static str {
    const UNITS: [(&str, &str); 6] = [
        ("_cm_s", "cm/s"),
        ("_m_s", "m/s"),
        ("_deg", "degrees"),
        ("_mm", "mm"),
        ("_cm", "cm"),
        ("_v", "volts"),
    ];
    UNITS
        .iter()
        .find(|(suffix, _)| column.ends_with(suffix))
        .map_or("n.a.", |(_, unit)| unit)
}
