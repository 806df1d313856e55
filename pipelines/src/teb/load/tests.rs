use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, StringArray,
    UInt16Array, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

use super::*;
use crate::stream::keys;

/// Written as pyarrow and pandas write by default: Snappy.
fn write(path: &Path, batch: &RecordBatch) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn schema(fields: Vec<Field>, md: &[(&str, &str)]) -> SchemaRef {
    let md: HashMap<String, String> = md
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, md))
}

fn f64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}
fn f32s(v: impl IntoIterator<Item = f32>) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(v))
}

/// A table from elsewhere: `time_s` every `step` s over `rows` rows from `t0`, value columns
/// `x` = row number and `y` = 2 × row number, and a text column.
fn table(path: &Path, t0: f64, step: f64, rows: usize) {
    let s = schema(
        vec![
            Field::new("time_s", DataType::Float64, false),
            Field::new("x", DataType::Float32, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("y", DataType::Int32, false),
        ],
        &[],
    );
    let batch = RecordBatch::try_new(
        s,
        vec![
            f64s((0..rows).map(|i| t0 + i as f64 * step)),
            f32s((0..rows).map(|i| i as f32)),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("r{i}")),
            )),
            Arc::new(Int32Array::from_iter_values(
                (0..rows).map(|i| 2 * i as i32),
            )),
        ],
    )
    .unwrap();
    write(path, &batch);
}

fn request(source: &Path, target: &Path) -> Request {
    Request {
        source: source.display().to_string(),
        target: target.display().to_string(),
        ..Request::default()
    }
}

fn load_err(r: &Request) -> String {
    load(r).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn a_table_from_elsewhere_is_binned_by_its_own_period_and_columns_are_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.parquet");
    let tgt = dir.path().join("tgt.parquet");
    table(&src, 0.0, 0.01, 100);
    table(&tgt, 0.0, 0.005, 200);
    let loaded = load(&request(&src, &tgt)).unwrap();
    let a = &loaded.aligned;
    assert_eq!(a.bin_s, 0.01, "the source's own period");
    assert_eq!(a.source.stream_id, "src");
    assert_eq!(
        a.source.columns,
        ["x", "y"],
        "time_s and text are not values"
    );
    assert_eq!(a.len(), 100);
    assert_eq!(a.segments(), vec![0..100]);
    // Bin 3: source row 3 (x 3, y 6); target rows 6 and 7, averaged (x 6.5, y 13).
    assert_eq!(&a.x[6..8], &[3.0, 6.0]);
    assert_eq!(&a.y[6..8], &[6.5, 13.0]);

    let mut r = request(&src, &tgt);
    r.source_columns = vec!["y".into()];
    r.target_columns = vec!["?".into()];
    r.bin_s = Some(0.05);
    let a = load(&r).unwrap().aligned;
    assert_eq!(
        (a.source.columns.as_slice(), a.target.columns.as_slice()),
        (
            &["y".to_string()][..],
            &["x".to_string(), "y".to_string()][..]
        )
    );
    assert_eq!(a.len(), 20);
    assert_eq!(a.x[0], 4.0, "mean of y over rows 0..5");
}

