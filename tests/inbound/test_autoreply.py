"""The autoresponder and the unlinked-mail events through the import, against Dovecot and the
outbox table."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from erpmail.events import mailing
from erpmail.inbound import autoreply
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import append as append_to
from tests.inbound.imapfolder import rows
from tests.inbound.supportdesk import DAY, append, case_of, mail, outbox

OVERRIDE = "Ihre Nachricht {BETREFF} ist unter {TICKET} erfasst. ({SUBJECT}) {unrelated}"


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
    found = autoreply.no_reply_reason(sender, headers, ["service@erp.example.com"])
    assert (found is None) if reason is None else (reason in found)


def test_fill_leaves_other_braces_alone():
    assert (
        autoreply.fill("{TICKET}/{SUBJECT}/{BETREFF}/{x}", ticket="T1", subject="S") == "T1/S/S/{x}"
    )


def test_unlinked_mail_becomes_events_sent_as_one_digest(seeded_db, mailbox, store):
    mailcorpus.add_account(seeded_db)
    location = mailcorpus.add_location(
        seeded_db, "inbox", "imap_test", notify_address="ops@erp.example.com"
    )
    append_to([mailcorpus.simple(n) for n in range(3)])

    summary = import_location(location)

    assert summary.unlinked == 3
    events = rows(seeded_db, "SELECT type, payload FROM erp.events ORDER BY id")
    ids = [i for (i,) in rows(seeded_db, "SELECT id FROM mail.messages ORDER BY id")]
    assert [(t, p["mail_id"], p["notify_address"]) for t, p in events] == [
        ("mail_unlinked", i, "ops@erp.example.com") for i in ids
    ]
    assert rows(seeded_db, "SELECT count(*) FROM mail.outbox") == [(0,)]  # nothing of its own
    # the hourly digest of the migration's rule, once due: one mail listing the three
    assert mailing.process() == {"digest": 3, "events": 3, "digests": 0}
    later = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    assert mailing.process(now=later) == {"events": 0, "digests": 1}
    ((recipients, subject, mime),) = rows(
        seeded_db, "SELECT recipients, subject, mime FROM mail.outbox"
    )
    assert recipients == ["ops@erp.example.com"]
    assert subject == "3 nicht zugeordnete E-Mails in inbox"  # events/mail_unlinked/de
    alert = message_from_bytes(bytes(mime), policy=policy.default)
    text = alert.get_body(("plain",)).get_content()
    html = alert.get_body(("html",)).get_content()
    assert all(f"#{i}  " in text and f"<td>{i}</td>" in html for i in ids)
    assert all(f"person{n}@example.org" in text + html for n in range(3))
