"""The dispatcher: claim due outbox messages per account, send them, record the verdicts.

One SMTP session per account, reused across batches, reopened after a drop or after
``reconnect_after`` messages. Each account's throttle lives in the database (see
:func:`erpmail.outbound.accounts.take_slots`), so concurrent dispatchers share it. The run stops
claiming when its time budget is used up; unsent claimed messages go back to the queue.
After the server accepted a message, a copy goes to the account's Sent folder over IMAP
(:mod:`erpmail.outbound.sentfolder`); a failure there is retried and never resends the mail.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from erpmail.core import db
from erpmail.core.progress import Progress
from erpmail.outbound import outbox, verdicts
from erpmail.outbound.accounts import Account, account_by_name, list_accounts, warn_if_fast
from erpmail.outbound.outbox import OutboxMessage, RetryPolicy
from erpmail.outbound.sentarchive import Archiver, archive_until
from erpmail.outbound.sentfolder import file_pending_copies
from erpmail.outbound.smtp import SmtpAccountError, SmtpDropped, SmtpHook, SmtpSession

log = logging.getLogger(__name__)


COUNT_DUE = """
SELECT count(*) FROM mail.outbox
WHERE status = 'queued' AND (next_attempt_at <= clock_timestamp() OR %(ignore_due)s)
  AND (%(account_id)s::bigint IS NULL OR account_id = %(account_id)s)
  AND (%(source_type)s::text IS NULL OR source_type = %(source_type)s)
  AND (%(source_id)s::bigint IS NULL OR source_id = %(source_id)s)"""


def worker_name() -> str:
    """This process as a claimer: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


@dataclass
class Summary:
    """What one dispatcher run did; ``account_errors`` maps account name to its error."""

    due: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    uncertain: int = 0
    released: int = 0
    reclaimed: int = 0
    copies_done: int = 0
    copies_failed: int = 0
    archived: int = 0
    throttle_waits: int = 0
    account_errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.sent + self.deferred + self.failed

    def text(self) -> str:
        """A summary a clerk can read."""
        rate = self.done / self.seconds if self.seconds else 0.0
        parts = [
            f"{self.sent} sent, {self.deferred} deferred for retry, {self.failed} failed"
            f" of {self.due} due, in {self.seconds:.1f} s ({rate:.1f}/s)"
        ]
        if self.uncertain:
            parts.append(f"{self.uncertain} possibly delivered twice (sent_uncertain)")
        if self.reclaimed:
            parts.append(f"{self.reclaimed} taken back from dead workers")
        if self.released:
            parts.append(f"{self.released} left queued for the next run")
        if self.throttle_waits:
            parts.append(f"{self.throttle_waits} waits for an account's send interval")
        if self.copies_done or self.copies_failed:
            parts.append(
                f"Sent folder: {self.copies_done} filed, {self.copies_failed} failed (retried)"
            )
        for name, error in sorted(self.account_errors.items()):
            parts.append(f"account {name!r} stopped: {error}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class _Recorder:
    """Writes verdicts on its own connection in a background thread, so the database round
    trips overlap the next messages' SMTP exchanges. It gathers verdicts for up to
    ``gather_seconds`` after the first and writes them in one transaction: a few messages'
    worth of statements, commits and thread wake-ups instead of one per message. A verdict
    not yet written when the process dies leaves its message in ``sending``, which
    reclaiming flags ``sent_uncertain``: never a silent duplicate."""

    _FLUSH = "flush"  # ends a gathering at once: someone waits for the verdicts

    def __init__(self, url: str | None, gather_seconds: float = 0.02) -> None:
        self.conn = db.connect(url)
        self.conn.autocommit = True  # write_marks then commits in the marks' round trip
        self.gather_seconds = gather_seconds
        self.queue: queue.Queue[verdicts.Marks | str | None] = queue.Queue()
        self.error: BaseException | None = None
        self._urgent = threading.Event()
        self.thread = threading.Thread(target=self._run, name="outbox-recorder", daemon=True)
        self.thread.start()

    def submit(self, marks: verdicts.Marks) -> None:
        self._raise()
        self.queue.put(marks)

    def flush(self) -> None:
        """Wait until every submitted verdict is committed."""
        self.queue.put(self._FLUSH)
        self._urgent.set()
        self.queue.join()
        self._raise()

    def close(self) -> None:
        self.queue.put(None)
        self._urgent.set()
        self.thread.join()
        self.conn.close()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"recording send results failed: {self.error}") from self.error

    def _gather(self) -> list[verdicts.Marks | str | None]:
        batch = [self.queue.get()]
        if isinstance(batch[0], verdicts.Marks):
            # asleep for the window, not woken by each verdict put: the sending thread keeps
            # the interpreter; flush() and close() cut the window short
            self._urgent.wait(self.gather_seconds)
            self._urgent.clear()
        while isinstance(batch[-1], verdicts.Marks):
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._gather()
            marks = [m for m in batch if isinstance(m, verdicts.Marks)]
            try:
                if marks and self.error is None:
                    verdicts.write_marks(self.conn, marks)
            except Exception as e:  # the main thread re-raises it and stops sending
                log.error(
                    "recording send results of outbox %s failed: %s",
                    [m.outbox_id for m in marks],
                    e,
                )
                self.error = e
            finally:
                for _ in batch:
                    self.queue.task_done()
            if None in batch:
                return


