"""The local stack's CA: created once, reused, verified by clients, re-issued when due."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from emulator.tls import LocalTls

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _handshake(tls: LocalTls, client: ssl.SSLContext, server_hostname: str) -> bytes:
    srv = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            with tls.server_context().wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with (
            socket.create_connection(srv.getsockname()) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as s,
        ):
            return s.recv(2)
    finally:
        t.join(5)
        srv.close()


def test_created_once_and_reused(tmp_path: Path) -> None:
    first = LocalTls.ensure(tmp_path, now=NOW)
    files = {p: p.read_bytes() for p in (first.ca_file, first.cert_file, first.key_file)}
    again = LocalTls.ensure(tmp_path, now=NOW + dt.timedelta(days=10))
    assert again == first
    assert {p: p.read_bytes() for p in files} == files
    for key in (first.key_file, tmp_path / "ca-key.pem"):
        assert os.stat(key).st_mode & 0o777 == 0o600


def test_server_certificate_reissued_near_its_end_under_the_same_ca(tmp_path: Path) -> None:
    first = LocalTls.ensure(tmp_path, now=NOW)
    ca, cert = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    LocalTls.ensure(tmp_path, now=NOW + dt.timedelta(days=340))
    assert first.ca_file.read_bytes() == ca
    renewed = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    assert first.cert_file.read_bytes() != cert
    assert renewed.not_valid_after_utc > NOW + dt.timedelta(days=700)
    renewed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_a_new_host_name_gets_a_certificate_naming_it(tmp_path: Path) -> None:
    LocalTls.ensure(tmp_path, now=NOW)
    tls = LocalTls.ensure(tmp_path, "127.0.0.2", now=NOW)
    san = x509.load_pem_x509_certificate(tls.cert_file.read_bytes()).extensions
    names = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "127.0.0.2",
    ]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def test_clients_verify_the_server_against_the_ca(tmp_path: Path) -> None:
    tls = LocalTls.ensure(tmp_path)
    assert _handshake(tls, tls.client_context(), "127.0.0.1") == b"ok"
    assert _handshake(tls, tls.client_context(), "localhost") == b"ok"


def test_a_client_without_the_ca_refuses_the_server(tmp_path: Path) -> None:
    tls = LocalTls.ensure(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(tls, ssl.create_default_context(), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tls, tls.client_context(), "example.com")
