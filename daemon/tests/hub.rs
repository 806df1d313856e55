//! The stream hub through the binary: `/streams`, live subscribers on `/streams/{id}`, and a
//! reload that applies only the difference.

mod common;

use std::io::Read;
use std::time::Duration;

use arrow::array::{Array, Int64Array};
use common::{
    assert_exactly_once, http_open, live_stream, replay_config, shared_data, stored_sample_index,
    wait_for, write_spikeglx, Daemon,
};

/// Seconds of 385-channel SpikeGLX data the replays below run for, in real time.
const SECONDS: usize = 8;
const RATE: usize = 30_000;

/// A daemon replaying [`SECONDS`] of a written SpikeGLX recording into a store (flushing every
/// 0.5 s); None without the shared data (the real meta).
fn start_replay() -> Option<(tempfile::TempDir, Daemon)> {
    shared_data()?;
    let dir = tempfile::tempdir().unwrap();
    let n = SECONDS * RATE;
    let (bin, _) = write_spikeglx(dir.path(), "rec_g0_t0.imec0", n, Some(n));
    let d = Daemon::start(dir.path(), &replay_config(&bin, 0.5));
    Some((dir, d))
}

fn first_and_last(b: &arrow::record_batch::RecordBatch) -> (i64, i64) {
    let idx = b
        .column_by_name("sample_index")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    (idx.value(0), idx.value(idx.len() - 1))
}

fn streams(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.get("/streams")).unwrap()
}

fn stream_keys(d: &Daemon) -> Vec<String> {
    streams(d)["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_live_reader_gets_every_batch_while_a_stalled_one_is_dropped_and_the_store_loses_nothing() {
    let Some((dir, mut d)) = start_replay() else {
        return;
    };
    let n = SECONDS * RATE;
    wait_for(Duration::from_secs(20), "the stream in /streams", || {
        stream_keys(&d).contains(&"src".to_string()).then_some(())
    });

    let reader = live_stream(d.port, "src");
    // A second reader that connects and never reads a byte.
    let stalled = http_open(
        d.port,
        "/streams/src",
        "application/vnd.apache.arrow.stream",
    );
    let got = std::thread::spawn(move || {
        let meta = reader.schema().metadata().clone();
        let batches: Vec<(i64, i64)> = reader.map(|b| first_and_last(&b.unwrap())).collect();
        (meta, batches)
    });

    let evicted = r#"neurod_subscribers_evicted_total{consumer="http",stream_id="src"}"#;
    wait_for(
        Duration::from_secs(60),
        "the stalled reader to be dropped",
        || d.metric(evicted).filter(|v| *v >= 1.0),
    );
    let dropped = r#"neurod_edge_dropped_rows_total{consumer="http",port="",producer="src"}"#;
    assert!(
        d.metric(dropped).unwrap_or(0.0) > 0.0,
        "its rows are counted"
    );

    let status = d.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{}", d.log_text());
    let (meta, batches) = got.join().unwrap();
    assert_eq!(
        meta.get("neurod.stream_id").map(String::as_str),
        Some("src")
    );
    // From its first batch to the end of the stream: every batch, in order, none twice.
    assert!(batches.len() > 100, "{} batches", batches.len());
    for w in batches.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "a gap or a repeat after {:?}", w[0]);
    }
    assert_eq!(
        batches.last().unwrap().1,
        n as i64 - 1,
        "to the last sample"
    );

    // The stalled reader's response was cut short: no end-of-stream chunk.
    let mut rest = Vec::new();
    let cut = common::Chunked::new(stalled).read_to_end(&mut rest);
    assert!(
        cut.is_err(),
        "the dropped reader must see an error, read {} bytes",
        rest.len()
    );

    assert_exactly_once(&stored_sample_index(&dir.path().join("data/store/src")), n);
}

