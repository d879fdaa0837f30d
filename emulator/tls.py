"""The local stack's certificate authority and server certificate, kept in its data directory.

The Kafka-compatible and MQTT listeners speak TLS, as the service does, and clients verify
the server against `ca_file` (never `verify=False`). On first start the stack creates a CA
(`tls/ca.pem`, its key `tls/ca-key.pem`) and a server certificate it signed for the
loopback names (`tls/server.pem`, `tls/server-key.pem`); later starts reuse them, so a
client that trusted the CA once keeps trusting the stack, and only the server certificate
is issued again when it nears its end or does not name the stack's host. Keys are EC P-256,
written with mode 0600; nothing here leaves the data directory but `ca_file`'s path.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "Direct Write Bench local CA"
CA_DAYS = 3650
SERVER_DAYS = 365
# A server certificate this close to its end is issued again at start.
RENEW_BEFORE = dt.timedelta(days=30)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class LocalTls:
    """Paths of the CA certificate (what clients trust) and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def ensure(
        cls, directory: Path, host: str = "127.0.0.1", *, now: dt.datetime | None = None
    ) -> LocalTls:
        """Create (or reuse) the CA and a server certificate for `host` and the loopback names."""
        now = now or dt.datetime.now(dt.UTC)
        directory.mkdir(parents=True, exist_ok=True)
        tls = cls(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
        ca_key_file = directory / "ca-key.pem"
        if tls.ca_file.exists() and ca_key_file.exists():
            ca_cert = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
            assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = _ca_certificate(ca_key, now)
            _write_private(ca_key_file, _key_pem(ca_key))
            tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        names = tuple(dict.fromkeys((*LOOPBACK_NAMES, host)))
        if not _server_certificate_current(tls, ca_cert, names, now):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _server_certificate(key, ca_key, ca_cert, names, now)
            _write_private(tls.key_file, _key_pem(key))
            tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return tls

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context with this certificate (TLS 1.2 or newer)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only and checks the host name."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(names: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: tuple[str, ...],
    now: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate_current(
    tls: LocalTls, ca_cert: x509.Certificate, names: tuple[str, ...], now: dt.datetime
) -> bool:
    """Whether the stored server certificate is signed by this CA, names `names` and lasts."""
    if not (tls.cert_file.exists() and tls.key_file.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return set(_san(names)) <= set(san)
