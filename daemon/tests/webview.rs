//! The web view in headless Chromium (Debian's package; the test command installs it) against a
//! daemon running the main job: the page loads without script errors, lists the streams, and
//! its probe and frame views draw pixels that change between two screenshots, which are kept
//! under the target directory's `tmp/webview/`. Its updates stay small, and serving them costs
//! the pipeline no drop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, wait_for, Daemon};

fn chromium() -> Option<PathBuf> {
    common::external_tool(
        &["chromium", "chromium-browser", "google-chrome"].map(PathBuf::from),
        "scripts/test.sh installs Debian's `chromium`",
    )
}

/// Runs headless Chromium on `url` with `extra` arguments, killed after a minute.
fn run_chromium(bin: &Path, profile: &Path, url: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1400,1500",
            // Timers run this much page time; pending fetches hold it.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A rectangle of the page, CSS pixels (= screenshot pixels at scale factor 1).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    draws: u64,
}

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

fn read_png(path: &Path) -> Image {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("{}: {other:?} pixels", path.display()),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

/// The pixels of `r` in `img`.
fn crop(img: &Image, r: Rect) -> Vec<[u8; 3]> {
    let (x0, y0) = (r.x.max(0.0) as usize, r.y.max(0.0) as usize);
    let (x1, y1) = (
        ((r.x + r.w) as usize).min(img.width),
        ((r.y + r.h) as usize).min(img.height),
    );
    assert!(
        x1 > x0 && y1 > y0,
        "{r:?} lies outside the {}×{} screenshot",
        img.width,
        img.height
    );
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (y, x)))
        .map(|(y, x)| img.rgb[y * img.width + x])
        .collect()
}

/// The share of pixels that are not the region's most common colour (its background).
fn drawn_share(px: &[[u8; 3]]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for p in px {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    1.0 - background as f64 / px.len() as f64
}

fn changed_share(a: &[[u8; 3]], b: &[[u8; 3]]) -> f64 {
    a.iter().zip(b).filter(|(p, q)| p != q).count() as f64 / a.len() as f64
}

#[test]
fn the_page_draws_the_rig_live_without_errors_in_headless_chromium() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let main_job = common::main_job_config();
    let d = Daemon::start(dir.path(), &main_job);
    let url = format!("http://127.0.0.1:{}/", d.port);
    // The probe and the registered movie have data in the hub.
    wait_for(Duration::from_secs(60), "frames and probe data", || {
        let s = http_get(d.port, "/view/streams")?;
        (s.contains("\"registered_frames\"") && s.contains("\"probe\"")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));

    let profile = dir.path().join("chromium");
    let dom = run_chromium(&chromium, &profile, &url, &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    let console = String::from_utf8_lossy(&dom.stderr).into_owned();
    assert!(
        html.contains("<pre id=\"errors\"></pre>"),
        "the page reports errors:\n{html}"
    );
    assert!(!console.contains("Uncaught"), "{console}");
    for stream in ["rig.imec0.ap", "rig.imec0.ap.spikes", "rig.twophoton@mc"] {
        assert!(
            html.contains(&format!("<td>{stream}</td>")),
            "{stream} is not listed:\n{html}"
        );
    }
    let drawn = html
        .split("<pre id=\"drawn\" hidden=\"\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no drawing noted:\n{html}"));
    let rects: std::collections::HashMap<String, Rect> =
        serde_json::from_str(&drawn.replace("&quot;", "\"")).unwrap();
    let (probe, frame) = (rects["probe"], rects["frame"]);
    assert!(probe.draws >= 2 && frame.draws >= 2, "{rects:?}");

    // Two screenshots a few seconds apart: both views drawn, and drawn anew.
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("webview");
    std::fs::create_dir_all(&shots).unwrap();
    let mut images = Vec::new();
    for name in ["first.png", "second.png"] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        let out = run_chromium(
            &chromium,
            &profile,
            &url,
            &[&format!("--screenshot={}", path.display())],
        );
        assert!(
            path.is_file(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        images.push(read_png(&path));
        std::thread::sleep(Duration::from_secs(3));
    }
    for (name, r) in [("probe", probe), ("frame", frame)] {
        let (a, b) = (crop(&images[0], r), crop(&images[1], r));
        let (drawn_a, drawn_b) = (drawn_share(&a), drawn_share(&b));
        let changed = changed_share(&a, &b);
        eprintln!(
            "{name} view: {:.0} % / {:.0} % drawn, {:.0} % changed",
            100.0 * drawn_a,
            100.0 * drawn_b,
            100.0 * changed
        );
        assert!(drawn_a > 0.05 && drawn_b > 0.05, "{name} view is blank");
        assert!(changed > 0.01, "{name} view did not change");
    }
    eprintln!("screenshots in {}", shots.display());

    // The largest update the page can ask for stays under the stated bound.
    let biggest = http_get(
        d.port,
        "/view/probe?stream=rig.imec0.ap&channels=32&buckets=500&seconds=10",
    )
    .unwrap();
    assert!(
        biggest.len() < 256 << 10,
        "a probe update of {} bytes",
        biggest.len()
    );
    let frame_update = http_get(d.port, "/view/frame?stream=rig.twophoton@mc").unwrap();
    assert!(
        frame_update.len() < 128 << 10,
        "a frame update of {} bytes",
        frame_update.len()
    );

    // Serving the page cost the pipeline nothing.
    let metrics = d.get("/metrics");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("neurod_edge_dropped_rows_total"))
    {
        assert!(line.ends_with(" 0"), "{line}");
    }
}
