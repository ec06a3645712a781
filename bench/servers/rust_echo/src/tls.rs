//! `rust_echo --tls CERT KEY PORT`: the same echo over TLS (rustls, aws-lc-rs), the native
//! floor of the TLS scenarios. Settings as fair as the Python servers': TLS 1.3 only, no
//! session tickets (every connection is a full handshake), the cipher suite the client
//! offers (the benchmark's clients offer only TLS_AES_128_GCM_SHA256).

use std::io::{self, Read as _, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::{sys, Next, Session};
use benchsys::RecordWriter;

/// The server configuration from PEM files.
pub fn config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

pub struct TlsConn {
    fd: OwnedFd,
    tls: ServerConnection,
    /// Our close_notify is queued: close once it is out.
    closing: bool,
}

impl TlsConn {
    pub fn new(fd: OwnedFd, config: &Arc<ServerConfig>) -> io::Result<TlsConn> {
        let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        // No cap on encrypted output: reading stops while any is unsent (`serve`), so
        // what is queued is at most one read's worth.
        tls.set_buffer_limit(None);
        Ok(TlsConn {
            fd,
            tls,
            closing: false,
        })
    }

    /// Writes queued records; true once none is left.
    fn flush(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut RecordWriter(&self.fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Feeds one read's ciphertext through rustls and queues the echo of its plaintext;
    /// true once the peer has closed (close_notify or EOF).
    fn absorb(&mut self, mut wire: &[u8], plain: &mut [u8], eof: bool) -> io::Result<bool> {
        loop {
            self.tls.read_tls(&mut wire)?;
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert rustls queued tells the peer why.
                    let _ = self.flush();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            loop {
                let n = match self.tls.reader().read(plain) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    // A TCP EOF without close_notify: echoed what came, now close.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    break;
                }
                self.tls.writer().write_all(&plain[..n])?;
            }
            if state.peer_has_closed() || eof {
                return Ok(true);
            }
            if wire.is_empty() {
                return Ok(false);
            }
        }
    }
}

impl Session for TlsConn {
    fn serve(&mut self, _flags: u32, buf: &mut [u8]) -> io::Result<Next> {
        // Backpressure as in the plain echo: nothing more is read while records wait.
        if !self.flush()? {
            return Ok(Next::Keep);
        }
        if self.closing {
            return Ok(Next::Close);
        }
        let (wire, plain) = buf.split_at_mut(buf.len() / 2);
        loop {
            let n = match sys::recv(&self.fd, wire) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Keep),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.absorb(&wire[..n], plain, n == 0)? {
                // The echo of everything received goes first, then our close_notify.
                self.tls.send_close_notify();
                self.closing = true;
                return Ok(if self.flush()? {
                    Next::Close
                } else {
                    Next::Keep
                });
            }
            if !self.flush()? {
                return Ok(Next::Keep);
            }
        }
    }
}
