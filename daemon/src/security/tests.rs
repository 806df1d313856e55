use std::time::Duration;

use axum::routing::{get, post};
use tonic::service::Interceptor;

use super::*;

fn options() -> Options<'static> {
    Options {
        max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
        ..Options::default()
    }
}

fn with_token(token: &str) -> Security {
    Security::from_options(Options {
        token: Some(Secret::new(token)),
        ..options()
    })
    .unwrap()
}

#[test]
fn the_interceptor_lets_through_only_the_bearer_token() {
    let call = |s: &Security, header: Option<&str>| {
        let mut request = tonic::Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        s.interceptor().call(request).map_err(|e| e.code())
    };
    let open = Security::from_options(options()).unwrap();
    assert!(call(&open, None).is_ok(), "no token set: every call passes");
    let s = with_token("flight-tok");
    assert_eq!(call(&s, None).err(), Some(tonic::Code::Unauthenticated));
    assert_eq!(
        call(&s, Some("Bearer other")).err(),
        Some(tonic::Code::Unauthenticated)
    );
    assert!(call(&s, Some("Bearer flight-tok")).is_ok());
    assert!(!format!("{s:?}").contains("flight-tok"), "{s:?}");
}

#[test]
fn tls_and_limit_options_are_checked_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let errors = |o: Options| Security::from_options(o).unwrap_err().join("\n");

    let e = errors(Options {
        tls_cert: Some(&garbage),
        ..options()
    });
    assert!(e.contains("both or neither"), "{e}");
    let e = errors(Options {
        tls_cert: Some(&missing),
        tls_key: Some(&garbage),
        ..options()
    });
    assert!(
        e.contains("tls_cert") && e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    let e = errors(Options {
        tls_cert: Some(&garbage),
        tls_key: Some(&garbage),
        ..options()
    });
    assert!(e.contains("garbage.pem: holds no CERTIFICATE"), "{e}");
    let e = errors(Options {
        max_request_bytes: 0,
        max_concurrent_requests: 0,
        ..options()
    });
    assert!(
        e.contains("max_request_bytes") && e.contains("max_concurrent_requests"),
        "{e}"
    );
}

/// Serves `router` behind `security` on a loopback port.
async fn serve(security: &Security, router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = security.protect(router);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One HTTP/1.1 request (blocking I/O on a blocking thread); the status code.
async fn status(addr: std::net::SocketAddr, request: String) -> u16 {
    use std::io::{Read, Write};
    let exchange = move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
    };
    tokio::task::spawn_blocking(exchange).await.unwrap()
}

fn get_request(path: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn http_requests_past_a_limit_are_refused_and_the_rest_served() {
    let security = Security::from_options(Options {
        token: Some(Secret::new("http-tok")),
        max_request_bytes: 1000,
        max_concurrent_requests: 1,
        ..options()
    })
    .unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (r, e) = (release.clone(), entered.clone());
    let router = Router::new()
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/slow",
            get(move || {
                let (e, r) = (e.clone(), r.clone());
                async move {
                    e.notify_one();
                    r.notified().await;
                    "done"
                }
            }),
        );
    let addr = serve(&security, router).await;
    let auth = Some("Bearer http-tok");

    assert_eq!(status(addr, get_request("/slow", None)).await, 401);
    assert_eq!(
        status(addr, get_request("/nowhere", Some("Bearer x"))).await,
        401
    );
    let post = |len: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer http-tok\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{}",
            "a".repeat(len)
        )
    };
    assert_eq!(status(addr, post(1000)).await, 200);
    assert_eq!(status(addr, post(1001)).await, 413);

    // One request holds the only slot: the next one is refused until it ends.
    let slow = tokio::spawn(status(addr, get_request("/slow", auth)));
    entered.notified().await;
    assert_eq!(status(addr, get_request("/nowhere", auth)).await, 503);
    release.notify_one();
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(status(addr, get_request("/nowhere", auth)).await, 404);
}
