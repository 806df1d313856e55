//! The Grafana dashboard (`deploy/grafana/dashboards/neurod.json`) draws only metrics a running
//! daemon exports: every `neurod_*` and `process_*` name in its queries appears in `/metrics` of
//! the main job with a TEB decoder added and one malformed Arrow IPC connection (so that errors
//! have a series). Then a real Prometheus (Debian's, which the test command unpacks), configured
//! by `deploy/prometheus-compose.yml` as the compose file runs it, scrapes that daemon, and every
//! panel's query must parse and return series there, as Grafana would ask for them.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_status, rig_model, wait_for, Daemon};

/// The metric names in `expr`: identifiers starting `neurod_` or `process_`, without the
/// histogram suffixes Prometheus adds to one name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("neurod_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// Every panel's queries (Grafana's `targets`), each with its panel's title.
fn dashboard_targets() -> Vec<(String, serde_json::Value)> {
    let path = deploy_file("grafana/dashboards/neurod.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut targets = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            targets.push((title.to_string(), target.clone()));
        }
    }
    targets
}

/// Every panel's PromQL query.
fn dashboard_queries() -> Vec<String> {
    dashboard_targets()
        .iter()
        .map(|(_, target)| target["expr"].as_str().unwrap().to_string())
        .collect()
}

/// What Grafana would otherwise find only when started: the dashboard's datasource is the
/// provisioned one, the provider reads the folder the compose file mounts the dashboards on, and
/// Grafana's datasource is the compose file's Prometheus.
#[test]
fn the_dashboard_provisioning_and_compose_files_agree() {
    let read = |name: &str| std::fs::read_to_string(deploy_file(name)).unwrap();
    let datasources = read("grafana/provisioning/datasources/neurod.yml");
    let providers = read("grafana/provisioning/dashboards/neurod.yml");
    let compose = read("docker-compose.yml");
    let targets = dashboard_targets();
    for (title, target) in &targets {
        let uid = target["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(
            datasources.contains(&format!("uid: {uid}\n")),
            "panel {title:?} queries datasource {uid:?}, which is not provisioned"
        );
    }
    assert!(targets.len() >= 15, "{} queries", targets.len());
    assert!(providers.contains("path: /var/lib/grafana/dashboards\n"));
    assert!(compose.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning"));
    assert!(compose.contains("./prometheus-compose.yml:/etc/prometheus/prometheus.yml"));
    // Host networking: Prometheus's default port on localhost.
    assert!(compose.contains("network_mode: host"));
    assert!(datasources.contains("url: http://localhost:9090\n"));
}

#[test]
fn every_metric_of_the_grafana_dashboard_is_exported_by_a_running_daemon() {
    let queries = dashboard_queries();
    let wanted: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(wanted.len() >= 15, "{wanted:?}");
    let dir = tempfile::tempdir().unwrap();
    let model = rig_model(dir.path());
    let ipc_port = free_port();
    let main_job = common::main_job_config();
    let config = format!(
        "{main_job}
[sources.pushed]
type = \"arrow_ipc\"
address = \"127.0.0.1:{ipc_port}\"

[transforms.features]
type = \"bin_features\"
inputs = [\"rig\", \"spikes\", \"spikes.progress\"]

[transforms.decode]
type = \"teb_decode\"
inputs = [\"features\", \"rig\"]
model = \"{}\"
backend = \"cpu\"

[sinks.decoded]
type = \"store\"
inputs = [\"decode\", \"pushed\"]
",
        model.display()
    );
    let d = Daemon::start(dir.path(), &config);
    // One malformed stream: an error with its series. The source listens once it has started,
    // which may be after the daemon answers HTTP.
    let mut conn = wait_for(Duration::from_secs(10), "the IPC listener", || {
        std::net::TcpStream::connect(("127.0.0.1", ipc_port)).ok()
    });
    conn.write_all(b"this is not Arrow IPC at all").unwrap();
    drop(conn);
    let has = |text: &str, name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' ', '_'])
        })
    };
    // Labels take 20 s of frames; decoding starts once both inputs have bins.
    let text = wait_for(Duration::from_secs(120), "every dashboard metric", || {
        let text = d.get("/metrics");
        wanted.iter().all(|n| has(&text, n)).then_some(text)
    });
    for n in &wanted {
        assert!(has(&text, n), "{n} is not exported");
    }
    eprintln!(
        "{} metrics of the dashboard exported: {wanted:?}",
        wanted.len()
    );

    if let Some(prometheus) = common::external_tool(
        &[
            std::env::var_os("NEUROD_PROMETHEUS").map_or("prometheus".into(), PathBuf::from),
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/neurod/prometheus/usr/bin/prometheus"),
        ],
        "scripts/test.sh unpacks Debian's `prometheus` under ~/.cache/neurod/prometheus",
    ) {
        every_query_returns_series_in_prometheus(&prometheus, dir.path(), d.port, &queries);
    }
}

/// A child process killed on drop (a failed assertion must not leave Prometheus running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `prometheus` with deploy/prometheus-compose.yml pointed at the daemon on `neurod_port`
/// and asks it every query until each returns a series (rates need two scrapes, 5 s apart).
/// A query Prometheus refuses fails at once with its error.
fn every_query_returns_series_in_prometheus(
    prometheus: &Path,
    dir: &Path,
    neurod_port: u16,
    queries: &[String],
) {
    let shipped = std::fs::read_to_string(deploy_file("prometheus-compose.yml")).unwrap();
    let target = "127.0.0.1:9750";
    assert!(shipped.contains(target), "{shipped}");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        shipped.replace(target, &format!("127.0.0.1:{neurod_port}")),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );
    let started = Instant::now();
    let mut empty: Vec<&String> = queries.iter().collect();
    while !empty.is_empty() && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
        empty.retain(|q| !returns_series(port, q, &log));
    }
    assert!(
        empty.is_empty(),
        "queries without a series after 90 s: {empty:?}\nprometheus log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "all {} dashboard queries returned series in {} after {:.0} s",
        queries.len(),
        prometheus.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Whether Prometheus on `port` answers `query` with at least one series; panics on a query it
/// refuses (bad PromQL). False while it is not up yet.
fn returns_series(port: u16, query: &str, log: &Path) -> bool {
    let path = format!("/api/v1/query?query={}", percent_encoded(query));
    // 503 until its storage is open.
    let Some((code, body)) = http_status(port, &path).filter(|(code, _)| *code != 503) else {
        return false;
    };
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(
        code == 200 && answer["status"] == "success",
        "Prometheus refused `{query}` ({code}): {body}\nlog:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    answer["data"]["result"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

/// `text` for a URL's query string: everything but RFC 3986's unreserved characters escaped.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
