use std::net::SocketAddr;

use super::properties::{arrival_does_not_matter, encode};
use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a test address")
}

fn inet(source: &str, destination: &str) -> Option<Addresses> {
    Some(Addresses::Inet {
        source: addr(source),
        destination: addr(destination),
    })
}

fn header(version: u8, proxied: bool, addresses: Option<Addresses>, tlvs: Vec<Tlv>) -> Header {
    Header {
        version,
        proxied,
        addresses,
        tlvs,
    }
}

fn tlv(kind: u8, value: &[u8]) -> Tlv {
    Tlv {
        kind,
        value: value.to_vec(),
    }
}

/// `bytes` parses to `expected`, consuming all of it, and every strict prefix asks for
/// more; with application bytes behind it, exactly the header is consumed.
fn parses_to(bytes: &[u8], expected: &Header) {
    assert_eq!(parse(bytes), Ok(Some((expected.clone(), bytes.len()))));
    for k in 0..bytes.len() {
        assert_eq!(parse(&bytes[..k]), Ok(None), "split at {k}");
    }
    let mut followed = bytes.to_vec();
    followed.extend(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(parse(&followed), Ok(Some((expected.clone(), bytes.len()))));
    arrival_does_not_matter(&followed);
}

fn malformed(bytes: &[u8]) -> &'static str {
    match parse(bytes) {
        Err(ProxyError::Malformed(why)) => why,
        other => panic!("{bytes:?} gave {other:?}"),
    }
}

/// A v2 header by hand: `ver_cmd`, `family`, and the block after the length.
fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([ver_cmd, family]);
    out.extend((block.len() as u16).to_be_bytes());
    out.extend(block);
    out
}

const TCP4_BLOCK: [u8; 12] = [10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x01, 0xbb];

#[test]
fn v1_tcp4() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    let expected = header(1, true, inet("192.0.2.1:56324", "198.51.100.2:443"), vec![]);
    parses_to(line, &expected);
}

#[test]
fn v1_tcp6() {
    let line = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
    parses_to(
        line,
        &header(1, true, inet("[2001:db8::1]:65535", "[::1]:0"), vec![]),
    );
}

#[test]
fn v1_longest_line_is_accepted() {
    let line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(line.len(), 104);
    let any = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
    parses_to(line, &header(1, true, inet(any, any), vec![]));
    // The specification's worst case, which its 107-byte bound is made for.
    let line = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(line.len(), V1_MAX);
    parses_to(line, &header(1, true, None, vec![]));
}

#[test]
fn v1_unknown_ignores_the_rest_of_its_line() {
    let expected = header(1, true, None, vec![]);
    parses_to(b"PROXY UNKNOWN\r\n", &expected);
    parses_to(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", &expected);
}

#[test]
fn v1_malformed_lines() {
    for line in [
        &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..], // LF only
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\r\n",  // CR in the line
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",   // trailing space
        b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",   // double space
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",        // a field missing
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",  // a field too many
        b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 443\r\n",  // bad octet
        b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n",   // leading zero
        b"PROXY TCP4 ::1 198.51.100.2 56324 443\r\n",          // v6 under TCP4
        b"PROXY TCP6 192.0.2.1 ::1 56324 443\r\n",             // v4 under TCP6
        b"PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n",          // a zone
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",    // port too large
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",     // port leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +443 443\r\n",     // port sign
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",       // negative port
        b"PROXY TCP4 192.0.2.1 198.51.100.2  443\r\n",         // empty port
        b"PROXY UDP4 192.0.2.1 198.51.100.2 56324 443\r\n",    // no such protocol
        b"PROXY tcp4 192.0.2.1 198.51.100.2 56324 443\r\n",    // case matters
        b"PROXY \r\n",                                         // nothing
        b"PROXY TCP4 192.0.2.1\t198.51.100.2 56324 443\r\n",   // a tab
        b"PROXY UNKNOWN \xff\r\n",                             // not ASCII
    ] {
        malformed(line);
        arrival_does_not_matter(line);
    }
}

