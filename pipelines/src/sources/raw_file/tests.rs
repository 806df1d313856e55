//! Replay and follow of raw Int16 files; helpers shared by the other file sources' tests.

use super::reader::truncation_message;
use super::*;
use crate::component::{Output, Outputs, Shutdown};
use crate::edge::{Inbox, Recv};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::storage::ResumeLookup;
use crate::stream::{ChannelInfo, ChannelKind};
use arrow::array::{Array, Int16Array, Int64Array};
use arrow::record_batch::RecordBatch;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What a test source run produced.
pub(crate) struct Collected {
    pub batches: Vec<RecordBatch>,
    /// The samples of the batches that travelled as a file source read them (sample-major,
    /// without Arrow columns), back in file layout; empty if none did.
    pub sample_bytes: Vec<u8>,
    /// How many batches travelled that way.
    pub as_samples: usize,
    pub metrics: ComponentMetrics,
    pub result: Result<(), ComponentError>,
}

impl Collected {
    /// The samples back in file layout: interleaved little-endian Int16.
    pub fn interleaved_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for b in &self.batches {
            let cols: Vec<&Int16Array> = (1..b.num_columns())
                .map(|c| b.column(c).as_any().downcast_ref::<Int16Array>().unwrap())
                .collect();
            for r in 0..b.num_rows() {
                for c in &cols {
                    out.extend_from_slice(&c.value(r).to_le_bytes());
                }
            }
        }
        out
    }

    /// `sample_index` of every row, in arrival order.
    pub fn indices(&self) -> Vec<i64> {
        self.batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect()
    }
}

/// Runs `run` on a thread with one consumer inbox (large enough never to drop) and collects
/// everything it sends until it finishes.
pub(crate) fn collect(
    overflow: Overflow,
    shutdown: Shutdown,
    run: impl FnOnce(SourceContext) -> Result<(), ComponentError> + Send + 'static,
) -> Collected {
    let metrics = Metrics::new();
    let src = metrics.component("src", "source", "test");
    let inbox = Inbox::new(100_000, metrics.component("sink", "sink", "test"));
    let mut outputs = Outputs::default();
    outputs.insert("", Output::new(vec![inbox.sender()], overflow, src.clone()));
    let ctx = SourceContext {
        id: "src".into(),
        outputs,
        shutdown,
        metrics: src.clone(),
        resume: ResumeLookup::default(),
    };
    let handle = std::thread::spawn(move || run(ctx));
    let mut batches = Vec::new();
    let (mut sample_bytes, mut as_samples) = (Vec::new(), 0);
    loop {
        match inbox.recv_timeout(Duration::from_secs(30)) {
            Recv::Data(b) => {
                if let Some(rows) = b.sample_rows().filter(|_| !b.has_columns()) {
                    sample_bytes.extend(rows.values.iter().flat_map(|v| v.to_le_bytes()));
                    as_samples += 1;
                }
                batches.push(b.into_record_batch());
            }
            Recv::Closed => break,
            Recv::Timeout => panic!("the source sent nothing for 30 s"),
        }
    }
    let result = handle.join().expect("source thread panicked");
    Collected {
        batches,
        sample_bytes,
        as_samples,
        metrics: src,
        result,
    }
}

pub(crate) fn info(n_ch: usize, rate: f64) -> ContinuousInfo {
    ContinuousInfo {
        stream_id: "src".into(),
        stream_kind: "ap".into(),
        sampling_hz_text: rate.to_string(),
        sampling_hz: rate,
        first_sample: 0,
        probe: None,
        channels: (0..n_ch)
            .map(|i| ChannelInfo {
                name: format!("c{i}"),
                kind: ChannelKind::Ap,
                uv_per_bit: None,
                x_um: None,
                y_um: None,
                shank: None,
            })
            .collect(),
    }
}

