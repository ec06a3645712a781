//! Syscalls only: epoll and its waker, stream and datagram sockets, and what `fork()`
//! leaves behind. Nothing here knows about sessions or Python.

pub mod address;
pub mod datagram;
pub mod epoll;
pub mod file;
pub mod fork;
pub mod net;
