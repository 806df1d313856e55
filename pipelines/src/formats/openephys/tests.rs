//! End-to-end tests of opening recordings: the real data under shared/data, and synthetic
//! recordings for the error paths.

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Int16Array, Int64Array};
use serde_json::Value;

use super::{OebinError, OpenEphysRecording, OpenEphysStream, OEBIN};
use crate::stream::{batch_from_interleaved, ChannelKind};

fn data_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if d.join("openephys-16ch-40khz").is_dir() && d.join("openephys-np2-snippets").is_dir() {
        return Some(d);
    }
    if std::env::var_os("CI").is_some() {
        panic!("test data missing at {} (CI is set)", d.display());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: Open Ephys test data not found under {} !!!!!!!!\n",
        d.display()
    );
    None
}

fn oebin_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Checks a stream against the oebin, independently parsed, and the file bytes.
fn check_stream(rec: &OpenEphysRecording, s: &OpenEphysStream, oebin: &Value) {
    let entry = oebin["continuous"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["folder_name"].as_str().unwrap().trim_end_matches('/') == s.folder_name)
        .unwrap_or_else(|| panic!("{} not in oebin", s.folder_name));
    assert_eq!(entry["stream_name"].as_str().unwrap(), s.name);
    let rate = entry["sample_rate"].as_f64().unwrap();
    assert_eq!(s.sampling_hz, rate);
    assert_eq!(s.sampling_hz_text.parse::<f64>().unwrap(), rate);
    let chans = entry["channels"].as_array().unwrap();
    assert_eq!(chans.len() as u64, entry["num_channels"].as_u64().unwrap());
    assert_eq!(s.channels.len(), chans.len());
    let nidaq = entry["source_processor_name"]
        .as_str()
        .unwrap()
        .contains("NI-DAQ");
    for (c, e) in s.channels.iter().zip(chans) {
        assert_eq!(c.name, e["channel_name"].as_str().unwrap());
        let bv = e["bit_volts"].as_f64().unwrap();
        let want = if nidaq { bv * 1e6 } else { bv };
        assert_eq!(c.uv_per_bit, Some(want), "{}", c.name);
    }

    let info = s.info("oe0");
    assert_eq!(info.stream_kind, "openephys");
    assert_eq!(info.stream_id, "oe0");
    assert_eq!(info.channels, s.channels);
    assert_eq!(info.sampling_hz, rate);

    // Independent reads of the files.
    let folder = rec.dir.join("continuous").join(&s.folder_name);
    assert_eq!(s.dat_path, folder.join("continuous.dat"));
    let bytes = fs::read(&s.dat_path).unwrap();
    let sn: ndarray::Array1<i64> =
        ndarray_npy::read_npy(folder.join("sample_numbers.npy")).unwrap();
    let n_ch = chans.len();
    assert_eq!(bytes.len() % (2 * n_ch), 0);
    let total = (bytes.len() / (2 * n_ch)) as u64;
    assert_eq!(total, sn.len() as u64, "samples vs sample_numbers.npy");
    assert_eq!(s.samples_on_disk().unwrap(), total);
    assert_eq!(s.first_sample, Some(sn[0]));
    assert_eq!(info.first_sample, sn[0]);
    assert!(s.finished);
    assert_eq!(s.recorded_samples, Some(sn.len() as u64));

    // Bit-exact: batches of an odd size, every value against the raw bytes.
    let schema = info.schema();
    let chunk_samples = 7777usize;
    let mut seen = 0u64;
    for (ci, chunk) in bytes.chunks(chunk_samples * 2 * n_ch).enumerate() {
        let first = (ci * chunk_samples) as i64;
        let batch = batch_from_interleaved(&schema, first, chunk).unwrap();
        let idx = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for r in 0..batch.num_rows() {
            assert_eq!(idx.value(r), first + r as i64);
        }
        for c in 0..n_ch {
            let col = batch
                .column(c + 1)
                .as_any()
                .downcast_ref::<Int16Array>()
                .unwrap();
            assert_eq!(col.null_count(), 0);
            for r in 0..batch.num_rows() {
                let off = ((first as usize + r) * n_ch + c) * 2;
                let want = (bytes[off] as i16) | ((bytes[off + 1] as i16) << 8);
                assert_eq!(
                    col.value(r),
                    want,
                    "sample {} channel {c}",
                    first as usize + r
                );
            }
        }
        seen += batch.num_rows() as u64;
    }
    assert_eq!(seen, total);
}

