//! NWB's building blocks as HDF5 objects, the way HDMF (pynwb's storage layer) writes them:
//! every typed object carries `namespace`, `neurodata_type` and a fresh `object_id`; a
//! `DynamicTable` is a group of equal-length column datasets (`VectorData`), an `id` dataset
//! (`ElementIdentifiers`) and a `colnames` attribute; a ragged column is its flat values plus a
//! `VectorIndex` of cumulative ends; a `DynamicTableRegion` is row numbers plus an object
//! reference to the table they index.

use rust_hdf5::types::{CompoundType, VarLenUnicode};
use rust_hdf5::{DatatypeMessage, H5Dataset, H5Group};

use crate::export::h5::Column;
pub use crate::export::h5::Result;

pub const CORE: &str = "core";
pub const COMMON: &str = "hdmf-common";

fn object_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Marks a group as an object of NWB type `ty` in namespace `ns`.
pub fn mark_group(g: &H5Group, ns: &str, ty: &str) -> Result<()> {
    g.set_attr_string("namespace", ns)?;
    g.set_attr_string("neurodata_type", ty)?;
    g.set_attr_string("object_id", &object_id())
}

/// A new group of NWB type `ty`.
pub fn typed_group(parent: &H5Group, name: &str, ns: &str, ty: &str) -> Result<H5Group> {
    let g = parent.create_group(name)?;
    mark_group(&g, ns, ty)?;
    Ok(g)
}

/// Marks a dataset as an object of NWB type `ty` in namespace `ns`.
pub fn mark_dataset(ds: &H5Dataset, ns: &str, ty: &str) -> Result<()> {
    text_attr(ds, "namespace", ns)?;
    text_attr(ds, "neurodata_type", ty)?;
    text_attr(ds, "object_id", &object_id())
}

pub fn text_attr(ds: &H5Dataset, name: &str, value: &str) -> Result<()> {
    ds.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)?
        .write_string(value)
}

pub fn f64_attr(ds: &H5Dataset, name: &str, value: f64) -> Result<()> {
    ds.new_attr::<f64>()
        .shape(())
        .create(name)?
        .write_numeric(&value)
}

/// An attribute referring to the object at `path` (which must exist).
pub fn ref_attr(ds: &H5Dataset, name: &str, path: &str) -> Result<()> {
    ds.new_attr::<u64>()
        .shape(())
        .create(name)?
        .write_object_references(&[path])
}

/// A scalar text dataset (NWB's `identifier`, `session_description`, a device's fields...).
pub fn text(g: &H5Group, name: &str, value: &str) -> Result<H5Dataset> {
    let ds = g
        .new_dataset::<u8>()
        .datatype(DatatypeMessage::fixed_string_utf8(value.len().max(1) as u32))
        .scalar()
        .create(name)?;
    let mut bytes = value.as_bytes().to_vec();
    if bytes.is_empty() {
        bytes.push(0);
    }
    ds.write_raw_bytes(&bytes)?;
    Ok(ds)
}

/// A scalar number dataset.
pub fn number(g: &H5Group, name: &str, value: f64) -> Result<H5Dataset> {
    let ds = g.new_dataset::<f64>().scalar().create(name)?;
    ds.write_raw(&[value])?;
    Ok(ds)
}

/// A `DynamicTable` (or a subtype) being written column by column; `finish` lists the columns.
pub struct Table {
    pub group: H5Group,
    /// The table's path in the file, for the references of regions into it.
    pub path: String,
    colnames: Vec<String>,
}

impl Table {
    /// A table of type `ty` whose rows are `ids`.
    pub fn create(
        parent: &H5Group,
        parent_path: &str,
        name: &str,
        (ns, ty): (&str, &str),
        description: &str,
        ids: &[i64],
    ) -> Result<Self> {
        let group = typed_group(parent, name, ns, ty)?;
        group.set_attr_string("description", description)?;
        let id = small(&group, "id", ids)?;
        mark_dataset(&id, COMMON, "ElementIdentifiers")?;
        Ok(Table {
            group,
            path: format!("{parent_path}/{name}"),
            colnames: Vec::new(),
        })
    }

    /// Marks `ds` as the column `name` (a `VectorData` unless `ty` says otherwise).
    fn column(&mut self, ds: &H5Dataset, name: &str, description: &str, ty: &str) -> Result<()> {
        described(ds, description, ty)?;
        self.colnames.push(name.to_string());
        Ok(())
    }

    pub fn numbers<T: rust_hdf5::H5Type>(
        &mut self,
        name: &str,
        description: &str,
        values: &[T],
    ) -> Result<()> {
        let ds = small(&self.group, name, values)?;
        self.column(&ds, name, description, "VectorData")
    }

    pub fn texts(&mut self, name: &str, description: &str, values: &[String]) -> Result<()> {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let ds = self.group.write_vlen_strings(name, &refs)?;
        self.column(&ds, name, description, "VectorData")
    }

    /// A column of references to the objects at `paths`.
    pub fn refs(&mut self, name: &str, description: &str, paths: &[&str]) -> Result<()> {
        let ds = self
            .group
            .new_dataset::<u64>()
            .object_references()
            .shape([paths.len()])
            .create(name)?;
        ds.write_object_references(paths)?;
        self.column(&ds, name, description, "VectorData")
    }

