"""IMAP as an Airflow hook on imapclient (connection type ``erpmail_imap``; connections of
type ``imap`` work the same): verified TLS always, STARTTLS never skipped.

The connection gives host, port, login and password; its extras, read by
:mod:`erpmail.core.transport`, may set ``security`` (``"tls"``: implicit TLS, the default,
port 993; ``"starttls"``: port 143, the default when the port is 143; ``"ssl"`` is read as
``"tls"``), ``ca_file`` (a PEM bundle to trust instead of the system store) and ``timeout``
in seconds (default 60). There is no plaintext mode: credentials never go out in the clear.
Every error is an :class:`ImapError` naming the connection and the server, never the password.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import imapclient
from airflow.sdk import BaseHook
from imapclient.exceptions import IMAPClientError, LoginError

from erpmail.core.transport import (
    IMAP,
    TransportSettings,
    read_settings,
    redact,
    tls_context,
    ui_field_behaviour,
)

# OpenSSL's verify codes for a certificate that signs itself (alone or as a chain's root).
_SELF_SIGNED_CODES = {18, 19}


class ImapError(Exception):
    """Anything the IMAP transport raises."""


class ImapSecurityError(ImapError):
    """The server could not be reached over verified TLS; nothing was sent in the clear."""


class ImapLoginError(ImapError):
    """The server refused the login (the message never contains the password)."""


class ImapHook(BaseHook):
    """IMAP over verified TLS for one Airflow connection.

    ``with hook.client() as c:`` (or ``with ImapHook(conn_id) as c``) gives a logged-in
    ``imapclient.IMAPClient``, logged out on exit.

    :param imap_conn_id: the Airflow connection (type ``erpmail_imap`` or ``imap``): host,
        port, login, password; extras ``security``, ``ca_file``, ``timeout``.
    """

    conn_name_attr = "imap_conn_id"
    default_conn_name = "imap_default"
    conn_type = "erpmail_imap"
    hook_name = "erpmail IMAP"

    def __init__(self, imap_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.imap_conn_id = imap_conn_id
        self._open: Any = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden fields and placeholders of the Connections form."""
        return {k.replace("-", "_"): v for k, v in ui_field_behaviour(IMAP).items()}

    def __enter__(self) -> imapclient.IMAPClient:
        self._open = self.client()
        return self._open.__enter__()

    def __exit__(self, *exc: Any) -> None:
        opened, self._open = self._open, None
        if opened is not None:
            opened.__exit__(*exc)

    def _connection(self):
        try:
            return self.get_connection(self.imap_conn_id)
        except Exception as exc:  # an unknown conn id raises Airflow's own exception types
            raise ImapError(f"IMAP connection {self.imap_conn_id!r}: {exc}") from exc

    def _settings(self, conn) -> TransportSettings:
        try:
            return read_settings(conn, IMAP)
        except ValueError as exc:
            raise ImapSecurityError(f"IMAP connection {self.imap_conn_id!r}: {exc}") from None

    def settings(self) -> TransportSettings:
        """Host, port, security, CA file and timeout as they will be used (no credentials)."""
        return self._settings(self._connection())

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
        conn = self._connection()
        s = self._settings(conn)
        where = f"server {s.host}:{s.port}"
        try:
            context = tls_context(s.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ImapSecurityError(
                f"IMAP connection {self.imap_conn_id!r}: cannot load CA file {s.ca_file!r}: {exc}"
            ) from None
        try:
            if s.security == "tls":
                client = imapclient.IMAPClient(
                    s.host, port=s.port, ssl=True, ssl_context=context, timeout=s.timeout
                )
            else:
                client = imapclient.IMAPClient(s.host, port=s.port, ssl=False, timeout=s.timeout)
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

    def test_connection(self) -> tuple[bool, str]:
        """For the Connections page: connect, secure, log in and NOOP; (ok, what happened).

        The message never contains the password."""
        try:
            conn = self._connection()
            s = self._settings(conn)
        except ImapError as exc:
            return False, str(exc)
        try:
            with self.client() as client:
                client.noop()
        except Exception as exc:  # the page shows any failure as text
            message = str(exc) if isinstance(exc, ImapError) else f"{type(exc).__name__}: {exc}"
            return False, redact(message, conn.login, conn.password)
        return True, f"{s.host}:{s.port} over {s.security}, logged in as {conn.login!r}"


def _server_text(exc: BaseException) -> str:
    text = str(exc)
    return text[:300]
