//! Native framing: splitting a byte stream into messages in Rust, so that one Python call
//! can carry every message a wakeup brought.
//!
//! A [`Framer`] says where messages end (a delimiter, a length header, a fixed size); a
//! [`FrameDecoder`] applies it to one session's stream, keeping a partial message between
//! reads. Nothing here buffers without bound: a message longer than the framer's maximum is
//! an error before its bytes are kept, and the session is then closed by the caller.

use std::fmt;

/// How a stream is to be cut into messages: what [`Framer::new`] checks and keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramerSpec {
    /// Messages end with `delimiter`, which is not part of the message unless `keep`.
    Delimiter {
        /// The terminator, at least one byte.
        delimiter: Vec<u8>,
        /// The longest message allowed, delimiter excluded.
        max_length: usize,
        /// Whether messages keep their delimiter.
        keep: bool,
    },
    /// Each message starts with an unsigned length of `header` bytes (1, 2, 4 or 8).
    LengthPrefixed {
        /// Size of the length header in bytes.
        header: usize,
        /// Byte order of the header.
        big_endian: bool,
        /// Whether the length counts the header itself.
        includes_header: bool,
        /// The longest payload allowed, header excluded.
        max_length: usize,
    },
    /// Every message is exactly `size` bytes.
    Fixed {
        /// The message size, at least one byte.
        size: usize,
    },
}

/// Why a stream could not be framed. The session cannot recover: the caller closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A message is (or announces itself as) longer than the framer allows.
    TooLong {
        /// Its length, or at least the bytes seen without its end.
        length: usize,
        /// The limit.
        max_length: usize,
    },
    /// A length header counts the header itself but is smaller than the header.
    BadHeader {
        /// The length the header announced.
        length: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { length, max_length } => write!(
                f,
                "message of at least {length} bytes exceeds max_length {max_length}; \
                 the session is closed"
            ),
            FrameError::BadHeader { length } => write!(
                f,
                "length header says {length} bytes, less than the header itself \
                 (includes_header=True); the session is closed"
            ),
        }
    }
}

/// A checked [`FramerSpec`]: made only by [`Framer::new`], so every framer in use has a
/// non-empty delimiter, a header size it can read and a bounded message length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framer {
    spec: FramerSpec,
}

/// The longest message a framer allows unless told otherwise: a line (`Delimiter`).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// The longest message a framer allows unless told otherwise: a length-prefixed or other
/// binary message.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

impl Framer {
    /// Checks `spec`; the error names the wrong parameter as `hamanet.framing` spells it.
    pub fn new(spec: FramerSpec) -> Result<Framer, String> {
        let positive = |name: &str, value: usize| {
            if value == 0 {
                return Err(format!("{name} must be a positive int, got 0"));
            }
            if value > MAX_MESSAGE {
                return Err(format!(
                    "{name} must be at most {MAX_MESSAGE}, got {value}: {MAX_MESSAGE} bytes \
                     (1 TiB) is the most any framer allows"
                ));
            }
            Ok(())
        };
        match &spec {
            FramerSpec::Delimiter {
                delimiter,
                max_length,
                ..
            } => {
                if delimiter.is_empty() {
                    return Err("delimiter must be non-empty bytes, got b''".into());
                }
                positive("max_length", *max_length)?;
            }
            FramerSpec::LengthPrefixed {
                header, max_length, ..
            } => {
                if ![1, 2, 4, 8].contains(header) {
                    return Err(format!("header_size must be 1, 2, 4 or 8, got {header}"));
                }
                positive("max_length", *max_length)?;
            }
            FramerSpec::Fixed { size } => positive("size", *size)?,
        }
        Ok(Framer { spec })
    }

    /// What this framer was made from.
    pub fn spec(&self) -> &FramerSpec {
        &self.spec
    }

