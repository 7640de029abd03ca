"""MIME messages: encodings parsed back with the stdlib parser, injection refusals, structure."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

import pytest

from erpmail.documents import pdf
from erpmail.documents.mime import (
    Attachment,
    MessageError,
    build_message,
    check_address,
    make_message_id,
)
from erpmail.documents.templates import Templates
from tests.lettercontexts import load_contexts
from tests.pdftext import pdf_text

DOMAIN = "muster-handels.example.com"


def parse(message) -> email.message.EmailMessage:
    return email.message_from_bytes(message.as_bytes(), policy=policy.default)


def simple(**changes):
    values = {
        "sender": ("Buchhaltung Müller", f"buchhaltung@{DOMAIN}"),
        "to": ["info@kunde.example.com"],
        "subject": "Hallo",
        "text": "Text",
        "message_id": make_message_id("test/1", DOMAIN),
    }
    values.update(changes)
    return build_message(**values)


def test_dunning_mail_from_seeded_letter_round_trips(seeded_db):
    context = next(
        c
        for c in load_contexts(seeded_db)
        if c.partner.email
        and c.partner.language in (None, "de")
        and set("äöüß") & set(c.partner.name)
    )
    rendered = Templates().render_letter(context)
    (letter,) = pdf.render_batch([pdf.LetterSource(context.partner.number, rendered.letter_html)])
    filename = f"Mahnung {context.partner.number} {context.partner.name} €.pdf"
    msg = build_message(
        sender=("Forderungsmanagement Größe & Söhne", f"mahnwesen@{DOMAIN}"),
        to=[(context.partner.name, context.partner.email)],
        subject=rendered.subject + " €",
        text=rendered.text,
        html=rendered.html,
        inline_images=rendered.signature.images,
        attachments=[Attachment(filename, letter.pdf)],
        message_id=make_message_id(f"dunning/1/{context.partner.id}", DOMAIN),
        context=f"partner {context.partner.number}",
    )
    raw = msg.as_bytes()
    assert all(byte < 128 for byte in raw)  # 7-bit clean on the wire
    parsed = email.message_from_bytes(raw, policy=policy.default)

    assert parsed["Subject"] == rendered.subject + " €"
    assert parsed["From"].addresses[0].display_name == "Forderungsmanagement Größe & Söhne"
    assert parsed["To"].addresses[0].display_name == context.partner.name
    assert parsed["To"].addresses[0].addr_spec == context.partner.email
    assert parsed["Auto-Submitted"] == "auto-generated"
    message_id = make_message_id(f"dunning/1/{context.partner.id}", DOMAIN)
    assert parsed["Message-ID"] == message_id
    assert f"\r\nMessage-ID: {message_id}\r\n".encode() in raw  # one line, not folded
    assert parsed["Date"].datetime.tzinfo is not None

    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == filename
    assert attachment.get_content_type() == "application/pdf"
    data = attachment.get_content()
    assert data == letter.pdf
    assert context.partner.number in pdf_text(data) and context.partner.name in pdf_text(data)

    body = parsed.get_body(preferencelist=("plain",))
    assert body.get_content().replace("\r\n", "\n") == rendered.text
    html = parsed.get_body(preferencelist=("html",))
    assert context.texts.intro in html.get_content()
    related = parsed.get_body(preferencelist=("related",))
    assert related is not None
    (image,) = [part for part in related.iter_parts() if part.get_content_maintype() == "image"]
    cid = image["Content-ID"].strip("<>")
    assert f"cid:{cid}" in html.get_content()
    assert image.get_content() == rendered.signature.images[0].data


def test_structure_without_html_is_text_and_attachments_only():
    msg = simple(attachments=[Attachment("a.pdf", b"%PDF-1.7")])
    parsed = parse(msg)
    assert parsed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "application/pdf"]
    assert parse(simple()).get_content_type() == "text/plain"


def test_message_id_is_stable_per_key_and_domain():
    first = make_message_id("dunning/42/7", DOMAIN)
    assert first == make_message_id("dunning/42/7", DOMAIN)
    assert first != make_message_id("dunning/42/8", DOMAIN)
    assert first.startswith("<") and first.endswith(f"@{DOMAIN}>")
    assert make_message_id("x", "Bücher.example.com").endswith("@xn--bcher-kva.example.com>")
    with pytest.raises(MessageError):
        make_message_id("x", "bad domain\r\nBcc: x@evil.example.com")


def test_auto_submitted_and_date():
    moment = datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
    parsed = parse(
        simple(
            date=moment,
            auto_submitted=None,
            in_reply_to="<a@b.example.com>",
            references=["<a@b.example.com>"],
        )
    )
    assert "Auto-Submitted" not in parsed
    assert parsed["Date"].datetime == moment
    assert (
        parsed["In-Reply-To"] == "<a@b.example.com>" and parsed["References"] == "<a@b.example.com>"
    )
    with pytest.raises(MessageError, match="naive"):
        simple(date=datetime(2024, 3, 5))


@pytest.mark.parametrize(
    "changes",
    [
        {"to": [("Evil\r\nBcc: x@evil.example.com", "info@kunde.example.com")]},
        {"to": ["Evil\r\nBcc: x@evil.example.com <info@kunde.example.com>"]},
        {"sender": ("Müller\nBcc: x@evil.example.com", f"buchhaltung@{DOMAIN}")},
        {"subject": "Mahnung\r\nBcc: x@evil.example.com"},
        {"cc": ["info@kunde.example.com\r\nBcc: x@evil.example.com"]},
        {"attachments": [Attachment("a.pdf\r\nBcc: x@evil.example.com", b"x")]},
        {"message_id": "<a@b>\r\nBcc: x@evil.example.com"},
    ],
)
def test_header_injection_is_refused(changes):
    with pytest.raises(MessageError, match="line break"):
        simple(**changes, context="partner 000123")


def test_a_name_cannot_add_a_header_even_via_the_template():
    name = "Größer GmbH\r\nBcc: x@evil.example.com"
    with pytest.raises(MessageError) as info:
        simple(to=[(name, "info@kunde.example.com")], context="partner 000123")
    assert "partner 000123 field to display name" in str(info.value)
    # and a well-formed message never has a Bcc header at all
    parsed = parse(simple(cc=["kopie@kunde.example.com"]))
    assert "Bcc" not in parsed and parsed["Cc"] == "kopie@kunde.example.com"


@pytest.mark.parametrize(
    "address", ["no-at-sign", "a@b@c.example.com", "a b@example.com", "ä@@example.com", ""]
)
def test_bad_address_names_partner_and_field(address):
    with pytest.raises(MessageError) as info:
        simple(to=[address], context="partner 000123")
    assert "partner 000123 field to" in str(info.value)
    with pytest.raises(MessageError, match="partner 000123 field email"):
        check_address(address, context="partner 000123", field="email")


def test_address_check_is_syntax_only_and_normalises_the_domain():
    # no DNS: an example domain passes; an IDN domain goes out as ASCII
    assert check_address("Info@Kunde.Example.com") == "Info@kunde.example.com"
    assert check_address(" info@example.com ") == "info@example.com"
    assert check_address("info@größer.example.com") == "info@xn--grer-wna1l.example.com"
    # a non-ASCII mailbox name is valid (it needs SMTPUTF8): such a message goes as UTF-8
    assert check_address("jürgen@bücher.example") == "jürgen@xn--bcher-kva.example"
    raw = simple(to=["jürgen@bücher.example"]).as_bytes()
    assert "To: jürgen@xn--bcher-kva.example\r\n".encode() in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n")[0].split(b"Subject:")[0]


def test_inline_images_need_html():
    signature = Templates().signature(sender=None, project=None, language="de")
    with pytest.raises(MessageError, match="inline"):
        simple(inline_images=signature.images)
    with pytest.raises(MessageError, match="no recipient"):
        simple(to=[])


def test_pdf_attachment_survives_as_bytes():
    data = b"%PDF-1.7\n" + bytes(range(256)) * 10
    parsed = parse(simple(attachments=[Attachment("Zahlungsavis Köln.pdf", data)]))
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_content() == data
    assert attachment.get_filename() == "Zahlungsavis Köln.pdf"
