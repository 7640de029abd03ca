"""The copy of sent mail in the account's Sent folder, appended over IMAP after the server
accepted the mail (``mail.outbox.sent_copy``: none, pending, done, failed). A failure is
retried by later dispatcher runs and never resends the mail.
"""

from __future__ import annotations

import logging
import time

from erpmail.core import db
from erpmail.outbound.accounts import Account

log = logging.getLogger(__name__)

# Row locks held while appending, so two dispatchers never file the same copy twice.
PENDING_COPIES = """
SELECT id, mime, sent_copy_attempts FROM mail.outbox
WHERE account_id = %s AND sent_copy = 'pending'
ORDER BY id LIMIT %s
FOR UPDATE SKIP LOCKED"""
COPY_DONE = "UPDATE mail.outbox SET sent_copy = 'done', sent_copy_error = NULL WHERE id = ANY(%s)"
COPY_FAILED = """
UPDATE mail.outbox
SET sent_copy_attempts = sent_copy_attempts + 1, sent_copy_error = %s,
    sent_copy = CASE WHEN sent_copy_attempts + 1 >= %s THEN 'failed' ELSE 'pending' END
WHERE id = ANY(%s)"""

MAX_COPY_ATTEMPTS = 10


def file_pending_copies(conn, accounts: list[Account], deadline: float) -> tuple[int, int]:
    """Append pending Sent-folder copies for the accounts that keep one until ``deadline``
    (monotonic clock); returns (filed, failed), failures are retried by later runs."""
    filed = failures = 0
    for account in accounts:
        if account.sent_folder is None:
            continue
        while time.monotonic() < deadline:
            done, failed = file_sent_copies(conn, account)
            filed += done
            failures += failed
            if not done or failed:
                break
    return filed, failures


def file_sent_copies(conn, account: Account, limit: int = 100) -> tuple[int, int]:
    """Append up to ``limit`` pending copies to the account's Sent folder over IMAP.

    Returns (filed, failed); a failure is logged and left for a later run (``failed``
    after MAX_COPY_ATTEMPTS). The mail itself is never sent again.
    """
    with db.transaction(conn) as cur:
        cur.execute(PENDING_COPIES, (account.id, limit))
        rows = cur.fetchall()
        if not rows:
            return 0, 0
        done: list[int] = []
        try:
            from erpmail.inbound.imap import (
                ImapHook,  # imported here: only Sent-folder copies need IMAP
            )

            with ImapHook(account.sent_folder_conn_id).client() as client:
                if not client.folder_exists(account.sent_folder):
                    client.create_folder(account.sent_folder)
                for outbox_id, mime, _attempts in rows:
                    client.append(account.sent_folder, bytes(mime), flags=(b"\\Seen",))
                    done.append(outbox_id)
        except Exception as e:  # any IMAP or import failure: retried by a later run
            error = f"{type(e).__name__}: {e}"
            log.error(
                "account %r: Sent-folder copy to %r failed, will retry: %s",
                account.name,
                account.sent_folder,
                error,
            )
            failed = [r[0] for r in rows if r[0] not in set(done)]
            cur.execute(COPY_DONE, (done,))
            cur.execute(COPY_FAILED, (error[:500], MAX_COPY_ATTEMPTS, failed))
            return len(done), len(failed)
        cur.execute(COPY_DONE, (done,))
        return len(done), 0
