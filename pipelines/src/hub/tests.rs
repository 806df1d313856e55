use std::collections::HashMap;
use std::time::Duration;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::component::Output;
use crate::edge::Closed;
use crate::stream::{keys, Layout, SAMPLE_INDEX};

fn schema(id: &str) -> SchemaRef {
    let md = HashMap::from([
        (keys::STREAM_ID.to_string(), id.to_string()),
        (keys::LAYOUT.to_string(), "continuous".to_string()),
        (keys::SAMPLING_HZ.to_string(), "30000".to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![Field::new(SAMPLE_INDEX, DataType::Int64, false)],
        md,
    ))
}

/// Rows `from..from + n` of a one-column continuous stream.
fn batch(s: &SchemaRef, from: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        s.clone(),
        vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
    )
    .unwrap()
}

fn first_index(b: &RecordBatch) -> i64 {
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn setup() -> (Arc<Hub>, Arc<Metrics>) {
    let m = Metrics::new();
    (Hub::new(&m), m)
}

fn output(hub: &Arc<Hub>, m: &Arc<Metrics>, producer: &str) -> Output {
    Output::attached(
        hub.port(producer, ""),
        m.component(producer, "source", "test"),
    )
}

/// Every batch queued now, as the first index of each.
fn drain(inbox: &Inbox) -> Vec<i64> {
    let mut got = Vec::new();
    while let Recv::Data(b) = inbox.recv_timeout(Duration::from_millis(5)) {
        got.push(first_index(b.record_batch()));
    }
    got
}

fn subscriber(capacity: usize, evict: bool) -> SubscribeOptions {
    SubscribeOptions {
        capacity,
        consumer: "test".into(),
        evict_on_overflow: evict,
        waker: None,
    }
}

#[test]
fn the_registry_describes_every_stream_sent() {
    let (hub, m) = setup();
    let mut out = output(&hub, &m, "rig");
    let (a, b) = (schema("rig.a"), schema("rig.b"));
    // Nobody listens: the streams are registered all the same.
    for i in 0..3 {
        out.send(batch(&a, i * 10, 10)).unwrap();
    }
    out.send(batch(&b, 100, 5)).unwrap();
    let streams = hub.streams();
    assert_eq!(streams.len(), 2);
    let s = hub.stream("rig.a").unwrap();
    assert_eq!((s.producer.as_str(), s.port.as_str()), ("rig", ""));
    assert_eq!((s.batches, s.rows, s.bytes > 0), (3, 30, true));
    assert_eq!(
        (s.first_sample_index, s.last_sample_index),
        (Some(0), Some(29))
    );
    assert_eq!(s.rate_hz, Some(30000.0));
    assert_eq!(s.layout, Some(Layout::Continuous));
    assert_eq!(s.schema.unwrap().fields[0].name, SAMPLE_INDEX);
    assert!(!s.ended);
    drop(out);
    assert!(hub.stream("rig.b").unwrap().ended, "the producer ended");
}

#[test]
fn a_subscriber_gets_its_stream_from_the_next_batch_in_order() {
    let (hub, m) = setup();
    let mut out = output(&hub, &m, "rig");
    let (a, b) = (schema("rig.a"), schema("rig.b"));
    out.send(batch(&a, 0, 10)).unwrap();
    assert_eq!(
        hub.subscribe("nope", subscriber(4, false)).err(),
        Some(SubscribeError::Unknown("nope".into()))
    );
    let sub = hub.subscribe("rig.a", subscriber(64, false)).unwrap();
    for i in 1..20 {
        out.send(batch(&a, i * 10, 10)).unwrap();
        out.send(batch(&b, i * 10, 10)).unwrap();
    }
    let mut got = Vec::new();
    while let Recv::Data(x) = sub.try_recv() {
        assert_eq!(stream_key(x.schema_ref()), "rig.a", "only its own stream");
        got.push(first_index(x.record_batch()));
    }
    assert_eq!(got, (1..20).map(|i| i * 10).collect::<Vec<_>>());
    drop(out);
    assert!(matches!(sub.try_recv(), Recv::Closed), "the stream ended");
    assert_eq!(
        hub.subscribe("rig.a", subscriber(4, false)).err(),
        Some(SubscribeError::Ended("rig.a".into()))
    );
}

#[test]
fn a_stalled_subscriber_never_slows_the_producer_nor_a_lossless_consumer() {
    let (hub, m) = setup();
    let port = hub.port("replay", "");
    let sink = Inbox::new(1000, m.component("store", "sink", "store"));
    hub.connect(&port, "store", &sink.handle(), 0, Overflow::Block);
    let mut out = output(&hub, &m, "replay");
    out.send(batch(&schema("replay.x"), 0, 1)).unwrap();
    // One that drops its oldest, one evicted at its first overflow; neither ever reads.
    let dropping = hub.subscribe("replay.x", subscriber(4, false)).unwrap();
    let evicted = hub.subscribe("replay.x", subscriber(4, true)).unwrap();
    let s = schema("replay.x");
    for i in 1..100 {
        out.send(batch(&s, i, 1)).unwrap();
    }
    assert_eq!(
        drain(&sink),
        (0..100).collect::<Vec<_>>(),
        "the store loses nothing"
    );
    assert_eq!(dropping.dropped_rows(), 95);
    assert!(!dropping.evicted());
    assert!(evicted.evicted());
    assert_eq!(evicted.dropped_rows(), 5, "its queue was released");
    assert!(matches!(evicted.try_recv(), Recv::Closed));
    let text = m.render();
    assert!(
        text.contains(
            r#"neurod_subscribers_evicted_total{consumer="test",stream_id="replay.x"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"neurod_edge_dropped_rows_total{consumer="test",port="",producer="replay"} 100"#
        ),
        "{text}"
    );
    let info = hub.stream("replay.x").unwrap();
    assert_eq!(info.consumers.len(), 2, "the evicted one is gone");
    // Subscribers neither keep a producer going nor stop it.
    drop(sink);
    assert_eq!(out.send(batch(&s, 100, 1)), Err(Closed));
    assert!(out.is_closed());
}

#[test]
fn a_consumer_moved_to_a_new_inbox_gets_each_batch_exactly_once() {
    let (hub, m) = setup();
    let port = hub.port("src", "");
    let old = Inbox::new(8, m.component("t", "transform", "x"));
    let edge = hub.connect(&port, "t", &old.handle(), 0, Overflow::Block);
    let mut out = output(&hub, &m, "src");
    let producer = std::thread::spawn(move || {
        let s = schema("src.x");
        for i in 0..2000 {
            out.send(batch(&s, i, 1)).unwrap();
        }
        out
    });
    // Read some from the old inbox while the producer runs, then move the consumer.
    let mut got = Vec::new();
    while got.len() < 100 {
        if let Recv::Data(b) = old.recv_timeout(Duration::from_secs(5)) {
            got.push(first_index(b.record_batch()));
        }
    }
    let new = Inbox::new(8, m.component("t", "transform", "x"));
    hub.reconnect(&edge, &new.handle(), 0, Overflow::Block);
    // The old inbox drains to its end (what was queued on it), then the new one takes over.
    loop {
        match old.recv_timeout(Duration::from_secs(5)) {
            Recv::Data(b) => got.push(first_index(b.record_batch())),
            Recv::Closed => break,
            Recv::Timeout => panic!("the old inbox never closed"),
        }
    }
    while got.len() < 2000 {
        match new.recv_timeout(Duration::from_secs(5)) {
            Recv::Data(b) => got.push(first_index(b.record_batch())),
            other => panic!("{other:?} after {} batches", got.len()),
        }
    }
    let _out = producer.join().unwrap();
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
    assert!(matches!(new.try_recv(), Recv::Timeout), "still open");
}

#[test]
fn a_handed_over_port_does_not_end_with_its_old_producer() {
    let (hub, m) = setup();
    let port = hub.port("src", "");
    let sink = Inbox::new(64, m.component("store", "sink", "store"));
    hub.connect(&port, "store", &sink.handle(), 0, Overflow::Block);
    let s = schema("src.x");
    let mut first = output(&hub, &m, "src");
    first.send(batch(&s, 0, 1)).unwrap();
    port.hand_over();
    first.send(batch(&s, 1, 1)).unwrap();
    drop(first);
    let mut second = output(&hub, &m, "src");
    second.send(batch(&s, 2, 1)).unwrap();
    assert_eq!(drain(&sink), vec![0, 1, 2]);
    assert!(matches!(sink.try_recv(), Recv::Timeout), "no end seen");
    drop(second);
    assert!(matches!(sink.try_recv(), Recv::Closed));
}

#[test]
fn disconnecting_ends_the_input_after_its_queued_batches() {
    let (hub, m) = setup();
    let port = hub.port("src", "");
    let sink = Inbox::new(64, m.component("store", "sink", "store"));
    let edge = hub.connect(&port, "store", &sink.handle(), 0, Overflow::Block);
    let mut out = output(&hub, &m, "src");
    let s = schema("src.x");
    out.send(batch(&s, 0, 1)).unwrap();
    hub.disconnect(&edge);
    assert_eq!(
        out.send(batch(&s, 1, 1)),
        Ok(()),
        "nobody listens: not an error"
    );
    assert_eq!(drain(&sink), vec![0]);
    assert!(matches!(sink.try_recv(), Recv::Closed));
    assert!(out.is_closed());
}

#[test]
fn a_second_producer_of_an_id_is_listed_under_its_own_key() {
    let (hub, m) = setup();
    let s = schema("rig.twophoton");
    let mut rig = output(&hub, &m, "rig");
    let mut mc = output(&hub, &m, "mc");
    rig.send(batch(&s, 0, 1)).unwrap();
    mc.send(batch(&s, 0, 2)).unwrap();
    let keys: Vec<(String, String, u64)> = hub
        .streams()
        .into_iter()
        .map(|i| (i.key, i.producer, i.rows))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("rig.twophoton".into(), "rig".into(), 1),
            ("rig.twophoton@mc".into(), "mc".into(), 2)
        ]
    );
    let sub = hub
        .subscribe("rig.twophoton@mc", subscriber(4, false))
        .unwrap();
    rig.send(batch(&s, 1, 1)).unwrap();
    mc.send(batch(&s, 2, 2)).unwrap();
    match sub.try_recv() {
        Recv::Data(b) => assert_eq!(b.num_rows(), 2, "mc's batch"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(sub.try_recv(), Recv::Timeout));
}

