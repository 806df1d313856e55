//! The per-bin datagram for closed-loop controllers (`emit_to`): one fixed little-endian record,
//! sent the moment a step is done. Layout (also in the module docs of `teb_decode`, the README
//! and `examples/teb_udp_reader.py`):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | 4 bytes | magic `NTEB` |
//! | 4 | u16 | version (1) |
//! | 6 | u16 | flags: bit 0 state reset before this step, bit 1 first step of a reloaded model |
//! | 8 | u32 | n_targets |
//! | 12 | u32 | model_generation (0: the model loaded at start, +1 per reload) |
//! | 16 | u64 | sequence (per transform, from 0, +1 per record whether or not it was sent) |
//! | 24 | i64 | bin_index (of the predicted bin) |
//! | 32 | f64 | time_s (start of the predicted bin) |
//! | 40 | f32 | rate_nats |
//! | 44 | f32 | rate_bits_per_s |
//! | 48 | f32 × n_targets | predictions, in model.json's target column order |

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

pub const MAGIC: [u8; 4] = *b"NTEB";
pub const VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 48;
/// Flag: the recurrent state was reset before this step (first bin, a gap, a new recording).
pub const FLAG_RESET: u16 = 1;
/// Flag: the first step of a model loaded by a reload.
pub const FLAG_NEW_MODEL: u16 = 2;

/// One record's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub flags: u16,
    pub model_generation: u32,
    pub sequence: u64,
    pub bin_index: i64,
    pub time_s: f64,
    pub rate_nats: f32,
    pub rate_bits_per_s: f32,
    pub predictions: &'a [f32],
}

impl Record<'_> {
    /// The record's bytes, into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.predictions.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.model_generation.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.bin_index.to_le_bytes());
        out.extend_from_slice(&self.time_s.to_le_bytes());
        out.extend_from_slice(&self.rate_nats.to_le_bytes());
        out.extend_from_slice(&self.rate_bits_per_s.to_le_bytes());
        for p in self.predictions {
            out.extend_from_slice(&p.to_le_bytes());
        }
    }
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// `udp://HOST:PORT` or `unix:///path/to/socket`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(rest) = s.strip_prefix("udp://") {
            let addr = rest
                .to_socket_addrs()
                .map_err(|e| format!("`{s}`: {e}"))?
                .next()
                .ok_or_else(|| format!("`{s}`: the host has no address"))?;
            return Ok(Target::Udp(addr));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: a Unix socket needs an absolute path (unix:///run/neurod/decode.sock)"
                ));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        Err(format!("`{s}` is neither udp://HOST:PORT nor unix:///PATH"))
    }
}

enum Socket {
    /// Connected: a refused datagram (no listener) shows as an error on a later send.
    Udp(UdpSocket),
    /// Unbound, sent to the path each time, so a reader that starts later is found.
    Unix(UnixDatagram, PathBuf),
}

/// Sends records, never blocking: a full socket buffer or a missing reader is an error the
/// caller counts; the stream goes on.
pub struct Sender {
    socket: Socket,
    buf: Vec<u8>,
    sequence: u64,
}

impl Sender {
    pub fn open(target: &Target) -> std::io::Result<Sender> {
        let socket = match target {
            Target::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.connect(addr)?;
                s.set_nonblocking(true)?;
                Socket::Udp(s)
            }
            Target::Unix(path) => {
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                Socket::Unix(s, path.clone())
            }
        };
        Ok(Sender {
            socket,
            buf: Vec::with_capacity(HEADER_BYTES + 64),
            sequence: 0,
        })
    }

    /// Sends `record` (its `sequence` is this sender's, whatever the caller put there).
    pub fn send(&mut self, mut record: Record<'_>) -> std::io::Result<()> {
        record.sequence = self.sequence;
        self.sequence += 1;
        record.encode(&mut self.buf);
        match &self.socket {
            Socket::Udp(s) => s.send(&self.buf).map(drop),
            Socket::Unix(s, path) => s.send_to(&self.buf, path).map(drop),
        }
    }
}
