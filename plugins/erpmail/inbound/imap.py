"""IMAP as an Airflow hook on imapclient: verified TLS always, STARTTLS never skipped.

The connection (type ``imap``) gives host, port, login and password; its extras may set
``security`` (``"ssl"``: implicit TLS, the default, port 993; ``"starttls"``: port 143, the
default when the port is 143), ``ca_file`` (a PEM bundle to trust instead of the system
store) and ``timeout`` in seconds. There is no plaintext mode: credentials never go out in
the clear. Errors name the connection and the server, never the password.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import imapclient
from airflow.sdk import BaseHook
from imapclient.exceptions import IMAPClientError, LoginError

SECURITY_MODES = ("ssl", "starttls")
# OpenSSL's verify codes for a certificate that signs itself (alone or as a chain's root).
_SELF_SIGNED_CODES = {18, 19}


class ImapSecurityError(Exception):
    """The server could not be reached over verified TLS; nothing was sent in the clear."""


class ImapLoginError(Exception):
    """The server refused the login (the message never contains the password)."""


class ImapHook(BaseHook):
    """IMAP over verified TLS for one Airflow connection."""

    conn_name_attr = "imap_conn_id"
    default_conn_name = "imap_default"
    conn_type = "imap"
    hook_name = "erpmail IMAP"

    def __init__(self, imap_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.imap_conn_id = imap_conn_id

    def settings(self) -> dict[str, Any]:
        """Host, port, security, CA file and timeout as they will be used (no credentials)."""
        conn = self.get_connection(self.imap_conn_id)
        extra = conn.extra_dejson or {}
        port = int(conn.port) if conn.port else None
        security = str(extra.get("security") or ("starttls" if port == 143 else "ssl")).lower()
        if security not in SECURITY_MODES:
            raise ImapSecurityError(
                f"IMAP connection {self.imap_conn_id!r}: extra 'security' is {security!r}; "
                f"use one of {', '.join(SECURITY_MODES)} (plaintext IMAP is not supported)"
            )
        if not conn.host:
            raise ImapSecurityError(f"IMAP connection {self.imap_conn_id!r} has no host")
        return {
            "host": conn.host,
            "port": port or (993 if security == "ssl" else 143),
            "security": security,
            "ca_file": extra.get("ca_file") or None,
            "timeout": float(extra.get("timeout") or 60),
        }

    def ssl_context(self, ca_file: str | None) -> ssl.SSLContext:
        """A verifying context: hostname checked, the system store or ``ca_file`` trusted."""
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ImapSecurityError(
                f"IMAP connection {self.imap_conn_id!r}: cannot load CA file {ca_file!r}: {exc}"
            ) from None

    def _refusal(self, where: str, exc: BaseException) -> ImapSecurityError:
        code = getattr(exc, "verify_code", None)
        if code in _SELF_SIGNED_CODES:
            reason = "presented a self-signed certificate"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"presented a certificate that failed verification ({exc.verify_message})"
        else:
            reason = f"TLS failed ({exc})"
        return ImapSecurityError(
            f"IMAP connection {self.imap_conn_id!r}: {where} {reason}; connection refused"
        )

    def get_conn(self) -> imapclient.IMAPClient:
        """A logged-in client over verified TLS; the caller logs out (prefer :meth:`client`)."""
        s = self.settings()
        conn = self.get_connection(self.imap_conn_id)
        where = f"server {s['host']}:{s['port']}"
        context = self.ssl_context(s["ca_file"])
        try:
            if s["security"] == "ssl":
                client = imapclient.IMAPClient(
                    s["host"], port=s["port"], ssl=True, ssl_context=context, timeout=s["timeout"]
                )
            else:
                client = imapclient.IMAPClient(
                    s["host"], port=s["port"], ssl=False, timeout=s["timeout"]
                )
                if b"STARTTLS" not in client.capabilities():
                    client.shutdown()
                    raise ImapSecurityError(
                        f"IMAP connection {self.imap_conn_id!r}: {where} does not offer "
                        "STARTTLS, which this connection requires; connection refused"
                    )
                client.starttls(context)
        except ssl.SSLError as exc:
            raise self._refusal(where, exc) from None
        except OSError as exc:
            raise ImapSecurityError(
                f"IMAP connection {self.imap_conn_id!r}: cannot connect to {where}: {exc}"
            ) from None
        try:
            client.login(conn.login or "", conn.password or "")
        except (LoginError, IMAPClientError) as exc:
            client.shutdown()
            # the server's text, never our arguments: the password stays out of logs
            raise ImapLoginError(
                f"IMAP connection {self.imap_conn_id!r}: {where} refused the login for "
                f"{conn.login!r}: {_server_text(exc)}"
            ) from None
        return client

    @contextmanager
    def client(self) -> Iterator[imapclient.IMAPClient]:
        """A logged-in, TLS-verified client, logged out on exit."""
        client = self.get_conn()
        try:
            yield client
        finally:
            try:
                client.logout()
            except Exception:  # the session may be gone already; nothing to clean up
                client.shutdown()


def _server_text(exc: BaseException) -> str:
    text = str(exc)
    return text[:300]