    /// What goes before and after `payload` to send it as one message (a length header,
    /// a delimiter). `Err` names why the payload cannot be one message.
    pub fn envelope(&self, payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        match &self.spec {
            FramerSpec::Delimiter {
                delimiter,
                max_length,
                ..
            } => {
                fits(payload, *max_length)?;
                if memchr::memmem::find(payload, delimiter).is_some() {
                    return Err("payload contains the delimiter".into());
                }
                // The payload's end and the delimiter together must not hold an earlier
                // match (b"a\r" + b"\r\n\r\n" would end the message at b"a").
                let tail = &payload[payload.len().saturating_sub(delimiter.len() - 1)..];
                let junction = [tail, delimiter.as_slice()].concat();
                if memchr::memmem::find(&junction, delimiter) != Some(tail.len()) {
                    return Err("payload ends with the start of the delimiter".into());
                }
                Ok((Vec::new(), delimiter.clone()))
            }
            FramerSpec::LengthPrefixed {
                header,
                big_endian,
                includes_header,
                max_length,
            } => {
                fits(payload, *max_length)?;
                let length =
                    payload.len() as u64 + if *includes_header { *header as u64 } else { 0 };
                if *header < 8 && length >= 1u64 << (8 * header) {
                    return Err(format!(
                        "payload of {} bytes does not fit a {header}-byte length header",
                        payload.len()
                    ));
                }
                let bytes = if *big_endian {
                    length.to_be_bytes()
                } else {
                    length.to_le_bytes()
                };
                let header_bytes = if *big_endian {
                    bytes[8 - header..].to_vec()
                } else {
                    bytes[..*header].to_vec()
                };
                Ok((header_bytes, Vec::new()))
            }
            FramerSpec::Fixed { size } => {
                if payload.len() != *size {
                    return Err(format!(
                        "payload of {} bytes is not the fixed message size {size}",
                        payload.len()
                    ));
                }
                Ok((Vec::new(), Vec::new()))
            }
        }
    }

    /// Finds the first complete message in `data`: `Ok(Some(frame))`, or `Ok(None)` if
    /// more bytes are needed.
    /// For a delimiter, the search starts at `from`: the bytes before it are known to hold
    /// no start of the delimiter, so a message arriving in small pieces is not scanned
    /// from its beginning again for every piece.
    fn next(&self, data: &[u8], from: usize) -> Result<Option<Frame>, FrameError> {
        match &self.spec {
            FramerSpec::Delimiter {
                delimiter,
                max_length,
                keep,
            } => {
                // Only the first max_length + delimiter bytes can hold a valid end.
                let window = data.len().min(max_length + delimiter.len());
                let from = from.min(window);
                match memchr::memmem::find(&data[from..window], delimiter).map(|at| from + at) {
                    Some(at) => {
                        let end = if *keep { at + delimiter.len() } else { at };
                        Ok(Some(Frame {
                            message: 0..end,
                            consumed: at + delimiter.len(),
                        }))
                    }
                    None if data.len() >= max_length + delimiter.len() => {
                        // No delimiter starts within the first max_length + 1 bytes: that
                        // much is known to be message (what follows may be other messages).
                        Err(FrameError::TooLong {
                            length: max_length + 1,
                            max_length: *max_length,
                        })
                    }
                    None => Ok(None),
                }
            }
            FramerSpec::LengthPrefixed {
                header,
                big_endian,
                includes_header,
                max_length,
            } => {
                if data.len() < *header {
                    return Ok(None);
                }
                let mut raw = [0u8; 8];
                let length = if *big_endian {
                    raw[8 - header..].copy_from_slice(&data[..*header]);
                    u64::from_be_bytes(raw)
                } else {
                    raw[..*header].copy_from_slice(&data[..*header]);
                    u64::from_le_bytes(raw)
                };
                let payload = if *includes_header {
                    length
                        .checked_sub(*header as u64)
                        .ok_or(FrameError::BadHeader { length })?
                } else {
                    length
                };
                if payload > *max_length as u64 {
                    let length = usize::try_from(payload).unwrap_or(usize::MAX);
                    return Err(FrameError::TooLong {
                        length,
                        max_length: *max_length,
                    });
                }
                let end = header + payload as usize;
                Ok((data.len() >= end).then_some(Frame {
                    message: *header..end,
                    consumed: end,
                }))
            }
            FramerSpec::Fixed { size } => Ok((data.len() >= *size).then_some(Frame {
                message: 0..*size,
                consumed: *size,
            })),
        }
    }
}

/// Where one message lies at the front of the buffered bytes.
struct Frame {
    /// The message itself (header and delimiter excluded, unless kept).
    message: std::ops::Range<usize>,
    /// The bytes it used up, header and delimiter included.
    consumed: usize,
}

fn fits(payload: &[u8], max_length: usize) -> Result<(), String> {
    if payload.len() > max_length {
        return Err(format!(
            "payload of {} bytes exceeds max_length {max_length}",
            payload.len()
        ));
    }
    Ok(())
}

/// The longest message any framer may allow: far beyond any real protocol, and small
/// enough that no length arithmetic can overflow.
pub const MAX_MESSAGE: usize = 1 << 40;