#[test]
fn sixteen_channel_recording_reads_bit_exact() {
    let Some(data) = data_dir() else { return };
    let top = data.join("openephys-16ch-40khz");
    let rec_dir = top.join("experiment1/recording1");
    let oebin_path = rec_dir.join(OEBIN);
    // Top folder, recording folder and the oebin itself all open the same recording.
    let rec = OpenEphysRecording::open(&top).unwrap();
    assert_eq!(rec.oebin_path, oebin_path);
    assert_eq!(rec.dir, rec_dir);
    for p in [&rec_dir, &oebin_path, &top.join("experiment1")] {
        let other = OpenEphysRecording::open(p).unwrap();
        assert_eq!(other.oebin_path, oebin_path);
    }
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.gui_version.as_deref(), Some("0.6.7"));
    assert_eq!(rec.streams.len(), 1);
    let s = rec.stream(None).unwrap();
    assert_eq!(s.name, "example_data");
    assert_eq!(s.folder_name, "File_Reader-100.example_data");
    assert_eq!(
        rec.stream(Some("File_Reader-100.example_data/"))
            .unwrap()
            .name,
        "example_data"
    );
    assert_eq!(
        rec.stream(Some("example_data")).unwrap().name,
        "example_data"
    );
    assert_eq!(s.sampling_hz, 40000.0);
    assert_eq!(s.sampling_hz_text, "40000.0");
    assert_eq!(s.channels.len(), 16);
    assert_eq!(s.samples_on_disk().unwrap(), 133_120);
    for (i, c) in s.channels.iter().enumerate() {
        assert_eq!(c.name, format!("CH{}", i + 1));
        assert_eq!(c.kind, ChannelKind::Ap);
        // units "" and bit_volts 0.05: µV per bit.
        assert_eq!(c.uv_per_bit, Some(0.05000000074505806));
        assert_eq!((c.x_um, c.y_um, c.shank), (None, None, None));
    }
    assert_eq!(s.probe, None);
    check_stream(&rec, s, &oebin_json(&oebin_path));
}

