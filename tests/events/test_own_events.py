"""erpmail's own events, written by triggers in the transaction of the fact: a letter's mail
failed or bounced, a reply to a balance confirmation linked to its letter, and each only
once."""

from __future__ import annotations

from erpmail.core import db
from erpmail.outbound import outbox
from tests import mailcorpus
from tests.dags import dagtest
from tests.mailaccounts import add_account
from tests.partners import remake_partner

EVENTS = "SELECT type, payload, company, partner_id FROM erp.events ORDER BY id"


def _letter(cur, document: str, partner: int, account: int, n: int) -> tuple[int, int]:
    """A released letter of a new run of ``document`` with its queued mail: (letter, outbox)."""
    cur.execute(
        "INSERT INTO erp.runs (kind, airflow_run_id, company, key_date) VALUES (%s, %s, 'DEMO',"
        " '2026-12-01') RETURNING id",
        (document, f"manual__{n}"),
    )
    (run,) = cur.fetchone()
    cur.execute(
        "INSERT INTO erp.letters (run_id, partner_id, document, language, status)"
        " VALUES (%s, %s, %s, 'de', 'archived') RETURNING id",
        (run, partner, document),
    )
    (letter,) = cur.fetchone()
    mime = f"Message-ID: <l{n}@demo.example>\r\nSubject: Brief {n}\r\n\r\nx\r\n".encode()
    outbox_id = outbox.enqueue(cur, key=f"k{n}", account_id=account, recipients=["p@example.com"],
                               mime=mime, source_type="letter", source_id=letter)  # fmt: skip
    cur.execute(
        "UPDATE erp.letters SET status = 'released', outbox_id = %s WHERE id = %s",
        (outbox_id, letter),
    )
    return letter, outbox_id


def test_a_failed_and_a_bounced_letter_mail_are_events_once(seeded_db):
    account = add_account(seeded_db, "ops", is_default=True)
    with db.transaction(seeded_db) as cur:
        partner = remake_partner(cur, "000001")
        failed, failed_mail = _letter(cur, "dunning", partner, account.id, 1)
        _, bounced_mail = _letter(cur, "dunning", partner, account.id, 2)
        notice = outbox.enqueue(cur, key="n", account_id=account.id, recipients=["a@x.example"],
            mime=b"Message-ID: <n@x>\r\n\r\nx", source_type="alert")  # fmt: skip
    with db.transaction(seeded_db) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'failed', last_error = '550 5.1.1 unknown user'"
            " WHERE id IN (%s, %s)",
            (failed_mail, notice),
        )
        cur.execute("UPDATE mail.outbox SET status = 'bounced' WHERE id = %s", (bounced_mail,))
        cur.execute("UPDATE mail.outbox SET subject = 'again' WHERE id = %s", (failed_mail,))

    events = dagtest.rows(seeded_db, EVENTS)
    assert [(t, c, p) for t, _, c, p in events] == [
        ("letter_failed", "DEMO", partner),
        ("mail_bounced", "DEMO", partner),
    ]  # the alert's failure is no event: no mail about mail about mail
    payload = events[0][1]
    assert payload["letter_id"] == failed and payload["partner"] == "000001"
    assert "550 5.1.1 unknown user" in payload["reply"]
    assert payload["recipients"] == ["p@example.com"]


def test_a_reply_linked_to_a_balance_confirmation_is_an_event(seeded_db):
    account = add_account(seeded_db, "ops", is_default=True)
    location = mailcorpus.add_location(seeded_db, "fibu", "imap_test")
    with db.transaction(seeded_db) as cur:
        partner = remake_partner(cur, "000001")
        letter, _ = _letter(cur, "balance_confirmation", partner, account.id, 1)
        dunning, _ = _letter(cur, "dunning", partner, account.id, 2)
        cur.execute(
            "INSERT INTO mail.messages (direction, location_id, sha256, eml_path, size_bytes,"
            " subject, from_address, status) VALUES ('in', %s, repeat('a', 64), 'x.eml', 1,"
            " 'Re: Saldenbestätigung', 'kunde@example.com', 'linked') RETURNING id",
            (location,),
        )
        (mail,) = cur.fetchone()
        for entity in (letter, dunning):
            cur.execute(
                "INSERT INTO mail.message_links (message_id, entity_type, entity_id, method)"
                " VALUES (%s, 'letter', %s, 'reply')",
                (mail, entity),
            )
    ((event_type, payload, _, partner_id),) = dagtest.rows(seeded_db, EVENTS)
    assert (event_type, partner_id) == ("balance_reply_received", partner)
    assert payload["letter_id"] == letter and payload["mail_id"] == mail
    assert payload["from"] == "kunde@example.com" and payload["key_date"] == "2026-12-01"
