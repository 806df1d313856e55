//! The config file, Vector-style: `[daemon]`, `[sources.ID]`, `[transforms.ID]` with `inputs`,
//! `[sinks.ID]` with `inputs`, each component with `type = "..."`.
//!
//! Loading builds every component (which checks its options and files) and checks the graph;
//! it reports every problem at once rather than stopping at the first, so `neurod validate` can
//! list them all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::security::{self, Secret, Security};
use pipelines::component::{BuildContext, PortSpec, Sink, Source, Transform};
use pipelines::registry;
use pipelines::stream::Layout;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9750";
pub const DEFAULT_FLIGHT_LISTEN: &str = "127.0.0.1:9751";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Arrow Flight and Flight SQL.
    #[serde(default = "default_flight_listen")]
    pub flight_listen: String,
    /// Capacity of each component's input queue, in batches.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// `[daemon.sql]`: SQL's limits and the window of recent data the hub keeps for it.
    #[serde(default)]
    pub sql: SqlConfig,
    /// Bearer token of every listener (or `token_file`, the file holding it); required when
    /// a listener is off loopback. See `crate::security`.
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: TLS on the listeners (both or neither).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

fn default_max_request_bytes() -> usize {
    security::DEFAULT_MAX_REQUEST_BYTES
}
fn default_max_concurrent_requests() -> usize {
    security::DEFAULT_MAX_CONCURRENT_REQUESTS
}

impl DaemonConfig {
    /// The token (its file read), TLS files (checked) and limits.
    pub fn security(&self) -> Result<Security, Vec<String>> {
        Security::from_options(security::Options {
            token: self.token.clone(),
            token_file: self.token_file.as_deref(),
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
            max_request_bytes: self.max_request_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
        })
    }

    /// The security options, and no listener reachable from other machines without a token.
    fn check_security(&self, errors: &mut Vec<String>) {
        match self.security() {
            Ok(s) => {
                let listeners = [
                    ("[daemon] listen", &self.listen),
                    ("[daemon] flight_listen", &self.flight_listen),
                ];
                errors.extend(listeners.iter().filter_map(|(w, a)| s.check_listener(w, a)));
            }
            Err(es) => errors.extend(es),
        }
    }
}

/// `[daemon.sql]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Seconds of every stream's latest data kept in memory, so that queries and subscribers
    /// see rows the stores have not flushed yet (longer than any store's `flush_interval_s`).
    pub window_s: f64,
    /// At most this many MiB of it per stream.
    pub window_mb: u64,
    /// Per query: most rows in a result, MiB of operator memory, seconds.
    pub max_rows: usize,
    pub memory_mb: usize,
    pub timeout_s: f64,
}

impl Default for SqlConfig {
    fn default() -> Self {
        let limits = crate::sql::SqlLimits::default();
        let window = pipelines::hub::Retention::default();
        SqlConfig {
            window_s: window.window_s,
            window_mb: window.max_bytes >> 20,
            max_rows: limits.max_rows,
            memory_mb: limits.memory_bytes >> 20,
            timeout_s: limits.timeout.as_secs_f64(),
        }
    }
}

impl SqlConfig {
    pub fn retention(&self) -> pipelines::hub::Retention {
        pipelines::hub::Retention {
            window_s: self.window_s,
            max_bytes: self.window_mb << 20,
        }
    }

    pub fn limits(&self) -> crate::sql::SqlLimits {
        crate::sql::SqlLimits {
            max_rows: self.max_rows,
            memory_bytes: self.memory_mb << 20,
            timeout: std::time::Duration::from_secs_f64(self.timeout_s),
        }
    }

    fn check(&self, errors: &mut Vec<String>) {
        if !(self.window_s.is_finite() && (0.0..=3600.0).contains(&self.window_s)) {
            errors.push(format!(
                "[daemon.sql] window_s = {} must be between 0 and 3600",
                self.window_s
            ));
        }
        if self.window_mb > 1 << 20 {
            errors.push(format!(
                "[daemon.sql] window_mb = {} is too large",
                self.window_mb
            ));
        }
        if self.max_rows == 0 || self.memory_mb == 0 || self.memory_mb > 1 << 20 {
            errors.push(
                "[daemon.sql] max_rows and memory_mb must be positive (memory_mb at most 1048576)"
                    .into(),
            );
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            errors.push(format!(
                "[daemon.sql] timeout_s = {} must be between 0 and 86400",
                self.timeout_s
            ));
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_flight_listen() -> String {
    DEFAULT_FLIGHT_LISTEN.into()
}
const MAX_QUEUE_BATCHES: usize = 65_536;

fn default_queue_batches() -> usize {
    256
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: default_data_dir(),
            listen: default_listen(),
            flight_listen: default_flight_listen(),
            queue_batches: default_queue_batches(),
            sql: SqlConfig::default(),
            token: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            max_request_bytes: default_max_request_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
        }
    }
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub flight_listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Source,
    Transform,
    Sink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        }
    }
}

