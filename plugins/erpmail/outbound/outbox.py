"""The send queue (``mail.outbox``): enqueue, claim, release, the retry policy, reclaiming;
what a delivery means for a message is in :mod:`erpmail.outbound.verdicts`.

Life of a message: ``queued`` -> claimed as ``sending`` (committed before any SMTP traffic)
-> ``sent`` (-> ``bounced`` when a hard bounce comes back) | back to ``queued`` with a
backoff (4xx, dropped connection) | ``failed`` (5xx, or out of attempts/age). A message a
dead worker left in ``sending`` is taken back after a timeout, flagged ``sent_uncertain`` if
its text had started to go: it may reach a recipient twice, visibly. Recipients have their
own status in ``mail.outbox_recipients``; a retry sends only to those still pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy as email_policy
from email.parser import BytesHeaderParser

from psycopg2.extras import execute_values

from erpmail.core.copyread import bytes_by_id
from erpmail.outbound.accounts import Account, Slots, take_slots
from erpmail.outbound.envelope import bounce_token

log = logging.getLogger(__name__)

SOURCE_TYPES = ("letter", "notification", "autoreply", "alert", "manual", "campaign")

INSERT_MESSAGES = """
INSERT INTO mail.outbox (key, message_id, account_id, source_type, source_id, envelope_from,
                         recipients, subject, mime, keep_copy)
SELECT v.key, v.message_id, a.id, v.source_type, v.source_id,
       CASE WHEN a.bounce_domain IS NULL THEN a.from_address
            ELSE 'bounce+' || v.bounce_token || '@' || a.bounce_domain END,
       v.recipients, v.subject, v.mime, v.keep_copy
  FROM (VALUES %s) AS v(key, message_id, account_id, source_type, source_id, bounce_token,
                        recipients, subject, mime, keep_copy)
  JOIN mail.accounts a ON a.id = v.account_id
