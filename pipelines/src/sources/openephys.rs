//! `type = "openephys"`: replays one continuous stream of a finished Open Ephys binary recording,
//! or follows one the GUI is still writing (`follow = true`), as a stream named after the
//! component.
//!
//! The GUI writes a valid `sample_numbers.npy` only when recording stops: a follower re-opens the
//! recording while `continuous.dat` is quiet and ends once the stream is finished and read.

use std::path::PathBuf;

use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, PortSpec, Source, SourceContext,
};
use crate::edge::Overflow;
use crate::formats::openephys::OpenEphysRecording;
use crate::pace::Pace;
use crate::sources::raw_file::{self, default_poll_ms, Finished, ReadOptions};
use crate::stream::{ContinuousInfo, Layout};

const TYPE: &str = "openephys";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The recording folder, a folder above it holding one recording, or its `structure.oebin`.
    path: PathBuf,
    /// `stream_name` or `folder_name`; required when the recording has several streams.
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    pace: Pace,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    batch_ms: Option<f64>,
    #[serde(default = "default_poll_ms")]
    poll_ms: f64,
    #[serde(default)]
    idle_timeout_s: f64,
}

impl Config {
    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            pace: self.pace,
            follow: self.follow,
            batch_ms: self.batch_ms,
            poll_ms: self.poll_ms,
            idle_timeout_s: self.idle_timeout_s,
        }
    }
}

pub struct OpenEphysSource {
    oebin_path: PathBuf,
    folder_name: String,
    dat_path: PathBuf,
    info: ContinuousInfo,
    /// Bytes the GUI recorded (`sample_numbers.npy` length × sample size) once it has stopped.
    expected_bytes: Option<u64>,
    options: ReadOptions,
}

/// Checks everything that can be checked without reading samples, reporting every problem.
pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Source>, Vec<String>> {
    let cfg: Config = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("source `{}` (type `{TYPE}`)", ctx.id);
    let read_options = cfg.read_options();
    let mut errors: Vec<String> = read_options
        .problems()
        .into_iter()
        .map(|p| format!("{prefix}: {p}"))
        .collect();
    let recording = match OpenEphysRecording::open(&cfg.path) {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("{prefix}: {e}"));
            return Err(errors);
        }
    };
    let stream = match recording.stream(cfg.stream.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("{prefix}: {e}"));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let expected_bytes = expected_bytes(
        stream.finished,
        stream.recorded_samples,
        stream.bytes_per_sample(),
    );
    if !stream.finished && !cfg.follow {
        tracing::warn!(
            "source `{}`: {} has no valid sample_numbers.npy: the GUI is still recording (or \
             crashed); replaying the samples present at start (set `follow = true` to follow it)",
            ctx.id,
            stream.dat_path.display()
        );
    }
    Ok(Box::new(OpenEphysSource {
        oebin_path: recording.oebin_path.clone(),
        folder_name: stream.folder_name.clone(),
        dat_path: stream.dat_path.clone(),
        info: stream.info(ctx.id),
        expected_bytes,
        options: read_options,
    }))
}

fn expected_bytes(finished: bool, recorded_samples: Option<u64>, bps: u64) -> Option<u64> {
    if finished {
        recorded_samples.and_then(|n| n.checked_mul(bps))
    } else {
        None
    }
}

impl Source for OpenEphysSource {
    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Continuous])]
    }

    fn overflow(&self) -> Overflow {
        self.options.overflow()
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        raw_file::run_source(
            self.dat_path,
            self.info,
            &self.options,
            self.expected_bytes,
            Box::new(OebinWatcher {
                oebin_path: self.oebin_path,
                folder_name: self.folder_name,
            }),
            ctx,
        )
    }
}

/// Re-opens the recording: the stream is finished once its `sample_numbers.npy` is valid.
struct OebinWatcher {
    oebin_path: PathBuf,
    folder_name: String,
}

