use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int16Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::super::spool::{leftovers, spool_path, Drain, Spiller};
use super::*;
use crate::metrics::Metrics;
use crate::stream::stream_id_of;

fn schema(stream_id: &str, rate: &str) -> SchemaRef {
    let md = HashMap::from([
        (keys::STREAM_ID.to_string(), stream_id.to_string()),
        (keys::SAMPLING_HZ.to_string(), rate.to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("c0", DataType::Int16, false),
        ],
        md,
    ))
}

fn batch(schema: &SchemaRef, first: i64, rows: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + rows)),
            Arc::new(Int16Array::from_iter_values(
                (first..first + rows).map(|v| (v % 3000) as i16),
            )),
        ],
    )
    .unwrap()
}

fn buffer(budget_s: f64, memory_bytes: u64) -> (Buffer, Arc<Metrics>) {
    let m = Metrics::new();
    let c = m.component("disk", "sink", "store");
    (
        Buffer::new(
            BufferOptions {
                budget_s,
                memory_bytes,
            },
            c,
        ),
        m,
    )
}

/// Pops one batch as the writer does (reading spooled ones back and noting them done).
fn pop_batch(buffer: &Buffer, drain: &mut Drain) -> Option<RecordBatch> {
    match buffer.pop(Duration::from_secs(30)) {
        Popped::Mem(b) => Some(b),
        Popped::Spooled {
            batch, file, index, ..
        } => {
            let b = match batch {
                Some(b) => b,
                None => drain.read(&file, index).unwrap(),
            };
            drain.done(file, index);
            Some(b)
        }
        Popped::Closed => None,
        Popped::Timeout => panic!("nothing popped in 30 s"),
    }
}

fn first_index(b: &RecordBatch) -> i64 {
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[test]
fn spills_past_the_memory_budget_and_drains_in_order_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join(".spool");
    // About 4 KiB per batch: a 64 KiB budget keeps ~16 batches in memory, the rest spills.
    let (buf, m) = buffer(3600.0, 64 << 10);
    let streams = [schema("a", "1000"), schema("b", "1000")];
    let per_stream = 300;
    let rows = 256;
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    let mut max_disk = 0.0f64;
    std::thread::scope(|s| {
        // A failed assertion below must not leave the spiller waiting (and the scope with it).
        let _close = super::super::CloseOnDrop(&buf);
        let spiller = Spiller::new(&buf, spool.clone(), 0, m.component("disk", "sink", "store"));
        s.spawn(|| spiller.run());
        // Everything arrives before the writer starts: the disk "stalled" for the whole input.
        for i in 0..per_stream {
            for sc in &streams {
                buf.push(stream_id_of(sc).unwrap(), batch(sc, i * rows, rows));
            }
            // Give the spiller a chance to keep memory near its budget.
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Wait until the spiller has brought memory back to the budget.
        let t = Instant::now();
        while buf.lock().memory_bytes > (64 << 10) + (16 << 10) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "spiller never caught up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = m.render();
        for line in text.lines().filter(|l| {
            l.starts_with("neurod_store_buffered_bytes{") && l.contains("medium=\"disk\"")
        }) {
            max_disk = max_disk.max(line.rsplit(' ').next().unwrap().parse().unwrap());
        }
        assert!(
            std::fs::read_dir(&spool).unwrap().count() > 0,
            "spool files exist"
        );
        buf.close();
        let mut drain = Drain::default();
        while let Some(b) = pop_batch(&buf, &mut drain) {
            let id = stream_id_of(b.schema_ref()).unwrap().to_string();
            assert_eq!(b, batch(&b.schema(), first_index(&b), rows));
            seen.entry(id).or_default().push(first_index(&b));
        }
    });
    assert!(max_disk > 0.0, "some batches were on disk");
    for sc in &streams {
        let id = stream_id_of(sc).unwrap();
        let expected: Vec<i64> = (0..per_stream).map(|i| i * rows).collect();
        assert_eq!(
            seen[id], expected,
            "stream {id}: every batch, once, in order"
        );
    }
    assert_eq!(m.component("disk", "sink", "store").dropped_rows(), 0);
    // Drained files are gone.
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_spent_budget_drops_the_oldest_and_counts_them_per_stream() {
    let (buf, m) = buffer(1.0, u64::MAX);
    let sc = schema("probe", "1000");
    // 30 batches of 0.1 s: the budget keeps the newest 10.
    for i in 0..30 {
        buf.push("probe", batch(&sc, i * 100, 100));
    }
    buf.close();
    let mut drain = Drain::default();
    let mut firsts = Vec::new();
    while let Some(b) = pop_batch(&buf, &mut drain) {
        firsts.push(first_index(&b));
    }
    assert_eq!(firsts, (20..30).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(m.store("disk", "probe").buffer_dropped_rows.get(), 2000);
    assert_eq!(m.component("disk", "sink", "store").dropped_rows(), 2000);
    assert_eq!(m.store("disk", "probe").buffered_seconds.get(), 0.0);
}

#[test]
fn streams_without_a_rate_are_timed_by_arrival() {
    let (buf, m) = buffer(0.2, u64::MAX);
    let sc = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let b = RecordBatch::try_new(sc, vec![Arc::new(Int64Array::from_iter_values(0..10))]).unwrap();
    assert_eq!(span_s(&b), None);
    buf.push("events", b.clone());
    buf.push("events", b.clone());
    assert_eq!(m.store("disk", "events").buffer_dropped_rows.get(), 0);
    std::thread::sleep(Duration::from_millis(400));
    buf.push("events", b);
    // The two older batches are past 0.2 s of age.
    assert_eq!(m.store("disk", "events").buffer_dropped_rows.get(), 20);
}

#[test]
fn leftovers_come_back_in_order_with_their_progress() {
    let dir = tempfile::tempdir().unwrap();
    let sc = schema("a", "1000");
    for id in [7u64, 3] {
        let mut w =
            crate::storage::SegmentWriter::create(&spool_path(dir.path(), id), sc.clone()).unwrap();
        w.write(&batch(&sc, 0, 10)).unwrap();
    }
    let f = SpoolFile::new(7, spool_path(dir.path(), 7), 0);
    f.mark_taken(1);
    f.persist_taken().unwrap();
    f.keep();
    drop(f);
    let (files, next) = leftovers(dir.path()).unwrap();
    assert_eq!(next, 8);
    let got: Vec<(u64, u64)> = files.iter().map(|f| (f.id, f.taken())).collect();
    assert_eq!(got, vec![(3, 0), (7, 1)]);
    drop(files);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "released files are deleted"
    );
}
