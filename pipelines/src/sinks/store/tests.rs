use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Int16Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;

use super::*;
use crate::component::{BuildContext, Shutdown, SinkContext};
use crate::edge::{EdgeSender, Inbox, Overflow};
use crate::metrics::{batch_bytes, ComponentMetrics, Metrics};
use crate::storage::layout::{segment_path, sync_dir};
use crate::storage::testdata::{concat, openephys_batches, read_parquet};
use crate::storage::SegmentWriter;
use crate::stream::{keys, ChannelInfo, ChannelKind, ContinuousInfo};

const ID: &str = "disk";

fn info(stream_id: &str, channels: usize) -> ContinuousInfo {
    ContinuousInfo {
        stream_id: stream_id.into(),
        stream_kind: "ap".into(),
        sampling_hz_text: "29999.757983".into(),
        sampling_hz: 29999.757983,
        first_sample: 17,
        probe: Some("NP1000".into()),
        channels: (0..channels)
            .map(|i| ChannelInfo {
                name: format!("AP{i}"),
                kind: ChannelKind::Ap,
                uv_per_bit: Some(2.34375),
                x_um: Some(16.0 * i as f64),
                y_um: Some(20.0 * i as f64),
                shank: Some(0),
            })
            .collect(),
    }
}

/// Deterministic pseudo-random samples covering the whole Int16 range, extremes included.
fn batch(schema: &SchemaRef, first: i64, rows: usize) -> RecordBatch {
    let n_ch = schema.fields().len() - 1;
    let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
        first..first + rows as i64,
    ))];
    for c in 0..n_ch {
        let values = (0..rows).map(|r| {
            let k = (first as u64 + r as u64) * 31 + c as u64 * 7919;
            match k % 97 {
                0 => i16::MIN,
                1 => i16::MAX,
                _ => (k.wrapping_mul(2_654_435_761) >> 7) as i16,
            }
        });
        columns.push(Arc::new(Int16Array::from_iter_values(values)));
    }
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn batches(schema: &SchemaRef, n: usize, rows: usize) -> Vec<RecordBatch> {
    (0..n)
        .map(|i| batch(schema, (i * rows) as i64, rows))
        .collect()
}

/// A store sink running on its own thread, fed through a real inbox.
struct Running {
    tx: EdgeSender,
    handle: JoinHandle<Result<(), ComponentError>>,
    metrics: ComponentMetrics,
    registry: Arc<Metrics>,
}

fn start(data_dir: &Path, options: &str) -> Running {
    let registry = Metrics::new();
    let metrics = registry.component(ID, "sink", TYPE_NAME);
    let inbox = Inbox::new(8, metrics.clone());
    let tx = inbox.sender();
    let table: toml::Table = toml::from_str(options).unwrap();
    let ctx = BuildContext {
        id: ID,
        data_dir,
        inputs: &[],
    };
    let sink = build(&ctx, table).unwrap();
    let sink_ctx = SinkContext {
        id: ID.into(),
        inbox,
        shutdown: Shutdown::new(),
        metrics: metrics.clone(),
        data_dir: data_dir.to_path_buf(),
    };
    let handle = std::thread::spawn(move || sink.run(sink_ctx));
    Running {
        tx,
        handle,
        metrics,
        registry,
    }
}

impl Running {
    fn send(&self, b: &RecordBatch) {
        self.tx.send(b.clone(), Overflow::Block).unwrap();
    }
    fn close(mut self) -> (Result<(), ComponentError>, ComponentMetrics, Arc<Metrics>) {
        self.tx.end();
        let r = self.handle.join().unwrap();
        (r, self.metrics, self.registry)
    }
}

