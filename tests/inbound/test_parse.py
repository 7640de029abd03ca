"""Parsing received mail: decoded headers, bodies, safe attachment names, defects."""

from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage

import pytest

from erpmail.inbound import parse
from tests import mailcorpus


def test_decoded_headers_bodies_and_attachments():
    msg = EmailMessage()
    msg["From"] = "Jörg Müller <joerg@example.org>"
    msg["To"] = "a@example.com, B <b@example.com>"
    msg["Cc"] = "c@example.com"
    msg["Subject"] = "Grüße – Rechnung 0042"
    msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0100"
    msg["Message-ID"] = "<p-1@example.org>"
    msg["In-Reply-To"] = "<a@x>"
    msg["References"] = "<z@x> <a@x>"
    msg.set_content("Hallo äöü\n")
    msg.add_alternative("<p>Hallo</p>", subtype="html")
    msg.add_attachment(b"1" * 5000, maintype="application", subtype="pdf", filename="Übersicht.pdf")
    msg.add_attachment(b"2", maintype="application", subtype="pdf", filename="übersicht.pdf")
    raw = msg.as_bytes()

    mail = parse.parse(raw)
    chunks = {a.filename: b"".join(a.chunks()) for a in mail.attachments}

    assert (mail.subject, mail.from_name, mail.from_address) == (
        "Grüße – Rechnung 0042",
        "Jörg Müller",
        "joerg@example.org",
    )
    assert mail.to_addresses == ["a@example.com", "b@example.com"]
    assert mail.cc_addresses == ["c@example.com"]
    assert mail.sent_date.isoformat() == "2024-03-01T10:00:00+01:00"
    assert (mail.message_id, mail.in_reply_to, mail.references) == (
        "<p-1@example.org>",
        "<a@x>",
        ["<z@x>", "<a@x>"],
    )
    assert mail.body_text == "Hallo äöü\n" and mail.body_html == "<p>Hallo</p>\n"
    assert chunks == {"Übersicht.pdf": b"1" * 5000, "übersicht (2).pdf": b"2"}
    assert mail.attachments[0].sha256 == hashlib.sha256(b"1" * 5000).hexdigest()
    assert mail.defects == []


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("a\x00b\x1fc.txt", "abc.txt"),
        ("...", "fallback.bin"),
        ("", "fallback.bin"),
        ('a<b>:c"|?*.pdf', "a_b__c____.pdf"),
        ("x" * 300 + ".pdf", "x" * 116 + ".pdf"),
        ("Größe März.pdf", "Größe März.pdf"),
    ],
)
def test_sanitize_filename(name, safe):
    assert parse.sanitize_filename(name, "fallback.bin") == safe


def test_large_base64_attachment_decodes_in_slices():
    data = bytes(range(256)) * 20000  # 5 MB: several decode slices
    msg = EmailMessage()
    msg["From"], msg["Date"] = "a@example.org", "Fri, 01 Mar 2024 10:00:00 +0000"
    msg.set_content("x")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename="d.bin")
    (att,) = parse.parse(msg.as_bytes()).attachments
    out = bytearray()
    att.consume(out.extend)
    assert bytes(out) == data and att.size == len(data)


@pytest.mark.parametrize(("name", "raw"), mailcorpus.malformed(), ids=lambda v: str(v)[:30])
def test_every_malformed_mail_has_defects_and_clean_text(name, raw):
    mail = parse.parse(raw)
    for att in mail.attachments:
        att.consume()
        assert "/" not in att.filename and "\\" not in att.filename and ".." not in att.filename
    assert mail.malformed, name
    for text in (mail.subject, mail.body_text or "", mail.body_html or ""):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates: PostgreSQL must take it


def test_message_id_normalised():
    assert parse.normalize_message_id(" <a@b> ") == "<a@b>"
    defects: list[str] = []
    assert parse.normalize_message_id("a@b", defects) == "<a@b>" and defects
    assert parse.normalize_message_id("has spaces in it") is None
    assert parse.normalize_message_id("<" + "x" * 2000 + "@b>") is None


