"""The settings both hooks read, and the one verifying TLS context they use."""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest

from erpmail.core.transport import IMAP, SMTP, conn_fields, read_settings, tls_context


def conn(port=None, host="mail.example.com", **extra):
    return SimpleNamespace(host=host, port=port, extra_dejson=extra)


def test_tls_context_verifies_host_and_certificate(tls_ca):
    for ctx in (tls_context(), tls_context(str(tls_ca.ca_cert))):
        assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):
        tls_context("/nonexistent/ca.pem")


@pytest.mark.parametrize(
    ("protocol", "connection", "expected"),
    [
        (SMTP, conn(465), ("tls", 465, 30.0)),
        (SMTP, conn(None, security=" StartTLS "), ("starttls", 587, 30.0)),
        (SMTP, conn(1025, security="none", timeout="5"), ("none", 1025, 5.0)),
        (IMAP, conn(143), ("starttls", 143, 60.0)),
        (IMAP, conn(None, security="ssl"), ("tls", 993, 60.0)),
        (IMAP, conn(31993), ("tls", 31993, 60.0)),
    ],
)
def test_read_settings(protocol, connection, expected):
    s = read_settings(connection, protocol)
    assert (s.security, s.port, s.timeout) == expected and s.host == "mail.example.com"


@pytest.mark.parametrize(
    ("protocol", "connection", "message"),
    [
        (IMAP, conn(143, security="none"), "plaintext IMAP is not supported; use tls or starttls"),
        (SMTP, conn(25, security="plain"), "'plain', expected starttls, tls or none"),
        (SMTP, conn(25, host=""), "has no host"),
    ],
)
def test_read_settings_refuses(protocol, connection, message):
    with pytest.raises(ValueError, match=message):
        read_settings(connection, protocol)


def test_form_fields_offer_the_protocols_modes():
    assert conn_fields(SMTP)["security"]["schema"]["enum"] == [None, "starttls", "tls", "none"]
    assert conn_fields(IMAP)["security"]["schema"]["enum"] == [None, "tls", "starttls"]
    assert set(conn_fields(IMAP)) == {"security", "ca_file", "timeout"}
