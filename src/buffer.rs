//! The buffers: a per-session write buffer and the reactor's shared read arena.
//!
//! Both are plain `Vec<u8>`s that keep their capacity between uses, so the steady state
//! allocates nothing per read or per write; both give memory back once they have grown past
//! what an ordinary message needs, so one large transfer does not pin it forever.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

/// Capacity a drained write buffer may keep for the next write; more is given back.
/// Generous on purpose: freeing a large buffer on the reactor thread lets glibc trim
/// that thread's heap (`madvise`), and the next large write faults every page back in,
/// which cost more than the message itself in the streaming benchmark. Idle sessions
/// are not affected: a buffer is only allocated by a first write.
const WRITE_KEEP: usize = 1024 * 1024;

/// Part of a regular file queued by `sendfile()`: the kernel copies it to the socket
/// itself, so it takes no memory here beyond the descriptor.
#[derive(Debug)]
pub struct FileSegment {
    /// The file (a duplicate of the caller's descriptor, so the caller may close theirs).
    pub file: OwnedFd,
    /// Where the next byte to send is in the file.
    pub offset: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Bytes of the buffer to send before this file: those written between the previous
    /// file (or the front) and it.
    ahead: usize,
}

impl FileSegment {
    /// `count` bytes of `file` from `offset`.
    pub fn new(file: OwnedFd, offset: u64, count: u64) -> FileSegment {
        FileSegment {
            file,
            offset,
            remaining: count,
            ahead: 0,
        }
    }
}

/// The files queued in a write buffer, in order.
#[derive(Debug, Default)]
struct FileQueue {
    segments: VecDeque<FileSegment>,
    /// Bytes written since the last file was queued: the next file's `ahead`.
    after_last: usize,
    /// The sum of the segments' `remaining`.
    bytes: u64,
}

/// What a session has asked to send and the kernel has not yet taken: bytes, and parts of
/// files queued between them, in the order they were written.
///
/// The bytes are one contiguous region, `data[head..]`: a write appends at the end, a send
/// consumes from the front by moving `head`. The consumed prefix is reclaimed when the
/// bytes drain, or when it has become the larger part, so the buffer never holds more than
/// twice its pending bytes. No capacity is allocated until the first write, which keeps
/// idle sessions small. A file is placed by how many bytes go before it, so the bytes in
/// front of it are sent first and those written after it wait for it; the file queue is
/// allocated by the first file and freed when the last is sent, so a session that sends
/// no file pays one pointer for it.
#[derive(Default, Debug)]
pub struct WriteBuffer {
    data: Vec<u8>,
    head: usize,
    files: Option<Box<FileQueue>>,
}

impl WriteBuffer {
    /// An empty buffer with no allocation.
    pub fn new() -> WriteBuffer {
        WriteBuffer::default()
    }

    /// Everything waiting to be sent, file bytes too: what the watermarks measure.
    pub fn len(&self) -> usize {
        let file_bytes = self.files.as_ref().map_or(0, |files| files.bytes);
        self.bytes_len()
            .saturating_add(usize::try_from(file_bytes).unwrap_or(usize::MAX))
    }

    /// The bytes waiting in memory: what the hard cap measures (a file takes none).
    pub fn bytes_len(&self) -> usize {
        self.data.len() - self.head
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.bytes_len() == 0 && self.files.is_none()
    }

    /// Appends bytes to send after everything already queued.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.head > 0 && self.head >= self.data.len() / 2 {
            self.compact();
        }
        self.data.extend_from_slice(bytes);
        if let Some(files) = self.files.as_mut() {
            files.after_last += bytes.len();
        }
    }

    /// Queues part of a file to send after everything already queued.
    pub fn push_file(&mut self, mut segment: FileSegment) {
        let bytes_len = self.bytes_len();
        let files = self.files.get_or_insert_with(|| {
            Box::new(FileQueue {
                after_last: bytes_len,
                ..FileQueue::default()
            })
        });
        segment.ahead = std::mem::take(&mut files.after_last);
        files.bytes += segment.remaining;
        files.segments.push_back(segment);
    }

    /// The bytes to hand to the kernel next: those before the next file, if one is queued.
    pub fn pending(&self) -> &[u8] {
        let before = match self.front_file() {
            Some(file) => file.ahead,
            None => self.bytes_len(),
        };
        &self.data[self.head..self.head + before]
    }

    /// The file to send next, when no bytes are in front of it.
    pub fn next_file(&self) -> Option<&FileSegment> {
        self.front_file().filter(|file| file.ahead == 0)
    }

    fn front_file(&self) -> Option<&FileSegment> {
        self.files.as_ref().and_then(|files| files.segments.front())
    }

    /// Marks `n` bytes from the front as sent.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.pending().len());
        self.head += n;
        if let Some(front) = self.files.as_mut().and_then(|f| f.segments.front_mut()) {
            front.ahead -= n;
        }
        if self.head == self.data.len() {
            self.release_bytes();
        }
    }

    /// Marks `n` bytes of the next file as sent.
    pub fn consume_file(&mut self, n: u64) {
        let Some(files) = self.files.as_mut() else {
            return;
        };
        let Some(file) = files.segments.front_mut() else {
            return;
        };
        debug_assert!(file.ahead == 0 && n <= file.remaining);
        file.offset += n;
        file.remaining -= n;
        files.bytes -= n;
        if file.remaining == 0 {
            files.segments.pop_front();
            if files.segments.is_empty() {
                self.files = None;
            }
        }
    }

    /// Drops everything, keeping a modest capacity for the next write.
    pub fn clear(&mut self) {
        self.release_bytes();
        self.files = None;
    }

    fn release_bytes(&mut self) {
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

    fn segment(count: u64) -> FileSegment {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        FileSegment::new(file.into(), 0, count)
    }

    #[test]
    fn write_buffer_sends_a_file_between_the_bytes_around_it() {
        let mut buffer = WriteBuffer::new();
        buffer.extend(b"ab");
        buffer.push_file(segment(5));
        buffer.extend(b"cd");
        buffer.push_file(segment(3));
        assert_eq!((buffer.len(), buffer.bytes_len()), (12, 4));
        assert_eq!(buffer.pending(), b"ab", "the bytes before the file only");
        assert!(
            buffer.next_file().is_none(),
            "bytes are in front of the file"
        );
        buffer.consume(1);
        assert_eq!(buffer.pending(), b"b");
        buffer.consume(1);
        assert_eq!(buffer.pending(), b"");
        assert_eq!(buffer.next_file().map(|f| f.remaining), Some(5));
        buffer.consume_file(2);
        assert_eq!(
            buffer.next_file().map(|f| (f.offset, f.remaining)),
            Some((2, 3))
        );
        buffer.consume_file(3);
        assert_eq!(
            buffer.pending(),
            b"cd",
            "the bytes written after the file come next"
        );
        buffer.consume(2);
        assert_eq!(buffer.next_file().map(|f| f.remaining), Some(3));
        assert_eq!(buffer.len(), 3);
        buffer.consume_file(3);
        assert!(buffer.is_empty());
    }

    #[test]
    fn write_buffer_clear_drops_queued_files() {
        let mut buffer = WriteBuffer::new();
        buffer.extend(b"xyz");
        buffer.push_file(segment(7));
        buffer.clear();
        assert!(buffer.is_empty());
        buffer.extend(b"new");
        assert_eq!(buffer.pending(), b"new");
        assert!(buffer.next_file().is_none());
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
