//! Imaging planes in NWB: a `Device` and an `ImagingPlane` per two-photon stream, the ROIs as a
//! `PlaneSegmentation` (pixel masks from the stored ROI stream, POYO-SSL label, skew and
//! kurtosis) and their dF/F as a `RoiResponseSeries` in `processing/ophys`.

use std::collections::{BTreeMap, HashSet};

use arrow::datatypes::{Float32Type, Int32Type};
use pipelines::storage::StoredStream;
use rust_hdf5::H5Group;

use super::hdmf::{self, number, text, typed_group, Table, CORE};
use crate::export::frames::dff_rows;
use crate::export::h5::Column;
use crate::export::units::{dff_streams, rois_of, Plane};
use crate::export::{
    meta, rate_of, typed, ExportError, Failed, Progress, Selection, SOURCE_STREAM_KEY,
};

/// An imaging plane: its dF/F and ROIs, the stream of its frames (its name), and the stored
/// ROI masks, if any.
pub(super) struct ImagingPlane {
    plane: Plane,
    name: String,
    masks: Option<StoredStream>,
}

/// Every chosen dF/F stream with ROIs (of the population asked for) as a plane.
pub(super) fn planes(sel: &Selection) -> Result<Vec<ImagingPlane>, ExportError> {
    let mut out = Vec::new();
    for traces in dff_streams(sel) {
        let rois = rois_of(sel, &traces)?;
        if rois.is_empty() {
            continue;
        }
        let rate_hz = rate_of(&traces)?;
        let name = meta(&traces, SOURCE_STREAM_KEY)
            .unwrap_or(&traces.stream_id)
            .to_string();
        let masks = masks_of(sel, &traces.stream_id);
        out.push(ImagingPlane {
            plane: Plane {
                traces,
                rate_hz,
                rois,
            },
            name,
            masks,
        });
    }
    Ok(out)
}

/// The stored ROI stream of a trace stream: `<prefix>.rois` for the longest prefix of its id
/// that has one (`rig.twophoton.traces.dff` → `rig.twophoton.rois`).
fn masks_of(sel: &Selection, traces_id: &str) -> Option<StoredStream> {
    let parts: Vec<&str> = traces_id.split('.').collect();
    (1..=parts.len()).rev().find_map(|k| {
        sel.stream(&format!("{}.rois", parts[..k].join(".")))
            .filter(|s| s.layout.as_deref() == Some("rois"))
    })
}

pub(super) fn write(
    root: &H5Group,
    planes: &[ImagingPlane],
    sel: &Selection,
    progress: &Progress,
    location: &str,
) -> Result<(), Failed> {
    if planes.is_empty() {
        return Ok(());
    }
    let general = root.group("general")?;
    let devices = general.group("devices")?;
    let optophysiology = general.create_group("optophysiology")?;
    let module = typed_group(
        &root.group("processing")?,
        "ophys",
        CORE,
        "ProcessingModule",
    )?;
    module.set_attr_string(
        "description",
        "two-photon ROIs, their POYO-SSL labels and dF/F",
    )?;
    let segmentation = typed_group(&module, "ImageSegmentation", CORE, "ImageSegmentation")?;
    let dff = typed_group(&module, "DfOverF", CORE, "DfOverF")?;
    let mut made: HashSet<&str> = HashSet::new();
    for p in planes {
        if made.insert(&p.name) {
            imaging_plane(&devices, &optophysiology, p, location)?;
        }
        let segments = plane_segmentation(&segmentation, p, sel)?;
        let g = typed_group(&dff, &p.plane.traces.stream_id, CORE, "RoiResponseSeries")?;
        hdmf::series_attrs(&g, &format!("dF/F of the ROIs of {}, causal", p.name))?;
        let n = p.plane.rois.len();
        let mut data = Column::<f32>::create(&g, "data", n)?;
        hdmf::data_attrs(data.dataset(), "n.a.", 1.0)?;
        let rows: Vec<i64> = (0..n as i64).collect();
        hdmf::region(
            &g,
            "rois",
            "the ROIs, in data's column order",
            &rows,
            &segments,
        )?;
        let first = dff_rows(sel, &p.plane, progress, |row| {
            data.push(row).map_err(Failed::from)
        })?;
        data.flush()?;
        hdmf::starting_time(&g, first.unwrap_or(0.0), p.plane.rate_hz)?;
    }
    Ok(())
}