#[test]
fn v1_control_bytes_are_refused_before_the_line_ends() {
    assert_eq!(parse(b"PROXY TCP4 1\r"), Ok(None));
    malformed(b"PROXY TCP4 1\r2");
    malformed(b"PROXY TCP4 \x001");
}

#[test]
fn v1_without_crlf_within_107_bytes_is_oversized() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX - 1, b'x');
    assert_eq!(parse(&line), Ok(None));
    line.push(b'x');
    assert_eq!(parse(&line), Err(ProxyError::Oversized(V1_MAX)));
    line.extend(b"\r\n");
    assert!(matches!(parse(&line), Err(ProxyError::Oversized(_))));
    arrival_does_not_matter(&line);
}

#[test]
fn anything_else_first_is_missing() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b" PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n", // leading junk
        b"PROXX",
        b"proxy ",
        b"PROXY\r\n",
        b"\x16\x03\x01\x02\x00", // a TLS ClientHello
        b"\r\n\r\n\0\r\nQUIX\n",
        b"\r\n\r\n\x01",
        b"\0",
    ] {
        assert_eq!(parse(bytes), Err(ProxyError::Missing), "{bytes:?}");
    }
    assert_eq!(parse(b""), Ok(None));
    assert_eq!(parse(b"PROX"), Ok(None));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQU"), Ok(None));
}

#[test]
fn v2_tcp4() {
    let bytes = v2(0x21, 0x11, &TCP4_BLOCK);
    let expected = header(2, true, inet("10.0.0.1:12345", "10.0.0.2:443"), vec![]);
    parses_to(&bytes, &expected);
    assert_eq!(encode(&expected), bytes);
}

#[test]
fn v2_tcp6() {
    let mut block = Vec::new();
    block.extend(
        "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("an address")
            .octets(),
    );
    block.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    block.extend([0x12, 0x34, 0x00, 0x50]);
    let expected = header(2, true, inet("[2001:db8::1]:4660", "[::1]:80"), vec![]);
    parses_to(&v2(0x21, 0x21, &block), &expected);
}

#[test]
fn v2_unix() {
    let mut block = vec![0u8; 216];
    block[..4].copy_from_slice(b"/cli");
    block[108..119].copy_from_slice(b"/run/x.sock");
    let expected = Addresses::Unix {
        source: b"/cli".to_vec(),
        destination: b"/run/x.sock".to_vec(),
    };
    parses_to(
        &v2(0x21, 0x31, &block),
        &header(2, true, Some(expected), vec![]),
    );
}

#[test]
fn v2_local_keeps_the_connections_addresses() {
    // HAProxy's health checks: LOCAL, UNSPEC, nothing else.
    parses_to(&v2(0x20, 0x00, &[]), &header(2, false, None, vec![]));
    // Addresses in a LOCAL header are discarded, as are unknown families' blocks.
    parses_to(
        &v2(0x20, 0x11, &TCP4_BLOCK),
        &header(2, false, None, vec![]),
    );
    parses_to(&v2(0x20, 0x77, &[1, 2, 3]), &header(2, false, None, vec![]));
}

#[test]
fn v2_unspec_keeps_the_connections_addresses() {
    parses_to(&v2(0x21, 0x00, &[]), &header(2, true, None, vec![]));
}

#[test]
fn v2_tlvs_are_kept_in_order_without_padding() {
    let mut block = TCP4_BLOCK.to_vec();
    block.extend([tlv::ALPN, 0, 2]);
    block.extend(b"h2");
    block.extend([tlv::NOOP, 0, 3, 0, 0, 0]);
    block.extend([tlv::AUTHORITY, 0, 11]);
    block.extend(b"example.com");
    block.extend([tlv::UNIQUE_ID, 0, 0]);
    // SSL: client byte, verify word, then a sub-TLV (version "TLSv1.3").
    block.extend([tlv::SSL, 0, 15, 0x01, 0, 0, 0, 0, 0x21, 0, 7]);
    block.extend(b"TLSv1.3");
    let tlvs = vec![
        tlv(tlv::ALPN, b"h2"),
        tlv(tlv::AUTHORITY, b"example.com"),
        tlv(tlv::UNIQUE_ID, b""),
        tlv(tlv::SSL, b"\x01\0\0\0\0\x21\0\x07TLSv1.3"),
    ];
    let expected = header(2, true, inet("10.0.0.1:12345", "10.0.0.2:443"), tlvs);
    parses_to(&v2(0x21, 0x11, &block), &expected);
}