EDGE_HEADERS = [
    ("From", "Kunde 5 <kunde5@example.org>"),
    ("From", "kunde5@example.org"),
    ("From", '"Doe, John" <john@example.org>'),
    ("From", "Dr. Who <who@example.org>"),
    ("From", "John  Doe <john@example.org>"),
    ("From", "<john@example.org>"),
    ("From", "john@example.org (John Doe)"),
    ("From", "a..b@example.org"),
    ("From", ".a@example.org"),
    ("From", "john@[127.0.0.1]"),
    ("From", "=?utf-8?q?J=C3=BCrgen?= <j@example.org>"),
    ("From", "undisclosed-recipients:;"),
    ("From", "john@"),
    ("From", "John <john@example.org"),
    ("To", "a@example.org, b@example.org"),
    ("To", "a@example.org,b@example.org"),
    ("To", "A <a@example.org>,\r\n B <b@example.org>"),
    ("To", "a@example.org, "),
    ("To", "Team: a@example.org, b@example.org;"),
    ("Cc", "x@EXAMPLE.org, Y Z <y.z@sub.example.org>"),
    ("Subject", "Rueckfrage relnr 000123  Nr. 5 "),
    ("Subject", "folded\r\n  over two lines"),
    ("Subject", "tab\there"),
    ("Subject", "=?utf-8?q?R=C3=BCckfrage?= relnr 1"),
    ("Subject", "a =? b"),
    ("Subject", ""),
    ("Subject", "ctrl \x01 char"),
    ("Message-ID", "<abc.def@example.org>"),
    ("Message-ID", "<abc@example.org> (comment)"),
    ("Message-ID", "<a b@example.org>"),
    ("Message-ID", "abc@example.org"),
    ("Message-ID", "<abc@[1.2.3.4]>"),
    ("Message-ID", "<a..b@example.org>"),
    ("Auto-Submitted", "auto-replied"),
    ("Precedence", " bulk"),
    ("Date", "Fri, 01 Mar 2024 10:00:00 +0100"),
    ("Date", "Fri, 01 Mar 2024 10:00:00 -0000"),
    ("Date", "1 Mar 2024 10:00 GMT"),
    ("Date", "not a date"),
    ("Date", " "),
    ("Date", "Fri, 01 Mar 2024\r\n 10:00:00 +0100"),
]


def _with_header(name: str, value: str) -> bytes:
    base = {
        "From": "a@example.org",
        "To": "b@example.org",
        "Subject": "s",
        "Date": "Fri, 01 Mar 2024 10:00:00 +0000",
        "Message-ID": "<m@example.org>",
    }
    base[name] = value
    head = "".join(f"{k}: {v}\r\n" for k, v in base.items())
    return (head + "\r\nbody\r\n").encode("utf-8", "surrogateescape")


def _fields(mail: parse.ParsedMail) -> dict:
    out = {k: v for k, v in vars(mail).items() if k != "attachments"}
    out["attachments"] = [(a.filename, a.content_type) for a in mail.attachments]
    return out


@pytest.mark.parametrize(
    "raw",
    [_with_header(n, v) for n, v in EDGE_HEADERS] + [raw for _, raw in mailcorpus.malformed()],
    ids=lambda v: v[:40].decode("latin-1"),
)
def test_plain_header_shortcuts_agree_with_the_full_parser(raw, monkeypatch):
    fast = _fields(parse.parse(raw))
    monkeypatch.setattr(parse, "_plain_value", lambda raw: None)
    assert fast == _fields(parse.parse(raw))


@pytest.mark.parametrize("value", [v for n, v in EDGE_HEADERS if n == "Date"])
def test_date_as_the_date_header_reads_it(value):
    from email import policy

    header = policy.default.header_fetch_parse("Date", value)
    parsed = parse.parse(_with_header("Date", value))
    expected = header.datetime
    if expected is not None and expected.tzinfo is None:
        expected = expected.replace(tzinfo=parse.UTC)
    assert parsed.sent_date == expected
    assert ("InvalidDateDefect" in parsed.defects) == (header.datetime is None)


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
    """The feedparser's boundary patterns are not compiled (parse._FeedparserRe); the
    result must be what the compiled pattern gives, attachments and defects included."""
    from email import feedparser

    def materialised(mail: parse.ParsedMail) -> dict:
        out = _fields(mail)
        out["attachments"] = [(a.filename, b"".join(a.chunks())) for a in mail.attachments]
        out["defects"] = list(mail.defects)
        return out

    assert isinstance(feedparser.re, parse._FeedparserRe)
    fast = materialised(parse.parse(raw))
    monkeypatch.setattr(feedparser, "re", re)
    assert fast == materialised(parse.parse(raw))


def test_base64_with_stray_characters_decodes_as_before():
    body = "JVBERi0x\r\nLjQK\r\n"
    for payload, expected in (
        (body, b"%PDF-1.4\n"),
        ("JVBE Ri0x\r\n\tLjQK!\r\n", b"%PDF-1.4\n"),
        ("JVBERi0x\nLjQK\n", b"%PDF-1.4\n"),
    ):
        msg = EmailMessage()
        msg["From"] = "a@example.org"
        msg.set_content("text")
        msg.add_attachment(b"", maintype="application", subtype="pdf", filename="x.pdf")
        part = list(msg.iter_attachments())[0]
        part.set_payload(payload)
        parsed = parse.parse(msg.as_bytes())
        assert b"".join(parsed.attachments[0].chunks()) == expected