/// The plane's device and `ImagingPlane` (what the store does not know is `unknown` or NaN, as
/// NWB asks).
fn imaging_plane(
    devices: &H5Group,
    optophysiology: &H5Group,
    p: &ImagingPlane,
    location: &str,
) -> hdmf::Result<()> {
    let dev = typed_group(devices, &p.name, CORE, "Device")?;
    dev.set_attr_string(
        "description",
        &format!("two-photon microscope (stream {})", p.name),
    )?;
    let ip = typed_group(optophysiology, &p.name, CORE, "ImagingPlane")?;
    text(
        &ip,
        "description",
        &format!("imaging plane of stream {}", p.name),
    )?;
    number(&ip, "excitation_lambda", f64::NAN)?;
    number(&ip, "imaging_rate", p.plane.rate_hz)?;
    text(&ip, "indicator", "unknown")?;
    text(&ip, "location", location)?;
    let oc = typed_group(&ip, "OpticalChannel", CORE, "OpticalChannel")?;
    text(&oc, "description", "unknown")?;
    number(&oc, "emission_lambda", f64::NAN)?;
    ip.create_soft_link("device", &format!("/general/devices/{}", p.name))
}

/// The plane's ROIs as a `PlaneSegmentation`; returns its path.
fn plane_segmentation(
    segmentation: &H5Group,
    p: &ImagingPlane,
    sel: &Selection,
) -> Result<String, Failed> {
    let rois = &p.plane.rois;
    let ids: Vec<i64> = rois.iter().map(|r| i64::from(r.0)).collect();
    let mut t = Table::create(
        segmentation,
        "/processing/ophys/ImageSegmentation",
        &p.name,
        (CORE, "PlaneSegmentation"),
        "the ROIs (ids are their numbers in the stream) with their last POYO-SSL label",
        &ids,
    )?;
    if let Some(masks) = &p.masks {
        let pixels = read_masks(sel, masks, &ids)?;
        let mut flat = Vec::new();
        let mut ends = Vec::with_capacity(ids.len());
        for id in &ids {
            flat.extend(pixels.get(id).into_iter().flatten());
            ends.push(flat.len() as u64);
        }
        let ds = hdmf::pixel_mask(&t.group, "pixel_mask", &flat)?;
        t.dataset(&ds, "pixel_mask", "Pixel masks for each ROI")?;
        t.index("pixel_mask", &ends)?;
    }
    let labels: Vec<String> = rois.iter().map(|r| r.1.clone()).collect();
    t.texts(
        "label",
        "the POYO-SSL label last given in the session",
        &labels,
    )?;
    let skew: Vec<f64> = rois.iter().map(|r| r.2).collect();
    t.numbers("skew", "skewness of dF/F when last labelled", &skew)?;
    let kurt: Vec<f64> = rois.iter().map(|r| r.3).collect();
    t.numbers(
        "excess_kurtosis",
        "excess kurtosis of dF/F when last labelled",
        &kurt,
    )?;
    t.group.create_group("reference_images")?;
    t.group.create_soft_link(
        "imaging_plane",
        &format!("/general/optophysiology/{}", p.name),
    )?;
    let path = t.path.clone();
    t.finish()?;
    Ok(path)
}

/// A pixel of a ROI's mask: x (column), y (row), weight.
type Pixel = (u32, u32, f32);

/// The `(x, y, weight)` pixels of the ROIs `ids` from a stored ROI stream.
fn read_masks(
    sel: &Selection,
    masks: &StoredStream,
    ids: &[i64],
) -> Result<BTreeMap<i64, Vec<Pixel>>, ExportError> {
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    let mut out: BTreeMap<i64, Vec<Pixel>> = BTreeMap::new();
    let id = &masks.stream_id;
    // Every row: ROI files have no times, so the time range skips none.
    for batch in sel.batches(masks, &["roi", "y", "x", "weight"]) {
        let b = batch?;
        let roi = typed::<Int32Type>(&b, 0, id, "roi")?;
        let y = typed::<Int32Type>(&b, 1, id, "y")?;
        let x = typed::<Int32Type>(&b, 2, id, "x")?;
        let w = typed::<Float32Type>(&b, 3, id, "weight")?;
        for i in 0..b.num_rows() {
            let r = i64::from(roi.value(i));
            if wanted.contains(&r) {
                out.entry(r).or_default().push((
                    x.value(i).max(0) as u32,
                    y.value(i).max(0) as u32,
                    w.value(i),
                ));
            }
        }
    }
    Ok(out)
}
