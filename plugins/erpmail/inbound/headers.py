"""Header values read fast: header objects parsed once, and plain headers past the parser.

Replaces two costs of ``email.policy.default``; without both, the parse of the benchmark's
text mix takes 1.34 instead of 0.33 ms of CPU per mail, of its PDF mail 6.82 instead of
4.24 ms (bench/README.md, import):
- The stdlib builds a new header object on each access (``get_content_type()`` alone reads
  Content-Type several times per part). ``CachingPolicy`` parses each (name, value) once:
  short values (Content-Type, To, From, MIME-Version: the same few strings in mail after
  mail) for the whole process, bounded; longer ones for the one parse.
- The full header parser costs 70-300 us per header. For the shapes where it provably
  returns the text as it stands and no defect (printable ASCII without encoded words; plain
  mailboxes of atoms and dot-atoms; plain Message-IDs), ``plain_value`` and
  ``plain_addresses`` give that text without it; everything else, and all the odd mail,
  takes the full parser. Tests hold the results equal to the full parser's.

``brief`` reads the few fields a row needs from a header block with the plain parser, for
mail that is not parsed in full (a failed import, the copy of a sent mail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr

MAX_HEADER_CHARS = 64 * 1024  # a longer header is not run through the header parser
SHARED_HEADER_CHARS = 300  # header objects of values up to this long are shared across mails
SHARED_HEADER_ENTRIES = 4096

_LINESEP = re.compile(r"\r|\n")
_PLAIN_TEXT = re.compile(r"[ -~]*")  # printable ASCII; "=?" (encoded words) checked apart
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
PLAIN_MSGID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
_PLAIN_MAILBOX = re.compile(
    rf" ?(?:(?P<name>{_ATEXT}(?: {_ATEXT})*) <(?P<angle>{_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|(?P<bare>{_DOT_ATOM}@{_DOT_ATOM}))"
)

# (name, raw value) -> header object, for every parse in this process
_SHARED_HEADERS: dict[tuple[str, str], object] = {}


class CachingPolicy(policy.EmailPolicy):
    """``policy.default``, with each header parsed once instead of on every read.

    Header objects are immutable and depend only on the name and the raw value, so they are
    cached: short values for the whole process (bounded), longer ones in ``cache``.
    """

    cache: dict | None = None

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name") or self.cache is None or len(value) > MAX_HEADER_CHARS:
            return super().header_fetch_parse(name, value)
        key = (name, value)
        shared = len(value) <= SHARED_HEADER_CHARS
        found = (_SHARED_HEADERS if shared else self.cache).get(key)
        if found is None:
            found = super().header_fetch_parse(name, value)
            if shared:
                if len(_SHARED_HEADERS) >= SHARED_HEADER_ENTRIES:
                    _SHARED_HEADERS.clear()  # crude but bounded; refills with the common ones
                _SHARED_HEADERS[key] = found
            else:
                self.cache[key] = found
        return found


def caching_policy() -> CachingPolicy:
    """A policy for one parsed mail: its cache of long values lives as long as the message."""
    return CachingPolicy(cache={})


def unfold(raw: str) -> str:
    """The header value with its line breaks removed, as the stdlib unfolds it."""
    return _LINESEP.sub("", raw)


def plain_value(raw: str) -> str | None:
    """The unfolded value when it is printable ASCII without encoded words, else None."""
    value = unfold(raw)
    if "=?" in value or not _PLAIN_TEXT.fullmatch(value):
        return None
    return value


def plain_addresses(raw: str) -> list[tuple[str, str]] | None:
    """``(display name, address)`` for a list of plain mailboxes (atoms, dot-atoms), else None."""
    value = plain_value(raw)
    if value is None:
        return None
    found = []
    for item in value.split(","):
        match = _PLAIN_MAILBOX.fullmatch(item)
        if match is None:
            return None
        found.append((match["name"] or "", match["angle"] or match["bare"]))
    return found


@dataclass(frozen=True)
class Brief:
    """A mail's Message-ID (as written), subject (decoded), sender, To and Cc addresses."""

    message_id: str | None
    subject: str
    from_name: str | None
    from_address: str | None
    to: list[str]
    cc: list[str]


def brief(block: bytes) -> Brief:
    """The ``Brief`` of a header block (or a whole mail), read as far as it can be; never
    raises (a field that cannot be read is empty)."""
    try:
        msg = BytesHeaderParser().parsebytes(block)
    except Exception:  # nothing readable: an empty brief
        return Brief(None, "", None, None, [], [])

    def decoded(value: str) -> str:
        try:
            return str(make_header(decode_header(value)))
        except Exception:  # a broken encoded word: the text as it stands
            return value

    name, address = parseaddr(str(msg.get("From", "")))
    return Brief(
        str(msg.get("Message-ID", "")).strip() or None,
        decoded(str(msg.get("Subject", ""))),
        decoded(name) if name else None,
        address or None,
        [a for _, a in getaddresses([str(v) for v in msg.get_all("To", [])])],
        [a for _, a in getaddresses([str(v) for v in msg.get_all("Cc", [])])],
    )
