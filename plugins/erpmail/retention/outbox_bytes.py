"""The outbox's own retention: a finished message's MIME bytes are cleared after the sent
policy's ``outbox_keep_days`` (30 without a sent policy). Never for a message that may still
be sent or whose Sent-folder copy is pending, and never for a sent message not yet archived
(``mail.outbox.sent_archived_at``): its ``mail.messages`` copy is where sent mail lives.
"""

from __future__ import annotations

from datetime import date, timedelta

import psycopg2.extensions

from erpmail.core import db

DEFAULT_KEEP_DAYS = 30
KEEP_DAYS = "SELECT outbox_keep_days FROM mail.retention_policies WHERE scope = 'sent'"
COUNT_FINISHED = """
SELECT count(*) FROM mail.outbox o
 WHERE o.mime_purged_at IS NULL
   AND o.status IN ('sent', 'bounced', 'failed', 'cancelled')
   AND coalesce(o.sent_at, o.created_at) < %(cutoff)s
   AND o.sent_copy <> 'pending'
   AND (o.status NOT IN ('sent', 'bounced') OR o.sent_archived_at IS NOT NULL)"""
# the same conditions as COUNT_FINISHED
CLEAR_BATCH = """
UPDATE mail.outbox SET mime = '', mime_purged_at = now()
 WHERE id IN (SELECT o.id FROM mail.outbox o
 WHERE o.mime_purged_at IS NULL
   AND o.status IN ('sent', 'bounced', 'failed', 'cancelled')
   AND coalesce(o.sent_at, o.created_at) < %(cutoff)s
   AND o.sent_copy <> 'pending'
   AND (o.status NOT IN ('sent', 'bounced') OR o.sent_archived_at IS NOT NULL)
 ORDER BY o.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""


def cutoff(cur: psycopg2.extensions.cursor, as_of: date) -> date:
    """The day before which finished outbox messages lose their bytes."""
    cur.execute(KEEP_DAYS)
    row = cur.fetchone()
    return as_of - timedelta(days=row[0] if row else DEFAULT_KEEP_DAYS)


def clear(
    conn: psycopg2.extensions.connection, as_of: date, *, dry_run: bool, batch_size: int = 1000
) -> int:
    """Clear (dry run: count) the bytes of finished outbox messages past their retention."""
    with db.transaction(conn) as cur:
        params = {"cutoff": cutoff(cur, as_of), "limit": batch_size}
        if dry_run:
            cur.execute(COUNT_FINISHED, params)
            return cur.fetchone()[0]
    cleared = 0
    while True:
        with db.transaction(conn) as cur:
            cur.execute(CLEAR_BATCH, params)
            cleared += cur.rowcount
            if cur.rowcount < batch_size:
                return cleared
