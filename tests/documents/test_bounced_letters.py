"""A letter whose mail bounces: the bounce arrives in an imported mailbox, the letter fails
with the remote server's diagnostic, the address is blocked, and the next run puts the
partner on paper. Real aiosmtpd, Dovecot and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from erpmail.core import db
from erpmail.documents import runs, summary
from erpmail.documents.dunning import DUNNING
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location
from erpmail.outbound import dispatch as dispatcher
from tests import mailcorpus
from tests.documents.pipeline import KEY, dunning_run, rows, run_steps
from tests.inbound import dsns
from tests.mailaccounts import COMPANY_CONN_ID, smtp_connection

SENT = """
SELECT l.id, l.partner_id, o.message_id, o.envelope_from, o.recipients[1]
  FROM erp.letters l JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s AND o.status = 'sent' ORDER BY l.id"""
STATUS = """
SELECT l.status, l.error, s.mail_status FROM erp.letters l
  JOIN erp.letter_status s ON s.letter_id = l.id WHERE l.id = %s"""


def test_a_bounce_fails_the_letter_blocks_the_address_and_the_next_run_prints(
    ledger, monkeypatch, smtp_server, imap_user
):
    smtp_connection(monkeypatch, smtp_server, COMPANY_CONN_ID)
    with db.transaction(ledger) as cur:
        cur.execute("UPDATE mail.accounts SET bounce_domain = 'bounces.demo.example'")
    run = dunning_run("manual__1")
    run_steps(run)
    dispatcher.dispatch()
    hard, soft, away = rows(ledger, SENT, run)[:3]
    assert hard[3].startswith("bounce+") and hard[3].endswith("@bounces.demo.example")
    assert len({hard[3], soft[3], away[3]}) == 3  # an envelope sender per message

    mailcorpus.imap_conn(monkeypatch, "imap_test", imap_user)
    with ImapHook("imap_test").client() as client:
        for letter, build in (
            (hard, dsns.rfc3464),
            (soft, dsns.delayed),
            (away, dsns.out_of_office),
        ):
            client.append("INBOX", build(dsns.Sent(letter[2], letter[3], letter[4])))
    location = mailcorpus.add_location(ledger, "bounces", "imap_test")
    imported = import_location(location)

    assert imported.new == 3
    # each bounce is filed with its letter (the out-of-office too: it replies to the letter)
    assert rows(
        ledger,
        "SELECT l.entity_id FROM mail.message_links l JOIN mail.messages m ON m.id = l.message_id"
        " WHERE m.direction = 'in' AND l.entity_type = 'letter' ORDER BY l.entity_id",
    ) == [(hard[0],), (soft[0],), (away[0],)]
    status, error, mail_status = rows(ledger, STATUS, hard[0])[0]
    assert (status, mail_status) == ("failed", "bounced")
    assert "5.1.1" in error and "User unknown" in error
    ((stored,),) = rows(ledger, "SELECT summary FROM erp.runs WHERE id = %s", run)
    assert stored["bounced"] == 1
    assert "zurückgewiesen: 1" in summary.summary_text(stored)  # the company writes German
    assert rows(ledger, STATUS, soft[0])[0][0] == "sent"  # a delay only counts
    assert rows(ledger, STATUS, away[0])[0][0] == "sent"  # an out-of-office is no bounce
    health = dict(
        (a, (h, s, b is not None))
        for a, h, s, b in rows(
            ledger,
            "SELECT address, hard_bounces, soft_bounces, blocked_at FROM mail.address_health",
        )
    )
    assert health == {hard[4].lower(): (1, 0, True), soft[4].lower(): (0, 1, False)}
    assert rows(ledger, "SELECT matched_by, kind FROM mail.bounces ORDER BY id") == [
        ("verp", "hard"),
        ("verp", "soft"),
    ]

    # mail from the soft-bounced address forgives it; a bounce for nothing of ours is just mail
    stranger = dsns.Sent("<not-ours@elsewhere.example>", "news@elsewhere.example", "x@y.example")
    with ImapHook("imap_test").client() as client:
        client.append("INBOX", mailcorpus.simple(1, sender=soft[4]))
        client.append("INBOX", dsns.rfc3464(stranger))
    assert import_location(location).new == 2
    assert rows(
        ledger, "SELECT soft_bounces FROM mail.address_health WHERE address = %s", soft[4].lower()
    ) == [(0,)]
    assert rows(ledger, "SELECT count(*) FROM mail.bounces") == [(2,)]

    # the next dunning run, a month on: the blocked address gets paper
    again = runs.create_run(
        kind="dunning",
        airflow_run_id="manual__2",
        company="DEMO",
        key_date=KEY + timedelta(days=30),
    )
    runs.generate(again, DUNNING)
    run_steps(again)

    by_partner = {
        r[0]: r
        for r in rows(
            ledger,
            "SELECT partner_id, status, paper_reason FROM erp.letters WHERE run_id = %s",
            again,
        )
    }
    assert by_partner[hard[1]][1:] == ("paper", "blocked")
    assert by_partner[soft[1]][1] != "paper"
