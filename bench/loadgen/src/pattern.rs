//! The per-connection byte pattern every echoed byte is checked against.
//!
//! Connection `id` sends byte `off` of its stream as `table[(start(id) + off) % TABLE_LEN]`,
//! where `table` is fixed pseudo-random bytes and `start(id)` a hash of the id. A reordered,
//! repeated or dropped byte shifts the stream against the table, and a byte run from another
//! session lines up with this one's table position only by a 1-in-2^20 accident, so both are
//! caught. Checking is `memcmp` against a slice of the table: the load generator must stay
//! much cheaper than the servers it measures.
//!
//! `--lines` (`Pattern::lines(size)`): every `size`-byte message is a line, its last byte
//! `\n` and no other. The table itself is made so: `\n` at every position `p` with
//! `p % size == size - 1` and nowhere else, and every connection's start is rounded down
//! to a multiple of `size` (`size` a power of two, so it divides the table's length and
//! the alignment survives the wrap). Message boundaries then fall on table lines for every
//! connection, and sending and checking stay one slice and one `memcmp`, as without it.
//! Starts are the same multiplicative hash rounded, so connections still start apart; a
//! byte run from another session now lines up only by a 1-in-2^20/size accident.

const TABLE_BITS: u32 = 20;
const TABLE_LEN: usize = 1 << TABLE_BITS;
const MASK: u64 = (TABLE_LEN as u64) - 1;
/// The longest contiguous slice `slice` hands out; the table repeats its first SPAN bytes
/// after its end so no slice ever wraps.
pub const SPAN: usize = 256 * 1024;

pub struct Pattern {
    table: Vec<u8>,
    /// Connection starts are multiples of this (1, or the line length with `--lines`).
    align: u64,
}

/// Where a stream check failed.
pub struct Mismatch {
    /// Stream offset of the first wrong byte.
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

impl Pattern {
    pub fn new() -> Self {
        Pattern {
            table: Self::table(None),
            align: 1,
        }
    }

    /// The line pattern: every `size`-byte message ends with its only `\n`.
    pub fn lines(size: usize) -> Result<Self, String> {
        if !size.is_power_of_two() || !(2..=TABLE_LEN).contains(&size) {
            return Err(format!(
                "--lines needs a --size that is a power of two from 2 to {TABLE_LEN}, not {size}"
            ));
        }
        Ok(Pattern {
            table: Self::table(Some(size)),
            align: size as u64,
        })
    }

    fn table(line: Option<usize>) -> Vec<u8> {
        let mut table = vec![0u8; TABLE_LEN + SPAN];
        // xorshift64*: fixed seed, so every run and every server sees the same bytes.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in table[..TABLE_LEN].chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        if let Some(size) = line {
            for (i, b) in table[..TABLE_LEN].iter_mut().enumerate() {
                if i % size == size - 1 {
                    *b = b'\n';
                } else if *b == b'\n' {
                    // Flipping the top bit keeps the byte random-looking and never `\n`.
                    *b ^= 0x80;
                }
            }
        }
        table.copy_within(..SPAN, TABLE_LEN);
        table
    }

    /// The table position of connection `id`'s first byte.
    pub fn start(&self, id: u64) -> u64 {
        let hashed =
            (id.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS)) & MASK;
        hashed & !(self.align - 1)
    }

    /// `len` (<= SPAN) bytes of the stream that begins at table position `start`, from
    /// stream offset `off`.
    pub fn slice(&self, start: u64, off: u64, len: usize) -> &[u8] {
        let pos = (start.wrapping_add(off) & MASK) as usize;
        &self.table[pos..pos + len.min(SPAN)]
    }

    /// Checks that `data` is the stream beginning at `start`, from stream offset `off`.
    pub fn verify(&self, start: u64, off: u64, data: &[u8]) -> Result<(), Mismatch> {
        let mut at = off;
        for chunk in data.chunks(SPAN) {
            let want = self.slice(start, at, chunk.len());
            if want != chunk {
                let i = want
                    .iter()
                    .zip(chunk)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Mismatch {
                    offset: at + i as u64,
                    expected: want[i],
                    got: chunk[i],
                });
            }
            at += chunk.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stream_passes_and_neighbours_fail() {
        let p = Pattern::new();
        let a = p.start(1);
        let b = p.start(2);
        let mine: Vec<u8> = p.slice(a, 1000, 64).to_vec();
        assert!(p.verify(a, 1000, &mine).is_ok());
        assert!(p.verify(b, 1000, &mine).is_err());
        assert!(p.verify(a, 1001, &mine).is_err());
    }

    #[test]
    fn wraps_around_the_table() {
        let p = Pattern::new();
        let s = p.start(7);
        let off = (TABLE_LEN as u64) * 3 - 10 - s;
        let data: Vec<u8> = p.slice(s, off, 100).to_vec();
        assert!(p.verify(s, off, &data).is_ok());
        assert_eq!(
            p.slice(s, off + 10, 1)[0],
            p.slice(s, off + 10 + TABLE_LEN as u64, 1)[0]
        );
    }

    #[test]
    fn lines_end_each_message_and_nowhere_else() {
        let size = 64;
        let p = Pattern::lines(size).unwrap();
        for id in 0..100 {
            let s = p.start(id);
            // Across the table's end too.
            for off in [0, 64 * 1000, TABLE_LEN as u64 - s - 128] {
                let line = p.slice(s, off, size * 3);
                for (i, b) in line.iter().enumerate() {
                    assert_eq!(
                        *b == b'\n',
                        i % size == size - 1,
                        "id {id} off {off} byte {i}"
                    );
                }
            }
        }
        assert_ne!(p.start(1), p.start(2));
        assert!(Pattern::lines(100).is_err());
    }
}