fn run_sink(data_dir: &Path, options: &str, input: &[RecordBatch]) -> Arc<Metrics> {
    let sink = start(data_dir, options);
    for b in input {
        sink.send(b);
    }
    let (r, _, registry) = sink.close();
    r.unwrap();
    registry
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every Parquet file of a stream directory, in order; asserts nothing else is there but the
/// manifest, which lists exactly them.
fn parts(stream_dir: &Path) -> Vec<PathBuf> {
    let mut names = file_names(stream_dir);
    names.retain(|n| n != crate::storage::manifest::MANIFEST_FILE);
    let manifest = crate::storage::manifest::read_manifest(stream_dir)
        .unwrap()
        .expect("every stream directory with files has a manifest");
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(listed, names, "the manifest lists every file");
    for n in &names {
        assert!(
            n.starts_with("part-") && n.ends_with(".parquet"),
            "unexpected file {n} in {}: {names:?}",
            stream_dir.display()
        );
    }
    names.iter().map(|n| stream_dir.join(n)).collect()
}

/// The rows of every Parquet file of a stream directory, in file order.
fn stored_rows(stream_dir: &Path, schema: &SchemaRef) -> RecordBatch {
    let mut all = Vec::new();
    for p in parts(stream_dir) {
        let (s, b) = read_parquet(&p);
        assert_eq!(s.fields(), schema.fields(), "{}", p.display());
        for (k, v) in schema.metadata() {
            assert_eq!(
                s.metadata().get(k),
                Some(v),
                "{}: metadata {k}",
                p.display()
            );
        }
        all.extend(b);
    }
    concat(schema, &all)
}

fn gauge(registry: &Metrics, name: &str, stream: &str) -> Option<f64> {
    let text = registry.render();
    let prefix = format!("{name}{{component_id=\"{ID}\",stream_id=\"{stream}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[test]
fn continuous_batches_come_back_exactly_with_their_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("probe0.ap", 4).schema();
    let input = batches(&schema, 25, 300);
    let registry = run_sink(dir.path(), "", &input);
    let stream_dir = dir.path().join(ID).join("probe0.ap");
    assert_eq!(parts(&stream_dir).len(), 1);
    let stored = stored_rows(&stream_dir, &schema);
    assert_eq!(stored, concat(&schema, &input));
    assert_eq!(
        stored.schema().metadata()[keys::SAMPLING_HZ],
        "29999.757983"
    );
    assert_eq!(
        stored.schema().field(1).metadata()[keys::UV_PER_BIT],
        "2.34375"
    );

    let raw: u64 = input.iter().map(batch_bytes).sum();
    let parquet = std::fs::metadata(&parts(&stream_dir)[0]).unwrap().len();
    let m = registry.store(ID, "probe0.ap");
    assert_eq!(m.input_bytes.get(), raw);
    assert_eq!(m.files.get(), 1);
    assert!(
        m.written_bytes.get() > parquet + raw,
        "segment and Parquet bytes both count"
    );
    let ratio = gauge(&registry, "neurod_store_compression_ratio", "probe0.ap").unwrap();
    assert!(
        (ratio - raw as f64 / parquet as f64).abs() < 1e-9,
        "{ratio}"
    );
}

#[test]
fn two_streams_land_in_two_directories() {
    let dir = tempfile::tempdir().unwrap();
    let a = info("rig1/probe0", 2).schema();
    let b = info("probe1", 3).schema();
    let (in_a, in_b) = (batches(&a, 6, 100), batches(&b, 6, 50));
    let mut input = Vec::new();
    for (x, y) in in_a.iter().zip(&in_b) {
        input.push(x.clone());
        input.push(y.clone());
    }
    run_sink(dir.path(), "", &input);
    let store = dir.path().join(ID);
    assert_eq!(file_names(&store), ["probe1", "rig1%2Fprobe0"]);
    assert_eq!(
        stored_rows(&store.join("rig1%2Fprobe0"), &a),
        concat(&a, &in_a)
    );
    assert_eq!(stored_rows(&store.join("probe1"), &b), concat(&b, &in_b));
}

#[test]
fn the_streams_option_stores_only_the_matching_streams() {
    let dir = tempfile::tempdir().unwrap();
    let a = info("rig.imec0.ap", 2).schema();
    let b = info("rig.behaviour", 1).schema();
    let mut input = batches(&a, 3, 100);
    input.extend(batches(&b, 3, 10));
    run_sink(dir.path(), r#"streams = ["*.behaviour"]"#, &input);
    let store = dir.path().join(ID);
    assert_eq!(file_names(&store), ["rig.behaviour"]);
    assert_eq!(
        stored_rows(&store.join("rig.behaviour"), &b),
        concat(&b, &input[3..])
    );
}

#[test]
fn rotation_by_size_makes_several_files_that_concatenate_to_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("p", 8).schema();
    // 12 KiB of values per batch (8 Int16 channels + Int64 index, 512 rows); a file is closed
    // once its segment passes 20 000 bytes: every 2 batches.
    let input = batches(&schema, 20, 512);
    let registry = run_sink(
        dir.path(),
        &format!(
            "rotate_bytes = 20000\npath = '{}'",
            dir.path().join("s").display()
        ),
        &input,
    );
    let stream_dir = dir.path().join("s").join("p");
    let files = parts(&stream_dir);
    assert_eq!(files.len(), 10, "{files:?}");
    assert_eq!(registry.store(ID, "p").files.get(), 10);
    for f in &files {
        assert_eq!(read_parquet(f).0.fields(), schema.fields());
        let rows: usize = read_parquet(f).1.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2 * 512, "{}", f.display());
    }
    assert_eq!(stored_rows(&stream_dir, &schema), concat(&schema, &input));
}

#[test]
fn a_schema_change_starts_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let before = info("p", 2).schema();
    let mut changed = info("p", 2);
    changed.first_sample = 1000;
    let after = changed.schema();
    let input = [batch(&before, 0, 10), batch(&after, 10, 10)];
    run_sink(dir.path(), "", &input);
    let files = parts(&dir.path().join(ID).join("p"));
    assert_eq!(files.len(), 2);
    assert_eq!(
        read_parquet(&files[0]).0.metadata()[keys::FIRST_SAMPLE],
        "17"
    );
    assert_eq!(
        read_parquet(&files[1]).0.metadata()[keys::FIRST_SAMPLE],
        "1000"
    );
}