#[test]
fn bin_features_tables_are_binned_on_their_own_bins_and_globs_pick_counts() {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir
        .path()
        .join("store/rig.imec0.ap.bins/part-000000.parquet");
    let n = 50;
    let s = schema(
        vec![
            Field::new("bin_start_sample", DataType::Int64, false),
            Field::new("time_s", DataType::Float64, false),
            Field::new("samples", DataType::UInt32, false),
            Field::new("count_AP0", DataType::UInt16, false),
            Field::new("count_AP1", DataType::UInt16, false),
            Field::new("power_AP0", DataType::Float32, false),
            Field::new("power_AP1", DataType::Float32, false),
        ],
        &[
            (keys::STREAM_ID, "rig.imec0.ap.bins"),
            (keys::LAYOUT, "table"),
            (keys::SAMPLING_HZ, "30000"),
            ("neurod.bin_samples", "600"),
        ],
    );
    let batch = RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 600))),
            f64s((0..n).map(|i| (i * 600) as f64 / 30000.0)),
            Arc::new(UInt32Array::from_iter_values((0..n).map(|_| 600))),
            Arc::new(UInt16Array::from_iter_values((0..n).map(|i| i as u16))),
            Arc::new(UInt16Array::from_iter_values((0..n).map(|i| 2 * i as u16))),
            f32s((0..n).map(|_| 1.5)),
            f32s((0..n).map(|_| 2.5)),
        ],
    )
    .unwrap();
    write(&bins, &batch);
    let beh = dir.path().join("beh.parquet");
    table(&beh, 0.0, 0.01, 2 * n as usize);
    // By stream id under the data directory, as `neurod ls` lists it.
    let mut r = Request {
        source: "rig.imec0.ap.bins".into(),
        target: beh.display().to_string(),
        data_dir: Some(dir.path().to_path_buf()),
        source_columns: vec!["count_*".into()],
        target_columns: vec!["x".into()],
        ..Request::default()
    };
    let a = load(&r).unwrap().aligned;
    assert!((a.bin_s - 0.02).abs() < 1e-12, "{}", a.bin_s);
    assert_eq!(a.source.stream_id, "rig.imec0.ap.bins");
    assert_eq!(a.source.columns, ["count_AP0", "count_AP1"]);
    assert_eq!(a.len(), n as usize);
    assert_eq!(&a.x[20..22], &[10.0, 20.0]);
    assert_eq!(a.y[10], 20.5, "behaviour rows 20 and 21");
    // Default: counts and powers, no bookkeeping; the stream directory works as well.
    r.source = bins.parent().unwrap().display().to_string();
    r.source_columns.clear();
    let a = load(&r).unwrap().aligned;
    assert_eq!(a.source.columns.len(), 4);
}

fn continuous(path: &Path, first: i64, rows: i64) {
    let sync = Field::new("SY0", DataType::Int16, false)
        .with_metadata([(keys::CHANNEL_KIND.to_string(), "sync".to_string())].into());
    let ap = |n: &str| {
        Field::new(n, DataType::Int16, false)
            .with_metadata([(keys::CHANNEL_KIND.to_string(), "ap".to_string())].into())
    };
    let s = schema(
        vec![
            Field::new("sample_index", DataType::Int64, false),
            ap("AP0"),
            ap("AP1"),
            sync,
        ],
        &[
            (keys::STREAM_ID, "probe"),
            (keys::LAYOUT, "continuous"),
            (keys::SAMPLING_HZ, "1000"),
        ],
    );
    let idx = first..first + rows;
    let batch = RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int64Array::from_iter_values(idx.clone())),
            Arc::new(Int16Array::from_iter_values(
                idx.clone().map(|i| (i % 10) as i16),
            )),
            Arc::new(Int16Array::from_iter_values(idx.clone().map(|_| -3))),
            Arc::new(Int16Array::from_iter_values(idx.map(|_| 1))),
        ],
    )
    .unwrap();
    write(path, &batch);
}

#[test]
fn continuous_streams_are_timed_by_sample_index_over_files_and_gaps_stay_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    // 0.5 s, then a hole of 0.2 s, then 0.3 s.
    continuous(&probe.join("part-000000.parquet"), 0, 500);
    continuous(&probe.join("part-000001.parquet"), 700, 300);
    let beh = dir.path().join("beh.parquet");
    table(&beh, 0.0, 0.01, 100);
    let mut r = request(&probe, &beh);
    r.bin_s = Some(0.01);
    let loaded = load(&r).unwrap();
    let a = &loaded.aligned;
    assert_eq!(
        a.source.columns,
        ["AP0", "AP1"],
        "the sync channel is left out"
    );
    assert_eq!(a.len(), 80);
    assert_eq!(a.segments(), vec![0..50, 50..80]);
    assert_eq!(a.bin_index[50], 70);
    assert_eq!(&a.x[..2], &[4.5, -3.0]);
    assert_eq!(loaded.source.rows, 800);
    // Without --bin-ms, a continuous source's bins are its samples.
    let a = load(&request(&probe, &beh)).unwrap().aligned;
    assert!((a.bin_s - 0.001).abs() < 1e-12);
}