#[test]
fn v2_crc32c_is_checked() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let tlvs = vec![tlv(tlv::AUTHORITY, b"a.example"), tlv(tlv::CRC32C, &[0; 4])];
    let mut bytes = encode(&header(2, true, inet("10.0.0.1:1", "10.0.0.2:2"), tlvs));
    let Ok(Some((parsed, _))) = parse(&bytes) else {
        panic!("a valid checksum is accepted");
    };
    parses_to(&bytes, &parsed);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(malformed(&bytes), "the CRC32C does not match");
    let two = vec![tlv(tlv::CRC32C, &[0; 4]), tlv(tlv::CRC32C, &[0; 4])];
    assert_eq!(
        malformed(&encode(&header(2, true, None, two))),
        "two CRC32C TLVs"
    );
    let short = vec![tlv(tlv::CRC32C, &[0; 3])];
    malformed(&encode(&header(2, true, None, short)));
}

#[test]
fn v2_malformed_headers() {
    let mut cases = vec![
        v2(0x11, 0x11, &TCP4_BLOCK),       // version 1 under the v2 signature
        v2(0x31, 0x11, &TCP4_BLOCK),       // version 3
        v2(0x22, 0x11, &TCP4_BLOCK),       // command 2
        v2(0x2f, 0x11, &TCP4_BLOCK),       // command 15
        v2(0x21, 0x41, &TCP4_BLOCK),       // family 4
        v2(0x21, 0x13, &TCP4_BLOCK),       // protocol 3
        v2(0x21, 0x10, &TCP4_BLOCK),       // INET, UNSPEC protocol
        v2(0x21, 0x12, &TCP4_BLOCK),       // UDP over IPv4 on a stream
        v2(0x21, 0x22, &[0; 36]),          // UDP over IPv6
        v2(0x21, 0x32, &[0; 216]),         // Unix datagram
        v2(0x21, 0x11, &TCP4_BLOCK[..11]), // too short for TCP4
        v2(0x21, 0x21, &TCP4_BLOCK),       // too short for TCP6
        v2(0x21, 0x31, &[0; 215]),         // too short for Unix
    ];
    let mut with = |tail: &[u8]| {
        let mut block = TCP4_BLOCK.to_vec();
        block.extend(tail);
        cases.push(v2(0x21, 0x11, &block));
    };
    with(&[tlv::ALPN]); // a TLV cut short
    with(&[tlv::ALPN, 0]);
    with(&[tlv::ALPN, 0, 3, b'h', b'2']); // overruns the block
    with(&[tlv::ALPN, 0, 2, b'h', b'2', 0]); // junk after the last TLV
    with(&[tlv::SSL, 0, 4, 1, 0, 0, 0]); // SSL shorter than its fixed part
    with(&[tlv::SSL, 0, 7, 1, 0, 0, 0, 0, 0x21, 0]); // its sub-TLV cut short
    with(&[tlv::SSL, 0, 8, 1, 0, 0, 0, 0, 0x21, 0, 9]); // its sub-TLV overruns
    for bytes in cases {
        malformed(&bytes);
        arrival_does_not_matter(&bytes);
    }
}

