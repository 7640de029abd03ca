"""stuff_dots gives the bytes of smtplib's regex, on edge cases and on a built message."""

from __future__ import annotations

import re

import pytest

from erpmail.outbound.dotstuff import HOPS, stuff_dots
from tests.outboxmail import make_mime


def smtplib_stuffing(mime: bytes) -> bytes:
    """What ``smtplib.SMTP.data`` does to the message."""
    return re.sub(rb"(?m)^\.", b"..", mime)


@pytest.mark.parametrize(
    "mime",
    [
        b"",
        b".",
        b"..\r\n.",
        b"no dot at a line start. a.b.c\r\n",
        b"a\r\n.b\r\nc\n.d\r.e",  # a bare CR starts no line for the server either
        b"." + b"x." * 100 + b"\r\n.end",  # more dots than stuff_dots hops over
        b"x." * 100 + b"\r\nno dot after",
        b"x." * (HOPS - 1) + b"\r\n.at the last hop",
    ],
)
def test_stuff_dots_matches_smtplib(mime):
    assert stuff_dots(mime) == smtplib_stuffing(mime)


def test_a_built_message_with_an_attachment_matches_smtplib():
    mime = make_mime("dots", ["k@c.example"], subject="Mahnung 1.", pdf=b"%PDF-1.7\n" * 500)
    assert stuff_dots(mime) == smtplib_stuffing(mime)
    # the same with lines that start with a dot, as a clerk's text may have them
    dotted = mime.replace(b"Nachricht dots.", b"Nachricht\r\n..\r\n.dots.")
    assert dotted != mime and stuff_dots(dotted) == smtplib_stuffing(dotted) != dotted