/// `n` samples of `n_ch` channels whose values encode (sample, channel) and cover negatives.
pub(crate) fn synthetic(n: usize, n_ch: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * n_ch * 2);
    for s in 0..n {
        for c in 0..n_ch {
            let v = ((s * 7 + c * 1013) % 65536) as u16 as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn replay_file(
    path: &Path,
    n_ch: usize,
    batch: usize,
    expected: Option<u64>,
    pace: Pace,
) -> Collected {
    let file = RawFile {
        path: path.to_path_buf(),
        info: info(n_ch, 1000.0),
        batch_samples: batch,
    };
    collect(Overflow::Block, Shutdown::new(), move |ctx| {
        run(
            file,
            Mode::Replay {
                pace,
                expected_bytes: expected,
            },
            ctx,
        )
    })
}

#[test]
fn replay_is_exact_across_odd_batch_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let data = synthetic(1000, 3);
    std::fs::write(&path, &data).unwrap();
    for batch in [1, 7, 13, 999, 1000, 4096] {
        let got = replay_file(&path, 3, batch, Some(data.len() as u64), Pace::Max);
        got.result.as_ref().unwrap();
        assert_eq!(got.interleaved_bytes(), data, "batch {batch}");
        // The batches travel as the file holds them; the columns above were built from that.
        assert_eq!(got.as_samples, got.batches.len());
        assert_eq!(got.sample_bytes, data, "batch {batch}");
        assert_eq!(got.indices(), (0..1000).collect::<Vec<i64>>());
        let sizes: Vec<usize> = got.batches.iter().map(|b| b.num_rows()).collect();
        let full = 1000 / batch.min(1000);
        assert!(
            sizes[..full].iter().all(|&s| s == batch.min(1000)),
            "{sizes:?}"
        );
        assert_eq!(sizes.len(), 1000usize.div_ceil(batch), "batch {batch}");
        assert_eq!(got.metrics.errors_total(), 0);
        assert_eq!(got.metrics.sent_rows(), 1000);
    }
}

#[test]
fn realtime_replay_takes_the_recording_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    // 100 samples at 1 kHz: 0.1 s.
    std::fs::write(&path, synthetic(100, 2)).unwrap();
    let t = Instant::now();
    let got = replay_file(&path, 2, 10, None, Pace::Realtime);
    got.result.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(95),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(got.metrics.sent_rows(), 100);
}

#[test]
fn truncated_file_emits_every_whole_sample_and_counts_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let data = synthetic(100, 4);
    // 57 whole samples and 5 bytes of the 58th; the acquisition said 100 samples.
    let cut = 57 * 8 + 5;
    std::fs::write(&path, &data[..cut]).unwrap();
    let got = replay_file(&path, 4, 10, Some(data.len() as u64), Pace::Max);
    got.result.as_ref().unwrap();
    assert_eq!(got.interleaved_bytes(), &data[..57 * 8]);
    assert_eq!(got.indices().last(), Some(&56));
    assert_eq!(got.metrics.errors_total(), 1);

    // Without an expected size: a partial trailing sample alone is a truncation.
    let got = replay_file(&path, 4, 10, None, Pace::Max);
    got.result.as_ref().unwrap();
    assert_eq!(got.interleaved_bytes(), &data[..57 * 8]);
    assert_eq!(got.metrics.errors_total(), 1);
}

#[test]
fn truncation_message_names_file_sizes_and_last_sample() {
    let m = truncation_message(
        Path::new("/d/x.bin"),
        "800 bytes (100 samples)",
        461,
        57,
        57,
        5,
    );
    assert_eq!(
        m,
        "/d/x.bin: truncated: expected 800 bytes (100 samples), found 461 bytes; the data \
         ends after sample_index 56 (57 whole samples emitted, a partial sample of 5 bytes \
         dropped)"
    );
    let m = truncation_message(Path::new("x.bin"), "8 bytes (1 samples)", 0, 0, 0, 0);
    assert!(
        m.contains("it holds no whole sample (0 whole samples emitted)"),
        "{m}"
    );
}

#[test]
fn whole_but_short_file_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let data = synthetic(30, 2);
    std::fs::write(&path, &data[..20 * 4]).unwrap();
    let got = replay_file(&path, 2, 7, Some(data.len() as u64), Pace::Max);
    got.result.as_ref().unwrap();
    assert_eq!(got.interleaved_bytes(), &data[..80]);
    assert_eq!(got.metrics.errors_total(), 1);
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.bin");
    let got = replay_file(&path, 2, 7, None, Pace::Max);
    let e = got.result.unwrap_err().to_string();
    assert!(e.contains("gone.bin"), "{e}");
}

/// Appends `data` to `path` in odd-sized chunks (splitting samples), pausing between them.
pub(crate) fn write_slowly(path: &Path, data: &[u8], chunk: usize, pause: Duration) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for part in data.chunks(chunk) {
        f.write_all(part).unwrap();
        f.flush().unwrap();
        std::thread::sleep(pause);
    }
}

fn follow_config(
    idle: Option<Duration>,
    watcher: impl FnMut() -> Option<Finished> + Send + 'static,
) -> Mode {
    Mode::Follow(FollowConfig {
        poll: Duration::from_millis(2),
        idle_timeout: idle,
        watcher: Box::new(watcher),
    })
}

