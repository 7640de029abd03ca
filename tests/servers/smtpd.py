"""An aiosmtpd server for tests: STARTTLS or implicit TLS, AUTH, a record of accepted mail,
and faults settable at runtime from the test thread.

Faults: `fail(stage, reply)` answers MAIL, RCPT or DATA with `reply` instead of 250;
`drop("before_dot" | "after_dot")` closes the connection inside DATA (after the dot the
message is recorded first); `delay(stage, seconds)` sleeps before replying. Each takes
`times` (None = until `reset()`); RCPT faults can be limited to one recipient.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.servers.dovecot import HOST, free_port
from tests.servers.tlsca import CertSet

Stage = Literal["MAIL", "RCPT", "DATA"]
Mode = Literal["starttls", "plain", "smtps"]


@dataclass(frozen=True)
class Received:
    """One accepted message: envelope, the DATA bytes as sent (dot-unstuffed, CRLF kept,
    final dot line excluded), arrival times and the session it came over."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    monotonic: float
    wall: float
    peer: tuple[str, int]
    login: str | None
    tls: bool


@dataclass
class _Fault:
    stage: str  # MAIL, RCPT, DATA, or DROP_BEFORE_DOT / DROP_AFTER_DOT
    reply: str | None = None
    delay: float = 0.0
    rcpt: str | None = None
    times: int | None = None


class _Handler:
    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.owner.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        reply = await self.owner._apply("MAIL")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = await self.owner._apply("RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = await self.owner._apply("DATA")
        if reply:
            return reply
        self.owner._record(session, envelope)
        if self.owner._take("DROP_AFTER_DOT"):
            server._drop_reply = True
        return "250 OK"


class _SMTP(SMTP):
    """aiosmtpd's SMTP with the two connection drops that handler hooks cannot express."""

    _drop_reply = False

    async def push(self, status):
        if self._drop_reply:
            # The message is stored; the client must never see the 250.
            if self.transport is not None:
                self.transport.close()
            return
        await super().push(status)
        if status[:3] in ("354", b"354"):  # aiosmtpd pushes str and bytes
            self._quickack()

    async def smtp_DATA(self, arg):
        owner = self.event_handler.owner
        if self.envelope is not None and self.envelope.rcpt_tos and owner._take("DROP_BEFORE_DOT"):
            await super().push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")  # some data arrived, the dot has not
            self.transport.close()
            return
        await super().smtp_DATA(arg)

    def _quickack(self) -> None:
        # Loopback's 64 KB MSS makes a client's second TLS record of a message a "small"
        # segment that Nagle holds until our delayed ACK: 40 ms per mail. ACK at once instead;
        # after the 354, since sending it puts the socket back into delayed-ACK mode.
        transport = self._original_transport or self.transport
        sock = transport.get_extra_info("socket") if transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class _Controller(Controller):
    def factory(self):
        return _SMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class SmtpServer:
    """A running test SMTP server. Connect to `host`:`port`; trust `ca_file`; log in with any
    name/password in `users`. `messages` is a snapshot of everything accepted so far."""

    host: str
    port: int
    mode: Mode
    ca_file: Path
    users: dict[str, str]
    auth_required: bool = False
    # a careless server: its 535 repeats what the client sent (AUTH PLAIN's base64)
    echo_auth: bool = False
    _messages: list[Received] = field(default_factory=list, repr=False)
    _faults: list[_Fault] = field(default_factory=list, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _controller: Controller | None = field(default=None, repr=False)

    @property
    def credentials(self) -> tuple[str, str]:
        """The (name, password) of the only user; fixtures create exactly one."""
        ((name, password),) = self.users.items()
        return name, password

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least `count` messages are recorded; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"{len(self._messages)} of {count} messages arrived")
            return list(self._messages)

    def fail(
        self, stage: Stage, reply: str, *, rcpt: str | None = None, times: int | None = None
    ) -> None:
        """Answer `stage` with `reply` (e.g. "451 4.3.0 try later"); RCPT only for `rcpt`
        when given; only the next `times` times when given."""
        if rcpt is not None and stage != "RCPT":
            raise ValueError("rcpt applies to RCPT only")
        self._add(_Fault(stage, reply=reply, rcpt=rcpt, times=times))

    def drop(self, when: Literal["before_dot", "after_dot"], *, times: int | None = None) -> None:
        """Close the connection inside DATA: before the final dot (nothing recorded), or after
        it (message recorded, no reply sent)."""
        self._add(_Fault(f"DROP_{when.upper()}", times=times))

    def delay(self, stage: Stage, seconds: float, *, times: int | None = None) -> None:
        """Sleep `seconds` before replying to `stage`."""
        self._add(_Fault(stage, delay=seconds, times=times))

    def reset(self) -> None:
        """Forget all recorded messages and faults."""
        with self._cond:
            self._messages.clear()
            self._faults.clear()

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def _add(self, fault: _Fault) -> None:
        with self._cond:
            self._faults.append(fault)

    # The rest runs on the server's event loop thread.

    def _take(self, stage: str, rcpt: str | None = None) -> list[_Fault]:
        """Matching faults, each use counted down; expired ones are removed."""
        taken = []
        with self._cond:
            if not self._faults:  # the hot path under benchmarks
                return taken
            for f in list(self._faults):
                if f.stage != stage or (f.rcpt is not None and f.rcpt != rcpt):
                    continue
                taken.append(f)
                if f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
        return taken

    async def _apply(self, stage: str, rcpt: str | None = None) -> str | None:
        reply = None
        for f in self._take(stage, rcpt):
            if f.delay:
                await asyncio.sleep(f.delay)
            reply = reply or f.reply
        return reply

    def _record(self, session, envelope) -> None:
        login = session.auth_data.login.decode() if session.auth_data else None
        msg = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content,
            monotonic=time.monotonic(),
            wall=time.time(),
            peer=tuple(session.peer),
            login=login,
            tls=session.ssl is not None or self.mode == "smtps",
        )
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.users.get(
            auth_data.login.decode(errors="replace")
        ) == auth_data.password.decode(errors="replace")
        # handled=False: on failure aiosmtpd itself must send the 535.
        message = None
        if not ok and self.echo_auth and isinstance(auth_data, LoginPassword):
            echoed = base64.b64encode(b"\0" + auth_data.login + b"\0" + auth_data.password)
            message = f"535 5.7.8 Authentication failed: {mechanism} {echoed.decode()}"
        return AuthResult(
            success=ok, handled=False, auth_data=auth_data if ok else None, message=message
        )


