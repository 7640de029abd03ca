"""Routing a batch: mail or paper with the reason, a letter that cannot be mailed fails
alone, and the letter follows its outbox message."""

from __future__ import annotations

from erpmail.core import db
from erpmail.documents import routing
from erpmail.documents.routing import choose_route
from tests.documents.pipeline import LETTERS, dunning_run, rows, run_steps


def test_route_without_an_account_fails_each_letter_and_goes_on(ledger) -> None:
    with db.transaction(ledger) as cur:
        cur.execute("DELETE FROM mail.accounts")
    run = dunning_run()
    run_steps(run)
    letters = rows(ledger, LETTERS, run)
    mailable = [row for row in letters if row[2] == "failed"]
    assert mailable and all("no mail account may send as" in row[7] for row in mailable)
    assert any(row[2] == "paper" for row in letters)


def test_letter_follows_its_outbox_message(ledger) -> None:
    run = dunning_run()
    run_steps(run)
    released = [row for row in rows(ledger, LETTERS, run) if row[2] == "released"]
    first, second = released[0], released[1]
    with db.transaction(ledger) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'sent', sent_at = now(), smtp_reply = '250 ok' WHERE id = %s",
            (first[5],),
        )
        cur.execute(
            "UPDATE mail.outbox SET status = 'failed', last_error = '550 mailbox unavailable' WHERE id = %s",
            (second[5],),
        )
    view = dict(
        (r[0], r[1:])
        for r in rows(
            ledger,
            "SELECT letter_id, status, error, mail_status FROM erp.letter_status WHERE run_id = %s",
            run,
        )
    )
    assert view[first[0]] == ("sent", None, "sent")
    assert view[second[0]] == ("failed", "550 mailbox unavailable", "failed")


def test_choose_route_refuses_invalid_address() -> None:
    route = choose_route(sends_email=True, partner_email="not an address", email_blocked=False)
    assert route == routing.Route("not an address", "invalid_address")
    route = choose_route(
        sends_email=True,
        partner_email="a@b.example.com",
        email_blocked=True,
        contact_email="c@d.example.com",
    )
    assert route.paper_reason == "blocked"


def test_a_hostile_partner_number_cannot_name_a_path_or_reorder_the_subject(ledger) -> None:
    import email
    from email import policy

    hostile = "..\\..\\evil:x\u202efdp.exe\u0007/CON"
    run = dunning_run()
    with db.transaction(ledger) as cur:  # a partner with a letter by mail gets a hostile number
        cur.execute(
            "UPDATE erp.partners SET number = %s WHERE id = (SELECT min(l.partner_id) FROM"
            " erp.letters l JOIN erp.partners p ON p.id = l.partner_id WHERE l.run_id = %s"
            " AND p.email LIKE '%%@%%.%%' AND NOT p.email_blocked) RETURNING id",
            (hostile, run),
        )
        assert cur.fetchone() is not None
    run_steps(run)
    (letter,) = [row for row in rows(ledger, LETTERS, run) if row[1] == hostile]
    assert letter[2] == "released", letter
    ((mime,),) = rows(ledger, "SELECT mime FROM mail.outbox WHERE id = %s", letter[5])
    msg = email.message_from_bytes(bytes(mime), policy=policy.default)
    (attachment,) = list(msg.iter_attachments())
    name = attachment.get_filename()
    assert name.endswith(".pdf") and name.startswith("Zahlungserinnerung")
    assert not any(ch in name for ch in "/\\:\u202e\u0007")
    assert len(name.encode()) <= 200
    subject = str(msg["Subject"])
    assert "\u202e" not in subject and "evil" in subject  # the number is shown, not obeyed
