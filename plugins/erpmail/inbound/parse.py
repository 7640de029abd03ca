"""Parsing one received mail: decoded headers, text and HTML bodies, attachments, defects.

The stdlib ``email`` package with ``policy.default`` does the work; every defect it reports
is kept, plus the ones an ERP cares about (missing or duplicated headers, undeclared 8-bit,
unknown or wrong charsets, absurd nesting or header sizes). Nothing here raises on bad
input: a mail that cannot be parsed comes back with ``malformed`` set and its defects.

Memory: the source is fed to the parser in small chunks, and a base64 attachment is decoded
in slices straight to its sink, so a large mail costs about two copies of its size, not five.
Speed: header objects cached and plain headers read past the header parser (``headers``),
multipart boundaries matched without a regular expression each (``boundary``).
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import io
import mimetypes
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser
from email.utils import parsedate_to_datetime
from typing import BinaryIO

from erpmail.core import filenames
from erpmail.inbound import boundary, headers
from erpmail.inbound.headers import MAX_HEADER_CHARS

FEED_CHUNK = 64 * 1024
DECODE_CHUNK = 1024 * 1024
MAX_DEPTH = 100  # MIME nesting beyond this is kept in the raw .eml only
MAX_SUBJECT_CHARS = 2000
MAX_BODY_CHARS = 1_000_000  # the full body stays in the .eml; the row holds a searchable part
MAX_ADDRESSES = 500
MAX_REFERENCES = 100
MIME_HEADERS = ("content-type", "content-transfer-encoding", "content-disposition")
TRANSFER_ENCODINGS = frozenset(("7bit", "8bit", "binary", "base64", "quoted-printable"))
SINGLE_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "in-reply-to")
REQUIRED_HEADERS = ("From", "Date")
# Headers the autoresponder and the alert look at, kept verbatim (decoded, bounded).
AUTOMATION_HEADERS = (
    "auto-submitted",
    "precedence",
    "list-id",
    "list-unsubscribe",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "return-path",
)

_MSGID = re.compile(r"<[^<>\s]{1,900}>")
_BARE_MSGID = re.compile(r"[^<>\s]{1,900}")
_BAD_QP = re.compile(r"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\n|[ \t]*$)")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")
_PATHLIKE = re.compile(r"[/\\]|\.\.|[\x00-\x1f\x7f]")
_ENCODED_WORD = re.compile(r"=\?([^?*\s]{1,60})(?:\*[^?]*)?\?[bBqQ]\?")
# Header names policy.default parses as unstructured text.
_UNSTRUCTURED = frozenset(("subject", *AUTOMATION_HEADERS))


@dataclass
class Attachment:
    """One attachment; ``chunks()`` yields its decoded bytes once and then sets size/sha256."""

    index: int
    filename: str
    content_type: str
    _part: Message = field(repr=False)
    _defects: list[str] = field(repr=False)
    size: int = 0
    sha256: str = ""

    def chunks(self) -> Iterator[bytes]:
        """The decoded content in slices; afterwards the part's payload is released."""
        digest = hashlib.sha256()
        size = 0
        for chunk in _decoded(self._part, self.filename, self._defects):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        self.size, self.sha256 = size, digest.hexdigest()
        if not self._part.is_multipart():
            self._part.set_payload("")  # the bytes went to the sink; do not hold them twice

    def consume(self, write: Callable[[bytes], object] | None = None) -> None:
        """Run ``chunks()`` to the end, passing each slice to ``write`` when given."""
        for chunk in self.chunks():
            if write is not None:
                write(chunk)


@dataclass
class ParsedMail:
    """What the database keeps of a mail besides its raw bytes."""

    message_id: str | None = None
    subject: str = ""
    from_address: str | None = None
    from_name: str | None = None
    to_addresses: list[str] = field(default_factory=list)
    cc_addresses: list[str] = field(default_factory=list)
    sent_date: datetime | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    body_text: str | None = None
    body_html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # AUTOMATION_HEADERS present
    defects: list[str] = field(default_factory=list)

    @property
    def malformed(self) -> bool:
        """Whether the parser or our checks found anything wrong with the mail."""
        return bool(self.defects)