#[test]
fn flushed_batches_are_readable_in_the_segment_before_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("live", 3).schema();
    let input = batches(&schema, 4, 200);
    let sink = start(dir.path(), "flush_interval_s = 0.05");
    for b in &input {
        sink.send(b);
    }
    let segment = segment_path(&dir.path().join(ID).join("live"), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        // What a reader (or a crash) finds: the live segment, no end-of-stream marker yet.
        let seen: Vec<RecordBatch> = std::fs::File::open(&segment)
            .ok()
            .and_then(|f| StreamReader::try_new(f, None).ok())
            .map(|r| r.map_while(Result::ok).collect())
            .unwrap_or_default();
        if seen.len() == input.len() || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(seen, input);
    assert!(
        !dir.path()
            .join(ID)
            .join("live")
            .join("part-000000.parquet")
            .exists(),
        "no rotation yet"
    );
    let (r, _, _) = sink.close();
    r.unwrap();
    assert!(!segment.exists());
}

/// Writes batches into a segment as the sink does (synced, no end marker, as after `kill -9`);
/// returns the file length after the schema and after each batch.
fn crashed_segment(path: &Path, schema: &SchemaRef, input: &[RecordBatch]) -> Vec<u64> {
    let mut w = SegmentWriter::create(path, schema.clone()).unwrap();
    let mut ends = vec![w.len()];
    for b in input {
        w.write(b).unwrap();
        ends.push(w.len());
    }
    w.sync().unwrap();
    ends
}

