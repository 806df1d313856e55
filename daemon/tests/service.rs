//! The systemd service protocol, seen from the service manager's side: the test binds the
//! `NOTIFY_SOCKET` itself and checks what `neurod run` tells it through startup, watchdog,
//! a refused reload and shutdown.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{wait_for, Daemon};

const CONFIG: &str = r#"
[daemon]
data_dir = "{dir}/data"
listen = "127.0.0.1:{port}"
[sources.rig]
type = "simulated"
twophoton = false
[sinks.store]
type = "store"
inputs = ["rig"]
flush_interval_s = 0.2
"#;

const STORED: &str = r#"neurod_component_received_rows_total{component_id="store""#;

/// Every datagram the daemon sends, in order, read by a thread so that the daemon never waits on
/// a full socket while the test is busy elsewhere.
struct Notifications {
    rx: Receiver<String>,
    watchdog_pings: usize,
}

impl Notifications {
    fn listen(sock: UnixDatagram) -> Notifications {
        let (tx, rx) = mpsc::channel();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send(msg).is_err() {
                        return;
                    }
                } else if tx.send(String::new()).is_err() {
                    // An empty message is a heartbeat that ends the thread once the test is done.
                    return;
                }
            }
        });
        Notifications {
            rx,
            watchdog_pings: 0,
        }
    }

    /// The next message that is not a watchdog ping (pings are counted), or None after `timeout`.
    fn next_state(&mut self, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) if m.is_empty() => {}
                // sd-notify ends each state with a newline.
                Ok(m) if m.trim_end() == "WATCHDOG=1" => self.watchdog_pings += 1,
                Ok(m) => return Some(m),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
            if Instant::now() >= end {
                return None;
            }
        }
    }

    fn expect(&mut self, d: &Daemon, want: &str) -> String {
        let got = self.next_state(Duration::from_secs(30));
        let msg = got.unwrap_or_else(|| {
            panic!(
                "no notification after 30 s, expected {want:?}; log:\n{}",
                d.log_text()
            )
        });
        assert!(
            msg.lines().any(|l| l == want),
            "expected {want:?}, got {msg:?}; log:\n{}",
            d.log_text()
        );
        msg
    }
}

#[test]
fn sd_notify_ready_watchdog_refused_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let mut n = Notifications::listen(UnixDatagram::bind(&sock_path).unwrap());
    let sock = sock_path.display().to_string();
    // WATCHDOG_PID unset: sd-notify's `watchdog_enabled` then accepts WATCHDOG_USEC for any pid.
    let mut d = Daemon::start_with_env(
        dir.path(),
        CONFIG,
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "400000")],
    );

    n.expect(&d, "READY=1");
    let t = Instant::now();
    while n.watchdog_pings < 2 && t.elapsed() < Duration::from_secs(30) {
        if let Some(m) = n.next_state(Duration::from_millis(500)) {
            panic!("unexpected notification {m:?} while waiting for watchdog pings");
        }
    }
    assert!(
        n.watchdog_pings >= 2,
        "{} watchdog pings in 30 s with WATCHDOG_USEC=400000",
        n.watchdog_pings
    );

    let before = wait_for(Duration::from_secs(30), "rows reaching the store", || {
        d.metric(STORED).filter(|v| *v > 0.0)
    });
    std::fs::write(
        dir.path().join("neurod.toml"),
        "[sources.rig]\ntype = \"no_such_type\"\n",
    )
    .unwrap();
    d.signal("HUP");
    let reloading = n.expect(&d, "RELOADING=1");
    // systemd >= 253 (Type=notify-reload) pairs a reload with the time it began.
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    n.expect(&d, "READY=1");
    assert!(
        d.log_text().contains("reload refused"),
        "log:\n{}",
        d.log_text()
    );
    wait_for(
        Duration::from_secs(30),
        "the old topology still storing",
        || d.metric(STORED).filter(|v| *v > before),
    );

    d.signal("TERM");
    n.expect(&d, "STOPPING=1");
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}; log:\n{}", d.log_text());
}
