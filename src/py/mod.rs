//! The Python edge (the `python` feature): the `hamanet._hamanet` classes and the reactor
//! thread that calls handlers. Dependencies point one way, from the classes down:
//!
//! ```text
//! loop_ (Loop)  ──> connect, timer ──> thread ──> dispatch ──> sessions, report
//!      │                                              │
//!      └──────────────> inner (what the Loop and its thread share) <──┘
//! session (Session), callbacks, convert, errors: leaves every module may use
//! ```

pub mod callbacks;
mod connect;
mod convert;
mod dispatch;
pub mod errors;
pub mod framing;
mod inner;
pub mod loop_;
pub mod options;
mod report;
pub mod session;
mod sessions;
mod thread;
pub mod timer;
