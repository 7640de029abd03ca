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
