//! Fuzzing of every parser of files and text from outside (see `fuzz/mod.rs` for the harness):
//! SpikeGLX `.meta`, Open Ephys `structure.oebin` and `settings.xml`, Suite2p's npy files and
//! pickles, TIFF stacks, TEB model files and the daemon's config. Seeds are the real files of
//! `../shared/data` and files written here by the project's own writers.

mod common;
mod fuzz;

use std::path::{Path, PathBuf};

use fuzz::{alloc_bound, fuzz, Counting, Scope};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Every file under `dir` whose name ends with `suffix` (none without the shared data).
fn real_files(dir: &str, suffix: &str) -> Vec<Vec<u8>> {
    let Some(data) = common::shared_data() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut todo = vec![data.join(dir)];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    found.sort();
    found.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn shared(path: &str) -> Option<PathBuf> {
    common::shared_data().map(|d| d.join(path))
}

#[test]
fn spikeglx_meta() {
    let seeds = real_files("spikeglx-meta", ".meta");
    fuzz(
        "spikeglx_meta",
        seeds,
        Scope::Thread,
        alloc_bound,
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            if let Ok(meta) =
                pipelines::formats::spikeglx::SpikeGlxMeta::parse(&text, "fuzz.ap.meta")
            {
                let _ = meta.info("fuzz");
                let _ = (meta.n_samples(), meta.duration_s(), meta.first_sample());
            }
        },
    );
}

/// Opens the Open Ephys recording folder `recording` (a `structure.oebin` in it) the way the
/// source does, down to each stream's channel map and sample count.
fn open_openephys(recording: &Path) {
    use pipelines::formats::openephys::OpenEphysRecording;
    if let Ok(rec) = OpenEphysRecording::open(recording) {
        for s in &rec.streams {
            let _ = (s.info("fuzz"), s.bytes_per_sample(), s.samples_on_disk());
        }
    }
}

#[test]
fn openephys_structure_oebin() {
    let seeds = real_files("", "structure.oebin");
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("experiment1/recording1");
    std::fs::create_dir_all(&recording).unwrap();
    fuzz(
        "openephys_structure_oebin",
        seeds,
        Scope::Thread,
        alloc_bound,
        |bytes| {
            std::fs::write(recording.join("structure.oebin"), bytes).unwrap();
            open_openephys(&recording);
        },
    );
}

#[test]
fn openephys_settings_xml() {
    // The settings of a Record Node, read for the probes' geometry when its recording opens.
    let node = "openephys-np2-snippets/Record Node 101";
    let (Some(settings), Some(oebin)) = (
        shared(&format!("{node}/settings.xml")),
        shared(&format!("{node}/experiment1/recording1/structure.oebin")),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("experiment1/recording1");
    std::fs::create_dir_all(&recording).unwrap();
    std::fs::copy(oebin, recording.join("structure.oebin")).unwrap();
    let seeds = vec![std::fs::read(settings).unwrap()];
    fuzz(
        "openephys_settings_xml",
        seeds,
        Scope::Thread,
        alloc_bound,
        |bytes| {
            std::fs::write(dir.path().join("settings.xml"), bytes).unwrap();
            open_openephys(&recording);
        },
    );
}

/// A copy of the real Suite2p plane folder in which `file` is replaced by each input; the
/// folder is then read the way the `suite2p` source reads it.
fn suite2p_target(file: &str) {
    let Some(real) = shared("suite2p-fissa") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut others = 0;
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".npy") {
            std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
            others += entry.metadata().unwrap().len() as usize;
        }
    }
    let seeds = vec![std::fs::read(real.join(file)).unwrap()];
    let target = format!("suite2p_{}", file.replace('.', "_"));
    fuzz(
        &target,
        seeds,
        Scope::Thread,
        |n| alloc_bound(n + others),
        |bytes| {
            std::fs::write(dir.path().join(file), bytes).unwrap();
            let _ = pipelines::formats::suite2p::Suite2pPlane::load(dir.path());
        },
    );
}

#[test]
fn suite2p_stat_npy_pickle() {
    suite2p_target("stat.npy");
}

#[test]
fn suite2p_ops_npy_pickle() {
    suite2p_target("ops.npy");
}

#[test]
fn suite2p_f_npy() {
    suite2p_target("F.npy");
}

/// A small TIFF stack written with the `tiff` crate: `pages` pages of `w × h` Int16.
fn small_tiff(w: u32, h: u32, pages: u32) -> Vec<u8> {
    use tiff::encoder::{colortype, TiffEncoder};
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut out).unwrap();
    for p in 0..pages {
        let data: Vec<i16> = (0..w * h).map(|i| (i * 7 + p * 13) as i16 - 300).collect();
        enc.write_image::<colortype::GrayI16>(w, h, &data).unwrap();
    }
    out.into_inner()
}

