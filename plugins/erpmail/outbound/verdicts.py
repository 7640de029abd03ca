"""Verdicts: what the server's reply (or a dropped connection) means for a claimed outbox
message and each of its recipients, as marks, and writing many messages' marks at once.
The DATA mark before the final dot is what tells a crash's reclaiming whether a message
may have gone."""

from __future__ import annotations

import select
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
import psycopg2.extensions

from erpmail.core import db
from erpmail.outbound.accounts import ADVANCE_NEXT_SEND, Account
from erpmail.outbound.outbox import OutboxMessage, RetryPolicy
from erpmail.outbound.smtp import Delivery

# A mark lost in a database crash leaves its row in 'sending' (the claim was committed
# durably), which reclaiming flags sent_uncertain: so marks need not wait for the WAL flush.
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
ASYNC_MARKS = "SET synchronous_commit = off"  # for the connection, as ASYNC_COMMIT per transaction
# just before DATA's text and final dot: if the run dies now, the message may be delivered.
# A narrow row of its own, not an UPDATE of the outbox row with its eleven indexes.
MARK_DATA_SENT = """INSERT INTO mail.outbox_data_marks (outbox_id, claimed_by) VALUES (%s, %s)
ON CONFLICT (outbox_id) DO UPDATE SET claimed_by = EXCLUDED.claimed_by,
                                      marked_at = EXCLUDED.marked_at"""
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
    sent_copy = CASE WHEN v.copy AND NOT o.secret AND o.keep_copy AND o.sent_copy = 'none' THEN 'pending' ELSE o.sent_copy END,
    -- no archived copy to make: done now, not by another row version from the archiver
    sent_archived_at = CASE WHEN o.secret OR NOT o.keep_copy
                            THEN coalesce(o.sent_archived_at, clock_timestamp())
                            ELSE o.sent_archived_at END
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
    sent_copy = CASE WHEN %(partial)s AND %(copy)s AND NOT secret AND keep_copy
                     AND sent_copy = 'none'
                     THEN 'pending' ELSE sent_copy END
WHERE id = %(id)s AND status = 'sending' AND claimed_by = %(worker)s"""
MARK_FAILED = """
UPDATE mail.outbox
SET status = 'failed', claimed_by = NULL, claimed_at = NULL, attempts = attempts + %(tried)s,
    sent_uncertain = sent_uncertain OR %(uncertain)s,
    smtp_code = %(code)s, smtp_reply = %(reply)s, last_error = %(error)s
WHERE id = %(id)s AND status = 'sending' AND claimed_by = %(worker)s"""


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


class DataMarks:
    """A dispatcher's DATA marks on an asynchronous connection: :meth:`begin` sends the
    message's mark as its SMTP transaction begins, :meth:`wait` returns once the database has
    it, just before the text and final dot go. The round trip overlaps MAIL, RCPT and DATA
    instead of following them. A crash in between flags the message ``sent_uncertain``
    though its dot may not have gone: a visible maybe, never a silent duplicate."""

    def __init__(self, url: str | None = None) -> None:
        self.conn = psycopg2.connect(url or db.database_url(), application_name="erpmail",
                                     async_=True)  # fmt: skip
        self._pending = True
        self.wait()
        self.cur = self.conn.cursor()
        self.cur.execute(ASYNC_MARKS)
        self._pending = True
        self.wait()

    def begin(self, message: OutboxMessage) -> None:
        self.cur.execute(MARK_DATA_SENT, (message.id, message.claimed_by))
        self._pending = True

    def wait(self) -> None:
        """Until the last mark is in (at once when none is on its way); raises its error."""
        while self._pending:
            state = self.conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                self._pending = False
            elif state == psycopg2.extensions.POLL_READ:
                select.select([self.conn], [], [])
            elif state == psycopg2.extensions.POLL_WRITE:
                select.select([], [self.conn], [])

    def close(self) -> None:
        self.conn.close()


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
