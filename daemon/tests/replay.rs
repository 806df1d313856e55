//! The `replay` source through the binary: a live session stored, replayed into a second store,
//! gives the same stored tables; Parquet from elsewhere replays as a table stream; `streams`,
//! `from_s` and `to_s` select; bad input is named by `neurod validate`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, Float32Array, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use common::{header, neurod, run_to_end};
use parquet::arrow::ArrowWriter;
use pipelines::storage::list_store;

/// Every stream of a store as (schema of its first file, all its rows in stored order).
fn tables(store: &Path) -> BTreeMap<String, (SchemaRef, RecordBatch)> {
    let mut out = BTreeMap::new();
    for s in list_store(store).unwrap() {
        let mut schema = None;
        let mut batches = Vec::new();
        for reader in s.open() {
            let reader = reader.unwrap();
            schema.get_or_insert_with(|| arrow::record_batch::RecordBatchReader::schema(&reader));
            for b in reader {
                batches.push(b.unwrap());
            }
        }
        let schema = schema.expect("a stored stream has a file");
        let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert!(
            out.insert(s.stream_id.clone(), (schema, all)).is_none(),
            "{} listed twice",
            s.stream_id
        );
    }
    out
}

fn live_session(dir: &Path) -> PathBuf {
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
seed = 5
duration_s = 2
pace = "max"
frame_size = 32
rois = 5

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"
calibration_s = 0.5

[transforms.mc]
type = "motion_correct"
inputs = ["rig"]
reference_frames = 5

[transforms.traces]
type = "roi_traces"
inputs = ["mc", "rig.rois"]

[sinks.store]
type = "store"
inputs = ["rig", "rig.ground_truth", "rig.rois", "spikes", "spikes.progress", "mc", "traces"]
"#,
        header()
    );
    run_to_end(dir, &config, Duration::from_secs(180)).join("store")
}

/// Runs a finite config to its end (exit 0, no batch rejected) without waiting for its HTTP
/// server: a replay with nothing left to send ends at once. Its data directory and log.
fn run_finite(dir: &Path, config: &str) -> (PathBuf, String) {
    let text = config
        .replace("{port}", &common::free_port().to_string())
        .replace("{dir}", &dir.display().to_string());
    let cfg = dir.join("neurod.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = neurod()
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--flight-listen")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "finite runs must end with exit 0:\n{log}"
    );
    assert!(
        !log.contains("batch rejected"),
        "no batch may be rejected:\n{log}"
    );
    (dir.join("data"), log)
}

fn replay(dir: &Path, options: &str) -> (PathBuf, String) {
    let config = format!(
        r#"{}
[sources.again]
type = "replay"
pace = "max"
{options}

[sinks.store]
type = "store"
inputs = ["again"]
"#,
        header()
    );
    let (data, log) = run_finite(dir, &config);
    (data.join("store"), log)
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// A lab's own table: `time_s` every 0.1 s from `t0`, and a value per row.
fn behaviour(t0: f64, rows: usize, time_type: DataType) -> RecordBatch {
    let times: Vec<f64> = (0..rows).map(|i| t0 + i as f64 * 0.1).collect();
    let time: Arc<dyn Array> = Arc::new(Float64Array::from(times));
    let time = arrow::compute::cast(&time, &time_type).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("time_s", time_type, false),
        Field::new("speed", DataType::Float32, false),
    ]));
    let speed = Float32Array::from_iter_values((0..rows).map(|i| i as f32));
    RecordBatch::try_new(schema, vec![time, Arc::new(speed)]).unwrap()
}

/// The times of a stored stream's rows: `time_s`, or `sample_index / rate` for continuous ones.
fn times(schema: &Schema, rows: &RecordBatch) -> Vec<f64> {
    if let Some(t) = rows.column_by_name("time_s") {
        return t.as_primitive::<Float64Type>().values().to_vec();
    }
    let rate: f64 = schema.metadata()["neurod.sampling_hz"].parse().unwrap();
    rows.column_by_name("sample_index")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|&i| i as f64 / rate)
        .collect()
}