fn traces(path: &Path, frames: i64, rois: &[i32], skip: Option<(i64, i32)>) {
    let s = schema(
        vec![
            Field::new("frame_index", DataType::Int64, false),
            Field::new("time_s", DataType::Float64, false),
            Field::new("roi", DataType::Int32, false),
            Field::new("f", DataType::Float32, false),
            Field::new("dff", DataType::Float32, false),
        ],
        &[
            (keys::STREAM_ID, "s2p.plane0.dff"),
            (keys::LAYOUT, "traces"),
            (keys::SAMPLING_HZ, "10"),
        ],
    );
    let rows: Vec<(i64, i32)> = (0..frames)
        .flat_map(|f| rois.iter().map(move |&r| (f, r)))
        .filter(|row| Some(*row) != skip)
        .collect();
    let batch = RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            f64s(rows.iter().map(|r| r.0 as f64 / 10.0)),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
            f32s(rows.iter().map(|r| 100.0 + r.1 as f32)),
            f32s(rows.iter().map(|r| r.0 as f32 * 0.1 + r.1 as f32)),
        ],
    )
    .unwrap();
    write(path, &batch);
}

#[test]
fn long_traces_are_pivoted_to_a_column_per_roi_and_incomplete_frames_are_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let tr = dir.path().join("dff.parquet");
    traces(&tr, 40, &[3, 7], Some((10, 7)));
    let beh = dir.path().join("beh.parquet");
    table(&beh, 0.0, 0.05, 80);
    let loaded = load(&request(&tr, &beh)).unwrap();
    let a = &loaded.aligned;
    assert_eq!(a.source.stream_id, "s2p.plane0.dff");
    assert_eq!(a.source.columns, ["dff_3", "dff_7"], "dff by default");
    assert_eq!(a.bin_s, 0.1, "the frame period");
    assert_eq!(loaded.source.refused.not_finite, 1, "frame 10 lacks ROI 7");
    assert_eq!(a.segments(), vec![0..10, 10..39]);
    assert!((a.x[2] - 3.1).abs() < 1e-6 && (a.x[3] - 7.1).abs() < 1e-6);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    // A value name means it for every ROI; one column by name.
    let mut r = request(&tr, &beh);
    r.source_columns = vec!["f".into(), "dff_7".into()];
    let a = load(&r).unwrap().aligned;
    assert_eq!(a.source.columns, ["f_3", "f_7", "dff_7"]);
    assert_eq!(&a.x[..3], &[103.0, 107.0, 7.0]);
}

#[test]
fn bad_inputs_are_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = d.join("ok.parquet");
    table(&ok, 0.0, 0.01, 100);
    let late = d.join("late.parquet");
    table(&late, 50.0, 0.01, 100);
    let short = d.join("short.parquet");
    table(&short, 0.0, 0.01, 10);
    let no_time = d.join("notime.parquet");
    let batch = RecordBatch::try_new(
        schema(vec![Field::new("x", DataType::Float32, false)], &[]),
        vec![f32s([1.0, 2.0])],
    )
    .unwrap();
    write(&no_time, &batch);
    let text = d.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let missing = d.join("missing.parquet");
    let two = d.join("two");
    continuous(&two.join("a/part-000000.parquet"), 0, 10);
    continuous(&two.join("b/part-000000.parquet"), 0, 10);

    let cases: Vec<(Request, &str, &str)> = vec![
        (
            request(&missing, &ok),
            "missing.parquet",
            "no such file or directory",
        ),
        (request(&ok, &text), "notes.txt", "not a Parquet file"),
        (
            request(&no_time, &ok),
            "notime.parquet",
            "no numeric `time_s`",
        ),
        (request(&ok, &late), "source", "no overlap in time"),
        (request(&ok, &short), "short.parquet", "only 10 bins"),
        (request(&two, &ok), "two", "holds 2 streams"),
        (
            Request {
                source_columns: vec!["label".into()],
                ..request(&ok, &ok)
            },
            "ok.parquet",
            "`label` is Utf8, not numeric",
        ),
        (
            Request {
                target_columns: vec!["count_*".into()],
                ..request(&ok, &ok)
            },
            "ok.parquet",
            "no numeric value column matches `count_*` (there: x, y)",
        ),
        (
            Request {
                bin_s: Some(-1.0),
                ..request(&ok, &ok)
            },
            "--bin-ms",
            "not a positive",
        ),
        (
            Request {
                source: "rig.nothing".into(),
                data_dir: Some(two.clone()),
                ..request(&ok, &ok)
            },
            "rig.nothing",
            "no stream of that id",
        ),
    ];
    for (r, names, says) in cases {
        let e = load_err(&r);
        let (input, message) = e.split_once(": ").unwrap();
        assert!(input.contains(names), "{e}");
        assert!(message.contains(says), "{e}");
    }
}

