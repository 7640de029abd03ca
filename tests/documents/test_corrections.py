"""A clerk's corrections: a failed letter sent again as a new message, one put on paper."""

from __future__ import annotations

from email import message_from_bytes

import pytest

from erpmail.core import db
from erpmail.documents import corrections
from tests.documents.pipeline import dunning_run, rows, run_steps

FAIL = """
UPDATE mail.outbox SET status = 'failed', last_error = '550 mailbox unavailable'
 WHERE id = (SELECT outbox_id FROM erp.letters WHERE id = %s)"""


def test_a_failed_letter_is_sent_again_as_a_new_message_and_another_goes_to_paper(ledger):
    run = dunning_run()
    run_steps(run)
    first, second, fine = [
        i
        for (i,) in rows(
            ledger,
            "SELECT id FROM erp.letters WHERE run_id = %s AND status = 'released' ORDER BY id",
            run,
        )
    ][:3]
    with db.transaction(ledger) as cur:
        cur.execute(FAIL, (first,))
        cur.execute(FAIL, (second,))
    ((old_id, old_mime),) = rows(
        ledger,
        "SELECT o.id, o.mime FROM mail.outbox o JOIN erp.letters l ON l.outbox_id = o.id WHERE l.id = %s",
        first,
    )

    new_id = corrections.resend(run, first, user="clerk")
    corrections.to_paper(run, second, user="clerk")

    assert rows(
        ledger, "SELECT status, outbox_id, error FROM erp.letters WHERE id = %s", first
    ) == [("released", new_id, None)]
    (old, new) = rows(
        ledger,
        "SELECT id, key, status, message_id, mime FROM mail.outbox WHERE id IN (%s, %s) ORDER BY id",
        old_id,
        new_id,
    )
    assert old[2] == "failed" and new[2] == "queued" and new[1] == f"{old[1]}:resend-1"
    assert new[3] != old[3] and message_from_bytes(bytes(new[4]))["Message-ID"] == new[3]
    assert (
        message_from_bytes(bytes(new[4])).get_payload()[0].as_bytes()
        == message_from_bytes(bytes(old_mime)).get_payload()[0].as_bytes()
    )
    assert rows(ledger, "SELECT status, paper_reason FROM erp.letters WHERE id = %s", second) == [
        ("paper", "by_hand")
    ]
    assert rows(
        ledger,
        "SELECT actor, action, subject FROM mail.audit_log WHERE action LIKE '%%letter%%' ORDER BY id",
    ) == [
        ("clerk", "resend_letter", f"letter {first}"),
        ("clerk", "letter_to_paper", f"letter {second}"),
    ]
    with pytest.raises(corrections.CorrectionRefused, match="only a failed mail is resent"):
        corrections.resend(run, fine, user="clerk")
    with pytest.raises(corrections.CorrectionRefused, match="not a letter of run"):
        corrections.to_paper(run + 1, fine, user="clerk")
