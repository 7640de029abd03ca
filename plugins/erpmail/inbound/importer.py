"""The mailbox import: fetch, parse, dedupe, archive, link; only then change the server.

Per location (``mail.import_locations``): a PostgreSQL advisory lock keeps runs apart; the
run first removes what an interrupted one left (``pending``) and retries mails kept as
failed (``filing``). ``fetch`` finds the mails (above the watermark, or a backfill's
interval) and fetches them a chunk ahead; each chunk is parsed here and stored in one
transaction (together by ``store``, or mail by mail by ``filing`` where tickets or
autoreplies depend on the mail before, or a mail is large). A mail whose filing fails is
kept raw as ``failed``. Only after the commit are the mails flagged, moved or deleted and
the watermark advanced: a crash in between means the next run meets the same mails again
and recognises them by their bytes. Nothing here starts a process: the import runs inside
an executor's task process (a Celery worker's child may not have children); locations run
in parallel as mapped tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import psycopg2.extensions

from erpmail.core import archive, clock, db, locks
from erpmail.core.progress import Progress
from erpmail.inbound import fetch, filing, pending, store
from erpmail.inbound.fetch import Candidate
from erpmail.inbound.filing import import_message
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.locations import Location, enabled_location_ids, load_location
from erpmail.inbound.store import Stored

__all__ = [
    "Location",
    "Stored",
    "Summary",
    "enabled_location_ids",
    "import_location",
    "import_message",
    "load_location",
    "retry",
]

log = logging.getLogger(__name__)

LOCK_CLASS = locks.IMPORT_LOCATION  # the second key is the location id

TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
WAIT_LOCK = "SELECT pg_advisory_lock(%s, %s)"
UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
AUDIT = """
INSERT INTO mail.audit_log (actor, action, subject, details)
VALUES ('mailbox_import', 'import', %s, %s::jsonb)"""


@dataclass
class Summary:
    """What one run did for one location; ``str()`` reads as a sentence for the log."""

    location: str
    folder: str
    mode: str = "incremental"
    locked: bool = True
    uidvalidity_reset: bool = False
    candidates: int = 0
    new: int = 0
    duplicates: int = 0
    linked: int = 0
    unlinked: int = 0
    malformed: int = 0
    oversize: int = 0
    failed: int = 0  # kept raw with status 'failed', to be retried
    errors: int = 0  # not even stored raw: left on the server, the watermark held
    retried: int = 0  # failed mails of earlier runs imported now
    swept: int = 0  # files of an interrupted run removed
    bytes: int = 0
    seconds: float = 0.0
    new_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready; the id list is bounded so it fits an XCom and an audit row."""
        out = asdict(self)
        out["new_ids"] = self.new_ids[:1000]
        return out

    def __str__(self) -> str:
        if not self.locked:
            return f"{self.location}: another import holds the lock; skipped"
        rate = self.new / self.seconds if self.seconds else 0.0
        return (
            f"{self.location} ({self.folder}, {self.mode}): {self.candidates} seen, "
            f"{self.new} new ({self.linked} linked, {self.unlinked} unlinked, "
            f"{self.malformed} malformed), {self.duplicates} already stored, "
            f"{self.oversize} too big and left on the server, {self.failed} failed and kept raw, "
            f"{self.errors} not stored; {self.retried} earlier failures imported; "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.0f} mails/s)"
            + ("; UIDVALIDITY changed, folder rescanned" if self.uidvalidity_reset else "")
        )


def retry(location_id: int, ids: Sequence[int]) -> int:
    """Retry failed mails of a location by hand, however often they failed; how many went in."""
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            location = load_location(cur, location_id)
        _lock(conn, location.id, wait=True)
        try:
            return filing.retry_failed(conn, location, clock.today(), ids=ids)
        finally:
            with db.transaction(conn) as cur:
                cur.execute(UNLOCK, (LOCK_CLASS, location.id))
    finally:
        conn.close()