#[test]
fn recovery_keeps_every_complete_batch_before_a_cut() {
    let schema = info("p", 4).schema();
    let input = batches(&schema, 5, 100);
    let scratch = tempfile::tempdir().unwrap();
    let whole = scratch.path().join("whole.arrows");
    let ends = crashed_segment(&whole, &schema, &input);
    let bytes = std::fs::read(&whole).unwrap();
    let last = ends[ends.len() - 2];
    let cuts = [
        (last + 1, 4),             // one byte into the continuation marker
        (last + 6, 4),             // inside the metadata length
        (last + 100, 4),           // inside the metadata
        ((last + ends[5]) / 2, 4), // inside the body
        (ends[5] - 1, 4),          // one byte short
        (ends[5], 5),              // at the end: nothing cut
        (ends[2] + 3, 2),          // inside an earlier message
        (ends[0], 0),              // schema only
        (ends[0] - 1, 0),          // inside the schema
    ];
    for (cut, kept) in cuts {
        let store = tempfile::tempdir().unwrap();
        let stream_dir = store.path().join("p");
        std::fs::create_dir(&stream_dir).unwrap();
        let segment = segment_path(&stream_dir, 3);
        std::fs::write(&segment, &bytes[..cut as usize]).unwrap();
        std::fs::write(stream_dir.join(".part-000002.parquet.tmp"), b"PAR1 half").unwrap();
        sync_dir(&stream_dir).unwrap();

        let report = recover(store.path(), 3).unwrap();
        assert!(report.failed.is_empty(), "cut {cut}: {:?}", report.failed);
        assert_eq!(report.removed_tmp.len(), 1);
        if kept == 0 {
            assert_eq!(file_names(&stream_dir), Vec::<String>::new(), "cut {cut}");
            let discarded = if cut == ends[0] { 0 } else { cut };
            assert_eq!(report.removed_empty, [(segment.clone(), discarded)]);
            continue;
        }
        assert_eq!(
            file_names(&stream_dir),
            ["_manifest.json", "part-000003.parquet"],
            "cut {cut}"
        );
        let stats = &report.converted[0].2;
        assert_eq!(stats.batches, kept, "cut {cut}");
        assert_eq!(stats.discarded_bytes, cut - ends[kept], "cut {cut}");
        assert_eq!(
            stored_rows(&stream_dir, &schema),
            concat(&schema, &input[..kept]),
            "cut {cut}"
        );
    }
}

#[test]
fn the_sink_recovers_at_start_and_numbers_new_files_after_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("p", 2).schema();
    let input = batches(&schema, 4, 100);
    let stream_dir = dir.path().join(ID).join("p");
    std::fs::create_dir_all(&stream_dir).unwrap();
    crashed_segment(&segment_path(&stream_dir, 0), &schema, &input[..2]);
    let registry = run_sink(dir.path(), "", &input[2..]);
    assert_eq!(
        file_names(&stream_dir),
        [
            "_manifest.json",
            "part-000000.parquet",
            "part-000001.parquet"
        ]
    );
    assert_eq!(stored_rows(&stream_dir, &schema), concat(&schema, &input));
    assert_eq!(registry.store(ID, "p").files.get(), 2);
}

#[test]
fn rows_a_stream_already_holds_are_never_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("p", 2).schema();
    let input = batches(&schema, 6, 100);
    run_sink(dir.path(), "", &input[..4]);
    // A source that starts again from the beginning, and one that resumes mid-batch.
    let mut again: Vec<RecordBatch> = input.clone();
    again.push(batch(&schema, 550, 100));
    let registry = run_sink(dir.path(), "", &again);
    let stream_dir = dir.path().join(ID).join("p");
    let mut expected = input.clone();
    expected.push(batch(&schema, 600, 50));
    assert_eq!(
        stored_rows(&stream_dir, &schema),
        concat(&schema, &expected)
    );
    assert_eq!(
        registry.store(ID, "p").duplicate_rows.get(),
        400 + 50,
        "every row held is counted"
    );
}

#[test]
fn a_failing_stream_keeps_its_batches_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let a = info("a", 2).schema();
    let b = info("b", 2).schema();
    let store = dir.path().join(ID);
    std::fs::create_dir_all(&store).unwrap();
    // A file where stream b's directory must go: every write to b fails.
    std::fs::write(store.join("b"), b"in the way").unwrap();
    let sink = start(dir.path(), "flush_interval_s = 0.05");
    sink.send(&batch(&a, 0, 10));
    sink.send(&batch(&b, 0, 10));
    sink.send(&batch(&a, 10, 10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.metrics.errors_total() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sink.metrics.errors_total() >= 1);
    let last_error = sink.metrics.status().last_error.unwrap();
    assert!(
        last_error.contains(&store.join("b").display().to_string()),
        "the error names the path: {last_error}"
    );
    assert!(
        sink.registry.render().contains(
            r#"neurod_component_errors_total{component_id="disk",error_type="io",stage="writing"}"#
        ),
        "counted as an io error while writing"
    );
    std::fs::remove_file(store.join("b")).unwrap();
    sink.send(&batch(&b, 10, 10));
    let (r, metrics, _) = sink.close();
    r.unwrap();
    assert!(metrics.errors_total() >= 1);
    assert_eq!(
        stored_rows(&store.join("a"), &a),
        concat(&a, &[batch(&a, 0, 10), batch(&a, 10, 10)])
    );
    assert_eq!(
        stored_rows(&store.join("b"), &b),
        concat(&b, &[batch(&b, 0, 10), batch(&b, 10, 10)]),
        "the batch that failed was retried, not lost"
    );
}