/// One session's framing state: the framer and the start of a message not yet complete.
#[derive(Debug)]
pub struct FrameDecoder {
    framer: Framer,
    partial: Vec<u8>,
    /// Bytes at the start of `partial` already searched for a delimiter in vain.
    searched: usize,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new(framer: Framer) -> FrameDecoder {
        FrameDecoder {
            framer,
            partial: Vec::new(),
            searched: 0,
        }
    }

    /// Feeds the next bytes of the stream, calling `message` for every message completed,
    /// in order. After an error the decoder must not be fed again.
    pub fn feed(&mut self, data: &[u8], mut message: impl FnMut(&[u8])) -> Result<(), FrameError> {
        if self.partial.is_empty() {
            // The common case: whole messages straight from the read, no copy; only a
            // trailing fragment is kept.
            let consumed = split(&self.framer, data, 0, &mut message)?;
            self.partial.extend_from_slice(&data[consumed..]);
        } else {
            self.partial.extend_from_slice(data);
            match split(&self.framer, &self.partial, self.searched, &mut message) {
                Ok(consumed) => {
                    self.partial.drain(..consumed);
                    if self.partial.is_empty() && self.partial.capacity() > 64 * 1024 {
                        self.partial = Vec::new();
                    }
                }
                Err(err) => {
                    self.partial = Vec::new();
                    return Err(err);
                }
            }
        }
        // What is left holds no whole delimiter; only its last bytes may start one.
        self.searched = match self.framer.spec() {
            FramerSpec::Delimiter { delimiter, .. } => {
                self.partial.len().saturating_sub(delimiter.len() - 1)
            }
            _ => 0,
        };
        Ok(())
    }
}

/// Calls `message` for each complete message at the front of `data`; returns the bytes
/// consumed.
fn split(
    framer: &Framer,
    data: &[u8],
    searched: usize,
    message: &mut impl FnMut(&[u8]),
) -> Result<usize, FrameError> {
    let mut offset = 0;
    let mut from = searched;
    while let Some(frame) = framer.next(&data[offset..], from)? {
        message(&data[offset + frame.message.start..offset + frame.message.end]);
        offset += frame.consumed;
        from = 0;
    }
    Ok(offset)
}

/// What every framer must guarantee, as checks that panic on a violation: the unit tests
/// run them on generated streams, and the fuzz targets (`fuzz/`) on whatever the fuzzer
/// finds.
pub mod properties {
    use super::{FrameDecoder, FrameError, Framer, FramerSpec};

