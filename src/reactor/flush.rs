//! Flushing: one send per session per turn, watermarks, and the close, abort and
//! half-close requests that wait for an empty buffer.

use std::os::fd::BorrowedFd;

use super::*;
use crate::buffer::WriteBuffer;
use crate::sys;

impl Reactor {
    /// Sends what the session has buffered (one send), then acts on its close, abort or
    /// shutdown request once the buffer is empty.
    pub(super) fn flush(&mut self, token: Token) {
        let notify_drained = self.notify_drained;
        let now = self.now;
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        let fd = session.fd.as_fd();
        let core = Arc::clone(&session.core);
        let mut state = core.state();
        state.queued = false;
        if state.closed {
            return;
        }
        if state.abort_requested {
            drop(state);
            self.release(token, CloseKind::Abortive, None);
            return;
        }
        if session.phase != Phase::Open {
            // Closing cancels the connect or the handshake; until it is done only the
            // handshake's own records are sent.
            if state.close_requested {
                drop(state);
                self.release(token, CloseKind::Dead, None);
                return;
            }
            drop(state);
            let sent = match session.tls.as_deref_mut() {
                Some(tls) if session.phase == Phase::Handshaking => {
                    tls.send(fd, None, &mut self.stats.bytes_out)
                }
                _ => Ok(true),
            };
            if let Err(err) = sent {
                self.fail(token, err);
            }
            return;
        }
        if std::mem::take(&mut state.read_resume_pending) {
            // Data that arrived while reading was paused raised no new edge.
            requeue(&mut self.again, &mut session.requeued, token);
            self.batch.push(Event::ReadingResumed { token });
        }
        if session.broken.is_some() {
            // The connection is gone; only unread input is left, for after the resume.
            if state.close_requested {
                drop(state);
                let err = session.broken.take();
                self.release(token, CloseKind::Dead, err);
            }
            return;
        }
        if let Some(err) = state.send_error.take() {
            drop(state);
            self.fail(token, err);
            return;
        }
        self.stats.writes += std::mem::take(&mut state.writes);
        let sent_directly = std::mem::take(&mut state.sent_directly);
        if sent_directly > 0 {
            self.stats.sends += 1;
            self.stats.bytes_out += sent_directly as u64;
            session.last_active = now;
        }
        // Owed until all of it has reached the kernel, which for a TLS session can be a
        // later flush than the one that emptied the buffer (its records still queued).
        session.drain_owed |= sent_directly > 0 || !state.buffer.is_empty();
        let mut tls = session.tls.as_deref_mut();
        if let Some(tls) = tls.as_deref_mut() {
            if !state.buffer.is_empty() || tls.wants_write() {
                self.stats.sends += 1;
                let before = self.stats.bytes_out;
                match tls.send(fd, Some(&mut state.buffer), &mut self.stats.bytes_out) {
                    Ok(_) if self.stats.bytes_out > before => session.last_active = now,
                    Ok(_) => {}
                    Err(err) => {
                        drop(state);
                        self.fail(token, err);
                        return;
                    }
                }
            }
        } else if !state.buffer.is_empty() && !std::mem::take(&mut state.kernel_full) {
            self.stats.sends += 1;
            match send_queued(fd, &mut state.buffer) {
                Ok(0) => {}
                Ok(n) => {
                    self.stats.bytes_out += n;
                    session.last_active = now;
                }
                Err(err) => {
                    drop(state);
                    self.fail(token, err);
                    return;
                }
            }
        }
        if std::mem::take(&mut state.idle_timeout_changed) {
            if let IdleTimeout::After(timeout) = state.idle_timeout {
                self.idle.note(timeout, now);
            }
        }
        let buffered = state.buffer.len();
        if !state.writing_paused && buffered > state.limits.high {
            state.writing_paused = true;
            self.batch.push(Event::PauseWriting { token });
        } else if state.writing_paused && buffered <= state.limits.low {
            state.writing_paused = false;
            self.batch.push(Event::ResumeWriting { token });
        }
        if buffered > 0 || tls.as_deref().is_some_and(TlsStream::wants_write) {
            // The kernel's buffer is full; EPOLLOUT will report room.
            return;
        }
        let ending = state.close_requested || (state.shutdown_requested && !state.fin_sent);
        if let Some(tls) = tls.filter(|tls| ending && !tls.close_notify_sent()) {
            // The end of the plaintext, said in TLS before the FIN.
            tls.close_notify();
            match tls.send(fd, None, &mut self.stats.bytes_out) {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    drop(state);
                    self.fail(token, err);
                    return;
                }
            }
        }
        if state.close_requested {
            drop(state);
            self.release(token, CloseKind::Graceful, None);
            return;
        }
        if state.shutdown_requested && !state.fin_sent {
            state.fin_sent = true;
            if let Err(err) = net::shutdown_write(fd) {
                drop(state);
                self.release(token, CloseKind::Dead, Some(err));
                return;
            }
            if session.eof {
                // Both directions are finished: nothing can happen on it any more.
                drop(state);
                self.release(token, CloseKind::Graceful, None);
                return;
            }
        }
        drop(state);
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        if std::mem::take(&mut session.drain_owed) && notify_drained {
            self.batch.push(Event::Drained { token });
        }
    }

    pub(super) fn request_close(&mut self, token: Token) {
        if let Some(session) = self.session(token) {
            session.core.state().close_requested = true;
            self.flush(token);
        }
    }
}

/// Most of a file one `sendfile` call is asked for: the socket's buffer bounds a call
/// anyway, unless it has grown huge, and other sessions wait meanwhile.
const SENDFILE_CALL_MAX: usize = 16 * 1024 * 1024;

/// Sends the buffer's bytes and files in order, until it is empty or the kernel takes no
/// more; returns the bytes sent. Without files that is one send, as before files existed.
fn send_queued(fd: BorrowedFd<'_>, buffer: &mut WriteBuffer) -> io::Result<u64> {
    let mut sent = 0;
    loop {
        let (is_file, asked, result) = if let Some(file) = buffer.next_file() {
            let asked = usize::try_from(file.remaining)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_CALL_MAX);
            let result = match sys::file::sendfile(fd, file.file.as_fd(), file.offset, asked) {
                Ok(0) => Err(sys::file::truncated(file.remaining)),
                Ok(n) => {
                    buffer.consume_file(n as u64);
                    Ok(n)
                }
                Err(err) => Err(err),
            };
            (true, asked, result)
        } else {
            let pending = buffer.pending();
            if pending.is_empty() {
                return Ok(sent);
            }
            let asked = pending.len();
            let result = net::send(fd, pending).inspect(|&n| buffer.consume(n));
            (false, asked, result)
        };
        match result {
            // A short send means the kernel's buffer is full (EPOLLOUT will report room);
            // a short sendfile may instead mean the file ended early, which only the next
            // call tells (0, not EAGAIN), so a file is asked again.
            Ok(n) if n < asked && !is_file => {
                sent += n as u64;
                return Ok(sent);
            }
            Ok(n) => sent += n as u64,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
            Err(err) => return Err(err),
        }
    }
}
