//! The listeners' security: bearer token off loopback, request limits, TLS.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{validate_errors, Daemon};

const TOKEN: &str = "lab-7f3e9c2a";

/// A config whose `[daemon]` gets `extra`; `{port}` and `{dir}` are filled by [`start`].
fn config(extra: &str) -> String {
    format!(
        r#"
[daemon]
data_dir = "{{dir}}/data"
{extra}
# A source that waits for clients: the daemon runs until stopped, at no CPU cost.
[sources.rig]
type = "arrow_ipc"
address = "127.0.0.1:0"
[sinks.store]
type = "store"
inputs = ["rig"]
"#
    )
}

/// Runs `config` and waits until `ready(port)`.
fn start(dir: &Path, config: &str, ready: impl Fn(u16) -> bool) -> Daemon {
    let mut d = Daemon::spawn(dir, config, &[]);
    let port = d.port;
    let t = Instant::now();
    while !ready(port) {
        if t.elapsed() > Duration::from_secs(30) || d.child.try_wait().unwrap().is_some() {
            panic!("daemon never got ready; log:\n{}", d.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status code, the head and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(&format!("{h}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).ok()?;
    // A refused body may be cut off by the server's answer.
    let _ = s.write_all(body.as_bytes());
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((code, head.to_ascii_lowercase(), body.to_string()))
}

#[test]
fn a_listener_off_loopback_answers_only_requests_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("neurod.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let extra = format!(
        "listen = \"0.0.0.0:{{port}}\"\ntoken_file = \"{}\"\nmax_request_bytes = 4096",
        token_file.display()
    );
    // Ready once it answers HTTP at all (401 included).
    let answers = |port| request(port, "GET", "/healthz", &[], "").is_some();
    let mut d = start(dir.path(), &config(&extra), answers);
    let right = format!("Authorization: Bearer {TOKEN}");
    let get = |path: &str, headers: &[&str]| request(d.port, "GET", path, headers, "").unwrap();

    // The web view's page and scripts hold no data: served without the token, which the page
    // then asks for; its data is behind the token like everything else.
    for path in [
        "/",
        "/view/assets/view.js",
        "/view/assets/uPlot.iife.min.js",
    ] {
        assert_eq!(get(path, &[]).0, 200, "{path}");
    }
    assert_eq!(get("/view/assets/nothing", &[]).0, 404);
    for path in [
        "/healthz",
        "/metrics",
        "/status",
        "/streams",
        "/nowhere",
        "/view/streams",
        "/view/probe?stream=x",
    ] {
        let refused: [&[&str]; 3] = [
            &[],
            &["Authorization: Bearer wrong"],
            &["Authorization: Basic x"],
        ];
        for headers in refused {
            let (code, head, _) = get(path, headers);
            assert_eq!(code, 401, "{path} {headers:?}");
            assert!(head.contains("www-authenticate: bearer"), "{head}");
        }
    }
    let (code, _, body) = get("/healthz", &[&right]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = get("/metrics", &[&right]);
    assert_eq!(code, 200);
    assert!(body.contains("neurod_component_"), "{body}");

    let sql = |q: &str| request(d.port, "POST", "/sql", &[&right], q).unwrap();
    let (code, _, body) = sql("SELECT 41 + 1 AS answer");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("42"), "{body}");
    let long = format!("SELECT 1 /* {} */", "x".repeat(5000));
    assert_eq!(sql(&long).0, 413);
    let (code, _, _) = request(d.port, "POST", "/sql", &[], "SELECT 1").unwrap();
    assert_eq!(code, 401);

    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    let log = d.log_text();
    assert!(
        !log.contains(TOKEN),
        "the token must never be logged:\n{log}"
    );
}

#[test]
fn validate_refuses_an_open_listener_and_names_a_bad_token_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("neurod.toml");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            config(extra).replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap()
    };
    write("listen = \"0.0.0.0:9750\"");
    let e = validate_errors(&cfg);
    assert!(e.contains("[daemon] listen") && e.contains("token"), "{e}");

    let file = dir.path().join("lab.token");
    std::fs::write(&file, format!("{TOKEN} and more words\n")).unwrap();
    write(&format!(
        "listen = \"0.0.0.0:9750\"\ntoken_file = \"{}\"",
        file.display()
    ));
    let e = validate_errors(&cfg);
    assert!(e.contains("lab.token") && !e.contains(TOKEN), "{e}");

    write(&format!(
        "token = \"{TOKEN} x\"\ntls_cert = \"{}\"",
        file.display()
    ));
    let e = validate_errors(&cfg);
    assert!(
        e.contains("tls_cert and tls_key") && !e.contains(TOKEN),
        "{e}"
    );
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must have {tool}");
        eprintln!("SKIPPED: no {tool}");
    }
    found
}

/// A self-signed certificate for 127.0.0.1 and its key, as `name.crt` and `name.key`.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=neurod-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req failed");
    (cert, key)
}

