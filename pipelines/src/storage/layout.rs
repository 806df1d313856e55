//! File and directory names of the store, and the few filesystem steps that make them durable.
//!
//! One directory per stream; inside it, numbered files share one sequence: the live segment
//! `_segment-<seq>.arrows` becomes `part-<seq>.parquet` (written as `.part-<seq>.parquet.tmp`).
//! The leading `_` and `.` make pyarrow's dataset discovery and DataFusion's listing skip files
//! that are not finished Parquet.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub const SEGMENT_PREFIX: &str = "_segment-";
pub const SEGMENT_SUFFIX: &str = ".arrows";
pub const PART_PREFIX: &str = "part-";
pub const PART_SUFFIX: &str = ".parquet";
pub const TMP_SUFFIX: &str = ".tmp";

/// The directory name of a stream, the one stream-id → name rule of the store: bytes outside
/// `[A-Za-z0-9._-]` (and `%` itself) become `%XX` (UTF-8, upper-case hex), as do a leading `.`
/// or `_`, so that no stream lands in a directory that dataset readers skip as hidden (or in `.`
/// / `..`); the empty id is `%`. Reversible ([`stream_id_from_dir_name`]): two ids never share a
/// directory. Ids of the usual form (`rig.imec0.ap`) are their own name.
pub fn stream_dir_name(stream_id: &str) -> String {
    if stream_id.is_empty() {
        return "%".into();
    }
    let mut name = String::with_capacity(stream_id.len());
    for (i, b) in stream_id.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || (matches!(b, b'.' | b'_') && i > 0);
        if keep {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

/// The stream id a [`stream_dir_name`] came from; `None` for a name that rule never produces
/// (a store written before it, whose ids are in the files' schema metadata instead).
pub fn stream_id_from_dir_name(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    (stream_dir_name(&id) == name).then_some(id)
}

/// The lossy name stores used before [`stream_dir_name`] (every character outside
/// `[A-Za-z0-9._-]` became `_`, a leading `.`/`_` became `-`), so that a stream stored then is
/// still found.
pub fn legacy_stream_dir_name(stream_id: &str) -> String {
    let mut name: String = stream_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hidden = name.chars().take_while(|c| matches!(c, '.' | '_')).count();
    name.replace_range(..hidden, &"-".repeat(hidden));
    if name.is_empty() {
        name.push('-');
    }
    name
}

/// `_segment-000042.arrows`.
pub fn segment_path(stream_dir: &Path, seq: u64) -> PathBuf {
    stream_dir.join(format!("{SEGMENT_PREFIX}{seq:06}{SEGMENT_SUFFIX}"))
}

/// `part-000042.parquet`.
pub fn part_path(stream_dir: &Path, seq: u64) -> PathBuf {
    stream_dir.join(format!("{PART_PREFIX}{seq:06}{PART_SUFFIX}"))
}

/// Where a finished file is written before its atomic rename: `.part-000042.parquet.tmp`
/// beside it.
pub fn tmp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}{TMP_SUFFIX}"))
}

fn seq_between(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of a segment file name, if it is one.
pub fn segment_seq(file_name: &str) -> Option<u64> {
    seq_between(file_name, SEGMENT_PREFIX, SEGMENT_SUFFIX)
}

/// The sequence number of a finished Parquet file name, if it is one.
pub fn part_seq(file_name: &str) -> Option<u64> {
    seq_between(file_name, PART_PREFIX, PART_SUFFIX)
}

/// A temporary file of an unfinished conversion (`.*.tmp`): never readable data.
pub fn is_tmp(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(TMP_SUFFIX)
}

/// The next free sequence number of a stream directory: one past every segment, part or
/// temporary file in it (0 for a missing or empty directory), so a new file never reuses the
/// number of one that a crash left behind.
pub fn next_seq(stream_dir: &Path) -> io::Result<u64> {
    let entries = match std::fs::read_dir(stream_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut next = 0;
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let name = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TMP_SUFFIX))
            .unwrap_or(&name);
        if let Some(seq) = segment_seq(name).or_else(|| part_seq(name)) {
            next = next.max(seq.saturating_add(1));
        }
    }
    Ok(next)
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory and any missing parents, syncing each parent after adding an entry to it,
/// so the directory still exists after a power cut.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_become_visible_reversible_directory_names() {
        let cases = [
            ("probe0.ap", "probe0.ap"),
            ("rig.ground_truth", "rig.ground_truth"),
            ("rig 1/probe:0", "rig%201%2Fprobe%3A0"),
            ("..", "%2E."),
            ("_debug", "%5Fdebug"),
            ("a_b", "a_b"),
            ("a/b", "a%2Fb"),
            ("a%2Fb", "a%252Fb"),
            ("", "%"),
            ("µV", "%C2%B5V"),
        ];
        for (id, name) in cases {
            assert_eq!(stream_dir_name(id), name, "{id:?}");
            assert_eq!(
                stream_id_from_dir_name(name).as_deref(),
                Some(id),
                "{name:?}"
            );
        }
        // Names the rule never writes (old stores, hand-made folders) decode to nothing.
        for name in ["a%2", "a%zz", "%2e.", "a%2fb", "%FF"] {
            assert_eq!(stream_id_from_dir_name(name), None, "{name:?}");
        }
        assert_eq!(legacy_stream_dir_name("rig 1/probe:0"), "rig_1_probe_0");
        assert_eq!(legacy_stream_dir_name("_debug"), "-debug");
    }

    #[test]
    fn names_round_trip_their_sequence_numbers() {
        let d = Path::new("/x");
        let seg = segment_path(d, 42);
        assert_eq!(seg, Path::new("/x/_segment-000042.arrows"));
        assert_eq!(segment_seq("_segment-000042.arrows"), Some(42));
        assert_eq!(part_seq("part-1234567.parquet"), Some(1_234_567));
        assert_eq!(part_seq("part-.parquet"), None);
        assert_eq!(part_seq("part-12a.parquet"), None);
        let tmp = tmp_path(&part_path(d, 7));
        assert_eq!(tmp, Path::new("/x/.part-000007.parquet.tmp"));
        assert!(is_tmp(".part-000007.parquet.tmp"));
        assert!(!is_tmp("part-000007.parquet"));
    }

    #[test]
    fn next_seq_skips_every_number_already_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_seq(&dir.path().join("missing")).unwrap(), 0);
        assert_eq!(next_seq(dir.path()).unwrap(), 0);
        std::fs::write(part_path(dir.path(), 3), b"").unwrap();
        std::fs::write(segment_path(dir.path(), 1), b"").unwrap();
        assert_eq!(next_seq(dir.path()).unwrap(), 4);
        std::fs::write(tmp_path(&part_path(dir.path(), 9)), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        assert_eq!(next_seq(dir.path()).unwrap(), 10);
    }
}
