//! The edge-triggered epoll wrapper: one epoll instance, generation-tagged tokens, and the
//! eventfd waker that lets other threads interrupt `epoll_wait`.
//!
//! Nothing here knows about sessions or Python. Every registration is edge-triggered, so
//! the owner must drain readiness (read/accept until `EAGAIN`, or until a short read proves
//! the socket empty) on every event: an edge will not be reported twice.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// What an epoll event refers to: a slot index in the low 32 bits and the generation of the
/// slot's occupant in the high 32 bits.
///
/// A slot is reused after its session closes, but with a new generation, so an event queued
/// for the old occupant (closed earlier in the same batch, or whose fd number was reused)
/// can never be mistaken for the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

impl Token {
    /// The token reserved for the reactor's own waker.
    pub const WAKER: Token = Token(u64::MAX);

    /// Packs a slot index and its generation.
    pub fn new(slot: u32, generation: u32) -> Token {
        Token((u64::from(generation) << 32) | u64::from(slot))
    }

    /// The slot index.
    pub fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// The generation of the slot's occupant when the token was made.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The readiness that one event reports, decoded once.
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    /// Which registration the event is for.
    pub token: Token,
    /// Data (or an accept, or EOF) can be read.
    pub readable: bool,
    /// The send buffer has room again.
    pub writable: bool,
    /// The peer sent FIN (`EPOLLRDHUP`) or the connection is fully gone (`EPOLLHUP`):
    /// reading must go on until EOF, a short read is not proof of an empty socket.
    pub read_closed: bool,
    /// `EPOLLERR`: a pending socket error; the next read or send reports it.
    pub error: bool,
}

/// A reusable buffer of events filled by [`Poller::wait`].
#[derive(Debug)]
pub struct Events {
    raw: Vec<EpollEvent>,
    len: usize,
}

impl Events {
    /// Room for `capacity` events per wait.
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            raw: vec![EpollEvent::empty(); capacity.max(1)],
            len: 0,
        }
    }

    /// How many events the last wait returned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait returned no events.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `index`th event of the last wait, decoded.
    pub fn get(&self, index: usize) -> Readiness {
        let event = &self.raw[..self.len][index];
        let flags = event.events();
        Readiness {
            token: Token(event.data()),
            readable: flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLPRI),
            writable: flags.contains(EpollFlags::EPOLLOUT),
            read_closed: flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP),
            error: flags.contains(EpollFlags::EPOLLERR),
        }
    }
}

/// The epoll instance.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
}

/// Streams are registered once for both directions: with `EPOLLET`, `EPOLLOUT` reports only
/// the transition from a full send buffer to room, so it costs nothing while writes succeed,
/// and no `epoll_ctl` is ever needed per write.
const STREAM_INTEREST: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLOUT)
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// A datagram socket is watched for reading only, and for room to send only while a send
/// waits for it ([`Poller::watch_endpoint`]): UDP wakes its writers each time a sent
/// datagram's buffer is freed, so a standing `EPOLLOUT` would cost a wakeup per send.
const ENDPOINT_INTEREST: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLET);

/// Listeners and the waker only ever need read readiness.
const READ_INTEREST: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLET);

/// A connection awaiting its PROXY header is only read, but its peer's FIN must be seen
/// even behind bytes already there (which a peek never takes off).
const HEADER_INTEREST: EpollFlags = READ_INTEREST.union(EpollFlags::EPOLLRDHUP);

/// A listener may be shared by several reactors' epolls (one per reactor thread): a new
/// connection then wakes one of the threads waiting, not all of them.
const LISTEN_INTEREST: EpollFlags = READ_INTEREST.union(EpollFlags::EPOLLEXCLUSIVE);