#[test]
fn events_are_refused_with_a_pointer_to_bin_features() {
    let dir = tempfile::tempdir().unwrap();
    let spikes = dir.path().join("spikes.parquet");
    let batch = RecordBatch::try_new(
        schema(
            vec![
                Field::new("sample_index", DataType::Int64, false),
                Field::new("time_s", DataType::Float64, false),
                Field::new("channel", DataType::Int32, false),
            ],
            &[(keys::STREAM_ID, "p.spikes"), (keys::LAYOUT, "events")],
        ),
        vec![
            Arc::new(Int64Array::from_iter_values([1, 2])),
            f64s([0.1, 0.2]),
            Arc::new(Int32Array::from_iter_values([0, 1])),
        ],
    )
    .unwrap();
    write(&spikes, &batch);
    let e = resolve(&spikes.display().to_string(), None).unwrap_err();
    assert!(e.message.contains("bin_features"), "{e}");
}

#[test]
fn aligning_keeps_only_common_bins() {
    let bins = |index: Vec<i64>| Binned {
        stream: StreamColumns {
            stream_id: "s".into(),
            columns: vec!["v".into()],
        },
        bin_s: 0.1,
        values: index.iter().map(|&i| i as f32).collect(),
        index,
        rows: 0,
        refused: Refused::default(),
    };
    let a = align(
        &bins((0..30).collect()),
        &bins((5..40).filter(|i| i % 17 != 0).collect()),
    )
    .unwrap();
    assert_eq!(a.len(), 24);
    assert_eq!(a.segments(), vec![0..12, 12..24]);
    assert_eq!(a.x, a.y);
    let e = align(&bins((0..30).collect()), &bins((40..80).collect())).unwrap_err();
    assert!(e.contains("no overlap in time"), "{e}");
    let e = align(
        &bins((0..30).map(|i| 2 * i).collect()),
        &bins((0..30).map(|i| 2 * i + 1).collect()),
    )
    .unwrap_err();
    assert!(e.contains("a larger --bin-ms"), "{e}");
}

#[test]
fn stream_ids_held_twice_or_not_yet_finished_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    continuous(&data.join("a/probe/part-000000.parquet"), 0, 10);
    continuous(&data.join("b/probe/part-000000.parquet"), 0, 10);
    let e = resolve("probe", Some(data)).unwrap_err();
    assert!(e.message.contains("held by several stores"), "{e}");
    // A stream whose store is still writing its first segment.
    let live = data.join("a/live");
    std::fs::create_dir_all(&live).unwrap();
    let s = schema(
        vec![
            Field::new("time_s", DataType::Float64, false),
            Field::new("v", DataType::Float32, false),
        ],
        &[(keys::STREAM_ID, "live"), (keys::LAYOUT, "table")],
    );
    let batch = RecordBatch::try_new(s.clone(), vec![f64s([0.0]), f32s([1.0])]).unwrap();
    let mut w =
        crate::storage::SegmentWriter::create(&crate::storage::layout::segment_path(&live, 0), s)
            .unwrap();
    w.write(&batch).unwrap();
    w.sync().unwrap();
    let e = resolve(&live.display().to_string(), None).unwrap_err();
    assert!(e.message.contains("no finished file yet"), "{e}");
}