impl raw_file::FinishWatcher for OebinWatcher {
    fn check(&mut self) -> Option<Finished> {
        let recording = match OpenEphysRecording::open(&self.oebin_path) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("re-opening {}: {e}", self.oebin_path.display());
                return None;
            }
        };
        let stream = recording.stream(Some(&self.folder_name)).ok()?;
        stream.finished.then(|| Finished {
            expected_bytes: expected_bytes(
                true,
                stream.recorded_samples,
                stream.bytes_per_sample(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Shutdown;
    use crate::sources::raw_file::tests::{collect, synthetic, write_slowly};
    use crate::stream::keys;
    use std::path::Path;
    use std::time::Duration;

    fn data_dir(rel: &str) -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(rel);
        if p.exists() {
            Some(p)
        } else if std::env::var_os("CI").is_some() {
            panic!("test data missing: {}", p.display());
        } else {
            eprintln!(
                "!!! SKIPPED: test data missing: {} (CI would fail)",
                p.display()
            );
            None
        }
    }

    fn build_source(path: &Path, extra: &str) -> Result<Box<dyn Source>, Vec<String>> {
        let mut t: toml::Table = toml::from_str(extra).unwrap();
        t.insert("path".into(), path.display().to_string().into());
        build(
            &BuildContext {
                id: "oe",
                data_dir: Path::new("/nonexistent"),
                inputs: &[],
            },
            t,
        )
    }

    #[test]
    fn replays_the_16_channel_recording_bit_exactly() {
        let Some(dir) = data_dir("openephys-16ch-40khz/experiment1/recording1") else {
            return;
        };
        let dat = dir.join("continuous/File_Reader-100.example_data/continuous.dat");
        let expected = std::fs::read(&dat).unwrap();
        let source = build_source(&dir, "pace = 'max'").unwrap();
        assert_eq!(source.overflow(), Overflow::Block);
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.metrics.sent_rows(), 133_120);
        assert!(
            got.interleaved_bytes() == expected,
            "replayed samples differ from continuous.dat"
        );
        // 100 ms at 40 kHz (a replay at full speed).
        assert_eq!(got.batches[0].num_rows(), 4000);
        let md = got.batches[0].schema().metadata().clone();
        assert_eq!(md[keys::FIRST_SAMPLE], "251635");
        assert_eq!(md[keys::SAMPLING_HZ], "40000.0");
        assert_eq!(md[keys::STREAM_ID], "oe");
        assert_eq!(got.metrics.errors_total(), 0);
    }

    #[test]
    fn replays_np2_probe_b_by_stream_name() {
        let Some(rec) = data_dir("openephys-np2-snippets/Record Node 101/experiment1/recording1")
        else {
            return;
        };
        let dat = rec.join("continuous/Neuropix-PXI-100.ProbeB/continuous.dat");
        let expected = std::fs::read(&dat).unwrap();
        // Several streams: the name is required, and the error lists them.
        let e = build_source(&rec, "").err().unwrap();
        assert!(
            e[0].contains("oe") && e[0].contains("ProbeB") && e[0].contains("ProbeC"),
            "{e:?}"
        );
        let e = build_source(&rec, "stream = 'ProbeZ'").err().unwrap();
        assert!(e[0].contains("ProbeZ"), "{e:?}");

        let source = build_source(
            &rec.join("structure.oebin"),
            "stream = 'ProbeB'\npace = 'max'",
        )
        .unwrap();
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        got.result.as_ref().unwrap();
        assert_eq!(got.indices(), (0..100).collect::<Vec<i64>>());
        assert!(got.interleaved_bytes() == expected);
        let schema = got.batches[0].schema();
        assert_eq!(schema.fields().len(), 385);
        assert_eq!(schema.metadata()[keys::FIRST_SAMPLE], "1863198");
    }

    /// A minimal live recording: oebin, stream folder, continuous.dat, no sample_numbers.npy.
    fn live_recording(dir: &Path, n_ch: usize) -> PathBuf {
        let channels: Vec<String> = (0..n_ch)
            .map(|i| {
                format!(
                    r#"{{"channel_name": "CH{}", "bit_volts": 0.195, "units": "uV"}}"#,
                    i + 1
                )
            })
            .collect();
        let oebin = format!(
            r#"{{"GUI version": "0.6.7", "continuous": [{{"folder_name": "Rig-100.live/",
            "sample_rate": 30000.0, "stream_name": "live", "num_channels": {n_ch},
            "channels": [{}]}}]}}"#,
            channels.join(",")
        );
        std::fs::write(dir.join("structure.oebin"), oebin).unwrap();
        let folder = dir.join("continuous/Rig-100.live");
        std::fs::create_dir_all(&folder).unwrap();
        let dat = folder.join("continuous.dat");
        std::fs::write(&dat, b"").unwrap();
        dat
    }

    /// What the GUI writes at stop: an int64 .npy of `n` sample numbers from `first`.
    fn write_sample_numbers(path: &Path, first: i64, n: usize) {
        let header = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({n},), }}");
        let mut h = header.into_bytes();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        for i in 0..n as i64 {
            out.extend_from_slice(&(first + i).to_le_bytes());
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn follows_until_the_gui_writes_sample_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let dat = live_recording(tmp.path(), 5);
        let data = synthetic(3000, 5);
        let source = build_source(tmp.path(), "follow = true\npoll_ms = 1").unwrap();
        assert_eq!(source.overflow(), Overflow::DropOldest);
        let writer = {
            let (dat, data) = (dat.clone(), data.clone());
            std::thread::spawn(move || {
                write_slowly(&dat, &data, 333, Duration::from_micros(300));
                let npy = dat.with_file_name("sample_numbers.npy");
                write_sample_numbers(&npy, 5000, 3000);
            })
        };
        let got = collect(source.overflow(), Shutdown::new(), move |ctx| {
            source.run(ctx)
        });
        writer.join().unwrap();
        got.result.as_ref().unwrap();
        assert_eq!(got.indices(), (0..3000).collect::<Vec<i64>>());
        assert!(got.interleaved_bytes() == data);
        assert_eq!(got.metrics.errors_total(), 0);
    }

    #[test]
    fn shutdown_stops_an_open_ephys_follower() {
        let tmp = tempfile::tempdir().unwrap();
        live_recording(tmp.path(), 2);
        let source = build_source(tmp.path(), "follow = true").unwrap();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.trigger();
            std::time::Instant::now()
        });
        let got = collect(source.overflow(), shutdown, move |ctx| source.run(ctx));
        let at = t.join().unwrap();
        got.result.as_ref().unwrap();
        assert!(at.elapsed() < Duration::from_secs(1));
        assert_eq!(got.metrics.sent_rows(), 0);
    }
}
