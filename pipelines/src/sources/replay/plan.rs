//! What a replay source's `path`s hold: stored streams (from the catalog) and Parquet files
//! written elsewhere, and the selection by `streams` patterns.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatchReader;

use super::cursor::{no_time_column, time_of, TimeOf};
use crate::storage::{foreign_stream, list_path, open_parquet, StoredStream};
use crate::stream::keys;

/// One stream to replay. `foreign`: Parquet from elsewhere, replayed as a `table` stream.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The store it was listed in (the file's folder for Parquet from elsewhere).
    pub store: PathBuf,
    pub stream: StoredStream,
    pub foreign: bool,
}

pub(crate) fn is_parquet(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Parquet files whose schema says nothing of neurod: `table` streams named after the file
/// (without `.parquet`) or the folder, each file with a numeric `time_s`.
fn foreign(id: &str, files: &[PathBuf]) -> Result<Planned, String> {
    let stream = foreign_stream(id, files).map_err(|e| e.to_string())?;
    let ours = stream.schema.as_ref().is_some_and(|s| {
        s.metadata.contains_key(keys::LAYOUT) && s.metadata.contains_key(keys::STREAM_ID)
    });
    if ours {
        // Files a store wrote, copied elsewhere: their own id and layout.
        let id = stream
            .schema
            .as_ref()
            .and_then(|s| s.stream_id())
            .unwrap_or(id)
            .to_string();
        return Ok(Planned {
            store: stream.dir.clone(),
            stream: StoredStream {
                stream_id: id,
                ..stream
            },
            foreign: false,
        });
    }
    for f in &stream.files {
        let reader = open_parquet(&f.path).map_err(|e| e.to_string())?;
        if time_of(&reader.schema()) != TimeOf::Column {
            return Err(no_time_column(&f.path).to_string());
        }
    }
    Ok(Planned {
        store: stream.dir.clone(),
        stream,
        foreign: true,
    })
}

pub(crate) fn name_of(p: &Path, strip_ext: bool) -> String {
    let n = if strip_ext {
        p.file_stem()
    } else {
        p.file_name()
    };
    n.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every stream under one `path`: a data directory, a store, a stream directory, a Parquet
/// file, or a folder of Parquet files.
pub fn streams_at(path: &Path) -> Result<Vec<Planned>, String> {
    if !path.exists() {
        return Err(format!("{}: no such file or directory", path.display()));
    }
    if path.is_file() {
        if !is_parquet(path) {
            return Err(format!(
                "{}: not a Parquet file (give a data directory, a store, a stream directory, \
                 a Parquet file or a folder of them)",
                path.display()
            ));
        }
        return Ok(vec![foreign(&name_of(path, true), &[path.to_path_buf()])?]);
    }
    let stored = list_path(path).map_err(|e| e.to_string())?;
    if !stored.is_empty() {
        return Ok(stored
            .into_iter()
            .map(|(store, stream)| Planned {
                store,
                stream,
                foreign: false,
            })
            .collect());
    }
    let files = parquet_files_in(path).map_err(|e| format!("{}: listing: {e}", path.display()))?;
    if files.is_empty() {
        return Err(format!(
            "{}: holds no stored stream and no Parquet file",
            path.display()
        ));
    }
    Ok(vec![foreign(&name_of(path, false), &files)?])
}

/// The Parquet files of a folder in name order, hidden ones (`.`, `_`) left out.
pub(crate) fn parquet_files_in(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_parquet(p) && !name_of(p, false).starts_with(['.', '_']))
        .collect();
    files.sort();
    Ok(files)
}

/// `*` any run of characters (dots and slashes too), `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it now covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// The streams of every path matching any pattern (all when there is none); each pattern must
/// match something, and two places may not hold the same stream id.
pub fn resolve(paths: &[PathBuf], patterns: &[String]) -> Result<Vec<Planned>, Vec<String>> {
    let mut errors = Vec::new();
    let mut all = Vec::new();
    for p in paths {
        match streams_at(p) {
            Ok(s) => all.extend(s),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for pat in patterns {
        if !all.iter().any(|s| glob_match(pat, &s.stream.stream_id)) {
            let mut ids: Vec<&str> = all.iter().map(|s| s.stream.stream_id.as_str()).collect();
            ids.dedup();
            let shown = ids.iter().take(20).copied().collect::<Vec<_>>().join(", ");
            let more = if ids.len() > 20 { ", ..." } else { "" };
            errors.push(format!(
                "`streams` pattern `{pat}` matches no stream in {} (there: {shown}{more})",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if !patterns.is_empty() {
        all.retain(|s| patterns.iter().any(|p| glob_match(p, &s.stream.stream_id)));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(all)
}

/// Two places holding one stream id cannot both be replayed under it.
pub fn check_unique(planned: &[Planned]) -> Result<(), String> {
    for (i, a) in planned.iter().enumerate() {
        if let Some(b) = planned
            .iter()
            .skip(i + 1)
            .find(|b| b.stream.stream_id == a.stream.stream_id)
        {
            return Err(format!(
                "stream `{}` is held in both {} and {}: give one store as `path`, or select \
                 with `streams`",
                a.stream.stream_id,
                a.stream.dir.display(),
                b.stream.dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_ids() {
        let yes = [
            ("*", "rig.imec0.ap"),
            ("rig.*", "rig.imec0.ap"),
            ("*.ap", "rig.imec0.ap"),
            ("rig.imec?.ap", "rig.imec1.ap"),
            ("*imec*ap*", "rig.imec0.ap.spikes"),
            ("a/b", "a/b"),
            ("**", ""),
        ];
        for (p, t) in yes {
            assert!(glob_match(p, t), "{p} {t}");
        }
        let no = [
            ("rig.*", "sim.imec0.ap"),
            ("*.ap", "rig.imec0.ap.spikes"),
            ("rig.imec?.ap", "rig.imec10.ap"),
            ("rig", "rig.imec0.ap"),
            ("?", ""),
        ];
        for (p, t) in no {
            assert!(!glob_match(p, t), "{p} {t}");
        }
    }
}