def clean_text(text: str, limit: int | None = None) -> str:
    """Text PostgreSQL accepts: raw 8-bit recovered as UTF-8 where it is, no NUL, bounded."""
    if limit is not None and len(text) > limit:
        text = text[:limit]
    if not text.isascii():
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def sanitize_filename(name: str | None, fallback: str) -> str:
    """A file name safe as one path segment: the last component only (``filenames``)."""
    name = re.split(r"[/\\]", clean_text((name or "").replace("\x00", "")))[-1]
    return filenames.safe_filename(name, fallback)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name (2).ext`` and so on when the mail already has one so named."""
    if name.lower() not in taken:
        taken.add(name.lower())
        return name
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem):
        stem, ext = name, ""
    n = 2
    while True:
        suffix = f" ({n}).{ext}" if ext else f" ({n})"
        room = filenames.MAX_FILENAME_BYTES - len(suffix.encode())
        candidate = filenames.capped_name(stem, "", room) + suffix
        if candidate.lower() not in taken:
            taken.add(candidate.lower())
            return candidate
        n += 1


def normalize_message_id(value: str | None, defects: list[str] | None = None) -> str | None:
    """``<id@host>`` from a Message-ID header value, or None when there is no usable one."""
    if value is None:
        return None
    text = clean_text(str(value)).strip()
    if not text:
        return None
    if _MSGID.fullmatch(text):
        return text
    found = _MSGID.search(text)
    if found is None and _BARE_MSGID.fullmatch(text):
        found_text = f"<{text}>"
    else:
        found_text = found.group(0) if found else None
    if defects is not None:
        defects.append(f"InvalidMessageIdDefect: {text[:80]!r}")
    return found_text


def message_id_from_header_block(block: bytes) -> str | None:
    """The Message-ID of a header block (as from ``BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]``)."""
    parser = BytesFeedParser(policy=policy.default)
    parser.feed(block)
    msg = parser.close()
    return normalize_message_id(_header_str(msg, "message-id", []))


def parse(source: bytes | BinaryIO) -> ParsedMail:
    """Parse a raw mail (bytes or a binary stream, read in chunks); never raises on bad mail."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    parser = boundary.bytes_feed_parser(headers.caching_policy())
    seen = 0
    try:
        nul = False
        while chunk := stream.read(FEED_CHUNK):
            seen += len(chunk)
            nul = nul or b"\x00" in chunk
            parser.feed(chunk)
        msg = parser.close()
    except Exception as exc:  # the parser gave up: the raw bytes are all there is
        return ParsedMail(defects=[f"ParseError: {type(exc).__name__}: {str(exc)[:200]}"])
    mail = ParsedMail()
    if seen == 0:
        mail.defects.append("EmptyMessageDefect")
    if nul:
        mail.defects.append("NulByteDefect")
    try:
        _fill(mail, msg)
    except RecursionError:
        mail.defects.append("NestingTooDeepDefect: recursion limit")
    except Exception as exc:  # a defect the parser did not foresee; keep what we have
        mail.defects.append(f"ParseError: {type(exc).__name__}: {str(exc)[:200]}")
    return mail


def _fill(mail: ParsedMail, msg: EmailMessage) -> None:
    defects = mail.defects
    _header_checks(msg, defects)
    mail.message_id = normalize_message_id(_header_str(msg, "message-id", defects), defects)
    mail.subject = clean_text(_header_str(msg, "subject", defects) or "", MAX_SUBJECT_CHARS)
    mail.from_name, mail.from_address = _first_address(msg, "from", defects)
    mail.to_addresses = _addresses(msg, "to", defects)
    mail.cc_addresses = _addresses(msg, "cc", defects)
    mail.sent_date = _date(msg, defects)
    reply_ids = _MSGID.findall(_raw_header(msg, "in-reply-to") or "")
    mail.in_reply_to = reply_ids[0] if reply_ids else None
    mail.references = _MSGID.findall(_raw_header(msg, "references") or "")[:MAX_REFERENCES]
    for name in AUTOMATION_HEADERS:
        value = _header_str(msg, name, defects)
        if value is not None:
            mail.headers[name] = clean_text(value, 1000)
    leaves = list(_leaves(msg, 0, defects))
    plain = _body_part(msg, "plain")
    html = _body_part(msg, "html")
    if plain is not None:
        mail.body_text = _text_of(plain, defects)
    if html is not None:
        mail.body_html = _text_of(html, defects)
    # after the bodies are decoded: the stdlib notes bad base64 on the part while decoding
    _collect_parser_defects(msg, defects)
    taken: set[str] = set()
    for index, part in enumerate(leaves, start=1):
        if part is plain or part is html:
            continue
        content_type = part.get_content_type()
        try:
            raw_name = part.get_filename()
        except Exception:
            raw_name = None
            defects.append(f"InvalidFilenameDefect: part {index}")
        fallback = f"part-{index}{mimetypes.guess_extension(content_type) or '.bin'}"
        safe = sanitize_filename(raw_name, fallback)
        if raw_name and _PATHLIKE.search(raw_name):
            defects.append(f"UnsafeFilenameDefect: {clean_text(raw_name, 200)!r}")
        elif raw_name and ("\ufffd" in raw_name or not clean_text(raw_name).isprintable()):
            defects.append(f"UndecodableFilenameDefect: part {index}")
        name = unique_name(safe, taken)
        mail.attachments.append(Attachment(index, name, content_type, part, defects))


