//! The buffers: a per-session write buffer and the reactor's shared read arena.
//!
//! Both are plain `Vec<u8>`s that keep their capacity between uses, so the steady state
//! allocates nothing per read or per write; both give memory back once they have grown past
//! what an ordinary message needs, so one large transfer does not pin it forever.

/// Capacity a drained write buffer may keep for the next write; more is given back.
/// Generous on purpose: freeing a large buffer on the reactor thread lets glibc trim
/// that thread's heap (`madvise`), and the next large write faults every page back in,
/// which cost more than the message itself in the streaming benchmark. Idle sessions
/// are not affected: a buffer is only allocated by a first write.
const WRITE_KEEP: usize = 1024 * 1024;

/// Bytes a session has asked to send and the kernel has not yet taken.
///
/// One contiguous region, `data[head..]`: a write appends at the end, a send consumes from
/// the front by moving `head`. The consumed prefix is reclaimed when the buffer drains, or
/// when it has become the larger part, so the buffer never holds more than twice its
/// pending bytes. No capacity is allocated until the first write, which keeps idle
/// sessions small.
#[derive(Default, Debug)]
pub struct WriteBuffer {
    data: Vec<u8>,
    head: usize,
}

impl WriteBuffer {
    /// An empty buffer with no allocation.
    pub fn new() -> WriteBuffer {
        WriteBuffer::default()
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.data.len() - self.head
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes to send after everything already buffered.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.head > 0 && self.head >= self.data.len() / 2 {
            self.compact();
        }
        self.data.extend_from_slice(bytes);
    }

    /// The bytes to hand to the kernel next.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.head..]
    }

    /// Marks `n` bytes from the front as sent.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.head += n;
        if self.head == self.data.len() {
            self.clear();
        }
    }

    /// Drops everything, keeping a modest capacity for the next write.
    pub fn clear(&mut self) {
        self.data.clear();
        self.head = 0;
        if self.data.capacity() > WRITE_KEEP {
            self.data = Vec::new();
        }
    }

    fn compact(&mut self) {
        self.data.drain(..self.head);
        self.head = 0;
    }
}

/// One reactor turn's received bytes, for every session, back to back.
///
/// Sessions read straight into the arena, and the batch refers to each session's bytes by
/// range; the arena is rewound (not freed) before the next turn. The backing vector is
/// zeroed once when it grows and then reused, so a read never pays for initialising memory.
#[derive(Default)]
pub struct ReadArena {
    data: Vec<u8>,
    filled: usize,
}

impl ReadArena {
    /// An arena with `capacity` bytes ready.
    pub fn with_capacity(capacity: usize) -> ReadArena {
        ReadArena {
            data: vec![0; capacity],
            filled: 0,
        }
    }

    /// Bytes filled this turn.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether nothing was filled this turn.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Rewinds the arena for the next turn, keeping its memory.
    pub fn reset(&mut self) {
        self.filled = 0;
    }

    /// Lets `fill` write into `want` bytes after what is already filled; `fill` returns how
    /// many bytes it wrote (or an error), and only those become part of the arena.
    pub fn fill_with<E>(
        &mut self,
        want: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let start = self.filled;
        if self.data.len() < start + want {
            self.data.resize(start + want, 0);
        }
        let result = fill(&mut self.data[start..start + want]);
        if let Ok(n) = result {
            self.filled = start + n.min(want);
        }
        result
    }

    /// Takes the memory away (this turn's bytes with it) and leaves the arena empty; it
    /// grows again as reads need.
    pub fn take_memory(&mut self) -> Vec<u8> {
        self.filled = 0;
        std::mem::take(&mut self.data)
    }

    /// The bytes in `range`, as filled this turn.
    pub fn get(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.data[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffer_keeps_order_across_partial_sends() {
        let mut buffer = WriteBuffer::new();
        buffer.extend(b"hello ");
        buffer.extend(b"world");
        assert_eq!(buffer.pending(), b"hello world");
        buffer.consume(3);
        assert_eq!(buffer.pending(), b"lo world");
        buffer.extend(b"!");
        buffer.consume(5);
        assert_eq!(buffer.pending(), b"rld!");
        buffer.consume(4);
        assert!(buffer.is_empty());
    }

    #[test]
    fn write_buffer_reclaims_the_sent_prefix() {
        let mut buffer = WriteBuffer::new();
        buffer.extend(&[1u8; 1000]);
        buffer.consume(900);
        buffer.extend(&[2u8; 10]);
        assert_eq!(buffer.len(), 110);
        assert!(
            buffer.data.len() <= 2 * buffer.len(),
            "the sent prefix was compacted away"
        );
        assert_eq!(&buffer.pending()[..100], &[1u8; 100][..]);
        assert_eq!(&buffer.pending()[100..], &[2u8; 10][..]);
    }

    #[test]
    fn write_buffer_gives_back_large_capacity_when_drained() {
        let mut buffer = WriteBuffer::new();
        buffer.extend(&vec![0u8; 4 * WRITE_KEEP]);
        buffer.consume(4 * WRITE_KEEP);
        assert_eq!(buffer.data.capacity(), 0);
    }

    #[test]
    fn arena_keeps_only_what_was_filled() {
        let mut arena = ReadArena::with_capacity(16);
        let n = arena
            .fill_with(8, |buf| {
                buf[..3].copy_from_slice(b"abc");
                Ok::<usize, ()>(3)
            })
            .expect("fill");
        assert_eq!(n, 3);
        assert_eq!(
            arena.fill_with(8, |_| Err::<usize, &str>("boom")),
            Err("boom")
        );
        assert_eq!(arena.len(), 3);
        assert_eq!(arena.get(0..3), b"abc");
        arena.reset();
        assert!(arena.is_empty());
    }
}
