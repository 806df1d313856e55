//! The temporaldata objects as HDF5 groups, the way `temporaldata`'s `to_hdf5` lays them out
//! (datasets, an `object` attribute naming the class, `timekeys`, `_unicode_keys`, a `domain`
//! group), written with rust-hdf5, a pure-Rust HDF5 writer: no system libhdf5 to install, so
//! the daemon still builds on a bare machine. Large arrays are chunked, deflate-compressed and
//! appended to as the store is read, so an export holds one chunk per column in memory whatever
//! the session's length.

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use rust_hdf5::{H5Dataset, H5Group};

pub type Result<T> = std::result::Result<T, rust_hdf5::Hdf5Error>;

/// Rows per chunk of an appended column (and per append).
pub const CHUNK_ROWS: usize = 1 << 16;
const DEFLATE: u32 = 4;

/// A column written in appends: `rows` per row (1 for a vector, N for a T × N matrix).
pub struct Column<T: rust_hdf5::H5Type + Copy> {
    ds: H5Dataset,
    width: usize,
    /// Rows per chunk: values are written a whole chunk at a time.
    chunk_rows: usize,
    written: usize,
    pending: Vec<T>,
}

impl<T: rust_hdf5::H5Type + Copy> Column<T> {
    /// A vector (`width` 0) or a matrix of `width` columns, empty until pushed to.
    pub fn create(group: &H5Group, name: &str, width: usize) -> Result<Self> {
        let rows = CHUNK_ROWS.checked_div(width).unwrap_or(CHUNK_ROWS);
        Self::chunked(group, name, width, rows, DEFLATE)
    }

    /// Like [`create`](Self::create), with `rows` per chunk, deflated at `level`.
    pub fn chunked(
        group: &H5Group,
        name: &str,
        width: usize,
        rows: usize,
        level: u32,
    ) -> Result<Self> {
        let rows = rows.max(1);
        let ds = if width == 0 {
            group
                .new_dataset::<T>()
                .shape([0usize])
                .chunk(&[rows])
                .max_shape(&[None])
                .deflate(level)
                .create(name)?
        } else {
            group
                .new_dataset::<T>()
                .shape([0usize, width])
                .chunk(&[rows, width])
                .max_shape(&[None, Some(width)])
                .deflate(level)
                .create(name)?
        };
        Ok(Column {
            ds,
            width,
            chunk_rows: rows,
            written: 0,
            pending: Vec::new(),
        })
    }

    /// One value (a vector) or one row of `width` values (a matrix).
    pub fn push(&mut self, row: &[T]) -> Result<()> {
        self.pending.extend_from_slice(row);
        if self.pending.len() >= self.chunk_rows * self.width.max(1) {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        let per_row = self.width.max(1);
        let rows = self.pending.len() / per_row;
        if rows == 0 {
            return Ok(());
        }
        let end = self.written + rows;
        if self.width == 0 {
            self.ds.extend(&[end])?;
            self.ds
                .write_slice(&[self.written], &[rows], &self.pending)?;
        } else {
            self.ds.extend(&[end, self.width])?;
            self.ds
                .write_slice(&[self.written, 0], &[rows, self.width], &self.pending)?;
        }
        self.written = end;
        self.pending.clear();
        Ok(())
    }

    pub fn dataset(&self) -> &H5Dataset {
        &self.ds
    }

    /// Rows written so far (flushed or not).
    pub fn rows(&self) -> usize {
        self.written + self.pending.len() / self.width.max(1)
    }
}

/// A column of one of the types behaviour values are written as (see
/// [`super::frames::behaviour_columns`]).
pub enum AnyColumn {
    F32(Column<f32>),
    F64(Column<f64>),
    I64(Column<i64>),
}

impl AnyColumn {
    /// A vector of `ty` (`Float32`, `Float64`, else `Int64`).
    pub fn create(group: &H5Group, name: &str, ty: &DataType) -> Result<Self> {
        Ok(match ty {
            DataType::Float32 => AnyColumn::F32(Column::create(group, name, 0)?),
            DataType::Float64 => AnyColumn::F64(Column::create(group, name, 0)?),
            _ => AnyColumn::I64(Column::create(group, name, 0)?),
        })
    }

