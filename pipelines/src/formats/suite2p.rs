//! A Suite2p `plane0` folder (Suite2p's output for one imaging plane):
//!
//! - `F.npy`, `Fneu.npy`, `spks.npy`: float32, ROIs × frames (cell fluorescence, neuropil,
//!   deconvolved activity); `F.npy` and `Fneu.npy` are required, `spks.npy` optional;
//! - `iscell.npy`: float64, ROIs × 2 (classifier's 0/1 and its probability); optional;
//! - `stat.npy`: per ROI a pickled dict (`ypix`, `xpix`, `lam`, `npix`, `med`, ...); optional;
//! - `ops.npy`: the run's settings, a pickled dict (`fs` frame rate, `Ly` × `Lx` image); optional.
//!
//! [`Suite2pPlane::probe`] reads only headers and `ops.npy` (for validation); [`load`] reads
//! everything into memory (Suite2p itself does the same; 1,000 ROIs × 100,000 frames is
//! 400 MB per trace file). The traces keep the files' float32 values exactly.
//!
//! [`load`]: Suite2pPlane::load

use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde_pickle::Value;

use super::numpy_pickle::{self, as_f64, dict_get, NdArray, PickleError};

pub const F_NPY: &str = "F.npy";
pub const FNEU_NPY: &str = "Fneu.npy";
pub const SPKS_NPY: &str = "spks.npy";
pub const ISCELL_NPY: &str = "iscell.npy";
pub const STAT_NPY: &str = "stat.npy";
pub const OPS_NPY: &str = "ops.npy";
/// Suite2p's neuropil coefficient: the cell's signal is F − 0.7·Fneu (ALGORITHMS.md §3).
pub const NEUROPIL_COEFFICIENT: f32 = 0.7;

/// F − 0.7·Fneu as Suite2p computes it, and as numpy does on these float32 arrays (`F - 0.7 *
/// Fneu` stays float32, 0.7 rounded to float32): in float32. Moments of it are then taken in
/// float64. Doing the subtraction in float64 instead moves skewness by ~1e-8 relative, beyond
/// the 1e-9 at which the reference values (`expected_moments.json`, scipy) agree with this.
#[inline]
pub fn neuropil_corrected(f: f32, fneu: f32) -> f32 {
    f - NEUROPIL_COEFFICIENT * fneu
}

#[derive(Debug, thiserror::Error)]
pub enum Suite2pError {
    #[error(
        "{}: not a Suite2p plane folder (no {F_NPY}); give the `plane0` folder Suite2p wrote",
        .path.display()
    )]
    NotAPlane { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", .path.display())]
    Npy { path: PathBuf, why: String },
    #[error(transparent)]
    Pickle(#[from] PickleError),
    #[error("{}: ROI {roi}: {why}", .path.display())]
    Roi {
        path: PathBuf,
        roi: usize,
        why: String,
    },
}

/// What `ops.npy` says, where it says it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ops {
    /// Frame rate per plane, Hz (`fs`).
    pub fs: Option<f64>,
    /// Image height and width (`Ly`, `Lx`).
    pub ly: Option<usize>,
    pub lx: Option<usize>,
}

/// One ROI's mask from `stat.npy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiMask {
    pub ypix: Vec<i32>,
    pub xpix: Vec<i32>,
    /// Suite2p's pixel weights.
    pub lam: Vec<f32>,
    /// `npix` as Suite2p gives it (the number of pixels when absent).
    pub npix: usize,
}

/// The classifier's verdict on one ROI (`iscell.npy`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IsCell {
    pub is_cell: bool,
    pub probability: f64,
}

/// The shapes and settings of a plane folder, without its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite2pFiles {
    pub dir: PathBuf,
    pub rois: usize,
    pub frames: usize,
    pub has_spks: bool,
    pub has_iscell: bool,
    pub has_stat: bool,
    pub ops: Ops,
}

