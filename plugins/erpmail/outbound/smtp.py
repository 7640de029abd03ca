"""The SMTP transport on smtplib, as an Airflow hook (connection type ``erpmail_smtp``;
connections of type ``smtp`` work the same).

Security comes from the connection's extras, read by :mod:`erpmail.core.transport`:
``security`` ``starttls`` | ``tls`` | ``none``; without it port 465 means implicit TLS and
every other port STARTTLS, which is then required (a server that does not offer it is
refused, never a plaintext send). Plain SMTP only when the extras say ``"none"``.
Certificates are verified against the system store or the extras' ``ca_file``; ``timeout``
(seconds, default 30) bounds the connect and every reply. Every error is a
:class:`SmtpError`; account-level failures raise :class:`SmtpAccountError`, whose text names
the account and never the password.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow.sdk import BaseHook

from erpmail.core.transport import (
    SMTP,
    TransportSettings,
    read_settings,
    redact,
    tls_context,
    ui_field_behaviour,
)
from erpmail.outbound.dotstuff import stuff_dots
from erpmail.outbound.envelope import ascii_domain, envelope_address

Outcome = Literal["sent", "deferred", "failed"]

# Queue ids as Postfix ("queued as 4Xyz"), Exim ("id=1abc-00") and others report them.
_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9._-]+)|\bid=([A-Za-z0-9._-]+)", re.IGNORECASE)


class SmtpError(Exception):
    """Anything the SMTP transport raises."""


class SmtpAccountError(SmtpError):
    """The account cannot send at all (TLS, login, connect): stop it, keep its mail queued."""

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(f"mail account {account!r}: {reason}")
        self.account = account
        self.reason = reason


class SmtpDropped(SmtpError):
    """The connection broke while sending one message. ``after_dot``: the whole message,
    final dot included, left this client before the break, so the server may have accepted
    it and a retry may duplicate it (the client cannot tell; a drop mid-DATA on a small
    message looks the same)."""

    def __init__(self, reason: str, *, after_dot: bool) -> None:
        super().__init__(reason)
        self.after_dot = after_dot


@dataclass(frozen=True)
class Delivery:
    """What the server said about one message.

    ``outcome``: sent (some recipient accepted, DATA 250), deferred (a 4xx decides it) or
    failed (5xx). ``code``/``reply``/``stage`` are the deciding reply; ``recipients`` maps
    each address to its RCPT (code, reply); ``queue_id`` is parsed from the final reply.
    """

    outcome: Outcome
    code: int | None  # None: refused before any server reply
    reply: str
    stage: Literal["MAIL", "RCPT", "DATA"]
    recipients: dict[str, tuple[int, str]] = field(default_factory=dict)
    queue_id: str | None = None

    @property
    def accepted(self) -> list[str]:
        return [a for a, (c, _) in self.recipients.items() if c in (250, 251)]


def classify(code: int) -> Outcome:
    """5xx fails for good; anything else unexpected (4xx, garbled) is worth a retry."""
    if 200 <= code < 300:
        return "sent"
    return "failed" if 500 <= code < 600 else "deferred"


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _queue_id(reply: str) -> str | None:
    m = _QUEUE_ID.search(reply)
    return (m.group(1) or m.group(2)) if m else None


class SmtpSession:
    """One logged-in SMTP connection; send messages one after another, then ``close()``
    (or use it as a context manager, which closes it)."""

    def __init__(self, client: smtplib.SMTP, account: str) -> None:
        self.client = client
        self.account = account
        self.sent = 0  # messages handed over on this connection, whatever the outcome
        self.alive = True
        self.last_used = time.monotonic()

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def usable(self, idle_seconds: float = 10.0) -> bool:
        """Alive, and after an idle spell still answering NOOP (servers drop idle clients)."""
        if self.alive and time.monotonic() - self.last_used > idle_seconds:
            try:
                self.alive = self.client.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                self.alive = False
            self.last_used = time.monotonic()
        return self.alive

    def send(
        self,
        envelope_from: str,
        recipients: list[str],
        mime: bytes,
        before_dot: Callable[[], None] | None = None,
    ) -> Delivery:
        """Send ``mime`` to ``recipients`` (the envelope; headers are not consulted).

        ``before_dot`` is called once the server takes DATA, before the text and its final
        dot are sent; if it raises, nothing more is sent and the session is dead. Returns the server's verdict;
        raises :class:`SmtpDropped` when the connection breaks, after which the session is
        dead.
        """
        self.sent += 1
        try:
            return self._send(envelope_from, recipients, mime, before_dot)
        except BaseException:
            self._dead()
            raise
        finally:
            self.last_used = time.monotonic()

    def _send(
        self,
        envelope_from: str,
        recipients: list[str],
        mime: bytes,
        before_dot: Callable[[], None] | None,
    ) -> Delivery:
        c = self.client
        options = []
        if c.does_esmtp and c.has_extn("size"):
            options.append(f"SIZE={len(mime)}")
        # domains go as IDNA; only a non-ASCII local part needs the server's SMTPUTF8
        envelope_from = ascii_domain(envelope_from)
        wire = {address: ascii_domain(address) for address in recipients}
        unicode_local = [a for a in [envelope_from, *wire.values()] if not a.isascii()]
        if unicode_local:
            if not c.has_extn("smtputf8"):
                return Delivery(
                    "failed",
                    None,
                    f"not sent: {unicode_local[0]!r} has a non-ASCII local part, which needs"
                    " SMTPUTF8, and this server does not offer it",
                    "MAIL",
                )
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        elif c.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        code, reply = self._command(self._mail, envelope_from, options, after_dot=False)
        if code != 250:
            self._reset(code)
            return Delivery(classify(code), code, reply, "MAIL")
        answers: dict[str, tuple[int, str]] = {}
        for address in recipients:
            rcode, rreply = self._command(self._rcpt, wire[address], after_dot=False)
            answers[address] = (rcode, rreply)
            if rcode == 421:  # the server is closing: the rest cannot be tried now
                self._dead()
                return Delivery("deferred", rcode, rreply, "RCPT", answers)
        accepted = [a for a, (rc, _) in answers.items() if rc in (250, 251)]
        if not accepted:
            # the recipients decide: any temporary refusal makes the whole message worth a retry
            worst = min(answers.values(), key=lambda a: (classify(a[0]) != "deferred", a[0]))
            self._reset(worst[0])
            return Delivery(classify(worst[0]), worst[0], worst[1], "RCPT", answers)
        code, reply = self._data(mime, before_dot)
        if code != 250:
            self._reset(code)
            return Delivery(classify(code), code, reply, "DATA", answers)
        return Delivery("sent", code, reply, "DATA", answers, _queue_id(reply))

    def _mail(self, sender: str, options: list[str]) -> tuple[int, bytes]:
        if "SMTPUTF8" in options:  # smtplib's mail() switches the command encoding
            return self.client.mail(sender, options)
        self.client.putcmd("mail", f"FROM:{envelope_address(sender)} {' '.join(options)}".rstrip())
        return self.client.getreply()

    def _rcpt(self, address: str) -> tuple[int, bytes]:
        self.client.putcmd("rcpt", f"TO:{envelope_address(address)}")
        return self.client.getreply()

    def _command(self, fn, *args, after_dot: bool) -> tuple[int, str]:
        try:
            code, reply = fn(*args)
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            raise SmtpDropped(f"connection lost: {e}", after_dot=after_dot) from e
        return code, _text(reply)

    def _data(self, mime: bytes, before_dot: Callable[[], None] | None) -> tuple[int, str]:
        # smtplib.data() cannot tell a drop before the final dot from one after it
        c = self.client
        code, reply = self._command(lambda: (c.putcmd("data"), c.getreply())[1], after_dot=False)
        if code != 354:
            return code, reply
        payload = stuff_dots(mime)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        if before_dot is not None:  # the text and its dot go in one send: one segment apart
            before_dot()
        try:
            c.send(payload + b".\r\n")
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            # sendall failing means the tail, with the final dot, never left us
            raise SmtpDropped(f"connection lost in DATA: {e}", after_dot=False) from e
        return self._command(c.getreply, after_dot=True)

    def _reset(self, code: int) -> None:
        if code == 421:
            self._dead()
            return
        try:
            self.client.rset()
        except (smtplib.SMTPException, OSError):
            self._dead()

    def _dead(self) -> None:
        self.alive = False
        try:
            self.client.close()
        except OSError:
            pass

    def close(self) -> None:
        """QUIT politely when the connection still stands; close it in any case."""
        if self.alive:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                pass
        self._dead()


class SmtpHook(BaseHook):
    """SMTP for one account's Airflow connection.

    ``with hook.session() as s: s.send(...)`` (or ``with SmtpHook(conn_id) as s``) opens a
    verified, logged-in session and closes it on exit.

    :param smtp_conn_id: the Airflow connection (type ``erpmail_smtp`` or ``smtp``): host,
        port, login, password; extras ``security``, ``ca_file``, ``timeout``.
    :param account: the name errors give for the account (default: the connection id).
    """

    conn_name_attr = "smtp_conn_id"
    default_conn_name = "smtp_default"
    conn_type = "erpmail_smtp"
    hook_name = "erpmail SMTP"

    def __init__(
        self, smtp_conn_id: str = default_conn_name, *, account: str | None = None
    ) -> None:
        super().__init__()
        self.smtp_conn_id = smtp_conn_id
        self.account = account or smtp_conn_id
        self._open: SmtpSession | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden fields and placeholders of the Connections form."""
        behaviour = ui_field_behaviour(SMTP)
        return {k.replace("-", "_"): v for k, v in behaviour.items()}

    def __enter__(self) -> SmtpSession:
        self._open = self.session()
        return self._open

    def __exit__(self, *exc: object) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def _fail(
        self, reason: str, password: str | None, login: str | None = None
    ) -> SmtpAccountError:
        return SmtpAccountError(self.account, redact(reason, login, password))

    def _connection(self):
        try:
            return self.get_connection(self.smtp_conn_id)
        except Exception as e:  # an unknown conn id raises Airflow's own exception types
            raise SmtpAccountError(self.account, f"connection {self.smtp_conn_id!r}: {e}") from e

    def _settings(self, conn) -> TransportSettings:
        try:
            return read_settings(conn, SMTP)
        except ValueError as e:
            raise SmtpAccountError(self.account, f"connection {self.smtp_conn_id!r}: {e}") from None

    def settings(self) -> TransportSettings:
        """Host, port, security, CA file and timeout as they will be used (no credentials)."""
        return self._settings(self._connection())

    def get_conn(self) -> SmtpSession:
        """A logged-in session; the caller closes it (prefer :meth:`session` in ``with``)."""
        return self.session()

    def session(self) -> SmtpSession:
        """Connect, secure and log in; raises :class:`SmtpAccountError` when that fails."""
        conn = self._connection()
        s = self._settings(conn)
        password = conn.password
        where = f"{s.host}:{s.port}"
        client: smtplib.SMTP | None = None
        try:
            ctx = tls_context(s.ca_file) if s.security != "none" else None
            if s.security == "tls":
                client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=ctx)
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            client.ehlo()
            if s.security == "starttls":
                if not client.has_extn("starttls"):
                    raise self._fail(
                        f"{where} does not offer STARTTLS; refusing to send in plaintext", None
                    )
                code, reply = client.starttls(context=ctx)
                if code != 220:
                    raise self._fail(f"{where} refused STARTTLS: {code} {_text(reply)}", password)
                client.ehlo()
            if conn.login:
                client.login(conn.login, password or "")
            return SmtpSession(client, self.account)
        except SmtpAccountError:
            _close(client)
            raise
        except ssl.SSLCertVerificationError as e:
            _close(client)
            raise self._fail(
                f"{where}: TLS certificate not trusted: {e.verify_message}", password
            ) from None
        except smtplib.SMTPAuthenticationError as e:
            _close(client)
            raise self._fail(
                f"{where}: login as {conn.login!r} refused: {e.smtp_code} {_text(e.smtp_error)}",
                password,
                conn.login,
            ) from None
        except (smtplib.SMTPException, OSError) as e:  # OSError covers timeouts
            _close(client)
            raise self._fail(f"{where}: {type(e).__name__}: {e}", password) from None

    def test_connection(self) -> tuple[bool, str]:
        """For the Connections page: connect, secure, log in and NOOP; (ok, what happened).

        The message never contains the password."""
        try:
            conn = self._connection()
            s = self._settings(conn)
        except SmtpAccountError as e:
            return False, e.reason
        try:
            with self.session() as session:
                code, reply = session.client.noop()
        except Exception as e:  # the page shows any failure as text
            message = e.reason if isinstance(e, SmtpAccountError) else f"{type(e).__name__}: {e}"
            return False, message.replace(conn.password, "***") if conn.password else message
        if code != 250:
            return False, f"{s.host}:{s.port}: NOOP answered {code} {_text(reply)}"
        login = f"logged in as {conn.login!r}" if conn.login else "no login"
        return True, f"{s.host}:{s.port} over {s.security}, {login}: ready to send"


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        try:
            client.close()
        except OSError:
            pass
