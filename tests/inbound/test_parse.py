"""Parsing received mail: decoded headers, bodies, safe attachment names, defects."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage

import pytest

from erpmail.core import filenames
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
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
        ("Größe März.pdf", "Größe März.pdf"),
        ("Scan vom 10.03.2024 um 09.15", "Scan vom 10.03.2024 um 09.15"),
        # capped in bytes at a character boundary: 2-byte Cyrillic, 3-byte CJK, 4-byte emoji
        ("Счёт" * 40 + ".pdf", ("Счёт" * 40)[:98] + ".pdf"),
        ("請求書" * 50 + ".pdf", ("請求書" * 50)[:65] + ".pdf"),
        ("\U0001f4c4" * 60, "\U0001f4c4" * 50),
    ],
)
def test_sanitize_filename(name, safe):
    assert parse.sanitize_filename(name, "fallback.bin") == safe
    assert len(safe.encode()) <= filenames.MAX_FILENAME_BYTES


def test_a_second_long_name_stays_within_the_byte_cap():
    taken: set[str] = set()
    name = parse.sanitize_filename("Счёт" * 40 + ".pdf", "x")
    first, second = parse.unique_name(name, taken), parse.unique_name(name, taken)
    assert first == name and second.endswith(" (2).pdf") and second != first
    assert len(second.encode()) <= filenames.MAX_FILENAME_BYTES


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


@pytest.mark.parametrize(
    ("name", "defect"),
    [
        ("missing subtype", "InvalidHeaderDefect: content-type"),
        ("broken Content-Type", "InvalidHeaderDefect: content-type"),
        ("unknown transfer encoding", "UnknownTransferEncodingDefect"),
        ("broken quoted-printable", "InvalidQuotedPrintableDefect"),
        ("broken base64 0", "InvalidBase64"),
        ("empty boundary", "Boundary"),
    ],
)
def test_damaged_mime_is_recorded_with_the_stdlib_defect(name, defect):
    parsed = parse.parse(dict(mailcorpus.nasty())[name])
    for att in parsed.attachments:  # decoded when stored
        att.consume()
    assert parsed.malformed
    assert any(d.startswith(defect) or defect in d for d in parsed.defects), parsed.defects
