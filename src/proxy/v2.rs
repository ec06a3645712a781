//! Version 2: the 12-byte signature, a version/command byte, a family/protocol byte, a
//! big-endian length of what follows, the addresses, then TLVs up to that length.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{crc32c, tlv, Addresses, Header, ProxyError, Tlv, MAX_HEADER};

/// The fixed part: signature, two bytes of version/command and family/protocol, length.
const FIXED: usize = 16;
/// The address blocks: TCP over IPv4, over IPv6, and two Unix paths of 108 bytes.
const INET4_LEN: usize = 12;
const INET6_LEN: usize = 36;
const UNIX_LEN: usize = 216;
/// `PP2_TYPE_SSL`'s value starts with a client byte and a 32-bit verify result.
const SSL_FIXED: usize = 5;

pub(super) fn parse(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    // The signature matched as far as `input` goes (checked by the caller).
    if input.len() < FIXED {
        return Ok(None);
    }
    let version = input[12] >> 4;
    let command = input[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Malformed(
            "version 2 signature with another version",
        ));
    }
    let proxied = match command {
        0x0 => false,
        0x1 => true,
        _ => return Err(ProxyError::Malformed("an unknown version 2 command")),
    };
    let total = FIXED + usize::from(u16::from_be_bytes([input[14], input[15]]));
    if total > MAX_HEADER {
        return Err(ProxyError::Oversized(total));
    }
    if input.len() < total {
        return Ok(None);
    }
    let header = &input[..total];
    let block = &header[FIXED..];
    // LOCAL: the specification says to discard the whole block, family included, and
    // to use the connection's own addresses; TLVs after a known family's addresses are
    // still read (and checked for shape), what follows an unknown one is skipped.
    let (addresses, tlv_block) = if proxied {
        let (addresses, len) = addresses(input[13], block)?;
        (addresses, Some(&block[len..]))
    } else {
        match address_len_of(input[13]) {
            Some(len) if len <= block.len() => (None, Some(&block[len..])),
            _ => (None, None),
        }
    };
    let tlvs = match tlv_block {
        Some(block) => tlvs(block)?,
        None => Vec::new(),
    };
    check_crc(header, &tlvs)?;
    let header = Header {
        version: 2,
        proxied,
        addresses,
        tlvs: tlvs.into_iter().filter(|t| t.kind != tlv::NOOP).collect(),
    };
    Ok(Some((header, total)))
}

/// The address block's length for family/protocol byte `family`, if it is one of the
/// specification's (datagram ones included, for `LOCAL`'s sake).
fn address_len_of(family: u8) -> Option<usize> {
    match family {
        0x00 => Some(0),
        0x11 | 0x12 => Some(INET4_LEN),
        0x21 | 0x22 => Some(INET6_LEN),
        0x31 | 0x32 => Some(UNIX_LEN),
        _ => None,
    }
}

/// The addresses of a `PROXY` header and the block's length.
fn addresses(family: u8, block: &[u8]) -> Result<(Option<Addresses>, usize), ProxyError> {
    let len = match family {
        0x12 | 0x22 | 0x32 => {
            return Err(ProxyError::Malformed(
                "a datagram (UDP) address on a stream connection",
            ))
        }
        _ => address_len_of(family).ok_or(ProxyError::Malformed(
            "an unknown address family or protocol",
        ))?,
    };
    if block.len() < len {
        return Err(ProxyError::Malformed(
            "the length is too short for the address family",
        ));
    }
    let a = &block[..len];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let addresses = match family {
        0x11 => {
            let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
            Some(Addresses::Inet {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            })
        }
        0x21 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            Some(Addresses::Inet {
                source: SocketAddr::new(ip(0).into(), port(32)),
                destination: SocketAddr::new(ip(16).into(), port(34)),
            })
        }
        0x31 => {
            let path = |half: &[u8]| {
                let end = memchr::memchr(0, half).unwrap_or(half.len());
                half[..end].to_vec()
            };
            Some(Addresses::Unix {
                source: path(&a[..UNIX_LEN / 2]),
                destination: path(&a[UNIX_LEN / 2..]),
            })
        }
        // UNSPEC: the connection's own addresses stand.
        _ => None,
    };
    Ok((addresses, len))
}

/// The TLVs filling `rest`, which must end exactly at its end.
fn tlvs(mut rest: &[u8]) -> Result<Vec<Tlv>, ProxyError> {
    let mut tlvs = Vec::new();
    while !rest.is_empty() {
        let (kind, value, after) = split_tlv(rest)?;
        if kind == tlv::SSL {
            let sub = value
                .get(SSL_FIXED..)
                .ok_or(ProxyError::Malformed("an SSL TLV shorter than 5 bytes"))?;
            let mut sub = sub;
            while !sub.is_empty() {
                sub = split_tlv(sub)?.2;
            }
        }
        tlvs.push(Tlv {
            kind,
            value: value.to_vec(),
        });
        rest = after;
    }
    Ok(tlvs)
}

/// One TLV off the front of `bytes`: its type, its value and what follows.
fn split_tlv(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), ProxyError> {
    let [kind, high, low, ..] = *bytes else {
        return Err(ProxyError::Malformed("a TLV cut short"));
    };
    let end = 3 + usize::from(u16::from_be_bytes([high, low]));
    if bytes.len() < end {
        return Err(ProxyError::Malformed("a TLV overruns its block"));
    }
    Ok((kind, &bytes[3..end], &bytes[end..]))
}

/// Checks a `CRC32C` TLV if there is one: the checksum of the whole header with its own
/// value zeroed.
fn check_crc(header: &[u8], tlvs: &[Tlv]) -> Result<(), ProxyError> {
    let mut crcs = tlvs.iter().filter(|t| t.kind == tlv::CRC32C);
    let Some(crc) = crcs.next() else {
        return Ok(());
    };
    if crcs.next().is_some() {
        return Err(ProxyError::Malformed("two CRC32C TLVs"));
    }
    let Ok(expected) = <[u8; 4]>::try_from(&crc.value[..]) else {
        return Err(ProxyError::Malformed("a CRC32C TLV that is not 4 bytes"));
    };
    // Its value's place in the header: found again by walking, as it was parsed.
    let mut zeroed = header.to_vec();
    let mut at = FIXED + locate_tlvs(header);
    while at < zeroed.len() {
        let (kind, value, _) = split_tlv(&zeroed[at..])?;
        let len = value.len();
        if kind == tlv::CRC32C {
            zeroed[at + 3..at + 3 + len].fill(0);
            break;
        }
        at += 3 + len;
    }
    if crc32c(&zeroed) != u32::from_be_bytes(expected) {
        return Err(ProxyError::Malformed("the CRC32C does not match"));
    }
    Ok(())
}

/// Where the TLVs start in a parsed header's block (the address block's length).
fn locate_tlvs(header: &[u8]) -> usize {
    let block = header.len() - FIXED;
    address_len_of(header[13]).unwrap_or(0).min(block)
}
