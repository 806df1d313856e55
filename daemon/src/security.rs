//! Who may talk to the daemon's listeners, and how much: the bearer token, TLS, and the request
//! size and concurrency limits of `[daemon]`, as one [`Security`] value that the HTTP and
//! Flight servers both apply.
//!
//! - Every listener binds to loopback by default; one reachable from other machines refuses to
//!   start without a token ([`Security::check_listener`], run by `neurod validate` and at start).
//! - The token comes from `token` or `token_file` and is a [`Secret`]: never logged, and config
//!   errors name the file, not its content. Clients send `Authorization: Bearer <token>`; the
//!   check is constant-time and runs on every request, loopback included, once a token is set.
//! - TLS is optional: `tls_cert` and `tls_key` name PEM files (both or neither).
//!
//! HTTP: [`Security::protect`] wraps the router (401 with `WWW-Authenticate: Bearer`, 413 over
//! `max_request_bytes`, 503 over `max_concurrent_requests`), and [`Security::rustls_config`]
//! gives axum-server its TLS config.
//!
//! Flight (tonic) uses the same value (`flight::server`):
//!
//! ```ignore
//! let mut server = tonic::transport::Server::builder()
//!     .concurrency_limit_per_connection(security.max_concurrent_requests);
//! if let Some(tls) = security.tonic_tls()? {
//!     server = server.tls_config(tls)?;
//! }
//! let service = FlightServiceServer::new(flight)
//!     .max_decoding_message_size(security.max_request_bytes);
//! // Every call, DoGet/DoPut streams included, passes the interceptor first.
//! let service = tonic::service::interceptor::InterceptedService::new(service, security.interceptor());
//! server.add_service(service).serve_with_incoming(listener).await?;
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;

pub use pipelines::auth::Secret;

pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
const MAX_REQUEST_BYTES_LIMIT: usize = 1 << 32;
const MAX_CONCURRENT_LIMIT: usize = 65_536;

/// The `[daemon]` options as written, before the token file is read.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    pub token: Option<Secret>,
    pub token_file: Option<&'a Path>,
    pub tls_cert: Option<&'a Path>,
    pub tls_key: Option<&'a Path>,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
}

/// The certificate chain and private key files of TLS (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Security {
    pub token: Option<Secret>,
    pub tls: Option<TlsFiles>,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
}

impl Security {
    /// Reads the token file and checks every option, the TLS files included; every problem
    /// at once.
    pub fn from_options(o: Options) -> Result<Security, Vec<String>> {
        let mut errors = Vec::new();
        let token = pipelines::auth::resolve_token("[daemon]", o.token, o.token_file)
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            });
        let tls = match (o.tls_cert, o.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            _ => {
                errors
                    .push("[daemon] tls_cert and tls_key go together: set both or neither".into());
                None
            }
        };
        if let Some(files) = &tls {
            if let Err(e) = files.server_config() {
                errors.push(e);
            }
        }
        if !(1..=MAX_REQUEST_BYTES_LIMIT).contains(&o.max_request_bytes) {
            errors.push(format!(
                "[daemon] max_request_bytes = {} must be between 1 and {MAX_REQUEST_BYTES_LIMIT}",
                o.max_request_bytes
            ));
        }
        if !(1..=MAX_CONCURRENT_LIMIT).contains(&o.max_concurrent_requests) {
            errors.push(format!(
                "[daemon] max_concurrent_requests = {} must be between 1 and {MAX_CONCURRENT_LIMIT}",
                o.max_concurrent_requests
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Security {
            token,
            tls,
            max_request_bytes: o.max_request_bytes,
            max_concurrent_requests: o.max_concurrent_requests,
        })
    }

    /// The error for a listener (`what` names its option) that other machines can reach
    /// while no token is set.
    pub fn check_listener(&self, what: &str, address: &str) -> Option<String> {
        pipelines::auth::require_token_off_loopback(what, address, self.token.is_some())
    }

    /// The router behind the token check (when a token is set), the body limit and the
    /// concurrency limit.
    pub fn protect(&self, router: Router) -> Router {
        let slots = Arc::new(Semaphore::new(self.max_concurrent_requests));
        let router = router
            .layer(DefaultBodyLimit::max(self.max_request_bytes))
            .layer(from_fn_with_state(slots, limit_concurrency));
        match &self.token {
            // Outermost: a request without the token costs no slot.
            Some(token) => router.layer(from_fn_with_state(token.clone(), require_bearer)),
            None => router,
        }
    }

    /// The HTTP listener's TLS config, when `tls_cert`/`tls_key` are set.
    pub fn rustls_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        let mut config = files.server_config()?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The Flight listener's TLS config, from the same files (checked the same way first).
    pub fn tonic_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        files.server_config()?;
        let cert = read(&files.cert, "tls_cert")?;
        let key = read(&files.key, "tls_key")?;
        let identity = tonic::transport::Identity::from_pem(cert, key);
        Ok(Some(
            tonic::transport::ServerTlsConfig::new().identity(identity),
        ))
    }

    /// The Flight server's per-call token check.
    pub fn interceptor(&self) -> BearerInterceptor {
        BearerInterceptor {
            token: self.token.clone(),
        }
    }
}

/// Installs ring as rustls's process-wide provider (tonic's TLS asks rustls for the default);
/// a second call, or a provider installed by someone else, changes nothing.
pub fn install_crypto_provider() {
    let _ = ring_provider().install_default();
}

/// ring, the provider the workspace builds (aws-lc-rs would need cmake and a C toolchain);
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which these
/// listeners do not need.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl TlsFiles {
    /// Reads and checks both files: PEM, a certificate chain and a private key that belongs to
    /// its first certificate. Errors name the file and the problem.
    fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        install_crypto_provider();
        let cert_pem = read(&self.cert, "tls_cert")?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&self.cert, "tls_cert", &format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad(&self.cert, "tls_cert", "holds no CERTIFICATE block"));
        }
        let key_pem = read(&self.key, "tls_key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => bad(
                &self.key,
                "tls_key",
                "holds no private key (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            ),
            e => bad(&self.key, "tls_key", &format!("not valid PEM: {e}")),
        })?;
        let provider = Arc::new(ring_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("[daemon] TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "[daemon] tls_cert {} and tls_key {} do not make a usable pair: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })
    }
}

fn read(path: &Path, option: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| bad(path, option, &format!("cannot read: {e}")))
}

fn bad(path: &Path, option: &str, why: &str) -> String {
    format!("[daemon] {option} {}: {why}", path.display())
}

async fn require_bearer(State(token): State<Secret>, request: Request, next: Next) -> Response {
    let given = request.headers().get(header::AUTHORIZATION);
    if token.matches_bearer(given.map(|v| v.as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"neurod\"")],
        "missing or wrong bearer token: send `Authorization: Bearer <token>`\n",
    )
        .into_response()
}

/// At most `max_concurrent_requests` requests in their handlers; more get 503 at once rather
/// than queueing without bound.
async fn limit_concurrency(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent requests (max_concurrent_requests)\n",
        )
            .into_response(),
    }
}

/// Refuses a gRPC call without `authorization: Bearer <token>` metadata when a token is set.
#[derive(Debug, Clone)]
pub struct BearerInterceptor {
    token: Option<Secret>,
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request.metadata().get("authorization");
        if token.matches_bearer(given.map(|v| v.as_bytes())) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong bearer token: send `authorization: Bearer <token>`",
            ))
        }
    }
}

#[cfg(test)]
mod tests;
