//! What the fuzz targets share: reading a framer's parameters, cut offsets and a stream out
//! of the fuzzer's bytes, and checking the framing properties on them
//! (`_hamanet::framing::properties`, which the unit tests check on generated streams).

use _hamanet::framing::{properties, Framer};

/// The fuzzer's bytes, read front to back; past the end every read gives zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        let (&first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        first
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` next bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Checks the framing properties for `framer` on the rest of the input: up to 16 cut
    /// offsets, then the stream itself, which cut at those offsets is also the list of
    /// payloads to envelope.
    pub fn check(mut self, framer: &Framer) {
        let count = self.byte() % 17;
        let cuts: Vec<usize> = (0..count).map(|_| usize::from(self.u16())).collect();
        let stream = self.data;
        properties::cuts_do_not_matter(framer, stream, &cuts);

        let mut sorted = cuts.clone();
        sorted.sort_unstable();
        let mut payloads = Vec::new();
        let mut last = 0;
        for cut in sorted.into_iter().chain(std::iter::once(stream.len())) {
            let cut = cut.clamp(last, stream.len());
            payloads.push(stream[last..cut].to_vec());
            last = cut;
        }
        properties::envelopes_round_trip(framer, &payloads, &cuts);
    }
}