def import_location(
    location_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    wait: bool = True,
    fetch_chunk: int = fetch.FETCH_CHUNK,
    day: date | None = None,
    fault: Callable[[str], None] | None = None,
    conn: psycopg2.extensions.connection | None = None,
) -> Summary:
    """Import one location: new mail above the watermark, or a backfill of [since, until);
    first the leftovers of an interrupted run are removed and failed mails retried.

    ``fault(point)`` is called at ``"before_commit"`` (files written, rows not committed) and
    ``"after_commit"`` (before the server change) so tests can kill the run there.
    """
    own = conn is None
    conn = conn or db.connect()
    try:
        with db.transaction(conn) as cur:
            location = load_location(cur, location_id)
        summary = Summary(location.name, location.folder, "backfill" if since else "incremental")
        if not _lock(conn, location.id, wait):
            summary.locked = False
            log.info("%s", summary)
            return summary
        journal = pending.Journal(location.id)
        try:
            summary.swept = pending.sweep(conn, location.id)
            day = day or clock.today()
            summary.retried = filing.retry_failed(conn, location, day, journal=journal)
            _run(conn, location, summary, since, until, fetch_chunk, day, journal, fault)
            _finish(conn, location, summary)
        finally:
            journal.close()
            with db.transaction(conn) as cur:
                cur.execute(UNLOCK, (LOCK_CLASS, location.id))
    finally:
        if own:
            conn.close()
    log.info("%s", summary)
    return summary


def _lock(conn, location_id: int, wait: bool) -> bool:
    with db.transaction(conn) as cur:
        cur.execute(TRY_LOCK, (LOCK_CLASS, location_id))
        if cur.fetchone()[0]:
            return True
        if not wait:
            return False
        log.info("location %s: another import is running; waiting for it", location_id)
        cur.execute(WAIT_LOCK, (LOCK_CLASS, location_id))
        return True


def _run(
    conn,
    location: Location,
    summary: Summary,
    since: datetime | None,
    until: datetime | None,
    fetch_chunk: int,
    day: date,
    journal: pending.Journal,
    fault: Callable[[str], None] | None,
) -> None:
    started = time.monotonic()
    with ImapHook(location.conn_id).client() as client:
        uidvalidity = fetch.open_folder(client, location)
        last_uid, summary.uidvalidity_reset = fetch.watermark(conn, location, uidvalidity)
        uids = fetch.search(client, last_uid, since, until)
        candidates = list(fetch.candidates(client, uids))
        # a backfill skips the UIDs stored before; after a UIDVALIDITY change no UID is known
        # and the mails are deduplicated by their bytes
        known: set[int] = set()
        if since is not None:
            known = store.known_uids(conn, location, uidvalidity, [c.uid for c in candidates])
        chunks, outside = fetch.in_chunks(location, candidates, since, until, fetch_chunk)
        summary.candidates = len(uids) - outside

        def wanted(chunk: list[Candidate]) -> list[int]:
            return [
                c.uid
                for c in chunk
                if c.size <= min(location.max_message_bytes, fetch.FETCH_CHUNK_BYTES)
                and c.uid not in known
            ]

        # tickets and autoreplies go mail by mail: each may depend on the one before
        together = (
            0
            if location.ticket_enabled or location.autoreply_enabled
            else filing.PARSE_FROM_STORE_BYTES
        )
        progress = Progress(location.name, summary.candidates, unit="mails", log=log)
        advance = since is None
        # the thread owns the IMAP session: it fetches chunk n + 1 while chunk n is parsed,
        # stored and committed here, and does this run's server changes in between
        imap = ThreadPoolExecutor(1, thread_name_prefix="imap")
        try:
            for part, fetched in fetch.fetched_ahead(imap, client, chunks, wanted):
                chunk = fetch.sort_out(location, part, fetched, known, together)
                del fetched
                advance = _batch(
                    client,
                    imap,
                    conn,
                    location,
                    summary,
                    chunk,
                    uidvalidity,
                    day,
                    journal,
                    fault,
                    advance,
                )
                progress.add(len(chunk.candidates))
        finally:
            imap.shutdown(wait=True, cancel_futures=True)
    summary.seconds = round(time.monotonic() - started, 3)