/// What the TIFF target does with one input, in a file at `path`.
fn read_tiff(path: &Path, bytes: &[u8]) {
    use pipelines::formats::tiff_stack::{scanimage_frame_rate, summarize, TiffPages};
    std::fs::write(path, bytes).unwrap();
    let _ = summarize(path);
    let _ = scanimage_frame_rate(path);
    let mut pages = TiffPages::new(path.to_path_buf(), None);
    let _ = pages.peek_geometry();
    let mut out = Vec::new();
    for _ in 0..16 {
        if pages.read_next(&mut out).is_err() {
            break;
        }
    }
}

/// A compressed page may claim up to 4096 pixel bytes per byte of file (LZW at its best): its
/// pixels are held twice (bytes, then Int16), and the decoder's strip once more.
fn tiff_bound(n: usize) -> i64 {
    alloc_bound(n) + 3 * 4096 * n as i64
}

#[test]
fn tiff_stack() {
    let mut seeds = vec![small_tiff(8, 6, 3), small_tiff(64, 1, 2)];
    // The real movie's first pages (the whole 4 MB file makes each input slow to mutate).
    seeds.extend(
        real_files("twophoton-thunder", ".tif")
            .into_iter()
            .map(|mut t| {
                t.truncate(64 << 10);
                t
            }),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stack.tif");
    fuzz("tiff_stack", seeds, Scope::Thread, tiff_bound, |bytes| {
        read_tiff(&path, bytes)
    });
}

/// Inputs fuzzing found, each of which made a few hundred bytes allocate 128 or 256 MiB.
#[test]
fn tiff_stack_regressions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stack.tif");
    // A page claiming 8192 × 8192 pixels (within the frame limit) in a file of 130 bytes.
    let huge_page = common::tiff_claiming(8192, 8192);
    // The first directory's StripOffsets claiming 10 million values (the crate reserves them
    // before its limits apply).
    let mut many_offsets = common::tiff_claiming(8, 8);
    let count_of_strip_offsets = 8 + 2 + 12 * 5 + 4;
    many_offsets[count_of_strip_offsets..count_of_strip_offsets + 4]
        .copy_from_slice(&10_000_000u32.to_le_bytes());
    for input in [huge_page, many_offsets] {
        fuzz::replay("tiff_stack", &input, Scope::Thread, tiff_bound, |bytes| {
            read_tiff(&path, bytes)
        });
    }
}

/// A saved TEB model folder (`model.json`, `weights.safetensors`) in which `file` is replaced by
/// each input before the daemon's loader reads the folder.
fn teb_model_target(file: &str) {
    use kernels::teb::{Dims, Hidden, TebModel};
    let dims = Dims {
        source: 3,
        target: 2,
        latent: 2,
        hidden: Hidden {
            target_lstm: 4,
            source_lstm: 4,
            source_mlp: 5,
        },
    };
    let dir = tempfile::tempdir().unwrap();
    TebModel::random(dims, 7).save(dir.path()).unwrap();
    let seeds = vec![std::fs::read(dir.path().join(file)).unwrap()];
    let target = format!("teb_{}", file.replace('.', "_"));
    fuzz(&target, seeds, Scope::Thread, alloc_bound, |bytes| {
        std::fs::write(dir.path().join(file), bytes).unwrap();
        let _ = TebModel::load(dir.path());
    });
}

#[test]
fn teb_model_json() {
    teb_model_target("model.json");
}

#[test]
fn teb_weights_safetensors() {
    teb_model_target("weights.safetensors");
}

#[test]
fn daemon_config() {
    use neurod::config::{parse, Overrides};
    let main_job = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml"));
    let seeds = vec![
        main_job.unwrap(),
        br#"
[daemon]
data_dir = "/tmp/neurod-fuzz"
listen = "0.0.0.0:9750"
token = "0123456789abcdef0123456789abcdef"
max_sql_rows = 1000
[sources.rig]
type = "arrow_ipc"
address = "127.0.0.1:9760"
max_connections = 4
[sources.probe]
type = "spikeglx"
path = "/nonexistent/run_g0_t0.imec0.ap.bin"
pace = "max"
[transforms.spikes]
type = "spike_detect"
inputs = ["probe", "rig"]
backend = "cpu"
threshold = 5.0
[sinks.disk]
type = "store"
inputs = ["spikes", "probe"]
rotate_s = 60
buffer_s = 30
zstd_level = 3
"#
        .to_vec(),
    ];
    let overrides = Overrides::default();
    fuzz(
        "daemon_config",
        seeds,
        Scope::Thread,
        alloc_bound,
        |bytes| {
            let _ = parse(&String::from_utf8_lossy(bytes), "fuzz.toml", &overrides);
        },
    );
}
