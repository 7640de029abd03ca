"""What the screens read and change, on real PostgreSQL."""

from __future__ import annotations

from erpmail.core.db import transaction
from erpmail.ui import screens
from tests.mailaccounts import add_account
from tests.outboxmail import enqueue_many, outbox_row


def test_retry_now_requeues_a_failed_message_and_says_who(db):
    account = add_account(db)
    failed, sent = enqueue_many(db, account, 2)
    with transaction(db) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'failed', last_error = '550 x' WHERE id = %s",
            (failed,),
        )
        cur.execute(
            "UPDATE mail.outbox SET status = 'sent', sent_at = now() WHERE id = %s", (sent,)
        )

    assert [f[0] for f in screens.outbox_failed()] == [failed]
    ((name, *_, queued, waiting, sending, failed_n, sent_today, bounced),) = [
        (a[1], *a[2:]) for a in screens.outbox_accounts()
    ]
    assert (queued, failed_n, sent_today) == (0, 1, 1)
    assert screens.retry_now(failed, user="clerk") and not screens.retry_now(sent, user="clerk")

    assert outbox_row(db, failed)["status"] == "queued"
    assert outbox_row(db, sent)["status"] == "sent"
    with transaction(db) as cur:
        cur.execute("SELECT actor, action, subject FROM mail.audit_log")
        assert cur.fetchall() == [("clerk", "retry_now", f"outbox {failed}")]
