"""Tickets and the autoresponder through the import, against Dovecot and the outbox table."""

from __future__ import annotations

from datetime import date
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from erpmail.inbound import tickets
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location
from tests import mailcorpus

DAY = date(2024, 3, 1)
OVERRIDE = "Ihre Nachricht {BETREFF} ist unter {TICKET} erfasst. ({SUBJECT}) {unrelated}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path / 'archive'}")


@pytest.fixture
def make_location(seeded_db, imap_user, monkeypatch, store):
    """A ticket location answering from a default account; columns as keywords."""
    mailcorpus.imap_conn(monkeypatch, "imap_tickets", imap_user)
    account = mailcorpus.add_account(seeded_db)

    def make(**columns) -> int:
        values = {
            "ticket_enabled": True,
            "ticket_queue": "support",
            "autoreply_enabled": True,
            "autoreply_account_id": account,
            **columns,
        }
        return mailcorpus.add_location(seeded_db, "support", "imap_tickets", **values)

    return make


@pytest.fixture
def location(make_location) -> int:
    """The autoreply from the templates, in the default language."""
    return make_location()


def mail(n: int, sender: str, subject: str = "", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, "support@erp.example.com"
    msg["Subject"] = subject or f"Frage {n}"
    msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0000"
    msg["Message-ID"] = f"<t-{n}@example.org>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hallo\n")
    return msg.as_bytes()


def append(*mails: bytes) -> None:
    with ImapHook("imap_tickets").client() as client:
        for raw in mails:
            client.append("INBOX", raw)


def outbox(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT recipients, source_id, mime FROM mail.outbox"
            " WHERE source_type = 'autoreply' ORDER BY id"
        )
        out = cur.fetchall()
    conn.commit()
    return out


def case_of(conn, message_id: str) -> tuple[int, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.id, c.number FROM mail.messages m"
            " JOIN mail.message_links l ON l.message_id = m.id AND l.entity_type = 'case'"
            " JOIN erp.cases c ON c.id = l.entity_id WHERE m.message_id = %s",
            (message_id,),
        )
        row = cur.fetchone()
    conn.commit()
    return row


def test_autoreply_once_a_day_never_to_automated_senders(seeded_db, location):
    append(
        mail(1, "Kunde <kunde@example.org>", "Lieferung fehlt"),
        mail(2, "kunde@EXAMPLE.org", "Noch was"),
        mail(3, "MAILER-DAEMON@mx.example.org", "Undelivered Mail"),
        mail(4, "robot@example.org", auto_submitted="auto-generated"),
        mail(5, "list@example.org", list_id="<news.example.org>"),
        mail(6, "bulk@example.org", precedence="bulk"),
        mail(7, "postmaster@example.org"),
        mail(8, "news@example.org", list_unsubscribe="<mailto:u@example.org>"),
    )

    summary = import_location(location, day=DAY)

    assert summary.new == 8
    sent = outbox(seeded_db)
    assert [r for r, _, _ in sent] == [["kunde@example.org"]]
    ((_, case_id, raw),) = sent
    reply = message_from_bytes(bytes(raw), policy=policy.default)
    case_id_1, number = case_of(seeded_db, "<t-1@example.org>")
    assert case_id == case_id_1 and number.startswith("T")
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<t-1@example.org>"
    # rendered from include/templates/autoreply/de, with the central signature
    assert reply["Subject"] == f"Eingangsbestätigung [{number}]: Lieferung fehlt"
    text = reply.get_body(("plain",)).get_content()
    assert number in text and "„Lieferung fehlt“" in text
    assert "Geschäftsführer" in text
    html = reply.get_body(("html",)).get_content()
    assert f"<b>{number}</b>" in html and "Lieferung fehlt" in html
    logo = next(part for part in reply.walk() if part.get_filename() == "logo.png")
    assert f'src="cid:{logo["Content-ID"].strip("<>")}"' in html

    # the next day the same sender is answered again, once
    append(mail(9, "kunde@example.org", "Neue Frage"), mail(10, "kunde@example.org"))
    import_location(location, day=date(2024, 3, 2))
    assert len(outbox(seeded_db)) == 2


