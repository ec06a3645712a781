"""The TLS scenarios' certificates and client settings, made fresh for every run and never
kept: a test CA and a server certificate for `localhost` and 127.0.0.1, both ECDSA P-256
(trustme), as PEM files in a temporary directory that lives as long as the run.

Every client offers exactly one TLS configuration, so every server does the same work
per byte and per handshake: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519. The load generator
is built that way (`loadgen/src/tls.rs`); redis-benchmark and wrk use OpenSSL, whose
choice `OPENSSL_CONF` pins to the same through `openssl.cnf` here (redis-benchmark also
gets `--tls-ciphersuites`). The servers send no session tickets (hamanet's echo:
`session_tickets=0`; asyncio/uvloop: `num_tickets = 0`).
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

# What the servers' certificate is issued for, and so what the clients ask for (SNI).
SERVER_NAME = "localhost"
CIPHER_SUITE = "TLS_AES_128_GCM_SHA256"
GROUP = "X25519"

# OpenSSL's configuration for the real clients: TLS 1.3 only, one suite, one group.
_OPENSSL_CNF = f"""\
openssl_conf = bench_conf
[bench_conf]
ssl_conf = bench_ssl
[bench_ssl]
system_default = bench_tls
[bench_tls]
MinProtocol = TLSv1.3
Ciphersuites = {CIPHER_SUITE}
Groups = {GROUP}
"""

# The placeholders a server's command line holds for the files (`Server.apps`), replaced
# when the server starts (`TlsFiles.substitute`): the files exist only once the run does.
CERT_ARG = "{tls-cert}"
KEY_ARG = "{tls-key}"


@dataclass(frozen=True)
class TlsFiles:
    directory: Path
    ca: Path  # the CA certificate the clients verify the server with
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key
    openssl_cnf: Path

    def substitute(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        """`argv` with the certificate placeholders replaced by the files."""
        files = {CERT_ARG: str(self.cert), KEY_ARG: str(self.key)}
        return tuple(files.get(arg, arg) for arg in argv)

    def client_env(self) -> dict[str, str]:
        """What an OpenSSL client's environment needs to offer only our configuration."""
        return {"OPENSSL_CONF": str(self.openssl_cnf)}

    def client_context(self) -> ssl.SSLContext:
        """For the runner's own checks after a run: verifies the server like the clients."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx


def make_files() -> tuple[TlsFiles, tempfile.TemporaryDirectory]:
    """Fresh certificates in a new temporary directory; the caller keeps the directory
    object alive for the run (its cleanup deletes the files)."""
    import trustme  # bench/run.sh installs it; only the TLS scenarios need it

    holder = tempfile.TemporaryDirectory(prefix="hamanet-bench-tls-")
    directory = Path(holder.name)
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)  # ECDSA is P-256 in trustme
    leaf = ca.issue_cert(SERVER_NAME, "127.0.0.1", key_type=trustme.KeyType.ECDSA)
    files = TlsFiles(
        directory=directory,
        ca=directory / "ca.pem",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        openssl_cnf=directory / "openssl.cnf",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    # The chain, leaf first (trustme's CA is a root: the chain is the leaf alone).
    files.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    files.openssl_cnf.write_text(_OPENSSL_CNF)
    return files, holder
