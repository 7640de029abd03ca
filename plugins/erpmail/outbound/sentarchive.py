"""Sent mail archived as mail: the exact bytes the server accepted, as an .eml in the
document store with a ``mail.messages`` row (direction ``out``) linked to its letter, the
letter's partner and open items. Retention keeps and purges it like received mail.

The file goes first and its key is the content's hash, so a run that dies between file and
row leaves a file the next run writes again under the same key and then records. The outbox
row says the copy was made (``sent_archived_at``): a copy that retention purged is not made
again. A letter whose dunning level keeps no archived copy gets none here either.
"""

from __future__ import annotations

import hashlib
import logging
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr

from erpmail.core import archive, db
from erpmail.inbound.linking import Link, letter_open_items, store_links_many

log = logging.getLogger(__name__)

BATCH = 200

# Sent messages without their archived copy; row locks keep two dispatchers apart.
UNARCHIVED = """
SELECT o.id, o.account_id, o.message_id, o.mime, o.sent_at, l.id, l.partner_id,
       coalesce(l.keep_pdf, true)
  FROM mail.outbox o
  LEFT JOIN erp.letters l ON o.source_type = 'letter' AND l.id = o.source_id
 WHERE o.status = 'sent' AND o.sent_archived_at IS NULL
 ORDER BY o.id LIMIT %s
   FOR UPDATE OF o SKIP LOCKED"""
MARK_ARCHIVED = "UPDATE mail.outbox SET sent_archived_at = now() WHERE id = ANY(%s)"
INSERT_SENT = """
INSERT INTO mail.messages (direction, outbox_id, message_id, sha256, eml_path, size_bytes,
    subject, from_address, from_name, to_addresses, cc_addresses, sent_date, status)
VALUES ('out', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (outbox_id) WHERE outbox_id IS NOT NULL DO NOTHING
RETURNING id"""


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
        letters = letter_open_items(cur, [row[5] for row in rows if row[5] is not None])
        links, keys = [], []
        for outbox_id, account_id, message_id, mime, sent_at, letter_id, partner, keep in rows:
            if not keep:
                continue  # the letter's dunning level keeps no archived copy of what it sent
            data = bytes(mime)
            sha = hashlib.sha256(data).hexdigest()
            key = archive.store(sent_key(account_id, sha, sent_at), data)
            keys.append(key)
            headers = BytesHeaderParser(policy=default_policy).parsebytes(data)
            from_name, from_address = parseaddr(str(headers.get("From", "")))
            cur.execute(
                INSERT_SENT,
                (
                    outbox_id,
                    message_id,
                    sha,
                    key,
                    len(data),
                    str(headers.get("Subject", "")),
                    from_address or None,
                    from_name or None,
                    [a for _, a in getaddresses([str(v) for v in headers.get_all("To", [])])],
                    [a for _, a in getaddresses([str(v) for v in headers.get_all("Cc", [])])],
                    sent_at,
                    "linked" if letter_id is not None else "unlinked",
                ),
            )
            inserted = cur.fetchone()
            if inserted is None or letter_id is None:
                continue
            found = [Link("letter", letter_id, "sent"), Link("partner", partner, "sent")]
            found += [Link("open_item", item, "sent") for item in letters.get(letter_id, ())]
            links.append((inserted[0], found))
        store_links_many(cur, links)
        cur.execute(MARK_ARCHIVED, ([row[0] for row in rows],))
        archive.sync(keys)  # the files are durable before the rows that name them commit
    if rows:
        log.info("archived %d sent mails", len(rows))
    return len(rows)
