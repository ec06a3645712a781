//! TLS for sessions, on rustls: contexts built from PEM files (`config`), a session's
//! encrypted side (`stream`), and what a failure is called (`failure`).
//!
//! The reactor owns each [`TlsStream`] as it owns the socket: it feeds it the ciphertext
//! of one large `recv`, takes out the plaintext into the turn's arena, and encrypts the
//! plaintext write buffer on the way out. Handlers see plaintext only; the limits, the
//! framing and the idle timeout count plaintext.

mod config;
mod failure;
mod stream;

pub use config::{
    ClientContext, ClientSettings, ConfigError, ServerContext, ServerSettings, Version,
};
pub use failure::TlsFailure;
pub use stream::{server_name, Handshake, TlsInfo, TlsStream};