#[test]
fn neuropixels_multi_experiment_streams_read_bit_exact() {
    let Some(data) = data_dir() else { return };
    let node = data.join("openephys-np2-snippets/Record Node 101");
    // The Record Node holds three recordings: opening it names them all.
    let e = OpenEphysRecording::open(&node).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, OebinError::SeveralRecordings { found, .. } if found.len() == 3),
        "{msg}"
    );
    for x in ["experiment1", "experiment3", "experiment6"] {
        assert!(msg.contains(x), "{msg}");
    }
    for x in ["experiment1", "experiment3", "experiment6"] {
        let rec = OpenEphysRecording::open(&node.join(x)).unwrap();
        assert_eq!(rec.dir, node.join(x).join("recording1"));
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        let oebin = oebin_json(&rec.oebin_path);
        let names: Vec<_> = rec.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ProbeB", "ProbeC", "PXIe-6341"]);

        let e = rec.stream(None).unwrap_err().to_string();
        assert!(
            e.contains("ProbeB") && e.contains("PXIe-6341") && e.contains(OEBIN),
            "{e}"
        );
        let e = rec.stream(Some("ProbeZ")).unwrap_err().to_string();
        assert!(e.contains("ProbeZ") && e.contains("ProbeC"), "{e}");
        assert_eq!(
            rec.stream(Some("Neuropix-PXI-100.ProbeC/")).unwrap().name,
            "ProbeC"
        );

        for s in &rec.streams {
            check_stream(&rec, s, &oebin);
            assert_eq!(s.sampling_hz_text, "30000.0");
        }
        for probe in ["ProbeB", "ProbeC"] {
            let s = rec.stream(Some(probe)).unwrap();
            assert_eq!(s.channels.len(), 384);
            assert_eq!(s.samples_on_disk().unwrap(), 100);
            assert_eq!(s.probe.as_deref(), Some("NP2000"));
            assert!(s.channels.iter().all(|c| c.kind == ChannelKind::Ap));
            assert!(s
                .channels
                .iter()
                .all(|c| (c.uv_per_bit.unwrap() - 0.195).abs() < 1e-7));
            // settings.xml ELECTRODE_XPOS/YPOS: two columns 8/40 µm, 15 µm rows.
            for (i, c) in s.channels.iter().enumerate() {
                let want_x = if i % 2 == 0 { 8.0 } else { 40.0 };
                assert_eq!(c.x_um, Some(want_x), "{probe} ch {i}");
                assert_eq!(c.y_um, Some((i / 2) as f64 * 15.0), "{probe} ch {i}");
                assert_eq!(c.shank, Some(0));
            }
            let info = s.info(probe);
            assert_eq!(info.probe.as_deref(), Some("NP2000"));
        }
        let ni = rec.stream(Some("PXIe-6341")).unwrap();
        assert_eq!(ni.channels.len(), 8);
        for (i, c) in ni.channels.iter().enumerate() {
            assert_eq!(c.name, format!("AI{i}"));
            assert_eq!(c.kind, ChannelKind::Analog);
            // 10 V / 32767 per bit, in µV.
            assert!((c.uv_per_bit.unwrap() - 305.185_094_475_746_2).abs() < 1e-6);
            assert_eq!(c.x_um, None);
        }
        assert_eq!(ni.probe, None);
    }
}

// ---- synthetic recordings for the error paths ----

fn oebin_text(folder: &str, n_ch: usize) -> String {
    let chans: Vec<Value> = (0..n_ch)
        .map(|i| {
            serde_json::json!({
                "channel_name": format!("CH{}", i + 1),
                "bit_volts": 0.195, "units": "uV"
            })
        })
        .collect();
    serde_json::json!({
        "GUI version": "0.6.7",
        "continuous": [{
            "folder_name": format!("{folder}/"), "sample_rate": 29999.757983,
            "source_processor_name": "Acquisition Board", "source_processor_id": 100,
            "stream_name": "Rhythm", "num_channels": n_ch, "channels": chans
        }],
        "events": [], "spikes": []
    })
    .to_string()
}

/// A recording folder with a 2-channel stream: `samples` samples plus `extra` bytes.
fn synthetic(samples: usize, extra: usize, npy: Option<&[u8]>) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let rec = t.path().join("experiment1/recording1");
    let folder = rec.join("continuous/Rhythm-100.Rhythm");
    fs::create_dir_all(&folder).unwrap();
    fs::write(rec.join(OEBIN), oebin_text("Rhythm-100.Rhythm", 2)).unwrap();
    let dat: Vec<u8> = (0..samples * 4 + extra).map(|i| (i * 7) as u8).collect();
    fs::write(folder.join("continuous.dat"), dat).unwrap();
    if let Some(npy) = npy {
        fs::write(folder.join("sample_numbers.npy"), npy).unwrap();
    }
    t
}

fn npy_i64(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&ndarray::Array1::from(values.to_vec()), &mut out).unwrap();
    out
}