    /// Every value of `a` (of this column's type); missing ones are NaN, or 0 for integers.
    pub fn push_all(&mut self, a: &ArrayRef) -> Result<()> {
        match self {
            AnyColumn::F32(w) => {
                for v in a.as_primitive::<Float32Type>().iter() {
                    w.push(&[v.unwrap_or(f32::NAN)])?;
                }
            }
            AnyColumn::F64(w) => {
                for v in a.as_primitive::<Float64Type>().iter() {
                    w.push(&[v.unwrap_or(f64::NAN)])?;
                }
            }
            AnyColumn::I64(w) => {
                for v in a.as_primitive::<Int64Type>().iter() {
                    w.push(&[v.unwrap_or(0)])?;
                }
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        match self {
            AnyColumn::F32(w) => w.flush(),
            AnyColumn::F64(w) => w.flush(),
            AnyColumn::I64(w) => w.flush(),
        }
    }

    pub fn dataset(&self) -> &H5Dataset {
        match self {
            AnyColumn::F32(w) => w.dataset(),
            AnyColumn::F64(w) => w.dataset(),
            AnyColumn::I64(w) => w.dataset(),
        }
    }
}

/// The `timestamps` of an `IrregularTimeSeries` in appends, with the 1 s index temporaldata's
/// lazy loader slices by: for each second of the domain (`arange(start, end + 1)`), the index
/// of the first timestamp at or after it. Timestamps come sorted.
pub struct Timestamps {
    column: Column<f64>,
    start: f64,
    end: f64,
    seconds: usize,
    index: Vec<i64>,
}

impl Timestamps {
    pub fn create(group: &H5Group, (start, end): (f64, f64)) -> Result<Self> {
        let seconds = (end + 1.0 - start).ceil().max(0.0) as usize;
        Ok(Timestamps {
            column: Column::create(group, "timestamps", 0)?,
            start,
            end,
            seconds,
            index: Vec::with_capacity(seconds),
        })
    }

    pub fn push(&mut self, t: f64) -> Result<()> {
        let seen = self.column.rows() as i64;
        while self.index.len() < self.seconds && self.start + self.index.len() as f64 <= t {
            self.index.push(seen);
        }
        self.column.push(&[t])
    }

    /// Flushes, and writes the index, the `domain` and the attributes that make `group` an
    /// `IrregularTimeSeries`.
    pub fn finish(mut self, group: &H5Group, unicode_keys: &[&str]) -> Result<()> {
        self.column.flush()?;
        let seen = self.column.rows() as i64;
        self.index.resize(self.seconds, seen);
        array(group, "timestamp_indices_1s", &self.index)?;
        let domain = group.create_group("domain")?;
        interval(&domain, &[self.start], &[self.end])?;
        irregular(group, unicode_keys)
    }
}

/// A small array written at once.
pub fn array<T: rust_hdf5::H5Type>(group: &H5Group, name: &str, values: &[T]) -> Result<()> {
    group
        .new_dataset::<T>()
        .shape([values.len()])
        .create(name)?
        .write_raw(values)
}

/// Strings, which temporaldata lists in `_unicode_keys` and reads back as numpy `U` arrays.
pub fn strings(group: &H5Group, name: &str, values: &[String]) -> Result<()> {
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    group.write_vlen_strings(name, &refs)?;
    Ok(())
}

/// An `Interval` (the `domain` of an object): `start` and `end` in seconds.
pub fn interval(group: &H5Group, start: &[f64], end: &[f64]) -> Result<()> {
    array(group, "start", start)?;
    array(group, "end", end)?;
    group.set_attr_string_array("_unicode_keys", &[])?;
    group.set_attr_string_array("timekeys", &["start", "end"])?;
    group.set_attr_string("object", "Interval")
}

/// The attributes that make `group` an `IrregularTimeSeries` (`timestamps` its time key).
fn irregular(group: &H5Group, unicode_keys: &[&str]) -> Result<()> {
    group.set_attr_string_array("_unicode_keys", unicode_keys)?;
    group.set_attr_string_array("timekeys", &["timestamps"])?;
    group.set_attr_string("object", "IrregularTimeSeries")
}

/// The attributes that make `group` an `ArrayDict`.
pub fn array_dict(group: &H5Group, unicode_keys: &[&str]) -> Result<()> {
    group.set_attr_string_array("_unicode_keys", unicode_keys)?;
    group.set_attr_string("object", "ArrayDict")
}

/// The attributes that make `group` a `RegularTimeSeries` sampled at `rate_hz`.
pub fn regular(group: &H5Group, rate_hz: f64) -> Result<()> {
    group.set_attr_numeric("sampling_rate", &rate_hz)?;
    group.set_attr_string("object", "RegularTimeSeries")
}
