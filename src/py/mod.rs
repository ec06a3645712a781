//! The Python edge (the `python` feature): the `hamanet._hamanet` classes and the reactor
//! thread that calls handlers. Each line below uses only the lines under it (no cycles):
//!
//! ```text
//! loop_                         the Loop class: checks arguments, hands the work on
//! listen bind stats             listeners for every reactor; datagram endpoints; counters
//! options connect timer thread  Server/Client options; client connects; scheduled
//! driven                        callbacks; the reactor thread's body; a reactor that
//!                               another event loop drives
//! pool                          the worker pool: a lane per session, run in order
//! framing dispatch              the framers (Delimiter, ...); what the handler is told
//! datagram_dispatch             (and what an endpoint's handler is told)
//! inner report                  what a Loop and its thread share; logging
//! sessions                      the open sessions' Python side
//! session datagram              the Session and DatagramEndpoint classes
//! view                          received bytes lent as memoryviews; write()'s borrowed bytes
//! tls                           TLS contexts and what a handshake settled
//! callbacks convert errors      the callback table; Python values in and out; exceptions
//! ```

pub mod bind;
pub mod callbacks;
mod connect;
mod convert;
pub mod datagram;
mod datagram_dispatch;
mod dispatch;
mod driven;
pub mod errors;
pub mod framing;
mod inner;
mod listen;
pub mod loop_;
pub mod options;
mod pool;
mod report;
pub mod session;
mod sessions;
mod stats;
pub mod stream_buffer;
mod thread;
pub mod timer;
pub mod tls;
mod view;
