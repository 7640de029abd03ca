"""The send queue (``mail.outbox``): enqueue, claim, mark, the retry policy, reclaiming.

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
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from email.parser import BytesHeaderParser

from erpmail.core.copyread import bytes_by_id
from erpmail.outbound.accounts import ADVANCE_NEXT_SEND, Account, Slots, take_slots
from erpmail.outbound.envelope import bounce_token
from erpmail.outbound.smtp import Delivery

log = logging.getLogger(__name__)

SOURCE_TYPES = ("letter", "notification", "autoreply", "alert", "manual", "campaign")

INSERT_MESSAGE = """
INSERT INTO mail.outbox (key, message_id, account_id, source_type, source_id, envelope_from,
                         recipients, subject, mime)
SELECT %(key)s, %(message_id)s, a.id, %(source_type)s, %(source_id)s,
       CASE WHEN a.bounce_domain IS NULL THEN a.from_address
            ELSE 'bounce+' || %(bounce_token)s || '@' || a.bounce_domain END,
       %(recipients)s, %(subject)s, %(mime)s
FROM mail.accounts a WHERE a.id = %(account_id)s
ON CONFLICT (key) DO NOTHING
RETURNING id"""
MESSAGE_BY_KEY = "SELECT id FROM mail.outbox WHERE key = %s"
ACCOUNT_EXISTS = "SELECT 1 FROM mail.accounts WHERE id = %s"
INSERT_RECIPIENTS = """
INSERT INTO mail.outbox_recipients (outbox_id, address) SELECT %s, unnest(%s::text[])"""

# SKIP LOCKED: concurrent claimers pass over each other's rows instead of waiting; the
# status is re-checked on the locked row version, so a row is claimed by one worker only.
CLAIM = """
UPDATE mail.outbox o
SET status = 'sending', claimed_by = %(worker)s, claimed_at = clock_timestamp(),
    data_sent_at = NULL
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
# Only a message whose final dot may have gone (data_sent_at) may be delivered; a claim older
# than PostgreSQL's restart may have lost that asynchronous mark, so it counts as delivered.
RECLAIM_STUCK = """
UPDATE mail.outbox
SET status = 'queued', claimed_by = NULL, claimed_at = NULL, data_sent_at = NULL,
    sent_uncertain = sent_uncertain OR data_sent_at IS NOT NULL
                     OR claimed_at < pg_postmaster_start_time(),
    last_error = 'reclaimed from ' || coalesce(claimed_by, '?') || ' after '
                 || %(timeout)s || ' s in sending: '
                 || CASE WHEN data_sent_at IS NULL AND claimed_at >= pg_postmaster_start_time()
                    THEN 'it never reached the end of DATA' ELSE 'may have been delivered already' END
WHERE status = 'sending' AND claimed_at < clock_timestamp() - make_interval(secs => %(timeout)s)
RETURNING id"""
# A mark lost in a database crash leaves its row in 'sending' (the claim was committed
# durably), which reclaiming flags sent_uncertain: so marks need not wait for the WAL flush.
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
# just before DATA's text and final dot: if the run dies now, the message may be delivered
MARK_DATA_SENT = """UPDATE mail.outbox SET data_sent_at = clock_timestamp()
WHERE id = %s AND status = 'sending' AND claimed_by = %s"""
# MARK_RECIPIENTS and MARK_SENT take many messages at once, one array per column (see
# write_marks): a group of verdicts is two statements, not two per message.
MARK_RECIPIENTS = """
UPDATE mail.outbox_recipients r
SET status = v.status, smtp_code = v.code, smtp_reply = v.reply
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[])
     AS v(outbox_id, worker, address, status, code, reply)
WHERE r.outbox_id = v.outbox_id AND r.address = v.address
  -- only while the message is still ours: a reclaimed message has a new owner
  AND EXISTS (SELECT 1 FROM mail.outbox o
              WHERE o.id = v.outbox_id AND o.status = 'sending' AND o.claimed_by = v.worker)"""
