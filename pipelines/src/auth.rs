//! Bearer tokens shared by every listener (the daemon's HTTP and Flight listeners, the
//! `arrow_ipc` source): the secret itself, which never shows in logs or errors, where it comes
//! from (`token` or `token_file`), its constant-time check, and the rule that a listener off
//! loopback needs one.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

/// A bearer token. `Debug` prints `Secret(<redacted>)`; nothing else prints it.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Secret(Arc<str>);

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into())
    }
}

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The token itself, for clients (tests) that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the token, in time that does not depend on where they differ
    /// (only on the candidate's length), so that a peer cannot guess it byte by byte.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let want = self.0.as_bytes();
        let mut diff = (want.len() != candidate.len()) as u8;
        for (i, c) in candidate.iter().enumerate() {
            // Compared against itself when out of range, so every byte costs the same.
            let w = want.get(i).copied().unwrap_or(*c);
            diff |= w ^ c;
        }
        std::hint::black_box(diff) == 0
    }

    /// Whether an HTTP or gRPC `authorization` value is `Bearer <token>` (the scheme is
    /// case-insensitive, RFC 6750).
    pub fn matches_bearer(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                self.matches(token.trim_ascii())
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

/// The token of a listener from its `token` or `token_file` option (at most one of them);
/// `what` names the owner in errors (`[daemon]`, `component \`rig\``). Errors name the file
/// and the problem, never the content.
pub fn resolve_token(
    what: &str,
    token: Option<Secret>,
    token_file: Option<&Path>,
) -> Result<Option<Secret>, String> {
    let token = match (token, token_file) {
        (Some(_), Some(_)) => {
            return Err(format!("{what}: set `token` or `token_file`, not both"));
        }
        (Some(t), None) => t,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{what}: token_file {}: cannot read: {e}", path.display()))?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(format!("{what}: token_file {} is empty", path.display()));
            }
            Secret::new(trimmed)
        }
        (None, None) => return Ok(None),
    };
    // It travels in an HTTP header and on one text line: visible ASCII only.
    if token.0.is_empty() || !token.0.bytes().all(|b| b.is_ascii_graphic()) {
        let source = match token_file {
            Some(p) => format!("token_file {}", p.display()),
            None => "token".into(),
        };
        return Err(format!(
            "{what}: {source}: the token must be one word of visible ASCII characters (no spaces)"
        ));
    }
    Ok(Some(token))
}

/// Whether an address only this machine can reach (127.0.0.0/8, ::1, or ::ffff:127.x).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The error for a listener (`what` names its option, `address` its value) reachable from
/// other machines without a token; None when it is loopback, has a token, or is not an address
/// (that has its own error).
pub fn require_token_off_loopback(what: &str, address: &str, has_token: bool) -> Option<String> {
    let addr: SocketAddr = address.parse().ok()?;
    if has_token || is_loopback(&addr) {
        return None;
    }
    Some(format!(
        "{what} = {address:?} is reachable from other machines: set a bearer token \
         (`token` or `token_file`) or listen on 127.0.0.1"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_token() {
        let s = Secret::new("s3cret-token");
        assert!(s.matches(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-tokenX", b"S3cret-token"] {
            assert!(!s.matches(wrong), "{wrong:?}");
        }
        assert!(s.matches_bearer(Some(b"Bearer s3cret-token")));
        assert!(s.matches_bearer(Some(b"bearer s3cret-token")));
        assert!(!s.matches_bearer(Some(b"Basic s3cret-token")));
        assert!(!s.matches_bearer(Some(b"Bearer")));
        assert!(!s.matches_bearer(None));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn token_files_are_read_trimmed_and_checked_without_echoing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        let t = resolve_token("[daemon]", None, Some(&file))
            .unwrap()
            .unwrap();
        assert_eq!(t.expose(), "abc123");

        std::fs::write(&file, " \n").unwrap();
        let e = resolve_token("[daemon]", None, Some(&file)).unwrap_err();
        assert!(e.contains("is empty") && e.contains("token"), "{e}");

        let e = resolve_token("[daemon]", None, Some(&dir.path().join("none"))).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("none"), "{e}");

        std::fs::write(&file, "two words").unwrap();
        let e = resolve_token("[daemon]", None, Some(&file)).unwrap_err();
        assert!(
            !e.contains("two words") && e.contains("visible ASCII"),
            "{e}"
        );

        let e = resolve_token("x", Some(Secret::new("a")), Some(&file)).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        assert!(resolve_token("x", None, None).unwrap().is_none());
    }

    #[test]
    fn only_loopback_listeners_go_without_a_token() {
        let refuse = |a: &str, token: bool| require_token_off_loopback("listen", a, token);
        assert!(refuse("127.0.0.1:1", false).is_none());
        assert!(refuse("[::1]:1", false).is_none());
        assert!(refuse("[::ffff:127.0.0.1]:1", false).is_none());
        assert!(refuse("0.0.0.0:1", true).is_none());
        let e = refuse("0.0.0.0:1", false).unwrap();
        assert!(e.contains("listen") && e.contains("0.0.0.0:1"), "{e}");
        assert!(refuse("[::]:1", false).is_some());
        assert!(refuse("10.1.2.3:1", false).is_some());
    }
}