#[test]
fn missing_oebin_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let gone = t.path().join("nope/structure.oebin");
    let e = OpenEphysRecording::open(&gone).unwrap_err();
    assert!(matches!(e, OebinError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope/structure.oebin"), "{e}");
    // An empty folder: nothing found below it.
    let e = OpenEphysRecording::open(t.path()).unwrap_err();
    assert!(e.to_string().contains(OEBIN), "{e}");
    assert!(
        e.to_string().contains(&t.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn malformed_json_names_the_file() {
    let t = synthetic(10, 0, None);
    let oebin = t.path().join("experiment1/recording1").join(OEBIN);
    fs::write(&oebin, "{\"continuous\": [ {\"folder_name\": ").unwrap();
    let e = OpenEphysRecording::open(t.path()).unwrap_err();
    assert!(matches!(e, OebinError::Json { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&oebin.display().to_string()) && msg.contains("JSON"),
        "{msg}"
    );

    fs::write(
        &oebin,
        r#"{"continuous": [{"folder_name": "x/", "sample_rate": -5, "num_channels": 2}]}"#,
    )
    .unwrap();
    let msg = OpenEphysRecording::open(&oebin).unwrap_err().to_string();
    assert!(msg.contains("sample_rate") && msg.contains(OEBIN), "{msg}");
}

#[test]
fn missing_stream_folder_names_it() {
    let t = synthetic(10, 0, None);
    let rec = t.path().join("experiment1/recording1");
    fs::remove_dir_all(rec.join("continuous/Rhythm-100.Rhythm")).unwrap();
    let e = OpenEphysRecording::open(&rec).unwrap_err();
    assert!(matches!(e, OebinError::MissingStream { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("Rhythm-100.Rhythm") && msg.contains("Rhythm"),
        "{msg}"
    );
    assert!(msg.contains(OEBIN), "{msg}");

    // Folder present, continuous.dat missing.
    let t = synthetic(10, 0, None);
    let rec = t.path().join("experiment1/recording1");
    fs::remove_file(rec.join("continuous/Rhythm-100.Rhythm/continuous.dat")).unwrap();
    let msg = OpenEphysRecording::open(&rec).unwrap_err().to_string();
    assert!(msg.contains("continuous.dat"), "{msg}");
}

#[test]
fn partial_last_sample_is_reported_not_fatal() {
    let t = synthetic(10, 3, None);
    let rec = OpenEphysRecording::open(t.path()).unwrap();
    let s = rec.stream(None).unwrap();
    assert_eq!(s.samples_on_disk().unwrap(), 10);
    assert_eq!(s.sampling_hz_text, "29999.757983");
    assert_eq!(s.sampling_hz, 29999.757983);
    assert_eq!(s.channels[0].uv_per_bit, Some(0.195));
    // Live/crashed: no sample_numbers.npy.
    assert!(!s.finished);
    assert_eq!(s.first_sample, None);
    assert_eq!(s.info("x").first_sample, 0);
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    let w = &rec.warnings[0];
    assert!(
        w.contains("continuous.dat") && w.contains("10 whole samples"),
        "{w}"
    );
}

#[test]
fn sample_numbers_validity_decides_finished() {
    // Valid and consistent.
    let t = synthetic(3, 0, Some(&npy_i64(&[500, 501, 502])));
    let s = OpenEphysRecording::open(t.path())
        .unwrap()
        .streams
        .remove(0);
    assert!(s.finished);
    assert_eq!(s.first_sample, Some(500));
    assert_eq!(s.info("x").first_sample, 500);

    // What the GUI leaves while recording: header with shape (0,) and data after it,
    // or a truncated header, or nothing.
    let mut live = npy_i64(&[]);
    live.extend_from_slice(&[1u8; 24]);
    let full = npy_i64(&[500, 501, 502]);
    let bad_dtype = {
        let mut out = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(
            &ndarray::Array1::from(vec![1.0f64, 2.0, 3.0]),
            &mut out,
        )
        .unwrap();
        out
    };
    let huge_header = {
        let mut v = b"\x93NUMPY\x02\x00".to_vec();
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        v
    };
    for bad in [
        live.as_slice(),
        &full[..60],
        &full[..full.len() - 1],
        b"",
        b"\x93NUMPY",
        &bad_dtype,
        &huge_header,
        &npy_i64(&[]),
    ] {
        let t = synthetic(3, 0, Some(bad));
        let rec = OpenEphysRecording::open(t.path()).unwrap();
        let s = &rec.streams[0];
        assert!(!s.finished, "{bad:?}");
        assert_eq!(s.first_sample, None);
    }
    // Finished but disagreeing with continuous.dat: a warning naming both files.
    let t = synthetic(4, 0, Some(&npy_i64(&[7, 8, 9])));
    let rec = OpenEphysRecording::open(t.path()).unwrap();
    assert!(rec
        .warnings
        .iter()
        .any(|w| w.contains("sample_numbers.npy") && w.contains("4 whole")));
}

#[test]
fn no_panics_on_odd_oebins() {
    let cases = [
        "",
        "null",
        "[]",
        "{}",
        r#"{"continuous": 3}"#,
        r#"{"continuous": []}"#,
        r#"{"continuous": [null]}"#,
        r#"{"continuous": [{}]}"#,
        r#"{"continuous": [{"folder_name": 5}]}"#,
        r#"{"continuous": [{"folder_name": "/"}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": "abc"}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 0}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 1e400}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": -2}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 1e30}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 18446744073709551615}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 2, "channels": 4}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 2, "channels": [1, 2]}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 3, "channels": [{}, {}]}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "channels": [{"bit_volts": []}, {}]}]}"#,
        r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": "30000", "num_channels": 2}]}"#,
        r#"{"continuous": [{"folder_name": "../../../../../../", "sample_rate": 30000, "num_channels": 2}]}"#,
    ];
    for (i, text) in cases.iter().enumerate() {
        let t = synthetic(5, 1, None);
        let oebin = t.path().join("experiment1/recording1").join(OEBIN);
        fs::write(&oebin, text).unwrap();
        match OpenEphysRecording::open(&oebin) {
            Ok(r) => {
                for s in &r.streams {
                    let _ = s.samples_on_disk();
                    let _ = s.info("x").schema();
                }
                let _ = r.stream(None);
            }
            Err(e) => {
                let m = e.to_string();
                eprintln!("case {i}: {m}");
                assert!(
                    m.contains(OEBIN) || m.contains("continuous"),
                    "case {i}: {m}"
                );
            }
        }
    }
    // The string rate is kept as written.
    let t = synthetic(5, 0, None);
    let oebin = t.path().join("experiment1/recording1").join(OEBIN);
    fs::write(&oebin, cases[21]).unwrap();
    let r = OpenEphysRecording::open(&oebin).unwrap();
    assert_eq!(r.streams[0].sampling_hz_text, "30000");

    // Every truncation and many byte flips of a real oebin.
    let good = oebin_text("Rhythm-100.Rhythm", 2).into_bytes();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for cut in 0..good.len() {
        fs::write(&oebin, &good[..cut]).unwrap();
        let _ = OpenEphysRecording::open(&oebin);
    }
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..3 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pos = (seed >> 33) as usize % b.len();
            b[pos] = (seed >> 20) as u8;
        }
        fs::write(&oebin, &b).unwrap();
        let _ = OpenEphysRecording::open(&oebin);
    }
}

#[test]
fn odd_settings_xml_does_not_break_open() {
    let t = synthetic(5, 0, None);
    for text in ["", "<SETTINGS>", "<SETTINGS><PROCESSOR nodeId=\"100\"><NP_PROBE><ELECTRODE_XPOS CH0=\"x\" CH99999999999=\"1\"/></NP_PROBE></PROCESSOR></SETTINGS>"] {
        fs::write(t.path().join("settings.xml"), text).unwrap();
        let r = OpenEphysRecording::open(t.path()).unwrap();
        assert!(r.streams[0].channels.iter().all(|c| c.x_um.is_none()));
    }
}
