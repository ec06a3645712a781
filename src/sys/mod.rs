//! Syscalls only: epoll and its waker, sockets, and what `fork()` leaves behind. Nothing
//! here knows about sessions or Python.

pub mod address;
pub mod epoll;
pub mod file;
pub mod fork;
pub mod net;