/// A plane folder read into memory.
#[derive(Debug, Clone)]
pub struct Suite2pPlane {
    pub files: Suite2pFiles,
    /// ROIs × frames.
    pub f: Array2<f32>,
    pub fneu: Array2<f32>,
    pub spks: Option<Array2<f32>>,
    pub iscell: Option<Vec<IsCell>>,
    pub stat: Option<Vec<RoiMask>>,
}

impl Suite2pPlane {
    /// Checks the folder: required files, shapes that agree, and `ops.npy` when present.
    pub fn probe(dir: &Path) -> Result<Suite2pFiles, Suite2pError> {
        let f_path = dir.join(F_NPY);
        if !f_path.is_file() {
            if !dir.exists() {
                return Err(Suite2pError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
                });
            }
            return Err(Suite2pError::NotAPlane {
                path: dir.to_path_buf(),
            });
        }
        let (rois, frames) = trace_shape(&f_path, None)?;
        trace_shape(&dir.join(FNEU_NPY), Some((rois, frames)))?;
        let spks = dir.join(SPKS_NPY);
        let has_spks = spks.is_file();
        if has_spks {
            trace_shape(&spks, Some((rois, frames)))?;
        }
        let iscell = dir.join(ISCELL_NPY);
        let has_iscell = iscell.is_file();
        if has_iscell {
            let shape = npy_shape(&iscell)?.0;
            if shape != [rois, 2] {
                return Err(npy_err(
                    &iscell,
                    format!("shape {shape:?}, expected [{rois}, 2] (ROIs in {F_NPY} × 2)"),
                ));
            }
        }
        let ops_path = dir.join(OPS_NPY);
        let ops = if ops_path.is_file() {
            read_ops(&ops_path)?
        } else {
            Ops::default()
        };
        Ok(Suite2pFiles {
            dir: dir.to_path_buf(),
            rois,
            frames,
            has_spks,
            has_iscell,
            has_stat: dir.join(STAT_NPY).is_file(),
            ops,
        })
    }

    /// Reads the whole folder.
    pub fn load(dir: &Path) -> Result<Suite2pPlane, Suite2pError> {
        let files = Self::probe(dir)?;
        let f = read_traces(&dir.join(F_NPY))?;
        let fneu = read_traces(&dir.join(FNEU_NPY))?;
        let spks = if files.has_spks {
            Some(read_traces(&dir.join(SPKS_NPY))?)
        } else {
            None
        };
        let iscell = if files.has_iscell {
            let p = dir.join(ISCELL_NPY);
            let a: Array2<f64> =
                ndarray_npy::read_npy(&p).map_err(|e| npy_err(&p, e.to_string()))?;
            Some(
                a.rows()
                    .into_iter()
                    .map(|r| IsCell {
                        is_cell: r[0] > 0.5,
                        probability: r[1],
                    })
                    .collect(),
            )
        } else {
            None
        };
        let stat = if files.has_stat {
            let p = dir.join(STAT_NPY);
            let masks = read_stat(&p, files.ops)?;
            if masks.len() != files.rois {
                return Err(npy_err(
                    &p,
                    format!("{} ROIs, but {F_NPY} has {}", masks.len(), files.rois),
                ));
            }
            Some(masks)
        } else {
            None
        };
        for (name, a) in [(F_NPY, &f), (FNEU_NPY, &fneu)]
            .into_iter()
            .chain(spks.as_ref().map(|s| (SPKS_NPY, s)))
        {
            if a.dim() != (files.rois, files.frames) {
                return Err(npy_err(
                    &dir.join(name),
                    format!("changed shape while being read: {:?}", a.dim()),
                ));
            }
        }
        Ok(Suite2pPlane {
            files,
            f,
            fneu,
            spks,
            iscell,
            stat,
        })
    }

    /// Image height and width: `Ly` × `Lx` from `ops.npy`, else the smallest image holding
    /// every ROI pixel; `None` when neither is known.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        if let (Some(ly), Some(lx)) = (self.files.ops.ly, self.files.ops.lx) {
            return Some((ly, lx));
        }
        let stat = self.stat.as_ref()?;
        let max = |f: fn(&RoiMask) -> &Vec<i32>| {
            stat.iter()
                .flat_map(|m| f(m).iter().copied())
                .max()
                .map_or(0, |v| v as usize + 1)
        };
        Some((max(|m| &m.ypix), max(|m| &m.xpix)))
    }
}

