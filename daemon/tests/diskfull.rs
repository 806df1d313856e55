//! A full disk under one store: the daemon says so (log, `disk_full` error counter, `/healthz`
//! degraded), every other stream goes on, the files finished before stay readable, and storing
//! resumes by itself once there is room again. The small disk is a tmpfs the test mounts, so the
//! test needs root (CI runs as root); as another user it says loudly that it did not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{header, wait_for, Daemon};

const FULL_ERRORS: &str =
    r#"neurod_component_errors_total{component_id="small",error_type="disk_full""#;
const SMALL_WRITTEN: &str = r#"neurod_store_written_bytes_total{component_id="small""#;
const BIG_WRITTEN: &str = r#"neurod_store_written_bytes_total{component_id="big""#;
const RIG_SENT: &str = r#"neurod_component_sent_rows_total{component_id="rig""#;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success())
}

/// A tmpfs of `size` at `dir`, unmounted when dropped (a failing test included; lazily, so a
/// daemon still holding files there cannot keep it mounted).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        assert!(
            sh(&format!(
                "mount -t tmpfs -o size={size} tmpfs '{}'",
                dir.display()
            )),
            "mounting a tmpfs at {}",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        assert!(
            sh(&format!(
                "mount -o remount,size={size} '{}'",
                self.0.display()
            )),
            "resizing the tmpfs at {}",
            self.0.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !sh(&format!("umount -l '{}'", self.0.display())) {
            eprintln!("could not unmount the tmpfs at {}", self.0.display());
        }
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// The finished Parquet files of every stream of a store, sorted.
fn parts(store: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = entries(store).iter().flat_map(|d| entries(d)).collect();
    files.retain(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.starts_with("part-") && name.ends_with(".parquet")
    });
    files.sort();
    files
}

/// The rows of a Parquet file, reading every batch (a damaged file panics here).
fn rows(file: &Path) -> usize {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .build()
        .unwrap()
        .map(|b| {
            b.unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .num_rows()
        })
        .sum()
}

fn healthz(d: &Daemon) -> (u16, String) {
    common::http_status(d.port, "/healthz").expect("/healthz answers")
}

#[test]
fn a_full_disk_degrades_one_store_and_storing_resumes_when_space_returns() {
    if !is_root() {
        eprintln!(
            "\n*** SKIPPED diskfull: mounting a tmpfs needs root; run as root to test disk-full behaviour ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let small_dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(small_dir.path(), "40m");
    // The raw AP stream (~23 MB/s) fills 40 MB in seconds; 1 s files so that some are finished
    // before it is full.
    let config = format!(
        r#"{}
[sources.rig]
type = "simulated"
probes = 1
pace = "realtime"
twophoton = false
[sinks.small]
type = "store"
inputs = ["rig"]
path = "{}"
rotate_s = 1
flush_interval_s = 0.2
[sinks.big]
type = "store"
inputs = ["rig"]
flush_interval_s = 0.2
"#,
        header(),
        small_dir.path().join("store").display()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let store = small_dir.path().join("store");

    wait_for(Duration::from_secs(30), "a disk_full error", || {
        (d.metric(FULL_ERRORS).unwrap_or(0.0) > 0.0).then_some(())
    });
    let (code, body) = wait_for(Duration::from_secs(15), "/healthz degraded", || {
        let h = healthz(&d);
        h.1.starts_with("degraded").then_some(h)
    });
    assert_eq!(code, 200, "degraded stays 200");
    assert!(body.contains("small"), "names the store: {body}");
    let status = d.get("/status");
    assert!(status.contains("disk_full"), "/status: {status}");
    assert!(
        d.log_text().contains("No space left on device"),
        "the log names the cause:\n{}",
        d.log_text()
    );
    // Once the failures have spread, what is finished now was written before the disk filled.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<(PathBuf, usize)> = parts(&store)
        .into_iter()
        .map(|p| (p.clone(), rows(&p)))
        .collect();

    // Everything else goes on: the source and the store on the normal disk.
    let (sent, big) = (
        d.metric(RIG_SENT).unwrap_or(0.0),
        d.metric(BIG_WRITTEN).unwrap_or(0.0),
    );
    wait_for(
        Duration::from_secs(20),
        "the rig and the other store to go on",
        || {
            (d.metric(RIG_SENT).unwrap_or(0.0) > sent + 30_000.0
                && d.metric(BIG_WRITTEN).unwrap_or(0.0) > big + 10e6)
                .then_some(())
        },
    );
    let (code, body) = healthz(&d);
    assert!(
        code == 200 && body.starts_with("degraded"),
        "still degraded: {code} {body}"
    );

    // Room again: storing resumes without anyone's help.
    let ap = store.join("rig.imec0.ap");
    let newest_before = common::stored_sample_index(&ap)
        .into_iter()
        .max()
        .unwrap_or(-1);
    small.resize("2g");
    let written = d.metric(SMALL_WRITTEN).unwrap_or(0.0);
    wait_for(Duration::from_secs(20), "/healthz ok again", || {
        (healthz(&d) == (200, "ok\n".to_string())).then_some(())
    });
    wait_for(Duration::from_secs(20), "new files in the tmpfs", || {
        (parts(&store).len() > before.len() + 1
            && d.metric(SMALL_WRITTEN).unwrap_or(0.0) > written + 10e6)
            .then_some(())
    });
    for (p, n) in &before {
        assert_eq!(rows(p), *n, "{} changed after the disk filled", p.display());
    }
    d.signal("TERM");
    let exit = d.wait_exit(Duration::from_secs(60));
    assert!(exit.success(), "{exit}:\n{}", d.log_text());
    // What the stop converted counts too: at least a second of AP samples newer than anything
    // stored while the disk was full.
    let idx = common::stored_sample_index(&ap);
    let newest = idx.iter().copied().max().unwrap_or(-1);
    assert!(
        newest > newest_before + 30_000,
        "AP stored up to {newest_before} before space returned, {newest} after"
    );
    eprintln!(
        "{} files ({} rows) finished before the disk filled kept; AP stored up to sample {newest_before} \
         before space returned, {newest} at the stop ({} AP rows in all); {} log lines",
        before.len(),
        before.iter().map(|b| b.1).sum::<usize>(),
        idx.len(),
        d.log_text().lines().count()
    );
    drop(d);
    drop(small);
}