def start_smtpd(
    certs: CertSet,
    which: str = "",
    *,
    mode: Mode = "starttls",
    users: dict[str, str] | None = None,
    require_starttls: bool = False,
    auth_required: bool = False,
    smtputf8: bool = True,
) -> SmtpServer:
    """Start a server presenting `certs.server_context(which)`'s certificate. `mode`:
    "starttls" offers STARTTLS, "plain" offers none (and allows AUTH in the clear, so a
    client has to refuse on its own), "smtps" is TLS from the first byte. `smtputf8`: whether
    the server offers SMTPUTF8."""
    server = SmtpServer(HOST, 0, mode, certs.ca_cert, dict(users or {}), auth_required)
    tls_ctx = certs.server_context(which) if mode != "plain" else None
    kwargs = dict(
        server_hostname="localhost",  # else aiosmtpd does a slow getfqdn()
        authenticator=server._authenticate,
        # Enforced in handle_MAIL instead: aiosmtpd warns on AUTH required without its TLS.
        auth_required=False,
        # aiosmtpd only knows about TLS it negotiated by STARTTLS, so under SMTPS it would
        # hide AUTH; there the whole connection is encrypted anyway.
        auth_require_tls=mode == "starttls",
        require_starttls=require_starttls and mode == "starttls",
        decode_data=False,
        enable_SMTPUTF8=smtputf8,
    )
    if mode == "starttls":
        kwargs["tls_context"] = tls_ctx
    elif mode == "smtps":
        kwargs["ssl_context"] = tls_ctx
    last: Exception | None = None
    for _attempt in range(5):
        port = free_port()
        controller = _Controller(_Handler(server), hostname=HOST, port=port, **kwargs)
        try:
            controller.start()
        except Exception as e:  # a port clash with a parallel session: pick another
            last = e
            continue
        server.port, server._controller = port, controller
        return server
    raise RuntimeError(f"aiosmtpd did not start: {last!r}")
