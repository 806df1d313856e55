//! numpy object arrays saved with `np.save(..., allow_pickle=True)` (Suite2p's `stat.npy` and
//! `ops.npy`): an `.npy` header with `descr` `|O`, then a Python pickle of the array.
//!
//! The pickle is parsed by serde-pickle into plain values; nothing is executed. numpy objects
//! arrive as their reconstruct state: an `ndarray` as `(1, shape, dtype, is_fortran, data)`
//! (`data` is the raw bytes, or a list for object arrays), a numpy scalar as `(dtype, bytes)`.
//! serde-pickle gives a `dtype` either as its constructor arguments (`('i8', False, True)`) or,
//! for the first use of each dtype in a file (where the pickle applies `BUILD` to it), as its
//! state (`(3, '<', None, ...)`), which lacks the type code. [`NdArray`] therefore records the
//! type code when there is one, and callers say which kind of number they expect: the item size
//! (bytes ÷ elements) then tells `int32` from `int64`, or `float32` from `float64`.

use std::path::{Path, PathBuf};

use serde_pickle::{DeOptions, HashableValue, Value};

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a numpy object array: {why}", .path.display())]
    NotObjectNpy { path: PathBuf, why: String },
    #[error("{}: malformed pickle: {why}", .path.display())]
    Malformed { path: PathBuf, why: String },
}