def _header_checks(msg: Message, defects: list[str]) -> None:
    counts: dict[str, int] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        if len(value) > MAX_HEADER_CHARS:
            defects.append(f"OversizedHeaderDefect: {name} ({len(value)} characters)")
        for charset in set(_ENCODED_WORD.findall(value[:10000])):
            try:
                codecs.lookup(charset)
            except LookupError:
                defects.append(f"UnknownCharsetDefect: {name}: {charset[:40]}")
        if not value.isascii() and any("\udc80" <= ch <= "\udcff" for ch in value[:10000]):
            defects.append(f"UndeclaredEightBitHeaderDefect: {name}")
    for key in SINGLE_HEADERS:
        if counts.get(key, 0) > 1:
            defects.append(f"DuplicateHeaderDefect: {key} ({counts[key]} times)")
    for name in REQUIRED_HEADERS:
        if counts.get(name.lower(), 0) == 0:
            defects.append(f"MissingHeaderDefect: {name}")


def _raw_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.lower() == name:
            return value[:MAX_HEADER_CHARS]
    return None


def _header_str(msg: Message, name: str, defects: list[str]) -> str | None:
    """The decoded header (first occurrence); an oversized or undecodable one stays raw."""
    raw = _raw_header(msg, name)
    if raw is None:
        return None
    if len(raw) >= MAX_HEADER_CHARS:
        return raw
    plain = headers.plain_value(raw)
    if plain is not None and (
        name in _UNSTRUCTURED or (name == "message-id" and headers.PLAIN_MSGID.fullmatch(plain))
    ):
        return plain
    try:
        value = msg[name]
        for defect in getattr(value, "defects", ()):
            defects.append(f"{type(defect).__name__}: {name}")
        return str(value)
    except Exception as exc:
        defects.append(f"HeaderParseDefect: {name}: {type(exc).__name__}")
        return raw


def _first_address(msg: Message, name: str, defects: list[str]) -> tuple[str | None, str | None]:
    found = _address_objects(msg, name, defects)
    if not found:
        return None, None
    display, addr = found[0]
    return (clean_text(display, 500) or None), (clean_text(addr, 500) or None)


def _addresses(msg: Message, name: str, defects: list[str]) -> list[str]:
    return [clean_text(a, 500) for _, a in _address_objects(msg, name, defects) if a][
        :MAX_ADDRESSES
    ]


def _address_objects(msg: Message, name: str, defects: list[str]) -> list[tuple[str, str]]:
    raw = _raw_header(msg, name)
    if raw is None or len(raw) >= MAX_HEADER_CHARS:
        return []
    plain = headers.plain_addresses(raw)
    if plain is not None:
        return plain
    try:
        header = msg[name]
        for defect in header.defects:
            defects.append(f"{type(defect).__name__}: {name}")
        return [(a.display_name, a.addr_spec) for a in header.addresses if a.addr_spec]
    except Exception as exc:
        defects.append(f"AddressParseDefect: {name}: {type(exc).__name__}")
        from email.utils import getaddresses

        return [(n, a) for n, a in getaddresses([raw]) if a]


def _date(msg: Message, defects: list[str]) -> datetime | None:
    raw = _raw_header(msg, "date")
    if raw is None:
        return None
    try:
        # exactly what DateHeader does with the unfolded value, without its parse tree
        value = parsedate_to_datetime(headers.unfold(raw)) if raw.strip() else None
    except Exception:
        defects.append("InvalidDateDefect")
        return None
    if value is None:
        defects.append("InvalidDateDefect")
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _collect_parser_defects(msg: Message, defects: list[str]) -> None:
    stack = [msg]
    while stack:
        part = stack.pop()
        for defect in part.defects:
            defects.append(type(defect).__name__)
        _mime_header_defects(part, defects)
        if part is not msg:
            for name, value in part.raw_items():
                if not value.isascii() and any("\udc80" <= c <= "\udcff" for c in value[:10000]):
                    defects.append(f"UndeclaredEightBitHeaderDefect: {name} in a part")
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in payload if isinstance(p, Message))