#[test]
fn a_stream_without_time_is_retained_by_arrival_within_the_window() {
    let (hub, m) = setup();
    hub.set_retention(Retention {
        window_s: 0.2,
        max_bytes: 64 << 20,
    });
    let mut out = output(&hub, &m, "moments");
    // A table with neither `time_s` nor a rate (as `moments` emits).
    let table = Arc::new(Schema::new_with_metadata(
        vec![Field::new("frame_index", DataType::Int64, false)],
        HashMap::from([
            (keys::STREAM_ID.to_string(), "t".to_string()),
            (keys::LAYOUT.to_string(), "table".to_string()),
        ]),
    ));
    let rows = |from: i64| {
        RecordBatch::try_new(table.clone(), vec![Arc::new(Int64Array::from(vec![from]))]).unwrap()
    };
    out.send(rows(1)).unwrap();
    out.send(rows(2)).unwrap();
    assert_eq!(hub.recent("t").len(), 2, "both within the window");
    std::thread::sleep(Duration::from_millis(400));
    out.send(rows(3)).unwrap();
    let kept: Vec<i64> = hub.recent("t").iter().map(first_index).collect();
    assert_eq!(kept, vec![3], "older than the window by arrival");
}

/// Samples as a file source sends them are counted, retained and fanned out without their
/// Arrow columns being built; whoever reads them gets the columns.
#[test]
fn samples_are_counted_retained_and_delivered_without_building_columns() {
    use crate::batch::Batch;
    use arrow::buffer::ScalarBuffer;
    let (hub, m) = setup();
    let inbox = Inbox::new(16, m.component("det", "transform", "test"));
    let _edge = hub.connect(
        &hub.port("probe", ""),
        "det",
        &inbox.handle(),
        0,
        Overflow::Block,
    );
    let mut out = output(&hub, &m, "probe");
    let md = schema("probe").metadata().clone();
    let two_channels = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(SAMPLE_INDEX, DataType::Int64, false),
            Field::new("AP0", DataType::Int16, false),
            Field::new("AP1", DataType::Int16, false),
        ],
        md,
    ));
    let pool = crate::buffer_pool::BufferPool::new();
    let sent: Vec<Batch> = (0..3)
        .map(|k| {
            let values = ScalarBuffer::from((0..20).map(|v| v + 100 * k).collect::<Vec<i16>>());
            Batch::from_samples(&two_channels, k as i64 * 10, values, &pool).unwrap()
        })
        .collect();
    for b in &sent {
        out.send(b.clone()).unwrap();
    }
    let s = hub.stream("probe").unwrap();
    assert_eq!((s.batches, s.rows), (3, 30));
    assert_eq!(s.bytes, 3 * 10 * (8 + 2 * 2));
    assert_eq!(
        (s.first_sample_index, s.last_sample_index),
        (Some(0), Some(29))
    );
    assert!(
        sent.iter().all(|b| !b.has_columns()),
        "counted without them"
    );
    let mut got = Vec::new();
    while let Recv::Data(b) = inbox.recv_timeout(Duration::from_millis(5)) {
        assert!(!b.has_columns(), "delivered without them");
        got.push(b.sample_rows().unwrap().first_index);
    }
    assert_eq!(got, vec![0, 10, 20]);
    let stream = lock(&hub.streams).get("probe").cloned().unwrap();
    assert_eq!(stream.retained_as_samples(), 3);
    let recent = hub.recent("probe");
    assert_eq!(recent.iter().map(first_index).collect::<Vec<_>>(), got);
    assert_eq!(stream.retained_as_samples(), 0, "kept as columns once read");
    assert_eq!(hub.recent("probe"), recent);
    let ap1 = recent[2]
        .column(2)
        .as_any()
        .downcast_ref::<arrow::array::Int16Array>();
    assert_eq!(
        ap1.unwrap().values()[..3],
        [201, 203, 205],
        "built from the samples"
    );
}