#[test]
fn tls_serves_https_from_pem_files_and_a_mismatched_key_is_refused() {
    if !(have("openssl") && have("curl")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "a");
    let (_, other_key) = self_signed(dir.path(), "b");

    let cfg = dir.path().join("neurod.toml");
    let tls = |key: &Path| {
        format!(
            "listen = \"127.0.0.1:9750\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        )
    };
    let text = config(&tls(&other_key)).replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let e = validate_errors(&cfg);
    assert!(e.contains("a.crt") && e.contains("b.key"), "{e}");

    let extra = tls(&key).replace("9750", "{port}") + &format!("\ntoken = \"{TOKEN}\"");
    let listens = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
    let d = start(dir.path(), &config(&extra), listens);
    let url = format!("https://127.0.0.1:{}/healthz", d.port);
    let curl = |auth: &str| {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "30",
                "-w",
                "%{http_code}",
                "-H",
                auth,
                &url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&format!("Authorization: Bearer {TOKEN}")), "ok\n200");
    assert!(curl("X-Nothing: 1").ends_with("401"));
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(request(d.port, "GET", "/healthz", &[], "").is_none());
}

/// Flight off loopback, over TLS: pyarrow and ADBC are refused without the token or with a wrong
/// one, and served with it.
#[test]
fn flight_off_loopback_needs_the_token_from_pyarrow_and_adbc() {
    let Some(py) = common::python() else {
        return;
    };
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "flight");
    let extra = format!(
        "listen = \"0.0.0.0:{{port}}\"\nflight_listen = \"0.0.0.0:{{flight_port}}\"\n\
         token = \"{TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let d = start(dir.path(), &config(&extra), |port| {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let flight_up = |p| TcpStream::connect(("127.0.0.1", p)).is_ok();
    common::wait_for(Duration::from_secs(30), "the Flight listener", || {
        flight_up(d.flight_port).then_some(())
    });
    let code = r#"
import sys
import pyarrow.flight as fl
import adbc_driver_flightsql.dbapi as adbc
port, token, cert = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
uri = f"grpc+tls://127.0.0.1:{port}"
client = fl.FlightClient(uri, tls_root_certs=cert.encode())
for header in [None, b"Bearer wrong"]:
    opts = fl.FlightCallOptions(headers=[(b"authorization", header)] if header else [])
    try:
        list(client.list_flights(options=opts))
        sys.exit(f"list_flights with {header!r} was served")
    except fl.FlightUnauthenticatedError:
        print("pyarrow refused", header)
ok = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
print("pyarrow served", len(list(client.list_flights(options=ok))))
tls = {"adbc.flight.sql.client_option.tls_root_certs": cert}
try:
    with adbc.connect(uri, db_kwargs=tls) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        sys.exit("adbc without a token was served")
except adbc.Error as e:
    print("adbc refused:", type(e).__name__)
auth = dict(tls, **{"adbc.flight.sql.authorization_header": f"Bearer {token}"})
with adbc.connect(uri, db_kwargs=auth) as conn, conn.cursor() as cur:
    cur.execute("SELECT 41 + 1 AS answer")
    print("adbc served", cur.fetchall())
"#;
    let out = common::run_python(
        &py,
        code,
        &[&d.flight_port.to_string(), TOKEN, cert.to_str().unwrap()],
    );
    assert_eq!(out.matches("pyarrow refused").count(), 2, "{out}");
    assert!(out.contains("pyarrow served"), "{out}");
    assert!(out.contains("adbc refused"), "{out}");
    assert!(out.contains("adbc served [(42,)]"), "{out}");
    eprintln!("{out}");
    assert!(!d.log_text().contains(TOKEN));
}
