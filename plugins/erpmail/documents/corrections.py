"""A clerk's corrections to the letters of a run: send a failed letter again, or put a letter
on paper; each writes an audit row (``mail.audit_log``) naming the user.

Sending again queues a new outbox message (a new key and Message-ID; the old message and its
verdict stay) with the bytes that were sent, and releases the letter for it.
"""

from __future__ import annotations

from email import message_from_bytes, policy

from psycopg2.extras import Json

from erpmail.core import db
from erpmail.documents import mime
from erpmail.outbound import outbox

LETTER = """
SELECT l.id, l.status, l.outbox_id, o.key, o.account_id, o.recipients, o.mime, o.mime_purged_at,
       a.from_address
  FROM erp.letters l
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
  LEFT JOIN mail.accounts a ON a.id = o.account_id
 WHERE l.run_id = %s AND l.id = %s
   FOR UPDATE OF l"""
RESENDS = "SELECT count(*) FROM mail.outbox WHERE starts_with(key, %s)"
RELEASE_AGAIN = """
UPDATE erp.letters SET status = 'released', outbox_id = %s, error = NULL, updated_at = now()
 WHERE id = %s"""
TO_PAPER = """
UPDATE erp.letters SET status = 'paper', paper_reason = 'by_hand', error = NULL,
       updated_at = now()
 WHERE id = %s"""
AUDIT = """
INSERT INTO mail.audit_log (actor, action, subject, details) VALUES (%s, %s, %s, %s)"""


class CorrectionRefused(ValueError):
    """The letter cannot take this correction; the message says why."""


def resend(run_id: int, letter_id: int, *, user: str) -> int:
    """Queue a failed letter's mail again; the new outbox id."""
    with db.transaction() as cur:
        row = _letter(cur, run_id, letter_id)
        _, status, old_id, key, account_id, recipients, data, purged, sender = row
        if status != "failed" or old_id is None:
            raise CorrectionRefused(f"letter {letter_id} is {status}: only a failed mail is resent")
        if purged is not None:
            raise CorrectionRefused(
                f"letter {letter_id}: the mail's bytes were cleared by retention on {purged:%Y-%m-%d}"
            )
        base = key.split(":resend-")[0]
        cur.execute(RESENDS, (f"{base}:resend-",))
        new_key = f"{base}:resend-{cur.fetchone()[0] + 1}"
        msg = message_from_bytes(bytes(data), policy=policy.SMTP)
        del msg["Message-ID"]
        msg["Message-ID"] = mime.make_message_id(new_key, sender.rpartition("@")[2])
        new_id = outbox.enqueue(
            cur,
            key=new_key,
            account_id=account_id,
            recipients=list(recipients),
            mime=msg.as_bytes(),
            source_type="letter",
            source_id=letter_id,
        )
        cur.execute(RELEASE_AGAIN, (new_id, letter_id))
        _audit(
            cur, user, "resend_letter", letter_id, {"run_id": run_id, "old": old_id, "new": new_id}
        )
    return new_id


def to_paper(run_id: int, letter_id: int, *, user: str) -> None:
    """Put a failed letter (or one not yet routed) on paper; its PDF goes by post."""
    with db.transaction() as cur:
        _, status, *_ = _letter(cur, run_id, letter_id)
        if status not in ("failed", "archived"):
            raise CorrectionRefused(
                f"letter {letter_id} is {status}: only a failed or unrouted letter goes to paper"
            )
        cur.execute(TO_PAPER, (letter_id,))
        _audit(cur, user, "letter_to_paper", letter_id, {"run_id": run_id, "was": status})


def _letter(cur, run_id: int, letter_id: int) -> tuple:
    cur.execute(LETTER, (run_id, letter_id))
    row = cur.fetchone()
    if row is None:
        raise CorrectionRefused(f"letter {letter_id} is not a letter of run {run_id}")
    return row


def _audit(cur, user: str, action: str, letter_id: int, details: dict) -> None:
    cur.execute(AUDIT, (user, action, f"letter {letter_id}", Json(details)))
