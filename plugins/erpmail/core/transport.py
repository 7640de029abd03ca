"""What the SMTP and IMAP hooks read from an Airflow connection, one vocabulary for both.

Extras: ``security`` is ``tls`` (implicit TLS: SMTP 465, IMAP 993), ``starttls`` (SMTP 587,
IMAP 143; required, never skipped) or ``none`` (plain SMTP to a relay of your own; IMAP has
no plaintext mode); ``ssl`` is read as ``tls``. ``ca_file`` is a PEM bundle trusted instead
of the system store, ``timeout`` seconds for the connect and every reply. Certificates and
host names are always verified. The Connections form shows the same three fields.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Security = Literal["tls", "starttls", "none"]
SECURITY_MODES: tuple[Security, ...] = ("tls", "starttls", "none")
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")
# names other mail software uses for the same mode, accepted for existing connections
ALIASES = {"ssl": "tls", "smtps": "tls", "imaps": "tls"}


@dataclass(frozen=True)
class Protocol:
    """A mail protocol's defaults: the modes it offers with their ports, the mode when neither
    the extras nor the port say, and the timeout."""

    name: str
    ports: Mapping[Security, int]
    fallback: Security
    timeout: float


SMTP = Protocol("SMTP", {"starttls": 587, "tls": 465, "none": 587}, "starttls", 30.0)
# no "none": IMAP logs in with the password, which must never go out in the clear
IMAP = Protocol("IMAP", {"tls": 993, "starttls": 143}, "tls", 60.0)


@dataclass(frozen=True)
class TransportSettings:
    """Where and how a hook connects, as it will be used; no credentials."""

    host: str
    port: int
    security: Security
    ca_file: str | None
    timeout: float


def read_settings(conn: Any, protocol: Protocol) -> TransportSettings:
    """The settings of Airflow connection ``conn`` for ``protocol``.

    Without the extra the port decides (the ``tls`` or the ``starttls`` port); any other
    port, or none, means the protocol's fallback, never ``none``. Raises ValueError saying
    what is wrong, for the hook to wrap in its own error.
    """
    ports = protocol.ports
    extra = conn.extra_dejson or {}
    port = int(conn.port) if conn.port else None
    given = str(extra.get("security") or "").strip().lower()
    if given:
        security = ALIASES.get(given, given)
    else:
        by_port = {ports["starttls"]: "starttls", ports["tls"]: "tls"}
        security = by_port.get(port, protocol.fallback) if port else protocol.fallback
    if security not in ports:
        if security == "none":
            raise ValueError(
                f"extra 'security' is 'none': plaintext {protocol.name} is not supported; "
                f"use {_either(list(ports))}"
            )
        raise ValueError(f"extra 'security' is {given!r}, expected {_either(list(ports))}")
    if not conn.host:
        raise ValueError("has no host")
    return TransportSettings(
        host=conn.host,
        port=port or ports[security],
        security=security,
        ca_file=extra.get("ca_file") or None,
        timeout=float(extra.get("timeout") or protocol.timeout),
    )


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: host name checked, certificate required, trusting the
    system store or, when given, only ``ca_file``. Raises OSError/ssl.SSLError when the file
    cannot be loaded."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def conn_fields(protocol: Protocol) -> dict[str, dict]:
    """The extras as form fields of the Connections page (provider info ``conn-fields``)."""
    modes = list(protocol.ports)
    return {
        "security": {
            "label": "Security",
            "schema": {"type": ["string", "null"], "enum": [None, *modes]},
            "description": "tls: implicit TLS; starttls: upgrade, required"
            + ("; none: plain, for a relay of your own" if "none" in modes else "")
            + ". Empty: by the port.",
        },
        "ca_file": {
            "label": "CA bundle",
            "schema": {"type": ["string", "null"]},
            "description": "PEM file to trust instead of the system store.",
        },
        "timeout": {
            "label": "Timeout (seconds)",
            "schema": {"type": ["number", "null"], "default": protocol.timeout, "minimum": 1},
        },
    }


def ui_field_behaviour(protocol: Protocol) -> dict[str, Any]:
    """What the Connections form hides and suggests (provider info ``ui-field-behaviour``)."""
    ports = protocol.ports
    return {
        "hidden-fields": ["schema"],
        "relabeling": {},
        "placeholders": {
            "port": " or ".join(str(p) for p in dict.fromkeys(ports.values())),
            "security": "/".join(ports),
        },
    }


def _either(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def redact(text: str, login: str | None, password: str | None) -> str:
    """A server's reply as it may be stored or logged: the password, and any base64 token
    that decodes to something holding it (``AUTH PLAIN``'s ``\\0login\\0password``, ``AUTH
    LOGIN``'s password line), replaced by ``***``; the login too where it equals the password."""
    if not password:
        return text
    secret = password.encode()

    def hide(match: re.Match) -> str:
        token = match.group(0)
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            return token
        return "***" if secret in decoded else token

    text = _BASE64_TOKEN.sub(hide, text.replace(password, "***"))
    return text.replace(login, "***") if login and login == password else text