MARK_SENT = """
UPDATE mail.outbox o
SET status = 'sent', sent_at = coalesce(o.sent_at, clock_timestamp()), claimed_by = NULL,
    claimed_at = NULL, smtp_code = v.code, smtp_reply = v.reply, queue_id = v.queue_id,
    last_error = NULL,
    sent_copy = CASE WHEN v.copy AND NOT o.secret AND o.sent_copy = 'none' THEN 'pending' ELSE o.sent_copy END
FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::boolean[])
     AS v(id, worker, code, reply, queue_id, copy)
WHERE o.id = v.id AND o.status = 'sending' AND o.claimed_by = v.worker"""
MARK_DEFERRED = """
UPDATE mail.outbox
SET status = 'queued', claimed_by = NULL, claimed_at = NULL, attempts = attempts + 1,
    next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s),
    sent_uncertain = sent_uncertain OR %(uncertain)s,
    sent_at = CASE WHEN %(partial)s THEN coalesce(sent_at, clock_timestamp()) ELSE sent_at END,
    smtp_code = %(code)s, smtp_reply = %(reply)s, last_error = %(error)s,
    sent_copy = CASE WHEN %(partial)s AND %(copy)s AND NOT secret AND sent_copy = 'none'
                     THEN 'pending' ELSE sent_copy END
WHERE id = %(id)s AND status = 'sending' AND claimed_by = %(worker)s"""
MARK_FAILED = """
UPDATE mail.outbox
SET status = 'failed', claimed_by = NULL, claimed_at = NULL, attempts = attempts + %(tried)s,
    sent_uncertain = sent_uncertain OR %(uncertain)s,
    smtp_code = %(code)s, smtp_reply = %(reply)s, last_error = %(error)s
WHERE id = %(id)s AND status = 'sending' AND claimed_by = %(worker)s"""


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
    if not key:
        raise ValueError("outbox key is empty")
    if source_type not in SOURCE_TYPES:
        raise ValueError(f"outbox key {key!r}: source_type {source_type!r} not in {SOURCE_TYPES}")
    cur.execute(MESSAGE_BY_KEY, (key,))
    row = cur.fetchone()
    if row:
        return row[0]
    message_id, subject = _header_fields(mime, key)
    addresses = _unique_recipients(recipients, key)
    cur.execute(
        INSERT_MESSAGE,
        {
            "key": key,
            "message_id": message_id,
            "bounce_token": bounce_token(message_id),
            "account_id": account_id,
            "source_type": source_type,
            "source_id": source_id,
            "recipients": addresses,
            "subject": subject,
            "mime": mime,
        },
    )
    row = cur.fetchone()
    if row is None:
        cur.execute(MESSAGE_BY_KEY, (key,))
        row = cur.fetchone()
        if row is None:  # not a key race: the SELECT ... FROM accounts found nothing
            raise ValueError(f"outbox key {key!r}: no mail account with id {account_id}")
        return row[0]
    cur.execute(INSERT_RECIPIENTS, (row[0], addresses))
    return row[0]


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
    """Requeue messages in ``sending`` longer than the timeout, flagged ``sent_uncertain``."""
    with conn.cursor() as cur:
        cur.execute(RECLAIM_STUCK, {"timeout": timeout_seconds})
        ids = sorted(r[0] for r in cur.fetchall())
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


@dataclass(frozen=True)
class Marks:
    """A message's new status and what stores it: ``rows`` for the statements that take many
    messages at once (MARK_RECIPIENTS, MARK_SENT), then ``statements`` of its own."""

    outbox_id: int
    status: str  # sent, queued (a retry) or failed
    rows: tuple[tuple[str, tuple], ...]
    statements: tuple[tuple[str, object], ...] = ()


def verdict(
    message: OutboxMessage, delivery: Delivery, *, account: Account, policy: RetryPolicy
) -> Marks:
    """What the server's reply means for the message and each of its recipients."""
    names, states, codes, replies = [], [], [], []
    for address in message.recipients:
        code, reply = delivery.recipients.get(address, (delivery.code, delivery.reply))
        if delivery.outcome == "sent":
            state = "accepted" if code in (250, 251) else _refusal(code)
        elif code in (250, 251):  # accepted at RCPT, then DATA decided otherwise
            code, reply = delivery.code, delivery.reply
            state = "refused" if delivery.outcome == "failed" else "pending"
        else:
            state = _refusal(code)
        names.append(address)
        states.append(state)
        codes.append(code)
        replies.append(reply)
    worker = message.claimed_by
    rows = [
        (MARK_RECIPIENTS, (message.id, worker, *row))
        for row in zip(names, states, codes, replies, strict=True)
    ]
    accepted = message.accepted_before or "accepted" in states
    copy = account.sent_folder is not None
    if "pending" not in states and accepted:
        row = (message.id, worker, delivery.code, delivery.reply, delivery.queue_id, copy)
        return Marks(message.id, "sent", (*rows, (MARK_SENT, row)), _throttle(account))
    args = {
        "id": message.id,
        "worker": worker,
        "code": delivery.code,
        "reply": delivery.reply,
        "copy": copy,
        "uncertain": False,
    }
    if "pending" not in states:
        status = "failed"
        statement = (MARK_FAILED, dict(args, tried=1, error=f"{delivery.stage}: refused"))
    else:
        error = _deferral(delivery, states, codes, replies)
        status, statement = _defer(message, policy, args, error=error, partial=accepted)
    return Marks(message.id, status, tuple(rows), (statement, *_throttle(account)))


