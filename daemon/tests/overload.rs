//! Overload: one transform gets twice what it can take, for `NEUROD_OVERLOAD_S` seconds (default
//! 20; `bench/faults.sh` runs minutes), then the load falls back within its means. The transform
//! is slowed by the test-only fault `NEUROD_FAULT_SLOW` (a sleep per batch), so that the overload
//! is the same on any machine.
//!
//! Acquisition never waits for it, the raw record loses nothing, the transform's edge drops the
//! oldest batches once its queue (its budget) is full and counts them, memory stays flat, and
//! when the load falls the queue drains and drops stop.

mod common;

use std::time::{Duration, Instant};

use common::{assert_exactly_once, header, held_by, metric_value, stored_sample_index, Daemon};

const RIG_SENT: &str = r#"neurod_component_sent_rows_total{component_id="rig""#;
const DROPPED: &str = r#"neurod_edge_dropped_rows_total{consumer="spikes",port="",producer="rig"}"#;
const FILL: &str = r#"neurod_component_queue_fill_ratio{component_id="spikes""#;
const TAKEN: &str = r#"neurod_component_received_rows_total{component_id="spikes""#;

/// One look at the daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    rss_mb: f64,
    rig_sent: f64,
    dropped: f64,
    fill: f64,
    taken: f64,
}

#[test]
fn twice_what_a_transform_takes_costs_no_acquisition_no_raw_data_nor_memory_and_it_recovers() {
    let overload_s: f64 = common::env_or("NEUROD_OVERLOAD_S", 20.0);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}queue_batches = 64\n\
         [sources.rig]\ntype = \"simulated\"\nprobes = 2\ntwophoton = false\npace = \"realtime\"\n\
         [transforms.spikes]\ntype = \"spike_detect\"\ninputs = [\"rig\"]\nbackend = \"cpu\"\n\
         [sinks.raw]\ntype = \"store\"\ninputs = [\"rig\"]\n\
         [sinks.found]\ntype = \"store\"\ninputs = [\"spikes\"]\n",
        header()
    );
    // The rig sends `spikes` 300 batches a second (two probes and the running speed, 10 ms
    // each); 6.7 ms more per batch leaves it room for 150.
    let fault = format!("spikes:6.7:{overload_s}");
    let mut d = Daemon::start_with_env(dir.path(), &config, &[("NEUROD_FAULT_SLOW", &fault)]);
    let started = Instant::now();
    let pid = d.child.id();
    let mut samples: Vec<Sample> = Vec::new();
    let end = overload_s + 15.0;
    while started.elapsed().as_secs_f64() < end {
        std::thread::sleep(Duration::from_millis(500));
        let (Some(text), Some(held)) = (common::http_get(d.port, "/metrics"), held_by(pid)) else {
            continue;
        };
        let m = |p: &str| metric_value(&text, p).unwrap_or(0.0);
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            rss_mb: held.rss_mb,
            rig_sent: m(RIG_SENT),
            dropped: m(DROPPED),
            fill: m(FILL),
            taken: m(TAKEN),
        });
    }
    let wall = started.elapsed().as_secs_f64();
    d.signal("TERM");
    let exit = d.wait_exit(Duration::from_secs(60));
    let log = d.log_text();
    assert!(exit.success(), "{log}");

    let at = |t: f64| *samples.iter().rev().find(|s| s.t <= t).expect("a sample");
    let last = *samples.last().unwrap();
    let overloaded = at(overload_s);
    eprintln!("overload {overload_s} s: {overloaded:?}\nend: {last:?}");

    // Drops at the slowed transform's edge, counted, once its queue was full: about half of
    // the batches, which is a third of the rows (the running speed's batches hold one row).
    let offered = overloaded.rig_sent;
    assert!(
        overloaded.dropped > 0.25 * offered && overloaded.dropped < 0.75 * offered,
        "dropped {} of {offered} rows while overloaded",
        overloaded.dropped
    );

    // Recovery: from 5 s after the load fell, no drop, an empty queue, and the transform
    // takes what the rig sends.
    let settled = at(overload_s + 5.0);
    assert_eq!(last.dropped, settled.dropped, "drops after the load fell");
    assert!(
        last.fill < 0.1,
        "queue still {:.0} % full",
        last.fill * 100.0
    );
    let (sent, taken) = (last.rig_sent - settled.rig_sent, last.taken - settled.taken);
    assert!(
        (taken - sent).abs() <= 0.05 * sent,
        "after the overload the transform took {taken} rows of {sent}"
    );

    // Memory flat after warm-up: the queue is bounded, so the second half of the overload
    // holds no more than the first.
    let peak = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|s| s.t >= from && s.t <= to)
            .map(|s| s.rss_mb)
            .fold(0.0, f64::max)
    };
    let (early, late) = (peak(0.0, overload_s / 2.0), peak(overload_s / 2.0, wall));
    eprintln!("peak RSS: {early:.0} MB in the first half of the overload, {late:.0} MB after");
    assert!(
        late <= early * 1.15 + 20.0,
        "RSS grew: {early:.0} → {late:.0} MB"
    );

    // Acquisition never waited, and the raw record holds every sample of both probes.
    let mut stored = 0;
    for probe in ["rig.imec0.ap", "rig.imec1.ap"] {
        let idx = stored_sample_index(&dir.path().join("data/raw").join(probe));
        assert_exactly_once(&idx, idx.len());
        assert!(
            idx.len() as f64 >= 0.95 * 30_000.0 * wall,
            "{probe}: {} samples stored in {wall:.1} s",
            idx.len()
        );
        stored += idx.len();
    }
    eprintln!(
        "overload summary: {overload_s} s at twice what spike_detect takes: {:.0} of {:.0} rows \
         dropped at its edge ({:.0} %), counted; {stored} raw samples stored, 0 lost; peak RSS \
         {early:.0} MB in the first half, {late:.0} MB after; 5 s after the load fell: no drop, \
         queue {:.0} % full, takes {:.0} % of what the rig sends",
        overloaded.dropped,
        offered,
        100.0 * overloaded.dropped / offered,
        100.0 * last.fill,
        100.0 * taken / sent
    );
}
