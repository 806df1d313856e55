//! Finding the one `structure.oebin` that a path names or contains.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{OebinError, OEBIN};

/// How deep `open` looks below a folder for `structure.oebin` (Record Node / experiment / recording).
const SEARCH_DEPTH: usize = 4;

/// Finds the one structure.oebin that `path` names or contains.
pub(super) fn locate_oebin(path: &Path) -> Result<PathBuf, OebinError> {
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            OebinError::NotFound {
                path: path.to_path_buf(),
                why: "no such file or folder".into(),
            }
        } else {
            OebinError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join(OEBIN);
    if direct.is_file() {
        return Ok(direct);
    }
    let mut found = Vec::new();
    // Report an unreadable top folder; unreadable subfolders are skipped by the search.
    fs::read_dir(path).map_err(|e| OebinError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    search_oebins(path, SEARCH_DEPTH, &mut found);
    found.sort();
    match found.len() {
        0 => Err(OebinError::NotFound {
            path: path.to_path_buf(),
            why: format!("no {OEBIN} in it or in its subfolders (searched {SEARCH_DEPTH} levels)"),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(OebinError::SeveralRecordings {
            path: path.to_path_buf(),
            found: found
                .into_iter()
                .map(|p| p.parent().map(Path::to_path_buf).unwrap_or(p))
                .collect(),
        }),
    }
}

fn search_oebins(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            let oebin = p.join(OEBIN);
            if oebin.is_file() {
                // A recording folder: its own subfolders hold data, not recordings.
                found.push(oebin);
            } else {
                subdirs.push(p);
            }
        }
    }
    for d in subdirs {
        search_oebins(&d, depth - 1, found);
    }
}
