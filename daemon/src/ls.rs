//! `neurod ls`: the catalog of a data directory, as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use pipelines::storage::{list_data_dir, StoredStream};
use serde_json::{json, Value};

pub fn ls(data_dir: &Path, json: bool) -> ExitCode {
    let streams = match list_data_dir(data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        let v: Vec<Value> = streams.iter().map(|(store, s)| to_json(store, s)).collect();
        match serde_json::to_string_pretty(&v) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("cannot encode JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render(&streams));
    }
    ExitCode::SUCCESS
}

fn to_json(store: &Path, s: &StoredStream) -> Value {
    let files: Vec<Value> = s
        .files
        .iter()
        .map(|f| {
            json!({
                "path": f.path.display().to_string(),
                "rows": f.entry.rows,
                "bytes": f.entry.bytes,
                "index_column": f.entry.index_column,
                "first_index": f.entry.first_index,
                "last_index": f.entry.last_index,
                "first_time_s": f.entry.first_time_s,
                "last_time_s": f.entry.last_time_s,
            })
        })
        .collect();
    json!({
        "store": store.display().to_string(),
        "stream_id": s.stream_id,
        "dir": s.dir.display().to_string(),
        "layout": s.layout,
        "sampling_hz": s.sampling_hz,
        "rows": s.rows(),
        "bytes": s.bytes(),
        "first_index": s.files.iter().filter_map(|f| f.entry.first_index).min(),
        "last_index": s.last_index(),
        "first_time_s": s.first_time_s(),
        "last_time_s": s.last_time_s(),
        "files": files,
        "segments": s.segments.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn render(streams: &[(std::path::PathBuf, StoredStream)]) -> String {
    let mut out = format!(
        "{:<40} {:<10} {:>14} {:>6} {:>12} {:>14} {:>25} {:>21}  {}\n",
        "stream", "layout", "rate_hz", "files", "rows", "bytes", "index", "time_s", "directory"
    );
    for (_, s) in streams {
        let index = format!(
            "{}..{}",
            opt(s.files.iter().filter_map(|f| f.entry.first_index).min()),
            opt(s.last_index())
        );
        let time = format!(
            "{}..{}",
            opt(s.first_time_s().map(|t| format!("{t:.3}"))),
            opt(s.last_time_s().map(|t| format!("{t:.3}")))
        );
        let live = if s.segments.is_empty() {
            String::new()
        } else {
            format!(" (+{} unconverted segments)", s.segments.len())
        };
        out.push_str(&format!(
            "{:<40} {:<10} {:>14} {:>6} {:>12} {:>14} {:>25} {:>21}  {}{live}\n",
            s.stream_id,
            opt(s.layout.as_deref()),
            opt(s.sampling_hz.as_deref()),
            s.files.len(),
            s.rows(),
            s.bytes(),
            index,
            time,
            s.dir.display()
        ));
    }
    out
}