#[test]
fn a_stored_session_replays_into_identical_tables_and_selects_by_stream_and_time() {
    let live_dir = tempfile::tempdir().unwrap();
    let live = live_session(live_dir.path());
    let original = tables(&live);
    let layouts: std::collections::BTreeSet<String> = original
        .values()
        .map(|(s, _)| {
            s.metadata()
                .get("neurod.layout")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    for l in ["continuous", "frames", "traces", "events", "table", "rois"] {
        assert!(
            layouts.contains(l),
            "the live session stores no {l} stream: {:?}",
            original
                .iter()
                .map(|(k, (s, _))| (k, s.metadata().get("neurod.layout")))
                .collect::<Vec<_>>()
        );
    }

    // Live → store → replay → store: the same streams, schemas (metadata too) and rows.
    let again_dir = tempfile::tempdir().unwrap();
    let (again, _) = replay(
        again_dir.path(),
        &format!("path = {:?}", live.display().to_string()),
    );
    let replayed = tables(&again);
    assert_eq!(
        replayed.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (id, (schema, rows)) in &original {
        let (schema2, rows2) = &replayed[id];
        assert_eq!(schema, schema2, "{id}: schema");
        assert!(rows.num_rows() > 0, "{id}: stored nothing live");
        assert_eq!(rows, rows2, "{id}: rows");
    }

    // Replaying into a store that already holds it all stores nothing twice.
    let (again2, log) = replay(
        again_dir.path(),
        &format!("path = {:?}", live.display().to_string()),
    );
    assert_eq!(again2, again);
    assert!(log.contains("resuming"), "{log}");
    let twice = tables(&again);
    for (id, (_, rows)) in &original {
        assert_eq!(rows, &twice[id].1, "{id}: stored again by a second replay");
    }

    // A lab's own Parquet (a file, and a folder of files with Int64 seconds) beside the store,
    // one probe and the behaviour by glob, within [0.5, 1.5) s.
    let lab = tempfile::tempdir().unwrap();
    let wheel = lab.path().join("wheel.parquet");
    write_parquet(
        &wheel,
        &[
            behaviour(0.0, 10, DataType::Float64),
            behaviour(1.0, 10, DataType::Float64),
        ],
    );
    let licks = lab.path().join("licks");
    std::fs::create_dir(&licks).unwrap();
    write_parquet(
        &licks.join("a.parquet"),
        &[behaviour(0.0, 1, DataType::Int64)],
    );
    write_parquet(
        &licks.join("b.parquet"),
        &[behaviour(1.0, 1, DataType::Int64)],
    );
    let sel_dir = tempfile::tempdir().unwrap();
    let (selected, _) = replay(
        sel_dir.path(),
        &format!(
            "path = [{:?}, {:?}, {:?}]\nstreams = [\"rig.imec?.ap\", \"*.behaviour\", \"wheel\", \"lick*\"]\nfrom_s = 0.5\nto_s = 1.5",
            live.display().to_string(),
            wheel.display().to_string(),
            licks.display().to_string()
        ),
    );
    let got = tables(&selected);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["licks", "rig.behaviour", "rig.imec0.ap", "wheel"]
    );
    for id in ["rig.imec0.ap", "rig.behaviour"] {
        let (schema, all) = &original[id];
        let (schema2, part) = &got[id];
        assert_eq!(schema, schema2, "{id}");
        let want: Vec<usize> = times(schema, all)
            .iter()
            .enumerate()
            .filter(|(_, t)| (0.5..1.5).contains(*t))
            .map(|(i, _)| i)
            .collect();
        assert!(!want.is_empty(), "{id}");
        let expected = all.slice(want[0], want.len());
        assert_eq!(part, &expected, "{id}: exactly the rows in [0.5, 1.5)");
    }
    let (schema, wheel_rows) = &got["wheel"];
    assert_eq!(schema.metadata()["neurod.stream_id"], "wheel");
    assert_eq!(schema.metadata()["neurod.layout"], "table");
    let t = times(schema, wheel_rows);
    let expected: Vec<f64> = (5..10)
        .map(|i| i as f64 * 0.1)
        .chain((0..5).map(|i| 1.0 + i as f64 * 0.1))
        .collect();
    assert_eq!(t, expected);
    let speed = wheel_rows.column_by_name("speed").unwrap();
    assert_eq!(
        speed
            .as_primitive::<arrow::datatypes::Float32Type>()
            .values()
            .to_vec(),
        [5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    );
    // Int64 seconds became Float64; only the file at 1.0 s is in the window.
    let (licks_schema, licks_rows) = &got["licks"];
    assert_eq!(
        licks_schema.field_with_name("time_s").unwrap().data_type(),
        &DataType::Float64
    );
    assert_eq!(times(licks_schema, licks_rows), [1.0]);
    let ids: Vec<i64> = got["rig.imec0.ap"]
        .1
        .column_by_name("sample_index")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids.first(), Some(&15_000));
    assert_eq!(ids.last(), Some(&44_999));
    let _: &Int64Array = got["rig.imec0.ap"].1.column(0).as_primitive();
}

#[test]
fn validate_names_the_file_or_pattern_a_replay_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let untimed = dir.path().join("untimed.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "speed",
        DataType::Float32,
        false,
    )]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Float32Array::from(vec![1.0f32]))]).unwrap();
    write_parquet(&untimed, &[batch]);
    let broken = dir.path().join("broken.parquet");
    std::fs::write(&broken, b"PAR1 this is no parquet file").unwrap();
    let timed = dir.path().join("timed.parquet");
    write_parquet(&timed, &[behaviour(0.0, 3, DataType::Float64)]);
    let cfg = dir.path().join("replay.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[sources.a]
type = "replay"
path = {:?}
[sources.b]
type = "replay"
path = {:?}
[sources.c]
type = "replay"
path = {:?}
streams = ["nothing*"]
[sources.d]
type = "replay"
path = {:?}
from_s = 2.0
to_s = 1.0
[sinks.store]
type = "store"
inputs = ["a", "b", "c", "d"]
"#,
            untimed.display().to_string(),
            broken.display().to_string(),
            timed.display().to_string(),
            timed.display().to_string(),
        ),
    )
    .unwrap();
    let err = common::validate_errors(&cfg);
    for want in [
        "source `a`",
        "untimed.parquet: no numeric `time_s` column",
        "source `b`",
        "broken.parquet",
        "source `c`",
        "`nothing*` matches no stream",
        "source `d`",
        "`from_s` = 2 must be below `to_s` = 1",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