    /// Decodes `stream` fed in pieces cut at `cuts` (clamped, so any offsets do):
    /// the messages up to the first error, and that error.
    pub fn decode_in_pieces(
        framer: &Framer,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut decoder = FrameDecoder::new(framer.clone());
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            let cut = cut.clamp(last, stream.len());
            if let Err(err) = decoder.feed(&stream[last..cut], |m| out.push(m.to_vec())) {
                return (out, Some(err));
            }
            last = cut;
        }
        (out, None)
    }

    /// Any stream, valid or not, cut anywhere, frames as it does in one piece: the same
    /// messages, and the same kind of error (if any) after them. Never a panic, and no
    /// message longer than the framer allows.
    pub fn cuts_do_not_matter(framer: &Framer, stream: &[u8], cuts: &[usize]) {
        let (whole, whole_err) = decode_in_pieces(framer, stream, &[]);
        let (pieces, pieces_err) = decode_in_pieces(framer, stream, cuts);
        assert_eq!(pieces, whole, "{framer:?} cut at {cuts:?}");
        assert_eq!(
            pieces_err.as_ref().map(std::mem::discriminant),
            whole_err.as_ref().map(std::mem::discriminant),
            "{framer:?} cut at {cuts:?}: {pieces_err:?} in pieces, {whole_err:?} whole"
        );
        let limit = match framer.spec() {
            FramerSpec::Delimiter {
                max_length,
                delimiter,
                keep,
            } => max_length + if *keep { delimiter.len() } else { 0 },
            FramerSpec::LengthPrefixed { max_length, .. } => *max_length,
            FramerSpec::Fixed { size } => *size,
        };
        assert!(
            whole.iter().all(|m| m.len() <= limit),
            "{framer:?}: a message over the limit"
        );
    }

    /// The stream of every payload the framer agrees to envelope, each in its envelope,
    /// and the messages decoding it must give (with the delimiter, for `keep`).
    pub fn envelope_all(framer: &Framer, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for payload in payloads {
            let Ok((prefix, suffix)) = framer.envelope(payload) else {
                continue;
            };
            stream.extend_from_slice(&prefix);
            stream.extend_from_slice(payload);
            stream.extend_from_slice(&suffix);
            expected.push(match framer.spec() {
                FramerSpec::Delimiter { keep: true, .. } => [payload.as_slice(), &suffix].concat(),
                _ => payload.clone(),
            });
        }
        (stream, expected)
    }

    /// Every payload the framer agrees to envelope comes back as one message, the same
    /// bytes, however the stream of them is cut.
    pub fn envelopes_round_trip(framer: &Framer, payloads: &[Vec<u8>], cuts: &[usize]) {
        let (stream, expected) = envelope_all(framer, payloads);
        let (decoded, err) = decode_in_pieces(framer, &stream, cuts);
        assert_eq!(err, None, "{framer:?}: enveloped payloads failed to frame");
        assert_eq!(decoded, expected, "{framer:?} cut at {cuts:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::properties::{
        cuts_do_not_matter, decode_in_pieces, envelope_all, envelopes_round_trip,
    };
    use super::*;

    fn checked(spec: FramerSpec) -> Framer {
        Framer::new(spec).expect("a valid framer")
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
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn framers() -> Vec<Framer> {
        let mut framers = vec![
            checked(FramerSpec::Delimiter {
                delimiter: b"\r\n".to_vec(),
                max_length: 300,
                keep: false,
            }),
            checked(FramerSpec::Delimiter {
                delimiter: b"\n".to_vec(),
                max_length: 300,
                keep: true,
            }),
            checked(FramerSpec::Fixed { size: 7 }),
            checked(FramerSpec::Delimiter {
                delimiter: b"\r\n\r\n".to_vec(),
                max_length: 300,
                keep: false,
            }),
            checked(FramerSpec::Delimiter {
                delimiter: b"\r\n\r\n".to_vec(),
                max_length: 300,
                keep: true,
            }),
        ];
        for header in [1, 2, 4, 8] {
            for big_endian in [true, false] {
                for includes_header in [true, false] {
                    framers.push(checked(FramerSpec::LengthPrefixed {
                        header,
                        big_endian,
                        includes_header,
                        max_length: 200,
                    }));
                }
            }
        }
        framers
    }

    fn random_messages(framer: &Framer, rng: &mut Lcg) -> Vec<Vec<u8>> {
        (0..rng.below(40))
            .map(|_| {
                let len = match framer.spec() {
                    FramerSpec::Fixed { size } => *size,
                    _ => rng.below(200),
                };
                // Letters only, so no message contains a delimiter.
                (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
            })
            .collect()
    }

    /// Sorted cut offsets into a stream of `len` bytes.
    fn random_cuts(len: usize, rng: &mut Lcg) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..rng.below(12)).map(|_| rng.below(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    #[test]
    fn any_split_of_a_valid_stream_yields_the_same_messages() {
        let mut rng = Lcg(7);
        for framer in framers() {
            for _ in 0..200 {
                let messages = random_messages(&framer, &mut rng);
                let encoded: usize = messages.iter().map(|m| m.len() + 8).sum();
                let cuts = random_cuts(encoded, &mut rng);
                // Every message here is valid: a framer that refused some would leave
                // nothing to compare, and the round trip would pass vacuously.
                let (_, expected) = envelope_all(&framer, &messages);
                assert_eq!(
                    expected.len(),
                    messages.len(),
                    "{framer:?} refused a message"
                );
                envelopes_round_trip(&framer, &messages, &cuts);
            }
        }
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let framer = checked(FramerSpec::LengthPrefixed {
            header: 2,
            big_endian: true,
            includes_header: false,
            max_length: 100,
        });
        let messages = [b"hello".to_vec(), Vec::new(), b"world!".to_vec()];
        let (stream, enveloped) = envelope_all(&framer, &messages);
        assert_eq!(enveloped, messages, "every message fits the framer");
        let cuts: Vec<usize> = (1..stream.len()).collect();
        let (decoded, err) = decode_in_pieces(&framer, &stream, &cuts);
        assert_eq!(err, None);
        assert_eq!(decoded, [b"hello".to_vec(), Vec::new(), b"world!".to_vec()]);
    }

    #[test]
    fn oversize_messages_are_refused_before_they_are_buffered() {
        let framer = checked(FramerSpec::Delimiter {
            delimiter: b"\n".to_vec(),
            max_length: 10,
            keep: false,
        });
        let mut decoder = FrameDecoder::new(framer);
        let mut out = Vec::new();
        decoder
            .feed(b"ok\n0123456789", |m| out.push(m.to_vec()))
            .expect("still fits");
        assert_eq!(out, [b"ok".to_vec()]);
        let err = decoder.feed(b"A", |_| {}).expect_err("11 bytes, no end");
        assert!(matches!(
            err,
            FrameError::TooLong {
                length: 11,
                max_length: 10
            }
        ));

        // The length reported is the message's, not everything buffered behind it.
        let framer = checked(FramerSpec::Delimiter {
            delimiter: b"\r\n".to_vec(),
            max_length: 5,
            keep: false,
        });
        let err = FrameDecoder::new(framer)
            .feed(b"123456\r\nnext\r\n", |_| {})
            .expect_err("6 bytes > 5");
        assert_eq!(
            err.to_string(),
            "message of at least 6 bytes exceeds max_length 5; the session is closed"
        );

        let framer = checked(FramerSpec::LengthPrefixed {
            header: 4,
            big_endian: true,
            includes_header: false,
            max_length: 1000,
        });
        let err = FrameDecoder::new(framer).feed(&[0xff, 0xff, 0xff, 0xff], |_| {});
        assert!(matches!(
            err,
            Err(FrameError::TooLong {
                length: 4294967295,
                ..
            })
        ));
    }

    #[test]
    fn garbage_frames_the_same_however_it_is_cut() {
        // Bytes drawn mostly from delimiter and small-length bytes, so that garbage holds
        // messages, partial delimiters and plausible headers, not just noise.
        const ALPHABET: &[u8] = b"\r\n\r\nab\x00\x01\x02\x07";
        let mut rng = Lcg(99);
        for framer in framers() {
            for _ in 0..300 {
                let garbage: Vec<u8> = (0..rng.below(600))
                    .map(|_| match rng.below(4) {
                        0 => rng.next() as u8,
                        _ => ALPHABET[rng.below(ALPHABET.len())],
                    })
                    .collect();
                let cuts = random_cuts(garbage.len(), &mut rng);
                cuts_do_not_matter(&framer, &garbage, &cuts);
            }
        }
    }

    #[test]
    fn header_smaller_than_itself_is_a_bad_header() {
        let framer = checked(FramerSpec::LengthPrefixed {
            header: 2,
            big_endian: true,
            includes_header: true,
            max_length: 100,
        });
        let err = FrameDecoder::new(framer).feed(&[0, 1], |_| {});
        assert_eq!(err, Err(FrameError::BadHeader { length: 1 }));
    }

    #[test]
    fn envelope_rejects_what_cannot_be_one_message() {
        let framer = checked(FramerSpec::LengthPrefixed {
            header: 1,
            big_endian: true,
            includes_header: false,
            max_length: 1000,
        });
        assert!(
            framer.envelope(&[0u8; 256]).is_err(),
            "256 does not fit one byte"
        );
        assert_eq!(
            framer.envelope(&[0u8; 255]).expect("fits"),
            (vec![255u8], Vec::new())
        );
        let framer = checked(FramerSpec::Delimiter {
            delimiter: b"\n".to_vec(),
            max_length: 10,
            keep: false,
        });
        assert!(framer.envelope(b"a\nb").is_err());
        assert!(checked(FramerSpec::Fixed { size: 3 })
            .envelope(b"ab")
            .is_err());
        let framer = checked(FramerSpec::Delimiter {
            delimiter: b"\r\n\r\n".to_vec(),
            max_length: 100,
            keep: false,
        });
        assert!(framer.envelope(b"Host: x\r\n").is_err(), "would end early");
        assert!(
            framer.envelope(b"Host: x\r").is_ok(),
            "\\r then the delimiter ends at the end"
        );
        assert!(framer.envelope(b"Host: x\n").is_ok(), "no early match");
    }

    #[test]
    fn new_refuses_what_the_core_cannot_frame() {
        let refused = |spec| Framer::new(spec).expect_err("refused");
        let empty = refused(FramerSpec::Delimiter {
            delimiter: Vec::new(),
            max_length: 10,
            keep: false,
        });
        assert!(empty.starts_with("delimiter must be non-empty"), "{empty}");
        let header = refused(FramerSpec::LengthPrefixed {
            header: 3,
            big_endian: true,
            includes_header: false,
            max_length: 10,
        });
        assert!(
            header.starts_with("header_size must be 1, 2, 4 or 8"),
            "{header}"
        );
        let huge = refused(FramerSpec::LengthPrefixed {
            header: 8,
            big_endian: true,
            includes_header: false,
            max_length: usize::MAX,
        });
        assert!(huge.contains("1 TiB"), "{huge}");
        let zero = refused(FramerSpec::Fixed { size: 0 });
        assert!(zero.starts_with("size must be a positive int"), "{zero}");
    }
}
