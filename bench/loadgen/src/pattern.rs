//! The per-connection byte pattern every echoed byte is checked against.
//!
//! Connection `id` sends byte `off` of its stream as `table[(start(id) + off) % TABLE_LEN]`,
//! where `table` is fixed pseudo-random bytes and `start(id)` a hash of the id. A reordered,
//! repeated or dropped byte shifts the stream against the table, and a byte run from another
//! session lines up with this one's table position only by a 1-in-2^20 accident, so both are
//! caught. Checking is `memcmp` against a slice of the table: the load generator must stay
//! much cheaper than the servers it measures.

const TABLE_BITS: u32 = 20;
const TABLE_LEN: usize = 1 << TABLE_BITS;
const MASK: u64 = (TABLE_LEN as u64) - 1;
/// The longest contiguous slice `slice` hands out; the table repeats its first SPAN bytes
/// after its end so no slice ever wraps.
pub const SPAN: usize = 256 * 1024;

pub struct Pattern {
    table: Vec<u8>,
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
        table.copy_within(..SPAN, TABLE_LEN);
        Pattern { table }
    }

    /// The table position of connection `id`'s first byte.
    pub fn start(id: u64) -> u64 {
        (id.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS)) & MASK
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
        let a = Pattern::start(1);
        let b = Pattern::start(2);
        let mine: Vec<u8> = p.slice(a, 1000, 64).to_vec();
        assert!(p.verify(a, 1000, &mine).is_ok());
        assert!(p.verify(b, 1000, &mine).is_err());
        assert!(p.verify(a, 1001, &mine).is_err());
    }

    #[test]
    fn wraps_around_the_table() {
        let p = Pattern::new();
        let s = Pattern::start(7);
        let off = (TABLE_LEN as u64) * 3 - 10 - s;
        let data: Vec<u8> = p.slice(s, off, 100).to_vec();
        assert!(p.verify(s, off, &data).is_ok());
        assert_eq!(
            p.slice(s, off + 10, 1)[0],
            p.slice(s, off + 10 + TABLE_LEN as u64, 1)[0]
        );
    }
}