class _Claimer:
    """Claims on its own connection and thread. For an unthrottled account the next batch is
    claimed while the current one is sent, so moving the MIME bytes out of the database
    overlaps SMTP; a batch claimed ahead and not needed goes back to the queue."""

    def __init__(self, url: str | None, worker: str, **options) -> None:
        self.conn = db.connect(url)
        self.worker = worker
        self.options = options
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="outbox-claimer")
        self.ahead: dict[int, Future[tuple[outbox.Claim, float]]] = {}

    def _claim(self, account: Account) -> tuple[outbox.Claim, float]:
        claim = outbox.claim(self.conn, account, worker=self.worker, **self.options)
        return claim, time.monotonic()

    def claim(self, account: Account) -> tuple[outbox.Claim, float]:
        """The account's next claim and when it was taken (monotonic clock)."""
        ahead = self.ahead.pop(account.id, None)
        result = (ahead or self.pool.submit(self._claim, account)).result()
        if not account.throttled and len(result[0].messages) == self.options["limit"]:
            self.ahead[account.id] = self.pool.submit(self._claim, account)
        return result

    def discard(self, account_id: int | None = None) -> int:
        """Release batches claimed ahead (for one account, or all); returns how many."""
        ids = [account_id] if account_id is not None else list(self.ahead)
        released = 0
        for key in ids:
            future = self.ahead.pop(key, None)
            if future is None:
                continue
            messages = future.result()[0].messages
            released += self.pool.submit(
                outbox.release,
                self.conn,
                [m.id for m in messages],
                "claimed ahead, not sent in this run",
                worker=self.worker,
            ).result()
        return released

    def close(self) -> int:
        try:
            return self.discard()
        finally:
            self.pool.shutdown()
            self.conn.close()


class _Sessions:
    """One SMTP session per account, opened on first use and renewed when stale."""

    def __init__(self, reconnect_after: int) -> None:
        self.reconnect_after = reconnect_after
        self.open: dict[int, SmtpSession] = {}

    def get(self, account: Account) -> SmtpSession:
        session = self.open.get(account.id)
        if session is not None and (session.sent >= self.reconnect_after or not session.usable()):
            session.close()
            session = None
        if session is None:
            session = SmtpHook(account.conn_id, account=account.name).session()
            self.open[account.id] = session
        return session

    def close(self) -> None:
        for session in self.open.values():
            session.close()
        self.open.clear()


def dispatch(
    *,
    account: str | None = None,
    source_type: str | None = None,
    source_id: int | None = None,
    budget_seconds: float = 50.0,
    batch_size: int = 50,
    reconnect_after: int = 200,
    stuck_after_seconds: float = 900.0,
    policy: RetryPolicy | None = None,
    progress_every: float = 5.0,
    worker: str | None = None,
    url: str | None = None,
) -> Summary:
    """Send due outbox messages until none is due or ``budget_seconds`` is used up.

    ``account`` limits the run to one account (by name); ``source_type``/``source_id`` to
    one source, sent now even when backed off. Returns the run's :class:`Summary`.
    """
    policy = policy or RetryPolicy()
    worker = worker or worker_name()
    summary = Summary()
    start = time.monotonic()
    deadline = start + budget_seconds
    progress = Progress("dispatch", 0, unit="messages", log=log, every=progress_every)
    ignore_due = source_type is not None or source_id is not None
    conn = db.connect(url)
    sessions = _Sessions(reconnect_after)
    recorder = _Recorder(url)
    archiver = Archiver(url)
    data_marks = verdicts.DataMarks(url)
    claimer = _Claimer(
        url,
        worker,
        limit=batch_size,
        source_type=source_type,
        source_id=source_id,
        ignore_due=ignore_due,
    )
    try:
        summary.reclaimed = len(outbox.reclaim_stuck(conn, timeout_seconds=stuck_after_seconds))
        with db.transaction(conn) as cur:
            accounts = [account_by_name(cur, account)] if account else list_accounts(cur)
            cur.execute(
                COUNT_DUE,
                {
                    "ignore_due": ignore_due,
                    "account_id": accounts[0].id if account else None,
                    "source_type": source_type,
                    "source_id": source_id,
                },
            )
            summary.due = progress.total = cur.fetchone()[0]
        by_id = {a.id: a for a in accounts}
        for a in accounts:
            if a.send_interval_seconds > 0:
                warn_if_fast(a)
        # when each account may be tried next (monotonic clock); gone when it has nothing due
        ready = {a.id: start for a in accounts}
        while ready:
            now = time.monotonic()
            if now >= deadline:
                break
            account_id, at = min(ready.items(), key=lambda kv: kv[1])
            if at > now:
                waiting = [by_id[i].name for i, t in ready.items() if t > now]
                _log_progress(progress, summary, waiting)
                if at >= deadline:
                    break
                time.sleep(min(at - now, deadline - now, progress_every))
                continue
            acct = by_id[account_id]
            claim, claimed_at = claimer.claim(acct)
            if not claim.messages:
                if claim.slots.wait_seconds is None:
                    del ready[account_id]  # nothing due for this account
                else:
                    summary.throttle_waits += 1
                    ready[account_id] = time.monotonic() + claim.slots.wait_seconds
                continue
            ok = _send_batch(
                conn,
                data_marks,
                acct,
                claim.messages,
                sessions,
                recorder,
                policy,
                summary,
                min(deadline, claimed_at + stuck_after_seconds / 2),
            )
            if not ok:
                del ready[account_id]
                summary.released += claimer.discard(account_id)
            _log_progress(progress, summary)
        summary.released += claimer.discard()
        recorder.flush()
        done, failed = file_pending_copies(conn, list(by_id.values()), deadline)
        summary.copies_done += done
        summary.copies_failed += failed
        summary.archived += archiver.close()
        summary.archived += archive_until(conn, deadline)
    finally:
        sessions.close()
        summary.released += claimer.close()
        recorder.close()
        archiver.close()
        data_marks.close()
        conn.close()
    summary.seconds = time.monotonic() - start
    _log_progress(progress, summary, force=True)
    log.info("dispatch summary: %s", summary.text())
    return summary