#[test]
fn v2_too_long_is_refused_from_its_length_alone() {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend([0x21, 0x11]);
    let most = (MAX_HEADER - 16) as u16;
    let mut at_most = bytes.clone();
    at_most.extend(most.to_be_bytes());
    assert_eq!(parse(&at_most), Ok(None));
    bytes.extend((most + 1).to_be_bytes());
    assert_eq!(parse(&bytes), Err(ProxyError::Oversized(MAX_HEADER + 1)));
    bytes[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(parse(&bytes), Err(ProxyError::Oversized(16 + 65535)));
}

#[test]
fn v2_largest_header_is_accepted() {
    let mut block = TCP4_BLOCK.to_vec();
    let fill = MAX_HEADER - 16 - block.len() - 3;
    block.extend([tlv::UNIQUE_ID]);
    block.extend((fill as u16).to_be_bytes());
    block.resize(MAX_HEADER - 16, b'u');
    let bytes = v2(0x21, 0x11, &block);
    assert_eq!(bytes.len(), MAX_HEADER);
    assert!(matches!(parse(&bytes), Ok(Some((_, MAX_HEADER)))));
}

#[test]
fn errors_say_why() {
    assert_eq!(ProxyError::Missing.to_string(), "no PROXY protocol header");
    let text = ProxyError::Malformed("a bad port").to_string();
    assert_eq!(text, "malformed PROXY protocol header: a bad port");
    assert!(ProxyError::Oversized(5000)
        .to_string()
        .contains("5000 bytes"));
}

/// A small deterministic generator, so the property tests need no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn socket_addr(&mut self, v6: bool) -> SocketAddr {
        let port = self.next() as u16;
        if v6 {
            let octets: [u8; 16] = self.bytes(16).try_into().expect("16 bytes");
            SocketAddr::new(std::net::Ipv6Addr::from(octets).into(), port)
        } else {
            let octets: [u8; 4] = self.bytes(4).try_into().expect("4 bytes");
            SocketAddr::new(std::net::Ipv4Addr::from(octets).into(), port)
        }
    }

    fn header(&mut self) -> Header {
        let version = 1 + self.below(2) as u8;
        let proxied = version == 1 || self.below(4) != 0;
        let addresses = match self.below(4) {
            0 => None,
            3 if version == 2 => {
                let len = self.below(20) as usize;
                Some(Addresses::Unix {
                    source: self.bytes(len).into_iter().map(|b| b | 1).collect(),
                    destination: b"/run/hamanet.sock".to_vec(),
                })
            }
            kind => {
                let v6 = kind == 2;
                Some(Addresses::Inet {
                    source: self.socket_addr(v6),
                    destination: self.socket_addr(v6),
                })
            }
        };
        let mut tlvs = Vec::new();
        if version == 2 {
            for _ in 0..self.below(4) {
                let kind =
                    [tlv::ALPN, tlv::AUTHORITY, tlv::UNIQUE_ID, 0xe0][self.below(4) as usize];
                let len = self.below(40) as usize;
                tlvs.push(Tlv {
                    kind,
                    value: self.bytes(len),
                });
            }
            if self.below(3) == 0 {
                tlvs.push(tlv(tlv::CRC32C, &[0; 4]));
            }
        }
        Header {
            version,
            proxied,
            addresses: if proxied { addresses } else { None },
            tlvs,
        }
    }
}

#[test]
fn encoded_headers_round_trip_however_they_arrive() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..300 {
        let header = rng.header();
        let mut bytes = encode(&header);
        let n = bytes.len();
        let Ok(Some((parsed, consumed))) = parse(&bytes) else {
            panic!("{header:?} encoded as {bytes:?} does not parse");
        };
        assert_eq!(consumed, n);
        if !header.tlvs.iter().any(|t| t.kind == tlv::CRC32C) {
            assert_eq!(parsed, header);
        }
        let tail = rng.below(8) as usize;
        bytes.extend(rng.bytes(tail));
        arrival_does_not_matter(&bytes);
    }
}

#[test]
fn mutated_headers_never_panic_and_stay_consistent() {
    let mut rng = Lcg(0xbad5eed);
    for _ in 0..300 {
        let mut bytes = encode(&rng.header());
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[at] = rng.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, rng.next() as u8),
            }
        }
        arrival_does_not_matter(&bytes);
    }
}