/// Streams whose writer panics at a given batch (test-only; each test dooms a stream id of its
/// own, so tests running at once do not meet).
static DOOMED: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// Called by `StreamWriter::accept` in tests: panics if this batch of the stream is doomed.
pub(super) fn panic_if_doomed(stream_id: &str) {
    let mut doomed = DOOMED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = doomed.iter().position(|(s, _)| s == stream_id) else {
        return;
    };
    if doomed[i].1 > 0 {
        doomed[i].1 -= 1;
        return;
    }
    doomed.remove(i);
    drop(doomed);
    panic!("test fault in stream `{stream_id}`");
}

#[test]
fn a_panic_while_storing_a_stream_costs_only_the_batch_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    let a = info("panics-once", 2).schema();
    let b = info("b", 2).schema();
    DOOMED.lock().unwrap().push(("panics-once".into(), 1));
    let sink = start(dir.path(), "flush_interval_s = 0.05");
    sink.send(&batch(&a, 0, 10));
    sink.send(&batch(&b, 0, 10));
    sink.send(&batch(&a, 10, 10)); // the writer panics here
    sink.send(&batch(&a, 20, 10));
    sink.send(&batch(&b, 10, 10));
    let (r, metrics, registry) = sink.close();
    r.expect("the store goes on after a panic in one stream's writer");
    let store = dir.path().join(ID);
    assert_eq!(
        stored_rows(&store.join("panics-once"), &a),
        concat(&a, &[batch(&a, 0, 10), batch(&a, 20, 10)]),
        "the batch before the panic and the one after are stored"
    );
    assert_eq!(
        stored_rows(&store.join("b"), &b),
        concat(&b, &[batch(&b, 0, 10), batch(&b, 10, 10)])
    );
    assert_eq!(metrics.dropped_rows(), 10, "only the batch in hand is lost");
    assert!(
        registry.render().contains(
            r#"neurod_component_errors_total{component_id="disk",error_type="panic",stage="writing"} 1"#
        ),
        "counted once as a panic while writing"
    );
    let last_error = metrics.status().last_error.unwrap();
    assert!(
        last_error.contains("panics-once") && last_error.contains("test fault"),
        "{last_error}"
    );
    assert!(
        file_names(&store.join("panics-once"))
            .iter()
            .all(|n| n.ends_with(".parquet") || n == "_manifest.json"),
        "the broken writer's segment was converted too: {:?}",
        file_names(&store.join("panics-once"))
    );
}

#[test]
fn compression_ratio_of_the_real_recording_is_above_one() {
    let Some((_, input, dat_bytes)) = openephys_batches("oe", 4000) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = run_sink(dir.path(), "", &input);
    let ratio = gauge(&registry, "neurod_store_compression_ratio", "oe").unwrap();
    let parquet: u64 = parts(&dir.path().join(ID).join("oe"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "real 16-ch recording: compression ratio {ratio:.3} (Arrow bytes / Parquet), {:.3} (.dat / Parquet)",
        dat_bytes as f64 / parquet as f64
    );
    assert!(ratio > 1.0, "{ratio}");
}

#[test]
fn options_are_checked_all_at_once() {
    let ctx = BuildContext {
        id: ID,
        data_dir: Path::new("/tmp"),
        inputs: &[],
    };
    let t: toml::Table =
        toml::from_str("flush_interval_s = 0\nrotate_s = -1\nrotate_bytes = 0\nzstd_level = 30")
            .unwrap();
    let errors = build(&ctx, t).err().unwrap();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.iter().all(|e| e.contains(ID)), "{errors:?}");
    let t: toml::Table = toml::from_str("flush_interval = 1").unwrap();
    let errors = build(&ctx, t).err().unwrap();
    assert!(errors[0].contains("flush_interval"), "{errors:?}");
    let t: toml::Table = toml::from_str("rotate_s = 60\nflush_interval_s = 1").unwrap();
    assert!(build(&ctx, t).is_ok(), "integers are seconds too");
}

#[path = "buffer_sink_tests.rs"]
mod buffer_sink;
