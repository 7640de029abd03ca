"""Sent mail archived as mail: the exact bytes the server accepted, as an .eml in the
document store with a ``mail.messages`` row (direction ``out``) linked to its letter, the
letter's partner and open items. Retention keeps and purges it like received mail.

The file goes first and its key is the content's hash, so a run that dies between file and
row leaves a file the next run writes again under the same key and then records. The outbox
row says the copy was made (``sent_archived_at``): a copy that retention purged is not made
again. A letter whose dunning level keeps no archived copy gets none here either, nor does a
mail holding a secret (``mail.outbox.secret``: a password-reset link).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from psycopg2.extras import execute_values

from erpmail.core import archive, db
from erpmail.core.copyread import bytes_by_id
from erpmail.inbound import headers
from erpmail.inbound.linking import Link, letter_open_items, store_links_many

log = logging.getLogger(__name__)

BATCH = 200
IDLE_SECONDS = 0.2  # the archiver's pause when no sent mail waits for its copy

# Sent messages without their archived copy; row locks keep two dispatchers apart.
UNARCHIVED = """
SELECT o.id, o.account_id, o.message_id, o.sent_at, l.id, l.partner_id,
       coalesce(l.keep_pdf, true) AND NOT o.secret AND o.keep_copy
  FROM mail.outbox o
  LEFT JOIN erp.letters l ON o.source_type = 'letter' AND l.id = o.source_id
 WHERE o.status = 'sent' AND o.sent_archived_at IS NULL
 ORDER BY o.id LIMIT %s
   FOR UPDATE OF o SKIP LOCKED"""
# the bytes apart, by a binary COPY (core.copyread): bytea not hex-encoded at twice the size
SENT_MIME = "SELECT id, mime FROM mail.outbox WHERE id = ANY(%s::bigint[])"
MARK_ARCHIVED = "UPDATE mail.outbox SET sent_archived_at = now() WHERE id = ANY(%s)"
INSERT_SENT = """
INSERT INTO mail.messages (direction, outbox_id, message_id, sha256, eml_path, size_bytes,
    subject, from_address, from_name, to_addresses, cc_addresses, sent_date, status)
VALUES %s
ON CONFLICT (outbox_id) WHERE outbox_id IS NOT NULL DO NOTHING
RETURNING id, outbox_id"""
INSERT_SENT_ROW = "('out', %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s::text[], %s, %s)"


def sent_key(account_id: int, sha256: str, sent_at) -> str:
    """Where a sent mail's .eml is stored."""
    return f"sent/account-{account_id}/{sent_at:%Y/%m}/{sha256}.eml"


def archive_sent(conn, *, limit: int = BATCH) -> int:
    """Archive up to ``limit`` sent messages that have no archived copy yet; return how many.

    Called by the dispatcher after its verdicts are committed; a failure is logged by the
    caller and the copy is made by a later run (the mail itself is never sent again).
    """
    with db.transaction(conn) as cur:
        cur.execute(UNARCHIVED, (limit,))
        rows = cur.fetchall()
        kept = [
            row for row in rows if row[6]
        ]  # none of a level's that keeps none, a secret, a campaign's
        mime = bytes_by_id(cur, SENT_MIME, ([row[0] for row in kept],)) if kept else {}
        letters = letter_open_items(cur, [row[4] for row in kept if row[4] is not None])
        values, keys, linked = [], [], {}
        for outbox_id, account_id, message_id, sent_at, letter_id, partner, _ in kept:
            data = mime[outbox_id]
            sha = hashlib.sha256(data).hexdigest()
            key = archive.store(sent_key(account_id, sha, sent_at), data)
            keys.append(key)
            # the plain parser: policy.default's header objects cost more than the rest
            facts = headers.brief(data)
            values.append(
                (
                    outbox_id,
                    message_id,
                    sha,
                    key,
                    len(data),
                    facts.subject,
                    facts.from_address,
                    facts.from_name,
                    facts.to,
                    facts.cc,
                    sent_at,
                    "linked" if letter_id is not None else "unlinked",
                )
            )
            if letter_id is not None:
                found = [Link("letter", letter_id, "sent"), Link("partner", partner, "sent")]
                found += [Link("open_item", item, "sent") for item in letters.get(letter_id, ())]
                linked[outbox_id] = found
        inserted = (
            execute_values(
                cur,
                INSERT_SENT,
                values,
                template=INSERT_SENT_ROW,
                page_size=len(values),
                fetch=True,
            )
            if values
            else []
        )
        store_links_many(
            cur,
            [
                (mail_id, linked[outbox_id])
                for mail_id, outbox_id in inserted
                if outbox_id in linked
            ],
        )
        cur.execute(MARK_ARCHIVED, ([row[0] for row in rows],))
        archive.sync(keys)  # the files are durable before the rows that name them commit
    if rows:
        log.info("archived %d sent mails", len(rows))
    return len(rows)


def archive_until(conn, deadline: float) -> int:
    """Archive the sent mails as mail until done or ``deadline``; a failure waits for the next
    run (the mail is sent; only its archived copy is late)."""
    archived = 0
    try:
        while True:  # one batch at least, so a run that used its budget still makes progress
            done = archive_sent(conn)
            archived += done
            if not done or time.monotonic() >= deadline:
                break
    except Exception as exc:
        log.error(
            "archiving sent mail failed, the next run retries: %s: %s", type(exc).__name__, exc
        )
    return archived


class Archiver:
    """Archives sent mail on its own connection and thread while the dispatcher sends, so the
    copies overlap SMTP instead of following it; the run's last pass takes what is left."""

    def __init__(self, url: str | None) -> None:
        self.conn = db.connect(url)
        self.archived = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-archiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                done = archive_sent(self.conn)
                self.archived += done
                if not done:
                    self._stop.wait(IDLE_SECONDS)
        except Exception as exc:  # the run's last pass, or the next run, makes the copies
            log.warning(
                "archiving sent mail alongside sending stopped: %s: %s", type(exc).__name__, exc
            )

    def close(self) -> int:
        """Stop after the current batch; how many it archived (once; then 0)."""
        if self._thread.is_alive() or not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.conn.close()
        archived, self.archived = self.archived, 0
        return archived
