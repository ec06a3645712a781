//! What a process forked from one running hamanet gets: loops that are dead copies.
//!
//! A reactor is a thread, and `fork()` copies only the thread that called it, so in the
//! child every loop made before the fork has no reactor: its commands would queue forever
//! and waiting for it would never end. Each loop notes the fork epoch it was born in; a
//! `pthread_atfork` child handler bumps the epoch, so a loop from an earlier epoch knows it
//! is a copy (one atomic load, no lock: locks held by other threads at the fork stay held
//! in the child forever). The child can also close the copies of the loop's sockets,
//! which would otherwise keep the parent's connections and listeners alive.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// How many forks the current process descends through since the library loaded.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);
static WATCH_FORKS: Once = Once::new();

extern "C" fn note_fork_in_child() {
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The epoch a loop was born in.
#[derive(Clone, Copy, Debug)]
pub struct Epoch(u64);

impl Epoch {
    /// The current epoch; the first call starts watching for forks.
    pub fn now() -> Epoch {
        WATCH_FORKS.call_once(|| {
            // SAFETY: registers a handler that only does an atomic add, which is safe in
            // a freshly forked child. Failure (ENOMEM) leaves forks unnoticed, as before.
            unsafe { libc::pthread_atfork(None, None, Some(note_fork_in_child)) };
        });
        Epoch(FORK_EPOCH.load(Ordering::Relaxed))
    }

    /// Whether this process was forked since (so a loop of this epoch is a dead copy).
    pub fn is_past(self) -> bool {
        FORK_EPOCH.load(Ordering::Relaxed) != self.0
    }
}

/// In a forked child, closes the copies of every fd registered with the epoll instance
/// `epoll_fd`, then `epoll_fd` itself. The child may not touch the parent's reactor (its
/// thread is gone, maybe mid-update), but the kernel lists the registrations in
/// `/proc/self/fdinfo`. Must be called at most once per epoll fd, before the child opens
/// anything that could reuse these numbers.
pub fn close_epoll_copy(epoll_fd: RawFd) {
    let path = format!("/proc/self/fdinfo/{epoll_fd}");
    let registered: Vec<RawFd> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("tfd:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    for fd in registered.into_iter().chain([epoll_fd]) {
        // SAFETY: these are the child's copies of the parent reactor's fds, which nothing
        // in the child owns or will close: the `OwnedFd`s live in the reactor thread's
        // state, which did not survive the fork and is never dropped.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_current_until_a_fork() {
        let epoch = Epoch::now();
        assert!(!epoch.is_past());
        // SAFETY: the child only calls async-signal-safe functions and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if epoch.is_past() { 0 } else { 1 };
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(!epoch.is_past(), "the parent's epoch must not move");
    }
}