def _batch(
    client,
    imap: Executor,
    conn,
    location: Location,
    summary: Summary,
    chunk: fetch.Chunk,
    uidvalidity: int,
    day: date,
    journal: pending.Journal,
    fault: Callable[[str], None] | None,
    advance: bool,
) -> bool:
    """Store one chunk in one transaction, then change the server; False once a mail could
    not even be stored raw (it stays on the server and holds the watermark)."""
    done: list[int] = list(chunk.known)
    summary.duplicates += len(chunk.known)
    keys: list[str] = []
    entries: list[int] = []
    held = False
    single = chunk.single
    with db.transaction(conn) as cur:
        for cand in chunk.oversize:
            summary.oversize += 1
            store.record_skipped(
                cur, location, uidvalidity, cand.uid, cand.size, cand.internal_date
            )
        if chunk.bulk:
            attempt = store.Attempt(journal)
            cur.execute("SAVEPOINT chunk")
            try:
                prepared = [store.prepare(c.uid, c.internal_date, raw) for c, raw in chunk.bulk]
                uids, new, duplicates = store.store_chunk(
                    cur, location, uidvalidity, prepared, attempt
                )
            except Exception:
                cur.execute("ROLLBACK TO SAVEPOINT chunk")
                store.forget(cur, attempt.keys)
                log.warning(
                    "%s: storing %d mails together failed; storing them one by one",
                    location.name,
                    len(chunk.bulk),
                    exc_info=True,
                )
                single = chunk.bulk + single
            else:
                cur.execute("RELEASE SAVEPOINT chunk")
                keys.extend(attempt.keys)
                done.extend(uids)
                summary.duplicates += duplicates
                for mail_id, status, size in new:
                    _count(summary, Stored(mail_id, True, status), size)
            entries.extend(attempt.entries)
            prepared = None
        chunk.bulk = chunk.single = []
        cur.execute("SAVEPOINT mail")  # each mail fails alone, rolled back to here
        while single:
            cand, raw = single.pop(0)
            if raw is None:  # alone, so that at most one large mail is in memory
                raw = fetch.fetch_one(imap, client, cand.uid)
            if raw is None:
                continue  # expunged by someone else since the search
            sha = hashlib.sha256(raw).hexdigest()
            key = store.eml_key(location, sha, cand.internal_date)
            head = store.header_block(raw[: store.FAILED_HEADER_BYTES])
            box = [raw]
            size = len(raw)
            del raw
            attempt = store.Attempt(journal)
            try:
                stored = filing.file_one(
                    cur, location, box, sha, key, cand.uid, uidvalidity, day, attempt
                )
            except Exception as exc:
                cur.execute("ROLLBACK TO SAVEPOINT mail")
                stored = filing.keep_failed(
                    cur, location, cand.uid, uidvalidity, attempt, exc, sha, key, size, head
                )
            entries.extend(attempt.entries)
            if stored is None:
                held = True
                summary.errors += 1
                continue
            # one round trip: keep this mail, open the next one's savepoint
            cur.execute("RELEASE SAVEPOINT mail; SAVEPOINT mail")
            keys.extend(attempt.keys)
            done.append(cand.uid)
            if stored.new:
                _count(summary, stored, size)
            else:
                summary.duplicates += 1
        # the files are on disk before the rows that point at them are committed
        archive.sync(keys)
        pending.clear(cur, entries)
        if fault:
            fault("before_commit")
    if fault:
        fault("after_commit")
    imap.submit(fetch.server_action, client, location, done).result()
    advance = advance and not held
    if advance:
        top = max(c.uid for c in chunk.candidates)
        fetch.advance_watermark(conn, location, uidvalidity, top)
    return advance


def _count(summary: Summary, stored: Stored, size: int) -> None:
    summary.new += 1
    summary.bytes += size
    summary.new_ids.append(stored.message_row_id)
    if stored.status == "linked":
        summary.linked += 1
    elif stored.status == "unlinked":
        summary.unlinked += 1
    elif stored.status == "failed":
        summary.failed += 1
    else:
        summary.malformed += 1


def _finish(conn, location: Location, summary: Summary) -> None:
    with db.transaction(conn) as cur:
        cur.execute(AUDIT, (location.name, json.dumps(summary.as_dict(), default=str)))
