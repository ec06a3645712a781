//! A TLS session's turn: its ciphertext read and decrypted into the arena, its handshake
//! completed (which opens it), and the end of its stream told apart from a truncation.

use super::*;

/// Receives ciphertext into `ciphertext` (one `recv`) and feeds it to `tls`, whose
/// plaintext goes into `arena`. Returns the ciphertext's size (`Ok(0)`: the peer's FIN);
/// a TLS failure comes back as an `io::Error` carrying a [`TlsFailure`].
pub(super) fn receive_tls(
    tls: &mut TlsStream,
    fd: std::os::fd::BorrowedFd<'_>,
    ciphertext: &mut [u8],
    arena: &mut crate::buffer::ReadArena,
) -> io::Result<usize> {
    let n = match net::recv(fd, ciphertext) {
        Ok(n) => n,
        Err(err) => {
            // Plaintext decrypted earlier may wait inside rustls (what followed a
            // handshake done on a connecting thread), which no edge announces.
            tls.take_plaintext(arena)?;
            return Err(err);
        }
    };
    if n > 0 {
        tls.receive(&ciphertext[..n], Some(arena))?;
    }
    Ok(n)
}

impl Reactor {
    /// After a TLS session read: opens it if its handshake just completed (before the
    /// plaintext that came with it is reported), takes the peer's `close_notify` as the
    /// end of its input, and names a FIN without one. A failure is flushed (its alert)
    /// and counted.
    pub(super) fn after_tls_read(
        &mut self,
        token: Token,
        eof: &mut bool,
        error: &mut Option<io::Error>,
    ) {
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        let Some(tls) = session.tls.as_deref_mut() else {
            return;
        };
        if error.is_none() && session.phase == Phase::Handshaking && !tls.is_handshaking() {
            session.phase = Phase::Open;
            session.core.set_tls(tls.info());
            let core = Arc::clone(&session.core);
            self.stats.tls_handshakes += 1;
            self.open(token, core);
        }
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        let Some(tls) = session.tls.as_deref_mut() else {
            return;
        };
        if *eof && error.is_none() {
            if let Err(failure) = tls.end_of_stream() {
                *error = Some(failure.into());
            }
        } else if tls.peer_closed() {
            // The peer's plaintext has ended; the FIN that follows adds nothing.
            *eof = true;
        }
        if let Some(err) = error {
            if is_tls_failure(err) {
                self.stats.tls_failures += 1;
                // The alert rustls queued tells the peer why.
                let _ = tls.send(session.fd.as_fd(), None, &mut self.stats.bytes_out);
            }
        }
    }
}

/// Whether `err` is a TLS failure (rather than the connection's own error).
fn is_tls_failure(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<TlsFailure>().is_some())
}
