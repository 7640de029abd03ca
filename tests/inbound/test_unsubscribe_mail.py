"""The ``mailto:`` unsubscribe of a campaign mail: a reply to ``unsubscribe+<token>@...``
imported from Dovecot suppresses the recipient's address; a forged token does nothing."""

from __future__ import annotations

from email.message import EmailMessage

from erpmail.campaigns import unsubscribe
from erpmail.core import db
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows
from tests.partners import remake_partner


def _unsubscribe_mail(n: int, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "c1@example.com", to, "unsubscribe"
    msg["Message-ID"] = f"<unsub-{n}@example.com>"
    msg.set_content("")
    return msg.as_bytes()


def test_a_mail_to_the_unsubscribe_address_suppresses_the_recipient(
    seeded_db, mailbox, store, monkeypatch
):
    monkeypatch.setenv(unsubscribe.SECRET_ENV, "test-secret-0123456789abcdef")
    mailcorpus.add_account(seeded_db)  # 'service'
    with db.transaction(seeded_db) as cur:
        partner = remake_partner(cur, "000001", email="c1@example.com")
        cur.execute(
            "INSERT INTO mail.campaigns (name, company, account) VALUES ('x', 'DEMO', 'service')"
            " RETURNING id"
        )
        (campaign,) = cur.fetchone()
        cur.execute(
            "INSERT INTO mail.campaign_recipients (campaign_id, partner_id, address, language)"
            " VALUES (%s, %s, 'c1@example.com', 'de') RETURNING id",
            (campaign, partner),
        )
        (recipient,) = cur.fetchone()
    location = mailcorpus.add_location(seeded_db, "inbox", "imap_test")
    token = unsubscribe.token(recipient)
    append(
        [
            _unsubscribe_mail(1, f"unsubscribe+{token[:-2]}xx@demo.example"),  # forged
            _unsubscribe_mail(2, f"Unsubscribe+{token}@demo.example"),
        ]
    )
    assert import_location(location).new == 2
    assert rows(seeded_db, "SELECT address, scope, source, campaign_id FROM mail.suppressions") == [
        ("c1@example.com", "marketing", "mailto", campaign)
    ]
