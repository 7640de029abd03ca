"""Boundary lines matched without compiling a pattern per boundary: the same parse as the
stdlib's own parser, which stays untouched."""

from __future__ import annotations

import re
from email import feedparser

import pytest

from erpmail.inbound import boundary, parse
from tests import mailcorpus


def _multipart(boundary: str, closing: str) -> bytes:
    return (
        "From: a@example.org\r\nDate: Fri, 01 Mar 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\npreamble\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        f"--{boundary} \t\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64"
        f'\r\nContent-Disposition: attachment; filename="x.pdf"\r\n\r\nJVBERi0x\r\nLjQK\r\n'
        f"--{boundary}x\r\nnot a boundary\r\n{closing}epilogue\r\n"
    ).encode("utf-8", "surrogateescape")


BOUNDARY_MAILS = [
    _multipart(b, c)
    for b in ("simple", "===============1234==", "a.b(c)d*e+f?g[h]i{j}|k^l$m", "with space", "\\")
    for c in ("--{b}--\r\n", "--{b}--", "")
]


@pytest.mark.parametrize(
    "raw",
    [m.replace(b"{b}", m.split(b'boundary="')[1].split(b'"')[0]) for m in BOUNDARY_MAILS]
    + [raw for _, raw in mailcorpus.malformed()],
    ids=lambda v: v[170:220].decode("latin-1"),
)
def test_boundary_lines_matched_as_the_compiled_pattern_would(raw, monkeypatch):
    """The private parser's boundary patterns are not compiled (boundary.BoundaryRe); the
    result must be what the stdlib's parser gives, attachments and defects included."""

    def materialised(mail: parse.ParsedMail) -> dict:
        out = {k: v for k, v in vars(mail).items() if k != "attachments"}
        out["attachments"] = [(a.filename, b"".join(a.chunks())) for a in mail.attachments]
        out["defects"] = list(mail.defects)
        return out

    fast = materialised(parse.parse(raw))
    monkeypatch.setattr(
        boundary, "bytes_feed_parser", lambda policy: feedparser.BytesFeedParser(policy=policy)
    )
    assert fast == materialised(parse.parse(raw))


def test_the_private_parser_uses_the_matcher_and_the_stdlib_stays_as_it_was():
    parser = boundary.bytes_feed_parser(parse.policy.default)
    assert type(parser) is not feedparser.BytesFeedParser  # the private copy is there
    private = vars(boundary._private_feedparser())
    assert isinstance(private["re"], boundary.BoundaryRe)
    pattern = "(?P<sep>" + re.escape("--a.b(c)") + boundary.BOUNDARY_TAIL
    assert isinstance(private["re"].compile(pattern), boundary.BoundaryLine)
    assert private["re"].compile("(?P<sep>x)") == re.compile("(?P<sep>x)")
    parse.parse(BOUNDARY_MAILS[0])
    assert vars(feedparser)["re"] is re  # nothing global was patched
