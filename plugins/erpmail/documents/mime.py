"""Building outgoing messages: ``email.message.EmailMessage`` with policy SMTP.

Text + HTML alternatives, inline ``cid:`` images (signatures), PDF attachments; non-ASCII
display names, subjects and file names are encoded by the policy (RFC 2047 / RFC 2231).
Header values with CR or LF are refused, addresses are checked with email-validator
(syntax only), and there is no Bcc header: blind copies belong to the envelope only.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from email_validator import EmailNotValidError, validate_email

from erpmail.core import filenames
from erpmail.documents.templates import InlineImage

__all__ = [
    "Attachment",
    "InlineImage",
    "MessageError",
    "build_message",
    "check_address",
    "check_message_id",
    "make_message_id",
    "refuse_newlines",
]


class ListHeader(UnstructuredHeader):
    """RFC 2369 list headers (``List-Unsubscribe``): angle-bracketed URLs that receivers read
    as they stand, so folded only between them, never into encoded words as the policy does
    with a word longer than a line."""

    def fold(self, *, policy: policy.EmailPolicy) -> str:
        urls = [u.strip() for u in str(self).replace(">,", ">\0").split("\0")]
        return f"{self.name}: " + f",{policy.linesep} ".join(urls) + policy.linesep


_REGISTRY = HeaderRegistry()
_REGISTRY.map_to_type("list-unsubscribe", ListHeader)
SMTP = policy.SMTP.clone(header_factory=_REGISTRY)
"""The policy of every message built here: SMTP's, with :class:`ListHeader`."""
SMTPUTF8 = SMTP.clone(utf8=True)


class MessageError(ValueError):
    """A message cannot be built; the text names the record, the field and the value."""


@dataclass(frozen=True)
class Attachment:
    """A file attached to a message (a letter's PDF by default)."""

    filename: str
    data: bytes
    mime_type: str = "application/pdf"


def _where(context: str, field: str) -> str:
    return f"{context} field {field}" if context else f"field {field}"


def refuse_newlines(value: str, context: str, field: str) -> str:
    """``value`` when it holds no line break (a header injection); a MessageError otherwise."""
    if "\r" in value or "\n" in value:
        raise MessageError(f"{_where(context, field)}: line break in {value!r} refused")
    return value


