//! TLS sessions through the reactor, against rustls's own blocking client: plaintext in
//! order, close_notify both ways, a truncation and a refused handshake named.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::tests::{echo_reactor_with, pattern, stop};
use crate::tls::{ServerContext, ServerSettings};

/// A CA and a server certificate for "localhost", written as PEM files into a fresh
/// directory (made at test time: no key is ever checked in).
struct Certificates {
    dir: PathBuf,
    ca: Vec<u8>,
}

impl Certificates {
    fn new(name: &str) -> Certificates {
        let dir = std::env::temp_dir().join(format!("hamanet-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
        Certificates {
            dir,
            ca: ca.pem().into_bytes(),
        }
    }

    fn server(&self) -> Arc<ServerContext> {
        let settings = ServerSettings {
            certfile: self.dir.join("cert.pem"),
            keyfile: self.dir.join("key.pem"),
            handshake_timeout: std::time::Duration::from_secs(5),
            ..ServerSettings::default()
        };
        Arc::new(ServerContext::new(&settings).expect("server context"))
    }

    /// A rustls client that trusts this CA (or, with `trusting` false, nothing).
    fn client(&self, trusting: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        if trusting {
            let ca = CertificateDer::from_pem_slice(&self.ca).expect("CA pem");
            roots.add(ca).expect("root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn plaintext_echoes_in_order_and_close_notify_ends_both_ways() {
    let certificates = Certificates::new("echo");
    let (addr, shared, thread) = echo_reactor_with(Some(certificates.server()));
    let mut stream = connect(addr, certificates.client(true));
    // More than the read budget and many records, written while the echo comes back.
    let sent = pattern(7, 3 * 1024 * 1024);
    let mut received = vec![0; sent.len()];
    for (piece, echo) in sent.chunks(64 * 1024).zip(received.chunks_mut(64 * 1024)) {
        stream.write_all(piece).expect("write");
        stream.read_exact(echo).expect("echo");
    }
    assert!(received == sent, "the echo differs from what was sent");
    // Our close_notify is the server's EOF, which closes with its own close_notify.
    stream.conn.send_close_notify();
    stream.flush().expect("flush");
    let mut rest = Vec::new();
    let end = stream.read_to_end(&mut rest);
    assert!(
        end.is_ok(),
        "the server's end must be a clean close_notify: {end:?}"
    );
    assert!(rest.is_empty());
    let log = stop(&shared, thread);
    assert_eq!(log, ["opened", "eof", "closed None"]);
}

#[test]
fn a_fin_without_close_notify_is_reported_as_truncated() {
    let certificates = Certificates::new("truncated");
    let (addr, shared, thread) = echo_reactor_with(Some(certificates.server()));
    let mut stream = connect(addr, certificates.client(true));
    stream.write_all(b"last words").expect("write");
    let mut echo = [0; 10];
    stream.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"last words");
    stream
        .sock
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut rest = Vec::new();
    let _ = stream.sock.read_to_end(&mut rest);
    let log = stop(&shared, thread);
    assert_eq!(log, ["opened", "closed TLS TRUNCATED"]);
}

#[test]
fn a_refused_handshake_fails_only_that_session() {
    let certificates = Certificates::new("refused");
    let (addr, shared, thread) = echo_reactor_with(Some(certificates.server()));
    let mut refusing = connect(addr, certificates.client(false));
    let refused = refusing.write_all(b"never sent");
    let refused = refused.and_then(|()| refusing.flush());
    assert!(refused.is_err(), "a client that trusts no CA must refuse");
    drop(refusing);
    let mut good = connect(addr, certificates.client(true));
    good.write_all(b"still served").expect("write");
    let mut echo = [0; 12];
    good.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"still served");
    good.conn.send_close_notify();
    good.flush().expect("flush");
    let mut rest = Vec::new();
    let _ = good.read_to_end(&mut rest);
    let log = stop(&shared, thread);
    assert_eq!(
        log,
        ["failed TLS PEER_ALERT", "opened", "eof", "closed None"]
    );
}