ON CONFLICT (key) DO NOTHING
RETURNING key, id"""
MESSAGE_ROW = "(%s, %s, %s::bigint, %s, %s::bigint, %s, %s::text[], %s, %s::bytea, %s::boolean)"
MESSAGES_BY_KEY = "SELECT key, id FROM mail.outbox WHERE key = ANY(%s)"
INSERT_RECIPIENTS = """
INSERT INTO mail.outbox_recipients (outbox_id, address)
SELECT * FROM unnest(%s::bigint[], %s::text[])"""

# SKIP LOCKED: concurrent claimers pass over each other's rows instead of waiting; the
# status is re-checked on the locked row version, so a row is claimed by one worker only.
CLAIM = """
UPDATE mail.outbox o
SET status = 'sending', claimed_by = %(worker)s, claimed_at = clock_timestamp()
WHERE o.id IN (
    SELECT id FROM mail.outbox
    WHERE account_id = %(account_id)s AND status = 'queued'
      AND (next_attempt_at <= clock_timestamp() OR %(ignore_due)s)
      AND (%(source_type)s::text IS NULL OR source_type = %(source_type)s)
      AND (%(source_id)s::bigint IS NULL OR source_id = %(source_id)s)
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING o.id, o.key, o.message_id, o.envelope_from,
    ARRAY(SELECT u.a FROM unnest(o.recipients) WITH ORDINALITY u(a, n)
          JOIN mail.outbox_recipients r ON r.outbox_id = o.id AND r.address = u.a
          WHERE r.status = 'pending' ORDER BY u.n),
    o.attempts, o.sent_uncertain, o.created_at, o.claimed_by,
    EXISTS (SELECT 1 FROM mail.outbox_recipients r
            WHERE r.outbox_id = o.id AND r.status = 'accepted')"""
# The claimed messages' bytes, read apart from the claim by a binary COPY (core.copyread):
# bytea crosses as it is stored, not hex-encoded at twice the size.
CLAIMED_MIME = "SELECT id, mime FROM mail.outbox WHERE id = ANY(%s::bigint[])"
# Back to the queue untouched: the account could not connect, or the run's time is up.
RELEASE = """
UPDATE mail.outbox
SET status = 'queued', claimed_by = NULL, claimed_at = NULL, last_error = %(reason)s
WHERE id = ANY(%(ids)s) AND status = 'sending'
  AND (%(worker)s::text IS NULL OR claimed_by = %(worker)s)"""
# A mark counts for the claim it was made in (verdicts.MARK_DATA_SENT).
_MARKED = """EXISTS (SELECT 1 FROM mail.outbox_data_marks m
                 WHERE m.outbox_id = mail.outbox.id AND m.claimed_by = mail.outbox.claimed_by
                   AND m.marked_at >= mail.outbox.claimed_at)"""
# Only a message whose final dot may have gone (its DATA mark) may be delivered; a claim older
# than PostgreSQL's restart may have lost that asynchronous mark, so it counts as delivered.
RECLAIM_STUCK = f"""
UPDATE mail.outbox
SET status = 'queued', claimed_by = NULL, claimed_at = NULL,
    sent_uncertain = sent_uncertain OR {_MARKED} OR claimed_at < pg_postmaster_start_time(),
    last_error = 'reclaimed from ' || coalesce(claimed_by, '?') || ' after '
                 || %(timeout)s || ' s in sending: '
                 || CASE WHEN NOT {_MARKED} AND claimed_at >= pg_postmaster_start_time()
                    THEN 'it never reached the end of DATA' ELSE 'may have been delivered already' END
WHERE status = 'sending' AND claimed_at < clock_timestamp() - make_interval(secs => %(timeout)s)
RETURNING id"""  # noqa: S608 (composed of constants; the timeout is bound)
# Marks of messages no longer in the claim they were made in: finished, released, reclaimed.
DROP_SPENT_MARKS = """
DELETE FROM mail.outbox_data_marks m
WHERE NOT EXISTS (SELECT 1 FROM mail.outbox o
                  WHERE o.id = m.outbox_id AND o.status = 'sending'
                    AND o.claimed_by = m.claimed_by)"""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``base * 2^(attempts-1)`` capped at ``cap``; give up after ``max_attempts``
    tries or when the message is older than ``max_age``."""

    base_seconds: float = 60.0
    cap_seconds: float = 3600.0
    max_attempts: int = 10
    max_age: timedelta = timedelta(days=3)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed try (1-based)."""
        return min(self.base_seconds * 2 ** max(attempts - 1, 0), self.cap_seconds)

    def exhausted(self, attempts: int, created_at: datetime, now: datetime) -> bool:
        return attempts >= self.max_attempts or now - created_at >= self.max_age


@dataclass(frozen=True)
class OutboxMessage:
    """A claimed message: the envelope (sender, still-pending recipients) and the bytes."""

    id: int
    key: str
    message_id: str
    envelope_from: str
    recipients: list[str]
    mime: bytes
    attempts: int
    sent_uncertain: bool
    created_at: datetime
    claimed_by: str = ""
    accepted_before: bool = False  # some recipients took it on an earlier attempt


@dataclass(frozen=True)
class Claim:
    """Messages claimed for one account, or (when none) the throttle's next chance."""

    messages: list[OutboxMessage]
    slots: Slots


def _header_fields(mime: bytes, key: str) -> tuple[str, str]:
    headers = BytesHeaderParser(policy=email_policy.default).parsebytes(mime)
    message_id = (headers.get("Message-ID") or "").strip()
    if not message_id.startswith("<") or not message_id.endswith(">"):
        raise ValueError(f"outbox key {key!r}: Message-ID header missing or malformed")
    if headers.get("Bcc") is not None:
        raise ValueError(f"outbox key {key!r}: Bcc header present; Bcc belongs in recipients")
    return message_id, str(headers.get("Subject") or "").strip()  # a fold may lead


def _unique_recipients(recipients: list[str], key: str) -> list[str]:
    seen: dict[str, str] = {}
    for raw in recipients:
        address = (raw or "").strip()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c in address for c in "\r\n<> ,"):
            raise ValueError(f"outbox key {key!r}: recipient {raw!r} is not a bare address")
        seen.setdefault(address.lower(), address)
    if not seen:
        raise ValueError(f"outbox key {key!r}: no recipients")
    return list(seen.values())


@dataclass(frozen=True)
class Queued:
    """A message to queue. ``message_id`` and ``subject`` when the caller built the bytes
    knowing them (a mail merge); else they are read from the bytes' headers. ``keep_copy``
    False: no copy in the sent-mail archive or the Sent folder."""

    key: str
    account_id: int
    recipients: list[str]
    mime: bytes
    source_type: str
    source_id: int | None = None
    message_id: str | None = None
    subject: str | None = None
    keep_copy: bool = True


def enqueue(
    cur,
    *,
    key: str,
    account_id: int,
    recipients: list[str],
    mime: bytes,
    source_type: str,
    source_id: int | None = None,
) -> int:
    """Queue a message in the caller's transaction; returns its outbox id.

    The same key again is a no-op returning the first id. The Message-ID comes from the
    MIME bytes; ``recipients`` is the envelope (To, Cc and Bcc alike).
    """
    queued = Queued(key, account_id, recipients, mime, source_type, source_id)
    return enqueue_many(cur, [queued])[0]


