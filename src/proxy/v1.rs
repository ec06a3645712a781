//! Version 1: one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
//! `PROXY UNKNOWN ...\r\n`, at most 107 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Header, ProxyError, V1_MAX};

/// What every version 1 line starts with.
pub(super) const PREFIX: &[u8] = b"PROXY ";

pub(super) fn parse(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let n = input.len().min(PREFIX.len());
    if input[..n] != PREFIX[..n] {
        return Err(ProxyError::Missing);
    }
    let window = &input[..input.len().min(V1_MAX)];
    let Some(newline) = memchr::memchr(b'\n', window) else {
        // A partial line: refuse early what no more bytes could mend.
        let cr_at_end_only = window
            .iter()
            .enumerate()
            .all(|(i, &b)| is_text(b) || (b == b'\r' && i + 1 == window.len()));
        if !cr_at_end_only {
            return Err(ProxyError::Malformed(
                "a version 1 line holds a byte outside printable ASCII",
            ));
        }
        if input.len() >= V1_MAX {
            return Err(ProxyError::Oversized(input.len()));
        }
        return Ok(None);
    };
    if newline == 0 || window[newline - 1] != b'\r' {
        return Err(ProxyError::Malformed("a version 1 line must end with CRLF"));
    }
    let body = window
        .get(PREFIX.len()..newline - 1)
        .ok_or(ProxyError::Malformed("a version 1 line cut short"))?;
    if !body.iter().all(|&b| is_text(b)) {
        return Err(ProxyError::Malformed(
            "a version 1 line holds a byte outside printable ASCII",
        ));
    }
    let consumed = newline + 1;
    // `is_text` admits only ASCII, so this cannot fail.
    let body = std::str::from_utf8(body).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let fields: Vec<&str> = body.split(' ').collect();
    let addresses = match fields[0] {
        // The specification: whatever follows UNKNOWN up to the CRLF is to be ignored.
        "UNKNOWN" => None,
        "TCP4" | "TCP6" => {
            let [proto, src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::Malformed(
                    "a version 1 TCP line has five fields, single-spaced",
                ));
            };
            let v6 = proto == "TCP6";
            Some(Addresses::Inet {
                source: SocketAddr::new(ip(src, v6)?, port(sport)?),
                destination: SocketAddr::new(ip(dst, v6)?, port(dport)?),
            })
        }
        _ => return Err(ProxyError::Malformed("unknown version 1 protocol")),
    };
    let header = Header {
        version: 1,
        proxied: true,
        addresses,
        tlvs: Vec::new(),
    };
    Ok(Some((header, consumed)))
}

/// Printable ASCII and the space: all a version 1 line may hold before its CRLF.
fn is_text(byte: u8) -> bool {
    (0x20..=0x7e).contains(&byte)
}

fn ip(text: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    // The standard parsers are strict: no leading zeros in IPv4, no zone in IPv6.
    if v6 {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::Malformed("a bad TCP6 address"))
    } else {
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::Malformed("a bad TCP4 address"))
    }
}

/// A port in canonical decimal: digits only (no sign), no leading zero, at most 65535.
fn port(text: &str) -> Result<u16, ProxyError> {
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(ProxyError::Malformed("a bad port"));
    }
    text.parse()
        .map_err(|_| ProxyError::Malformed("a port over 65535"))
}