/// Reads an object-dtype `.npy` and unpickles its payload; returns the array's items (one for
/// a 0-d array such as `ops.npy`).
pub fn read_object_npy(path: &Path) -> Result<Vec<Value>, PickleError> {
    let bytes = std::fs::read(path).map_err(|source| PickleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let not_npy = |why: String| PickleError::NotObjectNpy {
        path: path.to_path_buf(),
        why,
    };
    let mut cursor = std::io::Cursor::new(&bytes[..]);
    let header = ndarray_npy::npy::header::Header::from_reader(&mut cursor)
        .map_err(|e| not_npy(format!("bad .npy header: {e}")))?;
    let descr = header.type_descriptor.to_string();
    if descr.trim_matches('\'') != "|O" {
        return Err(not_npy(format!("dtype is {descr}, expected '|O'")));
    }
    let body = &bytes[cursor.position() as usize..];
    let malformed = |why: String| PickleError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    // Restore state keeps numpy's reconstruct arguments; globals (numpy.ndarray, numpy.dtype,
    // datetime...) become None instead of failing the whole file.
    let options = DeOptions::new()
        .keep_restore_state()
        .replace_unresolved_globals()
        .replace_recursive_structures();
    let value =
        serde_pickle::value_from_slice(body, options).map_err(|e| malformed(e.to_string()))?;
    let array = NdArray::from_value(&value)
        .ok_or_else(|| malformed("the pickle does not hold a numpy array".into()))?;
    match array.data {
        ArrayData::Objects(items) => {
            let expected: usize = array.shape.iter().product();
            if items.len() != expected {
                return Err(malformed(format!(
                    "array of shape {:?} holds {} objects",
                    array.shape,
                    items.len()
                )));
            }
            Ok(items.to_vec())
        }
        ArrayData::Raw(_) => Err(malformed("expected an object array, found raw data".into())),
    }
}

/// A numpy array as serde-pickle hands it over (borrowed from the parsed value).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray<'a> {
    pub shape: Vec<usize>,
    /// Type code (`i8`, `f4`, ...) when the pickle gave it (see the module doc).
    pub type_code: Option<&'a str>,
    /// Byte order from the dtype state: `<`, `>`, `|` or `=`; `None` when not given.
    pub byte_order: Option<&'a str>,
    pub data: ArrayData<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData<'a> {
    Raw(&'a [u8]),
    Objects(&'a [Value]),
}

/// The kind of number a caller expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberKind {
    Int,
    Float,
}

impl<'a> NdArray<'a> {
    /// Recognises `(1, shape, dtype, is_fortran, data)`.
    pub fn from_value(v: &'a Value) -> Option<Self> {
        let Value::Tuple(t) = v else { return None };
        let [Value::I64(1), Value::Tuple(shape), dtype, Value::Bool(_), data] = t.as_slice() else {
            return None;
        };
        let shape = shape
            .iter()
            .map(|d| match d {
                Value::I64(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()?;
        let (type_code, byte_order) = dtype_parts(dtype)?;
        let data = match data {
            Value::Bytes(b) => ArrayData::Raw(b),
            Value::List(items) => ArrayData::Objects(items),
            _ => return None,
        };
        Some(NdArray {
            shape,
            type_code,
            byte_order,
            data,
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as integers (any signed or unsigned width that fits an i64).
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        let raw = self.raw()?;
        let size = self.item_size(raw, NumberKind::Int)?;
        let unsigned = self.type_code.is_some_and(|c| c.starts_with('u'));
        let big = self.byte_order == Some(">");
        let mut out = Vec::with_capacity(self.len());
        for chunk in raw.chunks_exact(size) {
            let mut b = [0u8; 8];
            if big {
                b[..size].copy_from_slice(chunk);
                b[..size].reverse();
            } else {
                b[..size].copy_from_slice(chunk);
            }
            let v = match (size, unsigned) {
                (1, false) => i64::from(b[0] as i8),
                (1, true) => i64::from(b[0]),
                (2, false) => i64::from(i16::from_le_bytes([b[0], b[1]])),
                (2, true) => i64::from(u16::from_le_bytes([b[0], b[1]])),
                (4, false) => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                (4, true) => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                (8, false) => i64::from_le_bytes(b),
                (8, true) => i64::try_from(u64::from_le_bytes(b))
                    .map_err(|_| "an unsigned value does not fit in int64".to_string())?,
                _ => return Err(format!("{size}-byte integers are not supported")),
            };
            out.push(v);
        }
        Ok(out)
    }

    /// The elements as f32 (float64 arrays are rounded to f32).
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        let raw = self.raw()?;
        let size = self.item_size(raw, NumberKind::Float)?;
        let big = self.byte_order == Some(">");
        let mut out = Vec::with_capacity(self.len());
        for chunk in raw.chunks_exact(size) {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(chunk);
            if big {
                b[..size].reverse();
            }
            let v = match size {
                4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                // float64 stat fields (older Suite2p) are kept at f32, like the traces.
                8 => f64::from_le_bytes(b) as f32,
                _ => return Err(format!("{size}-byte floats are not supported")),
            };
            out.push(v);
        }
        Ok(out)
    }

    fn raw(&self) -> Result<&'a [u8], String> {
        match self.data {
            ArrayData::Raw(b) => Ok(b),
            ArrayData::Objects(_) => Err("an object array where numbers were expected".into()),
        }
    }

    /// Bytes per element, checked against the type code when there is one.
    fn item_size(&self, raw: &[u8], kind: NumberKind) -> Result<usize, String> {
        let n = self.len();
        if n == 0 {
            return Ok(1);
        }
        if !raw.len().is_multiple_of(n) {
            return Err(format!("{} bytes for {n} elements", raw.len()));
        }
        let size = raw.len() / n;
        if let Some(code) = self.type_code {
            let ok_kind = match kind {
                NumberKind::Int => code.starts_with('i') || code.starts_with('u'),
                NumberKind::Float => code.starts_with('f'),
            };
            let code_size: Option<usize> = code.get(1..).and_then(|s| s.parse().ok());
            if !ok_kind || code_size != Some(size) {
                return Err(format!(
                    "dtype {code} where {} numbers were expected",
                    match kind {
                        NumberKind::Int => "integer",
                        NumberKind::Float => "floating-point",
                    }
                ));
            }
        }
        let sizes: &[usize] = match kind {
            NumberKind::Int => &[1, 2, 4, 8],
            NumberKind::Float => &[4, 8],
        };
        if sizes.contains(&size) {
            Ok(size)
        } else {
            Err(format!(
                "{size}-byte elements are not a supported number type"
            ))
        }
    }
}

/// The type code and byte order of a dtype value, in either of its two forms.
fn dtype_parts(v: &Value) -> Option<(Option<&str>, Option<&str>)> {
    match v {
        // ('i8', False, True): numpy.dtype's constructor arguments.
        Value::Tuple(t) => match t.as_slice() {
            [Value::String(code), ..] => Some((Some(code.as_str()), None)),
            [Value::I64(_), Value::String(order), ..] => Some((None, Some(order.as_str()))),
            _ => None,
        },
        _ => None,
    }
}

/// A number: a Python int, float or bool, or a 0-d numpy scalar whose dtype is known (a scalar
/// with only the dtype state is ambiguous between int64 and float64, and gives `None`).
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::I64(n) => Some(*n as f64),
        Value::F64(x) => Some(*x),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Tuple(t) => {
            let [dtype, Value::Bytes(b)] = t.as_slice() else {
                return None;
            };
            let (Some(code), _) = dtype_parts(dtype)? else {
                return None;
            };
            let arr = NdArray {
                shape: vec![1],
                type_code: Some(code),
                byte_order: None,
                data: ArrayData::Raw(b),
            };
            if code.starts_with('f') {
                arr.to_f32().ok()?; // checks the size
                match b.len() {
                    8 => Some(f64::from_le_bytes(b.as_slice().try_into().ok()?)),
                    _ => arr.to_f32().ok().map(|v| f64::from(v[0])),
                }
            } else {
                arr.to_i64().ok().map(|v| v[0] as f64)
            }
        }
        _ => None,
    }
}

/// The entry `key` of a pickled dict.
pub fn dict_get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Dict(d) => d.get(&HashableValue::String(key.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dtype_args(code: &str) -> Value {
        Value::Tuple(vec![
            Value::String(code.into()),
            Value::I64(0),
            Value::I64(1),
        ])
    }

    fn dtype_state(order: &str) -> Value {
        Value::Tuple(vec![
            Value::I64(3),
            Value::String(order.into()),
            Value::None,
            Value::None,
            Value::None,
            Value::I64(-1),
            Value::I64(-1),
            Value::I64(0),
        ])
    }

    fn array(n: usize, dtype: Value, data: Vec<u8>) -> Value {
        Value::Tuple(vec![
            Value::I64(1),
            Value::Tuple(vec![Value::I64(n as i64)]),
            dtype,
            Value::Bool(false),
            Value::Bytes(data),
        ])
    }

    #[test]
    fn integer_arrays_by_code_or_by_size() {
        let data: Vec<u8> = [3i64, -2, 70000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let v = array(3, dtype_args("i8"), data.clone());
        assert_eq!(
            NdArray::from_value(&v).unwrap().to_i64().unwrap(),
            [3, -2, 70000]
        );
        let v = array(3, dtype_state("<"), data);
        assert_eq!(
            NdArray::from_value(&v).unwrap().to_i64().unwrap(),
            [3, -2, 70000]
        );
        let data: Vec<u8> = [7i32, 9].iter().flat_map(|v| v.to_be_bytes()).collect();
        let v = array(2, dtype_state(">"), data);
        assert_eq!(NdArray::from_value(&v).unwrap().to_i64().unwrap(), [7, 9]);
    }

    #[test]
    fn wrong_kind_or_size_is_refused() {
        let data: Vec<u8> = [1.5f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = array(2, dtype_args("f4"), data.clone());
        let a = NdArray::from_value(&v).unwrap();
        assert_eq!(a.to_f32().unwrap(), [1.5, 2.0]);
        assert!(a.to_i64().unwrap_err().contains("f4"));
        let v = array(3, dtype_state("<"), data);
        let e = NdArray::from_value(&v).unwrap().to_f32().unwrap_err();
        assert!(e.contains("8 bytes for 3"), "{e}");
    }

    #[test]
    fn scalars() {
        let s = Value::Tuple(vec![
            dtype_args("f8"),
            Value::Bytes(30.5f64.to_le_bytes().into()),
        ]);
        assert_eq!(as_f64(&s), Some(30.5));
        let s = Value::Tuple(vec![
            dtype_args("f4"),
            Value::Bytes(2.5f32.to_le_bytes().into()),
        ]);
        assert_eq!(as_f64(&s), Some(2.5));
        let s = Value::Tuple(vec![
            dtype_state("<"),
            Value::Bytes(1f64.to_le_bytes().into()),
        ]);
        assert_eq!(as_f64(&s), None, "ambiguous without a type code");
        assert_eq!(as_f64(&Value::I64(512)), Some(512.0));
    }

    #[test]
    fn garbage_is_a_malformed_pickle_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stat.npy");
        let header = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }";
        let mut h = header.as_bytes().to_vec();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(b"\x80\x03cnumpy.core.multiarray\n_reconstruct\nq\x00");
        std::fs::write(&p, &out).unwrap();
        let e = read_object_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("stat.npy") && e.contains("malformed pickle"),
            "{e}"
        );
        std::fs::write(&p, b"not an npy").unwrap();
        let e = read_object_npy(&p).unwrap_err().to_string();
        assert!(e.contains("stat.npy") && e.contains("header"), "{e}");
    }
}