    /// A column of rows of the table at `table` (a `DynamicTableRegion`).
    pub fn region(
        &mut self,
        name: &str,
        description: &str,
        rows: &[i64],
        table: &str,
    ) -> Result<()> {
        region(&self.group, name, description, rows, table)?;
        self.colnames.push(name.to_string());
        Ok(())
    }

    /// `ds`, written by the caller, as the column `name`.
    pub fn dataset(&mut self, ds: &H5Dataset, name: &str, description: &str) -> Result<()> {
        self.column(ds, name, description, "VectorData")
    }

    /// A column appended to elsewhere (a ragged column's values), once complete.
    pub fn appended<T: rust_hdf5::H5Type + Copy>(
        &mut self,
        column: &mut Column<T>,
        name: &str,
        description: &str,
    ) -> Result<()> {
        column.flush()?;
        self.column(column.dataset(), name, description, "VectorData")
    }

    /// The `VectorIndex` making the column `of` ragged: row k's values end at `ends[k]`.
    pub fn index(&mut self, of: &str, ends: &[u64]) -> Result<()> {
        let name = format!("{of}_index");
        let ds = small(&self.group, &name, ends)?;
        ref_attr(&ds, "target", &format!("{}/{of}", self.path))?;
        // Not in `colnames`, which lists the data columns, not their indexes.
        described(&ds, &format!("Index for VectorData '{of}'"), "VectorIndex")
    }

    /// Writes `colnames` (in the order the columns were added).
    pub fn finish(self) -> Result<H5Group> {
        let names: Vec<&str> = self.colnames.iter().map(String::as_str).collect();
        self.group.set_attr_string_array("colnames", &names)?;
        Ok(self.group)
    }
}

/// Marks `ds` as an hdmf-common object of type `ty` with a `description`.
pub fn described(ds: &H5Dataset, description: &str, ty: &str) -> Result<()> {
    text_attr(ds, "description", description)?;
    mark_dataset(ds, COMMON, ty)
}

/// A `DynamicTableRegion`: `rows` of the table at `table` (a column of a table, or a series'
/// `electrodes`/`rois`).
pub fn region(
    g: &H5Group,
    name: &str,
    description: &str,
    rows: &[i64],
    table: &str,
) -> Result<H5Dataset> {
    let ds = small(g, name, rows)?;
    ref_attr(&ds, "table", table)?;
    described(&ds, description, "DynamicTableRegion")?;
    Ok(ds)
}

/// A small 1-D dataset written at once (an empty one is created and left unwritten).
pub fn small<T: rust_hdf5::H5Type>(g: &H5Group, name: &str, values: &[T]) -> Result<H5Dataset> {
    let ds = g.new_dataset::<T>().shape([values.len()]).create(name)?;
    if !values.is_empty() {
        ds.write_raw(values)?;
    }
    Ok(ds)
}

/// A ragged column of `(x, y, weight)` pixels, as NWB's `pixel_mask` compound.
pub fn pixel_mask(g: &H5Group, name: &str, pixels: &[(u32, u32, f32)]) -> Result<H5Dataset> {
    let ct = CompoundType {
        members: vec![
            ("x".into(), DatatypeMessage::u32_type(), 0),
            ("y".into(), DatatypeMessage::u32_type(), 4),
            ("weight".into(), DatatypeMessage::f32_type(), 8),
        ],
        total_size: 12,
    };
    let ds = g
        .new_dataset::<u8>()
        .datatype(ct.to_datatype())
        .shape([pixels.len()])
        .create(name)?;
    let mut bytes = Vec::with_capacity(pixels.len() * 12);
    for (x, y, w) in pixels {
        bytes.extend_from_slice(&x.to_le_bytes());
        bytes.extend_from_slice(&y.to_le_bytes());
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    if !bytes.is_empty() {
        ds.write_raw_bytes(&bytes)?;
    }
    Ok(ds)
}

/// The `starting_time` of a regularly sampled series: its first sample's time and the rate.
pub fn starting_time(g: &H5Group, start_s: f64, rate_hz: f64) -> Result<()> {
    let ds = number(g, "starting_time", start_s)?;
    f64_attr(&ds, "rate", rate_hz)?;
    text_attr(&ds, "unit", "seconds")
}

/// The attributes of a `TimeSeries`' `data`: values times `conversion` are in `unit`.
pub fn data_attrs(ds: &H5Dataset, unit: &str, conversion: f64) -> Result<()> {
    f64_attr(ds, "conversion", conversion)?;
    f64_attr(ds, "offset", 0.0)?;
    f64_attr(ds, "resolution", -1.0)?;
    text_attr(ds, "unit", unit)
}

/// The `timestamps` of an irregular series, in appends.
pub fn timestamps(g: &H5Group) -> Result<Column<f64>> {
    let c = Column::create(g, "timestamps", 0)?;
    c.dataset()
        .new_attr::<i32>()
        .shape(())
        .create("interval")?
        .write_numeric(&1i32)?;
    text_attr(c.dataset(), "unit", "seconds")?;
    Ok(c)
}

/// The attributes every `TimeSeries` carries besides its type.
pub fn series_attrs(g: &H5Group, description: &str) -> Result<()> {
    g.set_attr_string("description", description)?;
    g.set_attr_string("comments", "no comments")
}