def enqueue_many(cur, messages: list[Queued]) -> list[int]:
    """:func:`enqueue` for many messages in three statements; their ids, in order. A message
    that cannot be queued raises a ValueError naming its key, before anything is written."""
    for m in messages:
        if not m.key:
            raise ValueError("outbox key is empty")
        if m.source_type not in SOURCE_TYPES:
            raise ValueError(f"outbox key {m.key!r}: source_type {m.source_type!r} not in {SOURCE_TYPES}")  # fmt: skip
    cur.execute(MESSAGES_BY_KEY, ([m.key for m in messages],))
    ids: dict[str, int] = dict(cur.fetchall())
    rows, addresses = {}, {}
    for m in messages:
        if m.key in ids or m.key in rows:
            continue
        if m.message_id is None:
            message_id, subject = _header_fields(m.mime, m.key)
        else:
            message_id, subject = m.message_id, (m.subject or "").strip()
        addresses[m.key] = _unique_recipients(m.recipients, m.key)
        rows[m.key] = (m.key, message_id, m.account_id, m.source_type, m.source_id,
                       bounce_token(message_id), addresses[m.key], subject, m.mime, m.keep_copy)  # fmt: skip
    if rows:
        inserted = dict(
            execute_values(cur, INSERT_MESSAGES, list(rows.values()), MESSAGE_ROW, fetch=True)
        )
        if len(inserted) < len(rows):  # a key queued meanwhile, or no such account
            cur.execute(MESSAGES_BY_KEY, ([k for k in rows if k not in inserted],))
            ids.update(cur.fetchall())
            for m in messages:
                if m.key not in ids and m.key not in inserted:
                    raise ValueError(
                        f"outbox key {m.key!r}: no mail account with id {m.account_id}"
                    )
        pairs = [(inserted[k], a) for k in inserted for a in addresses[k]]
        cur.execute(INSERT_RECIPIENTS, ([i for i, _ in pairs], [a for _, a in pairs]))
        ids.update(inserted)
    return [ids[m.key] for m in messages]


def claim(
    conn,
    account: Account,
    *,
    worker: str,
    limit: int,
    source_type: str | None = None,
    source_id: int | None = None,
    ignore_due: bool = False,
) -> Claim:
    """Claim up to ``limit`` due messages of the account as ``sending`` and commit.

    The throttle is taken in the same transaction. ``ignore_due`` sends backed-off
    messages now (a manual "send this source now"); the throttle still applies.
    """
    with conn.cursor() as cur:
        try:
            slots = take_slots(cur, account, limit)
            messages: list[OutboxMessage] = []
            if slots.granted:
                cur.execute(
                    CLAIM,
                    {
                        "worker": worker,
                        "account_id": account.id,
                        "ignore_due": ignore_due,
                        "source_type": source_type,
                        "source_id": source_id,
                        "limit": slots.granted,
                    },
                )
                rows = cur.fetchall()
                ids = [r[0] for r in rows]
                mime = bytes_by_id(cur, CLAIMED_MIME, (ids,)) if ids else {}
                messages = sorted(
                    (
                        OutboxMessage(r[0], r[1], r[2], r[3], list(r[4]), mime[r[0]], *r[5:])
                        for r in rows
                    ),
                    key=lambda m: m.id,
                )
                if not messages:
                    # nothing to send: hand the slot back rather than delay the next message
                    conn.rollback()
                    return Claim([], Slots(0))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return Claim(messages, slots)


def release(conn, ids: list[int], reason: str, *, worker: str | None = None) -> int:
    """Put claimed, unsent messages back in the queue as they were (only those still
    claimed by ``worker`` when given); returns how many."""
    if not ids:
        return 0
    with conn.cursor() as cur:
        cur.execute(RELEASE, {"reason": reason, "ids": list(ids), "worker": worker})
        count = cur.rowcount
    conn.commit()
    return count


def reclaim_stuck(conn, *, timeout_seconds: float) -> list[int]:
    """Requeue messages in ``sending`` longer than the timeout, flagged ``sent_uncertain`` when
    their DATA mark says they may have gone; drop the marks nothing needs any more."""
    with conn.cursor() as cur:
        cur.execute(RECLAIM_STUCK, {"timeout": timeout_seconds})
        ids = sorted(r[0] for r in cur.fetchall())
        cur.execute(DROP_SPENT_MARKS)
    conn.commit()
    if ids:
        log.warning(
            "reclaimed %d message(s) left in 'sending' over %s s by a dead worker; "
            "marked sent_uncertain: %s",
            len(ids),
            timeout_seconds,
            ids[:20],
        )
    return ids