/// The stream keys of the main job (config.toml): every port's every stream.
const MAIN_JOB_STREAMS: &[&str] = &[
    "rig.imec0.ap",
    "rig.twophoton",
    "rig.behaviour",
    "rig.twophoton.rois",
    "rig.ground_truth",
    "rig.ground_truth_units",
    "rig.imec0.ap.spikes",
    "rig.imec0.ap.spikes.progress",
    "rig.twophoton@mc",
    "rig.twophoton.traces",
    "rig.twophoton.traces.dff",
    "rig.twophoton.traces.dff.moments",
    "rig.twophoton.traces.dff.neurons",
    "rig.twophoton.traces.dff.predictable",
    "rig.twophoton.traces.dff.unpredictable",
];

#[test]
fn streams_lists_every_stream_of_the_main_job() {
    let dir = tempfile::tempdir().unwrap();
    // Its own dir and port; neurons labelled after 60 frames instead of 600, so that the
    // label streams appear within seconds even on a loaded machine (the streams are the same).
    let config = common::main_job_config().replace(
        "type = \"predictability\"",
        "type = \"predictability\"\nmin_samples = 60",
    );
    let d = Daemon::start(dir.path(), &config);
    let started = std::time::Instant::now();
    let keys = loop {
        let keys = stream_keys(&d);
        let missing: Vec<&&str> = MAIN_JOB_STREAMS
            .iter()
            .filter(|k| !keys.iter().any(|x| x == *k))
            .collect();
        if missing.is_empty() {
            break keys;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "never listed: {missing:?}; listed: {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let listing = streams(&d);
    let ap = listing["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "rig.imec0.ap")
        .unwrap();
    assert_eq!(ap["layout"], "continuous", "{ap}");
    assert_eq!(ap["rate_hz"], 30000.0, "{ap}");
    assert_eq!(ap["producer"], "rig", "{ap}");
    assert_eq!(ap["first_sample_index"], 0, "{ap}");
    assert!(ap["rows"].as_u64().unwrap() > 30_000, "{ap}");
    assert!(ap["last_sample_index"].as_i64().unwrap() > 30_000, "{ap}");
    assert_eq!(ap["schema"]["fields"][0]["name"], "sample_index", "{ap}");
    let consumers: Vec<&str> = ap["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["consumer"].as_str().unwrap())
        .collect();
    for c in ["spikes", "mc", "store"] {
        assert!(consumers.contains(&c), "{ap}");
    }
    d.signal("TERM");
    let mut d = d;
    assert!(
        d.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        d.log_text()
    );
    // Every stream the sinks stored is listed.
    for sink in ["store", "pretraining", "finetuning"] {
        for e in std::fs::read_dir(dir.path().join("data").join(sink)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                keys.contains(&name),
                "{sink}/{name} stored but not listed: {keys:?}"
            );
        }
    }
}

#[test]
fn a_reload_that_changes_one_sink_leaves_the_replay_running_and_stores_it_once() {
    let Some((dir, mut d)) = start_replay() else {
        return;
    };
    let n = SECONDS * RATE;
    let sent = r#"neurod_component_sent_rows_total{component_id="src""#;
    wait_for(Duration::from_secs(30), "a second of data", || {
        d.metric(sent).filter(|v| *v >= RATE as f64)
    });

    let cfg = dir.path().join("neurod.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("flush_interval_s = 0.5", "flush_interval_s = 0.3"),
    )
    .unwrap();
    d.signal("HUP");
    let line = wait_for(Duration::from_secs(20), "the reload", || {
        d.log_text()
            .lines()
            .find(|l| l.contains("reloaded"))
            .map(str::to_string)
    });
    assert!(
        line.contains(r#"unchanged=["src"]"#) && line.contains(r#"restarted=["store"]"#),
        "{line}"
    );
    let at_reload = d.metric(sent).unwrap();
    assert!(
        at_reload < n as f64,
        "the reload must happen while the replay runs ({at_reload} of {n} sent)"
    );

    assert!(
        d.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    // The store finished twice (the old instance at the reload, the new one at the end); the
    // source once.
    let finished = |c: &str| {
        log.lines()
            .filter(|l| l.contains("finished") && l.contains(&format!("component={c}")))
            .count()
    };
    assert_eq!((finished("src"), finished("store")), (1, 2), "{log}");
    assert_exactly_once(&stored_sample_index(&dir.path().join("data/store/src")), n);
}