impl Poller {
    /// Creates a close-on-exec epoll instance.
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// The epoll instance's fd number (for [`crate::sys::fork::close_epoll_copy`]).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.epoll.0.as_raw_fd()
    }

    /// Registers a connected stream socket for edge-triggered read and write readiness.
    pub fn add_stream(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(STREAM_INTEREST, token.0))?)
    }

    /// Registers a datagram socket for edge-triggered read readiness.
    pub fn add_endpoint(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(ENDPOINT_INTEREST, token.0))?)
    }

    /// Watches a datagram socket registered with [`Poller::add_endpoint`] for room to send
    /// too (`writable`), or again for reading only. A socket that has room already when
    /// it is watched is reported at once: no edge is lost between a refused send and this.
    pub fn watch_endpoint(
        &self,
        fd: BorrowedFd<'_>,
        token: Token,
        writable: bool,
    ) -> io::Result<()> {
        let interest = if writable {
            ENDPOINT_INTEREST.union(EpollFlags::EPOLLOUT)
        } else {
            ENDPOINT_INTEREST
        };
        Ok(self
            .epoll
            .modify(fd, &mut EpollEvent::new(interest, token.0))?)
    }

    /// Registers a listening socket or an eventfd for edge-triggered read readiness.
    pub fn add_reader(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(READ_INTEREST, token.0))?)
    }

    /// Registers a connection awaiting its PROXY header: edge-triggered read readiness
    /// and the peer's FIN.
    pub fn add_header_reader(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(HEADER_INTEREST, token.0))?)
    }

    /// Registers a listening socket for edge-triggered read readiness, waking only one
    /// of the epolls it is registered with per event (`EPOLLEXCLUSIVE`).
    pub fn add_listener(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(LISTEN_INTEREST, token.0))?)
    }

    /// Removes a registration. Closing the fd removes it too; this is for fds that live on.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.epoll.delete(fd)?)
    }

    /// Waits for events. `None` waits forever; a timeout is rounded *up* to whole
    /// milliseconds so a timer is never woken early and then spun on with zero timeouts.
    /// An interrupted wait (`EINTR`) returns with no events.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            Some(duration) => {
                let millis = duration.as_nanos().div_ceil(1_000_000);
                EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
            }
        };
        events.len = match self.epoll.wait(&mut events.raw, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(err) => return Err(err.into()),
        };
        Ok(())
    }
}

/// Wakes a thread blocked in [`Poller::wait`] from any other thread.
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
}

impl Waker {
    /// Creates the eventfd and registers it under [`Token::WAKER`].
    pub fn new(poller: &Poller) -> io::Result<Waker> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        poller.add_reader(fd.as_fd(), Token::WAKER)?;
        Ok(Waker { fd })
    }

    /// Makes the next (or current) wait return.
    pub fn wake(&self) -> io::Result<()> {
        match self.fd.write(1) {
            // The counter is saturated, which means a wake is already pending.
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Resets the counter so the next `wake` produces a new edge.
    pub fn reset(&self) {
        // EAGAIN only means nothing was pending; there is no other failure for an eventfd.
        let _ = self.fd.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn token_round_trips_slot_and_generation() {
        let token = Token::new(7, 42);
        assert_eq!(token.slot(), 7);
        assert_eq!(token.generation(), 42);
        assert_ne!(Token::new(7, 43), token);
    }

    #[test]
    fn wait_times_out_without_events() {
        let poller = Poller::new().expect("epoll");
        let mut events = Events::with_capacity(8);
        poller
            .wait(&mut events, Some(Duration::from_millis(1)))
            .expect("wait");
        assert!(events.is_empty());
    }

    #[test]
    fn waker_interrupts_a_wait_from_another_thread() {
        let poller = Arc::new(Poller::new().expect("epoll"));
        let waker = Arc::new(Waker::new(&poller).expect("eventfd"));
        let remote = Arc::clone(&waker);
        let thread = std::thread::spawn(move || remote.wake().expect("wake"));
        let mut events = Events::with_capacity(8);
        poller
            .wait(&mut events, Some(Duration::from_secs(10)))
            .expect("wait");
        thread.join().expect("thread");
        let tokens: Vec<Token> = (0..events.len()).map(|i| events.get(i).token).collect();
        assert_eq!(tokens, vec![Token::WAKER]);
        waker.reset();
        poller
            .wait(&mut events, Some(Duration::ZERO))
            .expect("wait");
        assert!(events.is_empty(), "reset must clear the edge");
    }
}
