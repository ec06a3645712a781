//! What must hold of [`parse`] on any input, shared by the unit tests and the fuzz target
//! (`fuzz/fuzz_targets/proxy_header.rs`), and the encoder they check round trips with.

use std::net::SocketAddr;

use super::{crc32c, parse, tlv, Addresses, Header, MAX_HEADER, V1_MAX, V2_SIGNATURE};

/// The bytes a proxy would send for `header`. A `CRC32C` TLV among its TLVs gets the
/// right checksum. (Version 1 cannot carry Unix addresses: such a header is written
/// as `UNKNOWN`, and [`parse`] never returns one.)
pub fn encode(header: &Header) -> Vec<u8> {
    if header.version == 1 {
        return match &header.addresses {
            Some(Addresses::Inet {
                source,
                destination,
            }) => {
                let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    source.ip(),
                    destination.ip(),
                    source.port(),
                    destination.port()
                )
                .into_bytes()
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        };
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | u8::from(header.proxied));
    let mut block = Vec::new();
    let family = match &header.addresses {
        None => 0x00,
        Some(Addresses::Inet {
            source,
            destination,
        }) => match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                block.extend(s.ip().octets());
                block.extend(d.ip().octets());
                block.extend(s.port().to_be_bytes());
                block.extend(d.port().to_be_bytes());
                0x11
            }
            (s, d) => {
                block.extend(v6_octets(s));
                block.extend(v6_octets(d));
                block.extend(s.port().to_be_bytes());
                block.extend(d.port().to_be_bytes());
                0x21
            }
        },
        Some(Addresses::Unix {
            source,
            destination,
        }) => {
            for path in [source, destination] {
                let mut half = [0u8; 108];
                let n = path.len().min(108);
                half[..n].copy_from_slice(&path[..n]);
                block.extend(half);
            }
            0x31
        }
    };
    out.push(family);
    let mut crc_at = None;
    for t in &header.tlvs {
        if t.kind == tlv::CRC32C && t.value.len() == 4 {
            crc_at = Some(16 + block.len() + 3);
        }
        block.push(t.kind);
        block.extend((t.value.len() as u16).to_be_bytes());
        block.extend(&t.value);
    }
    out.extend((block.len() as u16).to_be_bytes());
    out.extend(block);
    if let Some(at) = crc_at {
        out[at..at + 4].fill(0);
        let crc = crc32c(&out);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    out
}

fn v6_octets(addr: &SocketAddr) -> [u8; 16] {
    match addr {
        SocketAddr::V6(a) => a.ip().octets(),
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
    }
}

/// Any input, however it arrives: a result once reached never changes as more bytes
/// come (a header stays the same header, an error stays an error), a header is never
/// larger than allowed nor than the input, every strict prefix of a header is "need more",
/// and a header read back from its encoding is the same header. Never a panic.
pub fn arrival_does_not_matter(input: &[u8]) {
    let whole = parse(input);
    for k in 0..input.len() {
        match parse(&input[..k]) {
            Ok(None) => {}
            Ok(Some(found)) => assert_eq!(whole, Ok(Some(found)), "prefix {k} of {input:?}"),
            Err(_) => assert!(whole.is_err(), "prefix {k} of {input:?} failed"),
        }
    }
    if let Ok(Some((header, consumed))) = whole {
        assert!(consumed <= input.len() && consumed <= MAX_HEADER);
        if header.version == 1 {
            assert!(consumed <= V1_MAX);
        }
        for k in 0..consumed {
            assert_eq!(parse(&input[..k]), Ok(None), "prefix {k} of a header");
        }
        let encoded = encode(&header);
        // The encoding may differ (no padding, a canonical v1 line), so a checksum in it may
        // too: compared without.
        let again = parse(&encoded).map(|found| found.map(|(h, n)| (without_crc(h), n)));
        assert_eq!(again, Ok(Some((without_crc(header), encoded.len()))));
    }
}

fn without_crc(mut header: Header) -> Header {
    for t in header.tlvs.iter_mut().filter(|t| t.kind == tlv::CRC32C) {
        t.value.fill(0);
    }
    header
}