def mark_data_sent(conn, message: OutboxMessage) -> None:
    """Record that the text and dot go now (one round trip on an autocommit connection)."""
    with conn.cursor() as cur:
        cur.execute(MARK_DATA_SENT, (message.id, message.claimed_by))
    if not conn.autocommit:  # the dispatcher's connection commits each mark at once
        conn.commit()


def dropped(
    message: OutboxMessage,
    reason: str,
    *,
    after_dot: bool,
    account: Account,
    policy: RetryPolicy,
) -> Marks:
    """The connection broke while sending: retry later. After the final dot the server may
    have accepted it, so the message is flagged ``sent_uncertain``."""
    args = {
        "id": message.id,
        "worker": message.claimed_by,
        "code": None,
        "reply": None,
        "uncertain": after_dot,
        "copy": False,
    }
    status, statement = _defer(message, policy, args, error=reason, partial=False)
    return Marks(message.id, status, (), (statement, *_throttle(account)))


def write_marks(conn, marks: list[Marks]) -> None:
    """Store several messages' marks in one transaction and commit.

    Rows of the same statement go in as one statement (recipients before the messages they
    belong to). On a connection in autocommit mode (the dispatcher's recorder) BEGIN and
    COMMIT travel in the marks' own query: one round trip, where psycopg2 sends each apart."""
    grouped: dict[str, list[tuple]] = {MARK_RECIPIENTS: [], MARK_SENT: []}
    for m in marks:
        for sql, row in m.rows:
            grouped[sql].append(row)
    with conn.cursor() as cur:
        statements = [ASYNC_COMMIT.encode()]
        for sql, rows in grouped.items():
            if rows:  # one array per column
                statements.append(cur.mogrify(sql, [list(c) for c in zip(*rows, strict=True)]))
        statements += (cur.mogrify(sql, args) for m in marks for sql, args in m.statements)
        if conn.autocommit:
            try:
                cur.execute(b";\n".join([b"BEGIN", *statements, b"COMMIT"]))
            except BaseException:
                # a failed statement leaves the transaction open, skipping the rest
                if not conn.closed:
                    cur.execute("ROLLBACK")
                raise
            return
        try:
            cur.execute(b";\n".join(statements))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise


def record(
    conn, message: OutboxMessage, delivery: Delivery, *, account: Account, policy: RetryPolicy
) -> str:
    """Store the server's verdict on one message and commit; returns the new status
    (``sent``, ``queued`` for a retry, or ``failed``)."""
    marks = verdict(message, delivery, account=account, policy=policy)
    write_marks(conn, [marks])
    return marks.status


def record_dropped(
    conn,
    message: OutboxMessage,
    reason: str,
    *,
    after_dot: bool,
    account: Account,
    policy: RetryPolicy,
) -> str:
    """:func:`dropped`, stored and committed; returns the new status."""
    marks = dropped(message, reason, after_dot=after_dot, account=account, policy=policy)
    write_marks(conn, [marks])
    return marks.status


def _throttle(account: Account) -> tuple[tuple[str, object], ...]:
    # the send just finished: the account's interval counts from now
    return ((ADVANCE_NEXT_SEND, (account.id,)),) if account.send_interval_seconds > 0 else ()


def _deferral(delivery: Delivery, states: list, codes: list, replies: list) -> str:
    if delivery.outcome != "sent":
        return " ".join(str(p) for p in (f"{delivery.stage}:", delivery.code, delivery.reply) if p)
    # accepted for some recipients, deferred for others: name the first deferral
    code, reply = next(
        (c, r) for s, c, r in zip(states, codes, replies, strict=True) if s == "pending"
    )
    return f"RCPT: {states.count('pending')} recipient(s) deferred: {code} {reply}"


def _refusal(code: int | None) -> str:
    # None: refused by us before the server could answer, which no retry changes
    return "refused" if code is None or 500 <= code < 600 else "pending"


def _defer(
    message: OutboxMessage, policy: RetryPolicy, args: dict, *, error: str, partial: bool
) -> tuple[str, tuple[str, dict]]:
    attempts = message.attempts + 1
    if policy.exhausted(attempts, message.created_at, datetime.now(UTC)):
        failed = dict(args, tried=1, error=f"gave up after {attempts} attempt(s): {error}")
        return "failed", (MARK_FAILED, failed)
    deferred = dict(args, delay=policy.delay(attempts), error=error, partial=partial)
    return "queued", (MARK_DEFERRED, deferred)
