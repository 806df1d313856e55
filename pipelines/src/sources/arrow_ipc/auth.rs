//! The bearer token of a source with `token` or `token_file`: the client's first bytes are one
//! line `AUTH <token>\n`, then the Arrow IPC stream as usual. A missing or wrong token gets the
//! usual `error: ...` line and the connection closes, counted as `unauthorized`. Without a token
//! (loopback only) nothing is read here and the protocol is the plain IPC stream.

use std::io::BufRead;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::connection::Connection;
use super::{close_with_error, is_timeout, ERROR_LINGER, STAGE};

/// `error_type` of a connection refused for its token.
pub(super) const UNAUTHORIZED: &str = "unauthorized";
/// How long a client has to send its AUTH line.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than any sensible `AUTH <token>` line; a peer sending more is not authenticating.
const MAX_LINE: usize = 1024;
const PREFIX: &[u8] = b"AUTH ";

enum Line {
    Read(Vec<u8>),
    Refused(&'static str),
    Stopped,
}

impl Connection<'_> {
    /// Whether the connection may go on to its IPC stream: always without a token; with one,
    /// only after a correct AUTH line (otherwise it is refused and closed here).
    pub(super) fn authorized(&mut self, stream: &TcpStream) -> bool {
        let Some(token) = self.receiver.shared.token.clone() else {
            return true;
        };
        let why = match self.read_line() {
            Line::Stopped => return false,
            Line::Read(line) => match line.strip_prefix(PREFIX) {
                Some(given) if token.matches(given.trim_ascii()) => return true,
                Some(_) => "wrong token",
                None => "the first line must be `AUTH <token>` (this source requires a token)",
            },
            Line::Refused(why) => why,
        };
        let msg = format!("peer {}: unauthorized: {why}", self.peer);
        self.receiver
            .shared
            .metrics
            .error(UNAUTHORIZED, STAGE, msg.clone());
        tracing::warn!(component = %self.receiver.shared.component_id, peer = %self.peer,
            "refusing an Arrow IPC connection: {msg}");
        close_with_error(stream, &msg, ERROR_LINGER);
        false
    }

    /// One line up to `\n` (excluded), read through the connection's buffer so that the IPC
    /// bytes after it stay there for the stream.
    fn read_line(&mut self) -> Line {
        let deadline = Instant::now() + AUTH_TIMEOUT;
        let mut line = Vec::new();
        loop {
            if self.receiver.shared.stop_requested() {
                return Line::Stopped;
            }
            if Instant::now() > deadline {
                return Line::Refused("no AUTH line within 10 s");
            }
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => return Line::Refused("the connection failed before the AUTH line"),
            };
            if available.is_empty() {
                return Line::Refused("the connection closed before the AUTH line");
            }
            let (take, end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            line.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if line.len() > MAX_LINE {
                return Line::Refused("the AUTH line is too long");
            }
            if end {
                line.pop();
                return Line::Read(line);
            }
        }
    }
}