#[test]
fn follower_gets_every_sample_once_in_order_then_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.bin");
    let n_ch = 3;
    let data = synthetic(2000, n_ch);
    // The acquisition has written a bit and a partial sample before we start.
    std::fs::write(&path, &data[..17]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, data, done) = (path.clone(), data.clone(), done.clone());
        std::thread::spawn(move || {
            write_slowly(&path, &data[17..], 37, Duration::from_micros(300));
            done.store(true, Ordering::SeqCst);
        })
    };
    let file = RawFile {
        path: path.clone(),
        info: info(n_ch, 30000.0),
        batch_samples: 50,
    };
    let total = data.len() as u64;
    let mode = follow_config(None, move || {
        done.load(Ordering::SeqCst).then_some(Finished {
            expected_bytes: Some(total),
        })
    });
    let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
        run(file, mode, ctx)
    });
    writer.join().unwrap();
    got.result.as_ref().unwrap();
    assert_eq!(got.indices(), (0..2000).collect::<Vec<i64>>());
    assert_eq!(got.interleaved_bytes(), data);
    // Partial samples carried over between reads, as the samples travelled.
    assert_eq!(got.as_samples, got.batches.len());
    assert_eq!(got.sample_bytes, data);
    assert!(got.batches.iter().all(|b| b.num_rows() <= 50));
    assert_eq!(got.metrics.errors_total(), 0);
    assert_eq!(got.metrics.dropped_rows(), 0);
}

#[test]
fn follower_ends_after_idle_timeout_dropping_a_partial_sample() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.bin");
    let data = synthetic(500, 2);
    std::fs::write(&path, b"").unwrap();
    let writer = {
        let (path, data) = (path.clone(), data.clone());
        // Ends with 3 bytes of a 4-byte sample that never completes.
        std::thread::spawn(move || {
            write_slowly(&path, &data[..400 * 4 + 3], 29, Duration::from_micros(200))
        })
    };
    let file = RawFile {
        path: path.clone(),
        info: info(2, 30000.0),
        batch_samples: 64,
    };
    let mode = follow_config(Some(Duration::from_millis(500)), || None);
    let t = Instant::now();
    let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
        run(file, mode, ctx)
    });
    writer.join().unwrap();
    got.result.as_ref().unwrap();
    assert_eq!(got.interleaved_bytes(), &data[..400 * 4]);
    assert_eq!(got.indices(), (0..400).collect::<Vec<i64>>());
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert_eq!(got.metrics.errors_total(), 0, "idle end is not an error");
}

#[test]
fn finished_acquisition_shorter_than_announced_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.bin");
    let data = synthetic(100, 2);
    std::fs::write(&path, &data[..50 * 4]).unwrap();
    let file = RawFile {
        path,
        info: info(2, 30000.0),
        batch_samples: 64,
    };
    let mode = follow_config(None, || {
        Some(Finished {
            expected_bytes: Some(400),
        })
    });
    let got = collect(Overflow::DropOldest, Shutdown::new(), move |ctx| {
        run(file, mode, ctx)
    });
    got.result.as_ref().unwrap();
    assert_eq!(got.interleaved_bytes(), &data[..200]);
    assert_eq!(got.metrics.errors_total(), 1);
}

#[test]
fn shutdown_stops_a_follower_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.bin");
    let data = synthetic(10, 2);
    std::fs::write(&path, &data).unwrap();
    let file = RawFile {
        path,
        info: info(2, 30000.0),
        batch_samples: 64,
    };
    let mode = Mode::Follow(FollowConfig {
        poll: Duration::from_secs(10),
        idle_timeout: None,
        watcher: Box::new(|| None),
    });
    let shutdown = Shutdown::new();
    let trigger = {
        let s = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            s.trigger();
            t
        })
    };
    let got = collect(Overflow::DropOldest, shutdown, move |ctx| {
        run(file, mode, ctx)
    });
    let triggered_at = trigger.join().unwrap();
    got.result.as_ref().unwrap();
    assert!(
        triggered_at.elapsed() < Duration::from_secs(1),
        "took {:?} after shutdown",
        triggered_at.elapsed()
    );
    assert_eq!(got.interleaved_bytes(), data, "what was there is emitted");
}

#[test]
fn options_are_checked() {
    let o = ReadOptions {
        batch_ms: Some(0.5),
        poll_ms: 0.0,
        idle_timeout_s: -1.0,
        ..ReadOptions::default()
    };
    assert_eq!(o.problems().len(), 3, "{:?}", o.problems());
    assert!(ReadOptions::default().problems().is_empty());
    assert_eq!(ReadOptions::default().batch_samples(29999.757983), 300);
    assert_eq!(ReadOptions::default().batch_samples(40.0), 1);
    assert_eq!(ReadOptions::default().overflow(), Overflow::Block);
    // Unset, batches are 10 ms, 100 ms for a replay at full speed; a set value always holds.
    let max = ReadOptions {
        pace: crate::pace::Pace::Max,
        ..ReadOptions::default()
    };
    assert_eq!(max.batch_samples(30000.0), 3000);
    let following = ReadOptions {
        follow: true,
        ..max
    };
    assert_eq!(following.batch_samples(30000.0), 300);
    let set = ReadOptions {
        batch_ms: Some(10.0),
        ..max
    };
    assert_eq!(set.batch_samples(30000.0), 300);
}
