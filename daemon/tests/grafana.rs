//! The Grafana dashboard (`deploy/grafana/dashboards/neurod.json`) draws only metrics a running
//! daemon exports: every `neurod_*` and `process_*` name in its queries appears in `/metrics` of
//! the main job with a TEB decoder added and one malformed Arrow IPC connection (so that errors
//! have a series).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{free_port, rig_model, wait_for, Daemon};

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

fn dashboard_metrics() -> BTreeSet<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards/neurod.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            names.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    names
}

#[test]
fn every_metric_of_the_grafana_dashboard_is_exported_by_a_running_daemon() {
    let wanted = dashboard_metrics();
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
    // One malformed stream: an error with its series.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", ipc_port)).unwrap();
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
}
