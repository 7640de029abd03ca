"""Mail merge: a message built once by :func:`mime.build_message` with markers in place of
what differs per recipient, then each recipient's bytes from it: its own To, Subject,
Message-ID, a token in its headers and its bodies, folded and encoded by the email package exactly as
``build_message`` would (the tests compare the two byte for byte). Mail to many costs the
email package's work on the few fields that change, not on the whole message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.message import EmailMessage

from erpmail.core import filenames
from erpmail.documents import mime

_TO = "to@merge.example"
_SUBJECT = "merge-subject-7f3a"
_MESSAGE_ID = "<merge-message-id-7f3a@merge.example>"
_TEXT = "merge-text-7f3a"
_HTML = "merge-html-7f3a"
_TOKEN = "tq7"
_TOKEN_CHARS = re.compile(r"[0-9a-z-]+")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._+-]+@[a-z0-9.-]+")  # as check_address leaves it
# printable ASCII words, single-spaced: nothing for the folder to encode or rejoin
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")


@dataclass(frozen=True)
class Merged:
    """One recipient's message: the bytes to queue, its Message-ID and its subject."""

    mime: bytes
    message_id: str
    subject: str


class MergeTemplate:
    """The parts of one message common to all recipients (sender, structure, date, ``fixed``
    headers); :meth:`merge` fills in a recipient. ``tokened`` headers hold ``{token}``, a
    per-recipient string of ``token_length`` characters: since the token is as long as its
    marker and has no space, the email package folds every recipient's header alike."""

    def __init__(
        self,
        *,
        sender: str | tuple[str, str],
        html: bool,
        fixed: Mapping[str, str] | None = None,
        tokened: Mapping[str, str] | None = None,
        token_length: int = 0,
        auto_submitted: str | None = None,
        date: datetime | None = None,
    ) -> None:
        self._build = dict(sender=sender, auto_submitted=auto_submitted, date=date)
        self._headers = {**(fixed or {}), **(tokened or {})}
        self._token_marker = (_TOKEN * token_length)[:token_length]
        self.token_length = token_length
        message = self._message(
            to=_TO, subject=_SUBJECT, text=_TEXT, html=_HTML if html else None,
            message_id=_MESSAGE_ID, token=self._token_marker,
        )  # fmt: skip
        self._date = message["Date"]
        raw = message.as_bytes()
        markers = [
            ("to", _header("To", _TO)),
            ("subject", _header("Subject", _SUBJECT)),
            ("message_id", _header("Message-ID", _MESSAGE_ID)),
            ("text", _body(_TEXT, "plain")),
        ]
        if html:
            markers.append(("html", _body(_HTML, "html")))
        expected = sum(v.count("{token}") for v in (tokened or {}).values())
        if expected and (token_length < 8 or raw.count(self._token_marker.encode()) != expected):
            raise mime.MessageError("mail merge: a token must be 8 characters or more")
        at = 0
        while expected:
            at = raw.index(self._token_marker.encode(), at)
            markers.append(("token", raw[at : at + token_length]))
            at += token_length
            expected -= 1
        # the skeleton cut at each marker: literal pieces between the fields that change
        self._pieces: list[bytes] = []
        self._fields: list[str] = []
        for field, marker in sorted(markers, key=lambda m: raw.index(m[1])):
            before, found, raw = raw.partition(marker)
            if not found or (field != "token" and marker in raw):
                raise mime.MessageError(f"mail merge: marker for {field} not found once")
            self._pieces.append(before)
            self._fields.append(field)
        self._pieces.append(raw)
        self._html = html

    def _message(self, *, to, subject, text, html, message_id, token) -> EmailMessage:
        headers = {name: value.replace("{token}", token) for name, value in self._headers.items()}
        return mime.build_message(
            to=[to], subject=subject, text=text, html=html, message_id=message_id,
            headers=headers, **self._build,
        )  # fmt: skip

    def merge(
        self,
        *,
        to: str,
        subject: str,
        text: str,
        html: str | None,
        message_id: str,
        token: str = "",
        context: str = "",
    ) -> Merged:
        """The recipient's message; a :class:`mime.MessageError` naming ``context`` and the
        field for what ``build_message`` would refuse. ``to`` is a bare address checked
        before (a campaign's recipients are, when frozen)."""
        if (html is not None) != self._html:
            raise mime.MessageError(f"{context}: html body given or missing against the template")
        if len(token) != self.token_length or not _TOKEN_CHARS.fullmatch(token or "-"):
            raise mime.MessageError(f"{context}: token {token!r} not {self.token_length} long")
        if not _PLAIN_ADDRESS.fullmatch(to):  # quoted, or SMTPUTF8: build it whole
            message = self._message(to=mime.check_address(to, context=context, field="to"),
                                    subject=subject, text=text, html=html,
                                    message_id=message_id, token=token)  # fmt: skip
            message.replace_header("Date", self._date)
            return Merged(message.as_bytes(), message_id, message["Subject"])
        mime.check_message_id(message_id, context=context)
        subject = filenames.without_bidi_controls(mime.refuse_newlines(subject, context, "subject"))
        values = {
            "to": _header("To", to),
            "subject": _header("Subject", subject),
            "message_id": _header("Message-ID", message_id),
            "text": _body(text, "plain"),
            "token": token.encode("ascii"),
        }
        if html is not None:
            values["html"] = _body(html, "html")
        out = [self._pieces[0]]
        for field, piece in zip(self._fields, self._pieces[1:], strict=True):
            out += (values[field], piece)
        return Merged(b"".join(out), message_id, subject)


def _header(name: str, value: str) -> bytes:
    """What the generator writes for ``msg[name] = value`` under build_message's policy."""
    line = f"{name}: {value}\r\n"
    if len(line) <= 80 and _PLAIN_VALUE.fullmatch(value) and "=?" not in value:
        return line.encode("ascii")  # one short line of plain words folds to itself
    return mime.SMTP.fold_binary(name, mime.SMTP.header_factory(name, value))


def _body(text: str, subtype: str) -> bytes:
    """The part's quoted-printable payload as ``set_content`` encodes it (contentmanager's
    steps: UTF-8, lines normalised, the email package's encoder), with the generator's CRLF."""
    lines = text.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), 78)
    return "\r\n".join(encoded.splitlines()).encode("ascii") + b"\r\n"