def _mime_header_defects(part: Message, defects: list[str]) -> None:
    """What the stdlib found wrong in a part's MIME headers (kept on the header objects, not
    on the part: a missing subtype, a broken Content-Type), and transfer encodings that no
    decoder knows or quoted-printable that does not decode."""
    for name in MIME_HEADERS:
        header = part.get(name)
        for defect in getattr(header, "defects", ()):
            defects.append(f"{type(defect).__name__}: {name}: {clean_text(str(defect), 100)}")
    if part.get_content_maintype() == "multipart" and not part.get_boundary(""):  # RFC 2046
        defects.append("InvalidBoundaryDefect: empty")
    cte = part.get("content-transfer-encoding")
    if cte is None:
        return
    cte = str(cte).strip().lower()
    if cte not in TRANSFER_ENCODINGS:
        defects.append(f"UnknownTransferEncodingDefect: {clean_text(cte, 40)!r}")
    elif cte == "quoted-printable" and not part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, str) and _BAD_QP.search(payload[:MAX_BODY_CHARS]):
            defects.append("InvalidQuotedPrintableDefect")


def _leaves(part: Message, depth: int, defects: list[str]) -> Iterator[Message]:
    """Parts that hold content; a forwarded message counts as one (its bytes as .eml)."""
    if depth > MAX_DEPTH:
        defects.append(f"NestingTooDeepDefect: deeper than {MAX_DEPTH} levels")
        return
    if part.get_content_type() == "message/rfc822" and depth > 0:
        yield part
        return
    if part.is_multipart():
        payload = part.get_payload()
        for sub in payload if isinstance(payload, list) else ():
            yield from _leaves(sub, depth + 1, defects)
            if defects and defects[-1].startswith("NestingTooDeepDefect"):
                return
        return
    yield part


def _body_part(msg: EmailMessage, subtype: str) -> Message | None:
    try:
        return msg.get_body(preferencelist=(subtype,))
    except Exception:  # get_body walks the tree; a broken tree has no body to offer
        return None


def _payload_bytes(part: Message, defects: list[str]) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"PayloadDecodeDefect: {type(exc).__name__}")
        return b""
    return data if isinstance(data, bytes) else b""


def _text_of(part: Message, defects: list[str]) -> str:
    """A text part decoded by its declared charset; wrong or unknown charsets are defects."""
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    raw_payload = part.get_payload()
    declared = part.get_param("charset")
    if isinstance(raw_payload, str) and not raw_payload.isascii() and cte in ("7bit", ""):
        defects.append("UndeclaredEightBitDefect: body")
    data = _payload_bytes(part, defects)[: MAX_BODY_CHARS * 4]
    charset = str(declared or "us-ascii").strip().lower()
    try:
        text = data.decode(charset)
    except LookupError:
        defects.append(f"UnknownCharsetDefect: {charset[:40]}")
        text = data.decode("utf-8", "replace")
    except UnicodeDecodeError:
        if declared:
            defects.append(f"CharsetMismatchDefect: not valid {charset[:40]}")
        elif not any(d.startswith("UndeclaredEightBit") for d in defects):
            defects.append("UndeclaredEightBitDefect: body")
        text = data.decode("utf-8", "replace")
    return clean_text(text, MAX_BODY_CHARS)


def _decoded(part: Message, filename: str, defects: list[str]) -> Iterator[bytes]:
    """A part's decoded content in slices; base64 decoded slice by slice from the payload."""
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        try:
            inner = part.get_payload(0) if part.is_multipart() else part
            yield inner.as_bytes(policy=policy.default.clone(max_line_length=0))
        except Exception as exc:
            defects.append(f"AttachmentDecodeDefect: {filename}: {type(exc).__name__}")
        return
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    payload = part.get_payload()
    if cte != "base64" or not isinstance(payload, str):
        yield _payload_bytes(part, defects)
        return
    carry = ""
    for start in range(0, len(payload), DECODE_CHUNK):
        text = payload[start : start + DECODE_CHUNK].replace("\r\n", "").replace("\n", "")
        if not _BASE64.fullmatch(text):  # anything but line breaks: the slow, general way
            text, dropped = _NOT_BASE64.subn("", text.replace(" ", "").replace("\t", ""))
            if dropped and not any(d.startswith("InvalidBase64Characters") for d in defects):
                defects.append(f"InvalidBase64CharactersDefect: {filename}")
        text = carry + text
        cut = len(text) - len(text) % 4
        carry = text[cut:]
        if cut:
            yield _b64(text[:cut], filename, defects)
    if carry:
        defects.append(f"InvalidBase64Defect: {filename}: truncated")
        yield _b64(carry + "=" * (-len(carry) % 4), filename, defects)


def _b64(text: str, filename: str, defects: list[str]) -> bytes:
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        defects.append(f"InvalidBase64Defect: {filename}")
        return b""