def test_replies_join_their_ticket(seeded_db, location):
    append(mail(1, "kunde@example.org", "Erste Frage"))
    import_location(location, day=DAY)
    case_id, number = case_of(seeded_db, "<t-1@example.org>")
    autoreply_id = message_from_bytes(bytes(outbox(seeded_db)[0][2]), policy=policy.default)[
        "Message-ID"
    ]

    append(
        mail(2, "kunde@example.org", "Re: Eingang", references=autoreply_id),
        mail(3, "other@example.org", f"AW: [{number.lower()}] Nachtrag"),
        mail(4, "third@example.org", "Nachfrage", in_reply_to="<t-1@example.org>"),
        mail(5, "fourth@example.org", "Ganz neu"),
    )
    import_location(location, day=DAY)

    assert case_of(seeded_db, "<t-2@example.org>") == (case_id, number)
    assert case_of(seeded_db, "<t-3@example.org>") == (case_id, number)
    assert case_of(seeded_db, "<t-4@example.org>") == (case_id, number)
    new_case, new_number = case_of(seeded_db, "<t-5@example.org>")
    assert new_case != case_id and new_number != number
    with seeded_db.cursor() as cur:
        cur.execute("SELECT queue, status FROM erp.cases WHERE id = %s", (new_case,))
        assert cur.fetchone() == ("support", "open")


def test_autoreply_in_the_location_language_without_a_ticket(seeded_db, make_location):
    location = make_location(language="en", ticket_enabled=False)
    append(mail(1, "kunde@example.org", "Invoice <RE-1> & more"))

    import_location(location, day=DAY)

    ((_, case_id, raw),) = outbox(seeded_db)
    reply = message_from_bytes(bytes(raw), policy=policy.default)
    assert case_id is None
    assert reply["Subject"] == "We received your message: Invoice <RE-1> & more"
    text = reply.get_body(("plain",)).get_content()
    assert '"Invoice <RE-1> & more". We have received it' in text
    assert "case number" not in text and "Managing director" in text
    html = reply.get_body(("html",)).get_content()
    assert "Invoice &lt;RE-1&gt; &amp; more" in html and "case number" not in html


def test_location_override_replaces_the_template_text(seeded_db, make_location):
    location = make_location(
        autoreply_subject="[{TICKET}] Eingang: {SUBJECT}", autoreply_body=OVERRIDE
    )
    append(mail(1, "kunde@example.org", "Lieferung fehlt"))

    import_location(location, day=DAY)

    ((_, _, raw),) = outbox(seeded_db)
    reply = message_from_bytes(bytes(raw), policy=policy.default)
    _, number = case_of(seeded_db, "<t-1@example.org>")
    assert reply["Subject"] == f"[{number}] Eingang: Lieferung fehlt"
    assert reply.get_body(("plain",)).get_content().strip() == (
        f"Ihre Nachricht Lieferung fehlt ist unter {number} erfasst. (Lieferung fehlt) {{unrelated}}"
    )
    assert reply.get_body(("html",)) is None  # the admin's text alone, no template HTML


@pytest.mark.parametrize(
    ("sender", "headers", "reason"),
    [
        ("a@example.org", {}, None),
        ("a@example.org", {"auto-submitted": "no"}, None),
        ("Mailer-Daemon@example.org", {}, "mail system"),
        ("a@example.org", {"auto-submitted": "auto-replied"}, "Auto-Submitted"),
        ("a@example.org", {"precedence": "List"}, "Precedence"),
        ("a@example.org", {"list-id": "<x>"}, "mailing list"),
        ("a@example.org", {"return-path": "<>"}, "bounce"),
        ("service@erp.example.com", {}, "own accounts"),
        (None, {}, "no usable sender"),
    ],
)
def test_no_reply_reason(sender, headers, reason):
    found = tickets.no_reply_reason(sender, headers, ["service@erp.example.com"])
    assert (found is None) if reason is None else (reason in found)


def test_fill_leaves_other_braces_alone():
    assert (
        tickets.fill("{TICKET}/{SUBJECT}/{BETREFF}/{x}", ticket="T1", subject="S") == "T1/S/S/{x}"
    )
