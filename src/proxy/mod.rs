//! The PROXY protocol header (HAProxy's, versions 1 and 2): what a load balancer sends
//! first on each connection it makes to a backend, to say whom it is connecting for.
//!
//! Pure functions over bytes, no sockets: [`parse`] looks at what has arrived so far and
//! says "need more", "here is a header of n bytes", or why the connection must be dropped.
//! Strict by design: a backend that accepts the header trusts the addresses in it, so
//! anything outside the grammar (junk around a v1 line, a wrong length, a TLV that
//! overruns its block, a bad checksum) is refused rather than guessed at.
//! The reactor's side of it (peeking, the deadline) is in `reactor::proxy_header`.

use std::fmt;
use std::net::SocketAddr;

pub mod properties;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

/// The signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The largest version 2 header accepted, signature and TLVs included. The format allows
/// 16 + 65535 bytes, but what real proxies send (addresses, ALPN, SNI, a unique id of at
/// most 128 bytes, SSL facts) stays well under 1 KiB; a peer announcing more before it
/// is even authenticated by anything is refused rather than waited for, so a pending
/// header never needs more than this much of the socket's receive queue looked at.
pub const MAX_HEADER: usize = 4096;

/// TLV types (`PP2_TYPE_*`) a handler is most likely to want.
pub mod tlv {
    /// The ALPN protocol the client negotiated with the proxy.
    pub const ALPN: u8 = 0x01;
    /// The host name the client asked for (TLS SNI, or the HTTP authority).
    pub const AUTHORITY: u8 = 0x02;
    /// A CRC32C of the whole header (checked by [`super::parse`]).
    pub const CRC32C: u8 = 0x03;
    /// Padding: ignored, and not kept.
    pub const NOOP: u8 = 0x04;
    /// An opaque id of the connection (HAProxy's `unique-id`), at most 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// Facts of the client's TLS connection, as sub-TLVs after a client byte and a
    /// verify word.
    pub const SSL: u8 = 0x20;
    /// The network namespace the connection came from.
    pub const NETNS: u8 = 0x30;
}

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// `false` for a version 2 `LOCAL` header: the proxy speaks for itself (a health
    /// check), and the connection's own addresses stand.
    pub proxied: bool,
    /// The client's connection as the proxy saw it; `None` when the header gives none
    /// (`LOCAL`, v1 `UNKNOWN`, v2 `UNSPEC`): the connection's own addresses stand.
    pub addresses: Option<Addresses>,
    /// The version 2 TLVs in the order sent (without `NOOP` padding); empty for v1.
    pub tlvs: Vec<Tlv>,
}

/// The two ends of the client's connection, as the proxy saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// TCP over IPv4 or IPv6.
    Inet {
        /// The client.
        source: SocketAddr,
        /// What the client connected to (the proxy's listening address).
        destination: SocketAddr,
    },
    /// A Unix stream socket (version 2 only): the paths, up to their first NUL.
    Unix {
        /// The client's path (often empty: an unnamed socket).
        source: Vec<u8>,
        /// The path the client connected to.
        destination: Vec<u8>,
    },
}

/// One version 2 TLV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// Its type (see [`tlv`]).
    pub kind: u8,
    /// Its value.
    pub value: Vec<u8>,
}

/// What a session accepted behind a proxy keeps of its header (its peer and local
/// addresses are the header's already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The proxy's own address: the connection's real peer.
    pub proxy: crate::sys::address::Address,
    /// The header's version, 1 or 2.
    pub version: u8,
    /// Its TLVs (version 2).
    pub tlvs: Vec<Tlv>,
}

/// Why a connection's first bytes are not an acceptable PROXY header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes start with neither signature: the peer is not speaking the protocol
    /// (a client connecting directly, past the proxy).
    Missing,
    /// A header, but outside the grammar: what is wrong with it.
    Malformed(&'static str),
    /// A header larger than accepted: its size (a v1 line without CRLF within
    /// [`V1_MAX`] counts as longer than that).
    Oversized(usize),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            ProxyError::Oversized(size) => write!(
                f,
                "oversized PROXY protocol header ({size} bytes or more; at most {V1_MAX} \
                 for version 1, {MAX_HEADER} for version 2)"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the header at the start of `input` (what has arrived so far).
///
/// `Ok(None)`: the bytes are a valid beginning, more must come. `Ok(Some((header, n)))`:
/// the header is the first `n` bytes; what follows is the application's. An error: the
/// connection must be closed (more bytes could not make it valid).
pub fn parse(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    if first == V2_SIGNATURE[0] {
        let n = input.len().min(V2_SIGNATURE.len());
        if input[..n] != V2_SIGNATURE[..n] {
            return Err(ProxyError::Missing);
        }
        v2::parse(input)
    } else if first == v1::PREFIX[0] {
        v1::parse(input)
    } else {
        Err(ProxyError::Missing)
    }
}

/// CRC32C (Castagnoli), as the `PP2_TYPE_CRC32C` TLV carries it. Bitwise: headers are
/// small and checked once per connection, so a table would buy nothing worth its size.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}