def _send_batch(
    conn,
    data_marks: verdicts.DataMarks,
    account: Account,
    messages: list[OutboxMessage],
    sessions: _Sessions,
    recorder: _Recorder,
    policy: RetryPolicy,
    summary: Summary,
    hold_until: float,
) -> bool:
    """Send claimed messages over the account's session; False when the account stopped.
    ``data_marks`` takes the DATA marks, ``conn`` (the run's connection) the releases.

    Past ``hold_until`` (the run's deadline, or half the reclaim timeout after the claim, so
    that no other worker takes a message back while this one may still send it) the rest
    is released; the first message always goes, so every claim makes progress."""
    handled = 0
    stop_reason = "time budget of the run used up"
    worker = messages[0].claimed_by
    try:
        for message in messages:
            if handled and time.monotonic() >= hold_until:
                break
            try:
                session = sessions.get(account)
            except SmtpAccountError as e:
                log.error("%s; its %d claimed message(s) stay queued", e, len(messages) - handled)
                summary.account_errors[account.name] = e.reason
                stop_reason = str(e)
                return False
            handled += 1
            data_marks.begin(message)
            try:
                try:
                    delivery = session.send(
                        message.envelope_from, message.recipients, message.mime,
                        before_dot=data_marks.wait,
                    )  # fmt: skip
                finally:
                    data_marks.wait()  # refused before DATA: the mark is in all the same
            except SmtpDropped as e:
                log.warning(
                    "account %r: %s while sending %s; retrying later%s",
                    account.name,
                    e,
                    message.key,
                    " (possibly delivered: flagged sent_uncertain)" if e.after_dot else "",
                )
                marks = verdicts.dropped(
                    message, str(e), after_dot=e.after_dot, account=account, policy=policy
                )
                recorder.submit(marks)
                _count(summary, marks.status, message.sent_uncertain or e.after_dot)
                continue
            marks = verdicts.verdict(message, delivery, account=account, policy=policy)
            recorder.submit(marks)
            status = marks.status
            if status != "sent":
                log.warning(
                    "account %r: %s %s at %s: %s %s",
                    account.name,
                    message.key,
                    "deferred" if status == "queued" else "failed",
                    delivery.stage,
                    delivery.code,
                    delivery.reply,
                )
            _count(summary, status, message.sent_uncertain)
        return True
    finally:
        # whatever stopped the batch, untried messages go back as they were
        rest = [m.id for m in messages[handled:]]
        if rest:
            summary.released += outbox.release(conn, rest, stop_reason, worker=worker)
        if account.throttled:
            # verdicts committed before the next claim, so the throttle counts from them
            recorder.flush()


def _log_progress(
    progress: Progress, summary: Summary, waiting: list[str] | None = None, force: bool = False
) -> None:
    detail = f"{summary.sent} sent, {summary.deferred} deferred, {summary.failed} failed"
    if waiting:
        detail += f"; waiting for throttle: {', '.join(waiting)}"
    progress.update(summary.done, force=force, detail=detail)


def _count(summary: Summary, status: str, uncertain: bool) -> None:
    if status == "sent":
        summary.sent += 1
    elif status == "queued":
        summary.deferred += 1
    else:
        summary.failed += 1
    summary.uncertain += int(uncertain)