fn npy_err(path: &Path, why: impl Into<String>) -> Suite2pError {
    Suite2pError::Npy {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Shape and dtype text of an `.npy`.
fn npy_shape(path: &Path) -> Result<(Vec<usize>, String), Suite2pError> {
    let mut f = std::fs::File::open(path).map_err(|source| Suite2pError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let h = ndarray_npy::npy::header::Header::from_reader(&mut f)
        .map_err(|e| npy_err(path, format!("bad .npy header: {e}")))?;
    Ok((h.shape, h.type_descriptor.to_string()))
}

/// Checks a ROIs × frames float32 trace file; `expect` is the shape of `F.npy`.
fn trace_shape(
    path: &Path,
    expect: Option<(usize, usize)>,
) -> Result<(usize, usize), Suite2pError> {
    let (shape, descr) = npy_shape(path)?;
    if !descr.contains("f4") {
        return Err(npy_err(path, format!("dtype {descr}, expected float32")));
    }
    let [rois, frames] = shape[..] else {
        return Err(npy_err(
            path,
            format!("shape {shape:?}, expected ROIs × frames"),
        ));
    };
    if let Some((r, n)) = expect {
        if (rois, frames) != (r, n) {
            return Err(npy_err(
                path,
                format!("shape [{rois}, {frames}] differs from {F_NPY}'s [{r}, {n}]"),
            ));
        }
    }
    Ok((rois, frames))
}

fn read_traces(path: &Path) -> Result<Array2<f32>, Suite2pError> {
    ndarray_npy::read_npy(path).map_err(|e| npy_err(path, e.to_string()))
}

/// `fs`, `Ly` and `Lx` from `ops.npy`, where they are numbers.
pub fn read_ops(path: &Path) -> Result<Ops, Suite2pError> {
    let items = numpy_pickle::read_object_npy(path)?;
    let [ops] = items.as_slice() else {
        return Err(PickleError::Malformed {
            path: path.to_path_buf(),
            why: format!("expected one dict, found {} objects", items.len()),
        }
        .into());
    };
    if !matches!(ops, Value::Dict(_)) {
        return Err(PickleError::Malformed {
            path: path.to_path_buf(),
            why: "the object is not a dict".into(),
        }
        .into());
    }
    let num = |k: &str| dict_get(ops, k).and_then(as_f64);
    let size = |k: &str| {
        num(k)
            .filter(|v| v.is_finite() && *v >= 1.0 && v.fract() == 0.0)
            .map(|v| v as usize)
    };
    Ok(Ops {
        fs: num("fs").filter(|v| v.is_finite() && *v > 0.0),
        ly: size("Ly"),
        lx: size("Lx"),
    })
}

/// The masks of `stat.npy`; pixels outside `Ly` × `Lx` (when known) are an error.
pub fn read_stat(path: &Path, ops: Ops) -> Result<Vec<RoiMask>, Suite2pError> {
    let items = numpy_pickle::read_object_npy(path)?;
    items
        .iter()
        .enumerate()
        .map(|(roi, v)| {
            roi_mask(v, ops).map_err(|why| Suite2pError::Roi {
                path: path.to_path_buf(),
                roi,
                why,
            })
        })
        .collect()
}

fn roi_mask(v: &Value, ops: Ops) -> Result<RoiMask, String> {
    if !matches!(v, Value::Dict(_)) {
        return Err("not a dict".into());
    }
    let array = |key: &str| {
        let a = dict_get(v, key).ok_or_else(|| format!("no `{key}`"))?;
        NdArray::from_value(a).ok_or_else(|| format!("`{key}` is not a numpy array"))
    };
    let pixels = |key: &str, limit: Option<usize>| -> Result<Vec<i32>, String> {
        let values = array(key)?.to_i64().map_err(|e| format!("`{key}`: {e}"))?;
        values
            .into_iter()
            .map(|p| {
                let ok = p >= 0 && limit.is_none_or(|l| (p as u64) < l as u64);
                match (ok, i32::try_from(p)) {
                    (true, Ok(p)) => Ok(p),
                    _ => Err(format!(
                        "`{key}` value {p} is outside the image ({} pixels)",
                        limit.map_or("?".to_string(), |l| l.to_string())
                    )),
                }
            })
            .collect()
    };
    let ypix = pixels("ypix", ops.ly)?;
    let xpix = pixels("xpix", ops.lx)?;
    let lam = array("lam")?.to_f32().map_err(|e| format!("`lam`: {e}"))?;
    if xpix.len() != ypix.len() || lam.len() != ypix.len() {
        return Err(format!(
            "`ypix`, `xpix` and `lam` differ in length ({}, {}, {})",
            ypix.len(),
            xpix.len(),
            lam.len()
        ));
    }
    let npix = dict_get(v, "npix")
        .and_then(as_f64)
        .filter(|n| *n >= 0.0 && n.fract() == 0.0)
        .map_or(ypix.len(), |n| n as usize);
    Ok(RoiMask {
        ypix,
        xpix,
        lam,
        npix,
    })
}

/// The test data folder, or `None` (with a loud message) where it is missing outside CI.
#[cfg(test)]
pub(crate) fn test_plane() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/suite2p-fissa");
    if p.join(F_NPY).exists() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        panic!("test data missing: {}", p.display());
    } else {
        eprintln!(
            "!!! SKIPPED: test data missing: {} (CI would fail)",
            p.display()
        );
        None
    }
}

/// Runs a Python snippet with the peers (NEUROD_PYTHON); `None` (loudly) where it is not set
/// outside CI.
#[cfg(test)]
pub(crate) fn run_python(code: &str, args: &[&str]) -> Option<String> {
    let Some(py) = std::env::var_os("NEUROD_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs scripts/test.sh, which sets NEUROD_PYTHON"
        );
        eprintln!("!!! SKIPPED: NEUROD_PYTHON not set (run scripts/test.sh)");
        return None;
    };
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_plane_shapes_and_ops() {
        let Some(dir) = test_plane() else { return };
        let plane = Suite2pPlane::load(&dir).unwrap();
        assert_eq!((plane.files.rois, plane.files.frames), (23, 864));
        assert_eq!(plane.f.dim(), (23, 864));
        assert!(plane.spks.is_some());
        assert_eq!(plane.iscell.as_ref().map(Vec::len), Some(23));
        assert_eq!(plane.stat.as_ref().map(Vec::len), Some(23));
        assert_eq!(plane.files.ops.ly, Some(176));
        assert_eq!(plane.files.ops.lx, Some(156));
        assert_eq!(plane.files.ops.fs, Some(1.0));
        assert_eq!(plane.image_size(), Some((176, 156)));
    }

    /// Every ROI's pixels, weights and npix, and iscell, as numpy reads them.
    #[test]
    fn stat_and_iscell_equal_numpys_reading() {
        let Some(dir) = test_plane() else { return };
        let code = r#"
import sys, json, numpy as np
d = sys.argv[1]
stat = np.load(d + "/stat.npy", allow_pickle=True)
iscell = np.load(d + "/iscell.npy")
out = [{"ypix": s["ypix"].tolist(), "xpix": s["xpix"].tolist(),
        "lam": s["lam"].astype(np.float32).view(np.uint32).tolist(), "npix": int(s["npix"]),
        "iscell": bool(iscell[i, 0] > 0.5), "prob": int(iscell[i, 1:2].view(np.uint64)[0])}
       for i, s in enumerate(stat)]
print(json.dumps(out))
"#;
        let Some(out) = run_python(code, &[dir.to_str().unwrap()]) else {
            return;
        };
        let expected: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let plane = Suite2pPlane::load(&dir).unwrap();
        let stat = plane.stat.unwrap();
        let iscell = plane.iscell.unwrap();
        assert_eq!(stat.len(), expected.len());
        let ints = |v: &serde_json::Value| -> Vec<i32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap() as i32)
                .collect()
        };
        for (i, (m, e)) in stat.iter().zip(&expected).enumerate() {
            assert_eq!(m.ypix, ints(&e["ypix"]), "ROI {i} ypix");
            assert_eq!(m.xpix, ints(&e["xpix"]), "ROI {i} xpix");
            // Bit patterns: exact, whatever the JSON float parsing does.
            let lam: Vec<u32> = e["lam"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got: Vec<u32> = m.lam.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, lam, "ROI {i} lam");
            assert_eq!(m.npix as u64, e["npix"].as_u64().unwrap(), "ROI {i} npix");
            assert_eq!(iscell[i].is_cell, e["iscell"].as_bool().unwrap());
            assert_eq!(
                iscell[i].probability.to_bits(),
                e["prob"].as_u64().unwrap(),
                "ROI {i} probability"
            );
        }
    }

    #[test]
    fn traces_are_the_files_float32_values() {
        let Some(dir) = test_plane() else { return };
        let code = r#"
import sys, numpy as np
d = sys.argv[1]
F = np.load(d + "/F.npy"); N = np.load(d + "/Fneu.npy")
print(F[3, 100].view(np.uint32), N[22, 863].view(np.uint32), float(F.astype(np.float64).sum()))
"#;
        let Some(out) = run_python(code, &[dir.to_str().unwrap()]) else {
            return;
        };
        let v: Vec<&str> = out.split_whitespace().collect();
        let plane = Suite2pPlane::load(&dir).unwrap();
        assert_eq!(plane.f[[3, 100]].to_bits(), v[0].parse::<u32>().unwrap());
        assert_eq!(
            plane.fneu[[22, 863]].to_bits(),
            v[1].parse::<u32>().unwrap()
        );
        let sum: f64 = plane.f.iter().map(|&x| f64::from(x)).sum();
        let want: f64 = v[2].parse().unwrap();
        assert!((sum - want).abs() <= 1e-9 * want.abs(), "{sum} vs {want}");
    }

    #[test]
    fn problems_name_the_file() {
        let Some(dir) = test_plane() else { return };
        let tmp = tempfile::tempdir().unwrap();
        for f in [F_NPY, FNEU_NPY, ISCELL_NPY, OPS_NPY, STAT_NPY] {
            std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
        }
        Suite2pPlane::load(tmp.path()).unwrap();
        // A stat.npy cut in the middle of its pickle.
        let stat = std::fs::read(dir.join(STAT_NPY)).unwrap();
        std::fs::write(tmp.path().join(STAT_NPY), &stat[..stat.len() / 2]).unwrap();
        let e = Suite2pPlane::load(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("stat.npy") && e.contains("malformed pickle"),
            "{e}"
        );
        // Fneu with another shape.
        std::fs::copy(dir.join(ISCELL_NPY), tmp.path().join(FNEU_NPY)).unwrap();
        let e = Suite2pPlane::probe(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("Fneu.npy"), "{e}");
        std::fs::remove_file(tmp.path().join(F_NPY)).unwrap();
        let e = Suite2pPlane::probe(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("not a Suite2p plane"), "{e}");
        let e = Suite2pPlane::probe(&tmp.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone"), "{e}");
    }
}
