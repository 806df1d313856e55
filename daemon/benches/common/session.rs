//! A stored session made through the storage layer exactly as the `store` sink writes it
//! (Arrow IPC segments rotated at 300 s of data or 1 GiB, converted by `finish_segment` with the
//! sink's default Parquet options, the manifest refreshed after each file), shared by the
//! benchmarks that need an hour of data.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipelines::sources::simulated::{ap_stream_info, Rig, SimulatedOptions, NP1_CHANNELS};
use pipelines::storage::layout::{segment_path, stream_dir_name};
use pipelines::storage::{finish_segment, refresh_manifest, ParquetOptions, SegmentWriter};
use pipelines::stream::stream_id_of;
use pipelines::transforms::spike_detect::spikes_schema;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

pub const PROBE: &str = "rig.imec0.ap";
pub const SPIKES: &str = "rig.imec0.ap.spikes";
pub const RATE_HZ: f64 = 30_000.0;
pub const BATCH_SAMPLES: i64 = 300;
pub const SPIKE_SECONDS: i64 = 3600;
/// The store sink's defaults: `rotate_s` (as data time: the daemon records in real time) and
/// `rotate_bytes`.
const ROTATE_SAMPLES: i64 = 300 * 30_000;
const ROTATE_BYTES: u64 = 1 << 30;

/// `CARGO_TARGET_DIR`, else the target directory the running benchmark was built in.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // <target>/release/deps/<bench>-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Runs `make` (which fills `data`) unless a complete copy is there, marked `COMPLETE` once
/// made, so that an interrupted run makes it again.
pub fn cached(data: &Path, what: &str, make: impl FnOnce()) {
    let done = data.join("COMPLETE");
    if done.exists() {
        println!("data: cached in {}", data.display());
        return;
    }
    let _ = std::fs::remove_dir_all(data);
    println!("data: making {what} in {} (once)", data.display());
    make();
    std::fs::write(&done, b"").expect("marking the data complete");
}

/// One stream written as the store sink writes it: segments rotated by data time or size, each
/// converted to its Parquet part and the manifest refreshed.
pub struct StreamStore {
    dir: PathBuf,
    seq: u64,
    segment: Option<(SegmentWriter, i64)>,
    converting: Vec<std::thread::JoinHandle<()>>,
}

impl StreamStore {
    pub fn new(store: &Path, stream_id: &str) -> Self {
        let dir = store.join(stream_dir_name(stream_id));
        std::fs::create_dir_all(&dir).expect("creating the stream directory");
        StreamStore {
            dir,
            seq: 0,
            segment: None,
            converting: Vec::new(),
        }
    }

    pub fn write(&mut self, batch: &RecordBatch, first_sample: i64) {
        if self.segment.is_none() {
            let path = segment_path(&self.dir, self.seq);
            self.seq += 1;
            let seg = SegmentWriter::create(&path, batch.schema()).expect("creating a segment");
            self.segment = Some((seg, first_sample));
        }
        let Some((seg, opened)) = self.segment.as_mut() else {
            return;
        };
        seg.write(batch).expect("writing a segment");
        if seg.len() >= ROTATE_BYTES || first_sample - *opened >= ROTATE_SAMPLES {
            self.rotate();
        }
    }

    /// Closes the segment and converts it on a thread, as the sink's converter does.
    fn rotate(&mut self) {
        let Some((seg, _)) = self.segment.take() else {
            return;
        };
        let path = seg.path().to_path_buf();
        seg.finish().expect("closing a segment");
        // One conversion at a time, like the sink's single converter (two manifest refreshes
        // at once would race on its temporary file).
        for t in self.converting.drain(..) {
            t.join().expect("a conversion thread");
        }
        let dir = self.dir.clone();
        self.converting.push(std::thread::spawn(move || {
            finish_segment(&path, &ParquetOptions::default()).expect("converting a segment");
            refresh_manifest(&dir).expect("refreshing the manifest");
        }));
    }

    pub fn close(mut self) {
        self.rotate();
        for t in self.converting.drain(..) {
            t.join().expect("a conversion thread");
        }
    }
}

/// One hour of spikes on 384 channels, Poisson at 5–20 Hz each, in 10 ms batches.
pub fn write_spikes(store: &Path) {
    let info = ap_stream_info(PROBE);
    let params = r#"{"band_hz":[300.0,6000.0],"order":3,"reference":"global_median","threshold":5.0,"radius_um":50.0,"exclude_ms":0.5,"dead_time_ms":1.0,"calibration_s":2.0}"#;
    let schema = spikes_schema(&info, params);
    let mut rng = SmallRng::seed_from_u64(9);
    let rates: Vec<f64> = (0..NP1_CHANNELS)
        .map(|_| rng.random_range(5.0..20.0))
        .collect();
    let interval = |rng: &mut SmallRng, hz: f64| -> i64 {
        let exp = Exp::new(hz / RATE_HZ).expect("a positive rate");
        1 + exp.sample(rng) as i64
    };
    let mut next: Vec<i64> = rates.iter().map(|&r| interval(&mut rng, r)).collect();
    let mut out = StreamStore::new(store, SPIKES);
    let total = SPIKE_SECONDS * RATE_HZ as i64;
    let mut start = 0;
    let mut rows: Vec<(i64, i32)> = Vec::new();
    while start < total {
        let end = start + BATCH_SAMPLES;
        rows.clear();
        for (ch, t) in next.iter_mut().enumerate() {
            while *t < end {
                rows.push((*t, ch as i32));
                *t += interval(&mut rng, rates[ch]);
            }
        }
        rows.sort_unstable();
        let batch = spikes_batch(&schema, &rows, &mut rng);
        out.write(&batch, start);
        start = end;
    }
    out.close();
}

pub fn spikes_batch(schema: &SchemaRef, rows: &[(i64, i32)], rng: &mut SmallRng) -> RecordBatch {
    let samples = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
    let times = Float64Array::from_iter_values(rows.iter().map(|r| r.0 as f64 / RATE_HZ));
    let channels = Int32Array::from_iter_values(rows.iter().map(|r| r.1));
    let amplitudes =
        Float32Array::from_iter_values(rows.iter().map(|_| -rng.random_range(40.0f32..300.0)));
    let thresholds =
        Float32Array::from_iter_values(rows.iter().map(|_| rng.random_range(30.0f32..60.0)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(samples),
        Arc::new(times),
        Arc::new(channels),
        Arc::new(amplitudes),
        Arc::new(thresholds),
    ];
    RecordBatch::try_new(schema.clone(), columns).expect("the spikes schema")
}

/// `seconds` of the simulated rig's AP stream (385 Int16 channels, 30 kHz) in 10 ms batches.
pub fn write_raw(store: &Path, seconds: u64) {
    let opts: SimulatedOptions = toml::from_str(&format!(
        "pace = 'max'\ntwophoton = false\nduration_s = {seconds}\nbatch_ms = 10"
    ))
    .expect("valid options");
    let mut rig = Rig::new("rig", &opts).expect("the rig builds");
    let mut out = StreamStore::new(store, PROBE);
    while let Some(w) = rig.next_window(false).expect("a rig window") {
        for (_, b) in &w.batches {
            if stream_id_of(&b.schema()) == Some(PROBE) {
                out.write(b, w.start_sample);
            }
        }
    }
    out.close();
}