pub enum Built {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

/// `"id"` (the default port) or `"id.port"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputRef {
    pub component: String,
    pub port: String,
}

impl InputRef {
    fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((c, p)) => InputRef {
                component: c.into(),
                port: p.into(),
            },
            None => InputRef {
                component: s.into(),
                port: String::new(),
            },
        }
    }
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.component)
        } else {
            write!(f, "{}.{}", self.component, self.port)
        }
    }
}

pub struct Component {
    pub id: String,
    pub kind: Kind,
    pub type_name: String,
    pub inputs: Vec<InputRef>,
    /// The options as written (without `type` and `inputs`): a reload restarts a component
    /// only if these, its type or its inputs changed.
    pub options: toml::Table,
    pub built: Built,
}

/// A checked config, ready to run.
pub struct Plan {
    pub daemon: DaemonConfig,
    pub components: Vec<Component>,
}

impl Plan {
    pub fn count(&self, kind: Kind) -> usize {
        self.components.iter().filter(|c| c.kind == kind).count()
    }
}

/// Every problem found, in file order where possible.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "- {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub fn load(path: &Path, overrides: &Overrides) -> Result<Plan, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse(&text, &path.display().to_string(), overrides)
}

pub fn parse(text: &str, name: &str, overrides: &Overrides) -> Result<Plan, ConfigErrors> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("{name}: {e}")]))?;
    let mut errors = Vec::new();

    let mut daemon = DaemonConfig::default();
    let mut sections: BTreeMap<&str, (Kind, toml::Table)> = BTreeMap::new();
    for (key, value) in table {
        match key.as_str() {
            "daemon" => match DaemonConfig::deserialize(value) {
                Ok(d) => daemon = d,
                Err(e) => errors.push(format!("[daemon]: {}", e.message())),
            },
            "sources" | "transforms" | "sinks" => {
                let kind = match key.as_str() {
                    "sources" => Kind::Source,
                    "transforms" => Kind::Transform,
                    _ => Kind::Sink,
                };
                match value {
                    toml::Value::Table(t) => {
                        sections.insert(
                            match kind {
                                Kind::Source => "sources",
                                Kind::Transform => "transforms",
                                Kind::Sink => "sinks",
                            },
                            (kind, t),
                        );
                    }
                    _ => errors.push(format!("`{key}` must be a table of components")),
                }
            }
            other => errors.push(format!(
                "unknown top-level key `{other}` (expected daemon, sources, transforms, sinks)"
            )),
        }
    }
    if let Some(d) = &overrides.data_dir {
        daemon.data_dir = d.clone();
    }
    if let Some(l) = &overrides.listen {
        daemon.listen = l.clone();
    }
    if let Some(l) = &overrides.flight_listen {
        daemon.flight_listen = l.clone();
    }
    for (key, value, example) in [
        ("listen", &daemon.listen, DEFAULT_LISTEN),
        (
            "flight_listen",
            &daemon.flight_listen,
            DEFAULT_FLIGHT_LISTEN,
        ),
    ] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!(
                "[daemon] {key} = {value:?} is not an address like {example}"
            ));
        }
    }
    // The queue is allocated at start: an absurd capacity must be an error, not an abort.
    if !(1..=MAX_QUEUE_BATCHES).contains(&daemon.queue_batches) {
        errors.push(format!(
            "[daemon] queue_batches = {} must be between 1 and {MAX_QUEUE_BATCHES}",
            daemon.queue_batches
        ));
    }
    check_data_dir(&daemon.data_dir, &mut errors);
    daemon.sql.check(&mut errors);
    daemon.check_security(&mut errors);

    // Build components in a stable order: sources, transforms, sinks; ids sorted within each.
    let mut components = Vec::new();
    let mut seen_ids = HashSet::new();
    for section in ["sources", "transforms", "sinks"] {
        let Some((kind, t)) = sections.remove(section) else {
            continue;
        };
        for (id, value) in t {
            let where_ = format!("{} `{id}`", kind.as_str());
            if id.is_empty() || id.contains('.') || id.contains('/') {
                errors.push(format!(
                    "{where_}: ids may not be empty or contain '.' or '/' ('.' selects a port)"
                ));
                continue;
            }
            if !seen_ids.insert(id.clone()) {
                errors.push(format!("{where_}: the id is used by another component"));
                continue;
            }
            let toml::Value::Table(mut options) = value else {
                errors.push(format!("{where_}: must be a table"));
                continue;
            };
            let type_name = match options.remove("type") {
                Some(toml::Value::String(s)) => s,
                Some(_) => {
                    errors.push(format!("{where_}: `type` must be a string"));
                    continue;
                }
                None => {
                    errors.push(format!("{where_}: missing `type`"));
                    continue;
                }
            };
            let inputs = match options.remove("inputs") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => {
                    let mut v = Vec::new();
                    for x in a {
                        match x {
                            toml::Value::String(s) => v.push(InputRef::parse(&s)),
                            other => {
                                errors.push(format!("{where_}: input {other} is not a string"))
                            }
                        }
                    }
                    v
                }
                Some(_) => {
                    errors.push(format!("{where_}: `inputs` must be a list of ids"));
                    Vec::new()
                }
            };
            match kind {
                Kind::Source if !inputs.is_empty() => {
                    errors.push(format!("{where_}: sources take no `inputs`"))
                }
                Kind::Transform | Kind::Sink if inputs.is_empty() => {
                    errors.push(format!("{where_}: `inputs` is missing or empty"))
                }
                _ => {}
            }
            let input_names: Vec<String> = inputs.iter().map(ToString::to_string).collect();
            let ctx = BuildContext {
                id: &id,
                data_dir: &daemon.data_dir,
                inputs: &input_names,
            };
            let written = options.clone();
            let built = match kind {
                Kind::Source => {
                    registry::build_source(&type_name, &ctx, options).map(Built::Source)
                }
                Kind::Transform => {
                    registry::build_transform(&type_name, &ctx, options).map(Built::Transform)
                }
                Kind::Sink => registry::build_sink(&type_name, &ctx, options).map(Built::Sink),
            };
            match built {
                Ok(built) => components.push(Component {
                    id,
                    kind,
                    type_name,
                    inputs,
                    options: written,
                    built,
                }),
                Err(es) => errors.extend(es),
            }
        }
    }
    if components.iter().all(|c| c.kind != Kind::Source) && errors.is_empty() {
        errors.push("the config has no sources".into());
    }
    check_graph(&components, &seen_ids, &mut errors);

    if errors.is_empty() {
        Ok(Plan { daemon, components })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn check_data_dir(dir: &Path, errors: &mut Vec<String>) {
    if dir.exists() {
        if !dir.is_dir() {
            errors.push(format!(
                "[daemon] data_dir {} exists and is not a directory",
                dir.display()
            ));
        }
        return;
    }
    // It will be created: its nearest existing ancestor must be a directory.
    let mut p = dir.parent();
    while let Some(a) = p {
        if a.as_os_str().is_empty() || a.exists() {
            if !a.as_os_str().is_empty() && !a.is_dir() {
                errors.push(format!(
                    "[daemon] data_dir {}: {} is not a directory",
                    dir.display(),
                    a.display()
                ));
            }
            return;
        }
        p = a.parent();
    }
}

fn ports_of(c: &Component) -> Vec<PortSpec> {
    match &c.built {
        Built::Source(s) => s.ports(),
        Built::Transform(t) => t.ports(),
        Built::Sink(_) => Vec::new(),
    }
}

fn accepts_of(c: &Component) -> Vec<Layout> {
    match &c.built {
        Built::Source(_) => Vec::new(),
        Built::Transform(t) => t.accepts(),
        Built::Sink(s) => s.accepts(),
    }
}

/// Inputs that name nothing, ports that don't exist, sinks used as inputs, layout mismatches
/// and cycles. `all_ids` includes components that failed to build, so their consumers don't
/// get a second, misleading "names nothing" error.
fn check_graph(components: &[Component], all_ids: &HashSet<String>, errors: &mut Vec<String>) {
    let by_id: HashMap<&str, &Component> = components.iter().map(|c| (c.id.as_str(), c)).collect();
    for c in components {
        let accepts = accepts_of(c);
        for input in &c.inputs {
            let Some(producer) = by_id.get(input.component.as_str()) else {
                if !all_ids.contains(&input.component) {
                    errors.push(format!(
                        "{} `{}`: input `{input}` names no component",
                        c.kind.as_str(),
                        c.id
                    ));
                }
                continue;
            };
            if producer.kind == Kind::Sink {
                errors.push(format!(
                    "{} `{}`: input `{input}` is a sink, which has no output",
                    c.kind.as_str(),
                    c.id
                ));
                continue;
            }
            let ports = ports_of(producer);
            let Some(port) = ports.iter().find(|p| p.name == input.port) else {
                let names: Vec<String> = ports
                    .iter()
                    .map(|p| {
                        if p.name.is_empty() {
                            producer.id.clone()
                        } else {
                            format!("{}.{}", producer.id, p.name)
                        }
                    })
                    .collect();
                errors.push(format!(
                    "{} `{}`: input `{input}`: `{}` has no such output (it has: {})",
                    c.kind.as_str(),
                    c.id,
                    producer.id,
                    names.join(", ")
                ));
                continue;
            };
            if !port.layouts.iter().any(|l| accepts.contains(l)) {
                let fmt =
                    |ls: &[Layout]| ls.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("/");
                errors.push(format!(
                    "{} `{}` (type `{}`) accepts {} streams, but input `{input}` produces {}",
                    c.kind.as_str(),
                    c.id,
                    c.type_name,
                    fmt(&accepts),
                    fmt(&port.layouts)
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(components) {
        errors.push(format!("the inputs form a cycle: {}", cycle.join(" -> ")));
    }
}

fn find_cycle(components: &[Component]) -> Option<Vec<String>> {
    let edges: HashMap<&str, Vec<&str>> = components
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                c.inputs.iter().map(|i| i.component.as_str()).collect(),
            )
        })
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        mark: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cyc: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cyc.push(n.to_string());
                return Some(cyc);
            }
            _ => {}
        }
        mark.insert(n, 1);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            if edges.contains_key(m) {
                if let Some(c) = visit(m, edges, mark, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        mark.insert(n, 2);
        None
    }
    let mut ids: Vec<&str> = edges.keys().copied().collect();
    ids.sort();
    for id in ids {
        let mut stack = Vec::new();
        if let Some(c) = visit(id, &edges, &mut mark, &mut stack) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "test.toml", &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn lists_every_problem_at_once() {
        let e = errors(
            r#"
            bogus = 1
            [daemon]
            listen = "nowhere"
            colour = "red"
            [sources.a]
            type = "teleporter"
            [transforms.t1]
            type = "select_channels"
            inputs = ["t2"]
            kinds = ["ap"]
            [transforms.t2]
            type = "select_channels"
            inputs = ["t1"]
            kinds = ["ap"]
            [sinks.s]
            type = "select_channels"
            inputs = ["ghost"]
            "#,
        );
        let all = e.join("\n");
        for needle in [
            "bogus",
            "colour",
            "teleporter",
            "cycle",
            "unknown type `select_channels`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn inputs_naming_nothing_and_missing_ports_are_reported() {
        let e = errors(
            r#"
            [sources.a]
            type = "simulated"
            [transforms.sel]
            type = "select_channels"
            inputs = ["nobody", "a.nowhere"]
            kinds = ["ap"]
            "#,
        )
        .join("\n");
        assert!(e.contains("`nobody` names no component"), "{e}");
        assert!(e.contains("a.nowhere"), "{e}");
    }

    #[test]
    fn listeners_off_loopback_need_a_token_which_is_never_echoed() {
        let sim = "[sources.a]\ntype = 'simulated'\n";
        let e = errors(&format!("[daemon]\nlisten = '0.0.0.0:9750'\n{sim}")).join("\n");
        assert!(e.contains("[daemon] listen") && e.contains("token"), "{e}");
        let with = format!("[daemon]\nlisten = '0.0.0.0:9750'\ntoken = 'hunter22'\n{sim}");
        let plan = parse(&with, "t", &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{:?}", plan.daemon).contains("hunter22"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("neurod.token");
        let cfg = format!(
            "[daemon]\nlisten = '[::]:9750'\ntoken_file = '{}'\n{sim}",
            file.display()
        );
        let e = errors(&cfg).join("\n");
        assert!(
            e.contains("neurod.token") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&file, "\n").unwrap();
        let e = errors(&cfg).join("\n");
        assert!(e.contains("neurod.token is empty"), "{e}");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let plan = parse(&cfg, "t", &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        let security = plan.daemon.security().unwrap();
        assert_eq!(
            security.token.map(|t| t.expose().to_string()).as_deref(),
            Some("from-a-file")
        );
        assert_eq!(security.max_request_bytes, 16 << 20);
        assert_eq!(security.max_concurrent_requests, 64);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let plan = parse(
            "[daemon]\nlisten = '127.0.0.1:1'\n[sources.a]\ntype = 'simulated'\n",
            "t",
            &Overrides {
                data_dir: Some("/tmp/x".into()),
                listen: Some("127.0.0.1:2".into()),
                flight_listen: Some("127.0.0.1:3".into()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.daemon.listen, "127.0.0.1:2");
        assert_eq!(plan.daemon.flight_listen, "127.0.0.1:3");
        assert_eq!(plan.daemon.data_dir, PathBuf::from("/tmp/x"));
    }
}