def check_address(address: str, *, context: str = "", field: str = "email") -> str:
    """The address normalised (IDNA domain), or ``MessageError`` naming context and field."""
    refuse_newlines(address, context, field)
    try:
        checked = validate_email(address.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise MessageError(f"{_where(context, field)}: invalid address {address!r}: {exc}") from exc
    # email-validator lowercases the local part; a mailbox may care, so keep it as given
    local = address.strip().rpartition("@")[0]
    return f"{local}@{checked.ascii_domain}"


def _address(value: str | tuple[str, str], context: str, field: str) -> Address:
    """``'a@b'``, ``'Name <a@b>'`` or ``('Name', 'a@b')`` as a checked header address."""
    if isinstance(value, tuple):
        name, addr = value
    else:
        refuse_newlines(value, context, field)
        name, addr = parseaddr(value) if "<" in value else ("", value)
        if not addr:
            raise MessageError(f"{_where(context, field)}: invalid address {value!r}")
    refuse_newlines(name or "", context, f"{field} display name")
    name = filenames.without_bidi_controls(name or "")
    local, _, domain = check_address(addr, context=context, field=field).rpartition("@")
    return Address(display_name=name or "", username=local, domain=domain)


def check_message_id(value: str, *, context: str = "", field: str = "message_id") -> str:
    """``value`` when it is one ``<id@domain>``; a MessageError naming the field otherwise."""
    refuse_newlines(value, context, field)
    if not (value.startswith("<") and value.endswith(">") and "@" in value):
        raise MessageError(f"{_where(context, field)}: {value!r} is not <id@domain>")
    return value


@functools.lru_cache(maxsize=256)
def _checked_domain(domain: str) -> str:
    # a run makes thousands of ids for a handful of domains
    return check_address(f"postmaster@{domain}", field="domain").rpartition("@")[2]


def make_message_id(key: str, domain: str) -> str:
    """A Message-ID that is the same for the same outbox key and domain: ``<hash@domain>``.

    96 bits of SHA-256 keep ``Message-ID: <...>`` on one line for domains up to 39 characters
    (longer ones fold; a parser reading it back should strip the whitespace).
    """
    refuse_newlines(key, "", "key")
    domain = _checked_domain(domain)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return f"<{digest}@{domain}>"


def build_message(
    *,
    sender: str | tuple[str, str],
    to: Sequence[str | tuple[str, str]],
    subject: str,
    text: str,
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    message_id: str,
    auto_submitted: str | None = "auto-generated",
    cc: Sequence[str | tuple[str, str]] = (),
    reply_to: str | tuple[str, str] | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    date: datetime | None = None,
    inline_images: Sequence[InlineImage] = (),
    headers: Mapping[str, str] | None = None,
    context: str = "",
) -> EmailMessage:
    """A complete message; ``context`` (e.g. ``"partner 000123"``) names the record in errors.

    Structure: mixed[ alternative[ text, related[ html, images ] ], attachments ], each
    level present only when needed. ``inline_images`` are referenced as ``cid:<cid>``.
    """
    if not to:
        raise MessageError(f"{_where(context, 'to')}: no recipient")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(sender, context, "from")
    msg["To"] = tuple(_address(a, context, "to") for a in to)
    if cc:
        msg["Cc"] = tuple(_address(a, context, "cc") for a in cc)
    if reply_to:
        msg["Reply-To"] = _address(reply_to, context, "reply_to")
    # no reordering controls: a partner's name must not turn "exe.pdf" into "pdf.exe"
    msg["Subject"] = filenames.without_bidi_controls(refuse_newlines(subject, context, "subject"))
    moment = date or datetime.now(UTC)
    if moment.tzinfo is None:
        raise MessageError(f"{_where(context, 'date')}: naive datetime {moment!r}")
    msg["Date"] = format_datetime(moment)
    check_message_id(message_id, context=context)
    if in_reply_to:
        check_message_id(in_reply_to, context=context, field="in_reply_to")
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        for ref in references:
            refuse_newlines(ref, context, "references")
        msg["References"] = " ".join(references)
    if auto_submitted:
        msg["Auto-Submitted"] = refuse_newlines(auto_submitted, context, "auto_submitted")
    for name, value in (headers or {}).items():  # e.g. List-Unsubscribe, Precedence
        msg[refuse_newlines(name, context, "header")] = refuse_newlines(value, context, name)
    msg["MIME-Version"] = "1.0"

    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        html_part = msg.get_payload()[-1]
        for image in inline_images:
            refuse_newlines(image.cid, context, "inline image")
            maintype, _, subtype = image.mime_type.partition("/")
            html_part.add_related(
                image.data,
                maintype=maintype,
                subtype=subtype,
                cid=f"<{image.cid}>",
                filename=filenames.safe_filename(image.filename, f"image.{subtype or 'bin'}"),
                disposition="inline",
            )
    elif inline_images:
        raise MessageError(f"{_where(context, 'inline_images')}: inline images need an HTML body")
    for n, attachment in enumerate(attachments, start=1):
        refuse_newlines(attachment.filename, context, "attachment file name")
        maintype, _, subtype = attachment.mime_type.partition("/")
        name = filenames.safe_filename(attachment.filename, f"attachment-{n}.{subtype or 'bin'}")
        msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=name)
    # a non-ASCII local part cannot be encoded in a header: such mail goes as UTF-8, by a
    # server that offers SMTPUTF8 (the dispatcher fails it alone with one that does not)
    if not all(
        address.username.isascii()
        for name in ("From", "To", "Cc", "Reply-To")
        if msg[name] is not None
        for address in msg[name].addresses
    ):
        msg.policy = SMTPUTF8
    return msg
