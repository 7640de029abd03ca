"""The mailbox import: fetch, parse, dedupe, archive, link; only then change the server.

Per location (``mail.import_locations``): a PostgreSQL advisory lock keeps runs apart;
``fetch`` finds the mails (above the watermark, or a backfill's interval) and fetches them a
chunk ahead; each chunk is parsed here and stored by ``store`` in one transaction (together,
or mail by mail where tickets or autoreplies depend on the mail before, or a mail is large);
only after the commit are the mails flagged, moved or deleted and the watermark advanced: a
crash in between means the next run meets the same mails again and the dedupe recognises them.
Nothing here starts a process: the import runs inside an executor's task process (a Celery
worker's child may not have children); locations run in parallel as mapped tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import psycopg2.extensions

from erpmail.core import archive, clock, db, locks
from erpmail.core.progress import Progress
from erpmail.inbound import autoreply, fetch, linking, parse, store, tickets
from erpmail.inbound.fetch import Candidate
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
]

log = logging.getLogger(__name__)

LOCK_CLASS = locks.IMPORT_LOCATION  # the second key is the location id
# Mails up to this size are parsed from the fetched bytes and stored a chunk at a time;
# larger ones alone, the fetched copy dropped and the stored file parsed, to bound memory.
PARSE_FROM_STORE_BYTES = 4 * 1024 * 1024

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
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    alert_outbox_id: int | None = None
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
            f"{self.oversize} too big and left on the server, {self.failed} failed; "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.0f} mails/s)"
            + ("; UIDVALIDITY changed, folder rescanned" if self.uidvalidity_reset else "")
        )


def import_message(
    cur,
    location: Location,
    raw: bytes,
    *,
    uid: int | None = None,
    uidvalidity: int | None = None,
    received: datetime | None = None,
    day: date | None = None,
) -> Stored:
    """Store one raw mail for a location in the caller's transaction (idempotent)."""
    return _import_one(
        cur, location, [raw], uid, uidvalidity, received, day or clock.today(), False
    )


def _import_one(
    cur,
    location: Location,
    box: list[bytes],
    uid: int | None,
    uidvalidity: int | None,
    received: datetime | None,
    day: date,
    checked: bool,
    keys: list[str] | None = None,
) -> Stored:
    # ``checked``: the caller already knows no mail with this Message-ID is stored.
    # The raw bytes come in a box so that, for a large mail, the only reference can be
    # dropped once the .eml is stored and the parse reads the file instead.
    raw = box.pop()
    sha = hashlib.sha256(raw).hexdigest()
    size = len(raw)
    big = size > PARSE_FROM_STORE_BYTES
    parsed = None if big else parse.parse(raw)
    message_id = (
        parse.message_id_from_header_block(store.header_block(raw)) if big else parsed.message_id
    )
    if not (checked and message_id):
        found = store.existing(cur, location, message_id, sha)
        if found is not None:
            return Stored(found, False, "duplicate")
    key = store.eml_key(location, sha, received)
    cur.execute(locks.ARCHIVE_FILES_SHARED)
    archive.store(key, raw)
    written = [key]
    try:
        if big:
            del raw
            with archive.path_of(key).open("rb") as stream:
                parsed = parse.parse(stream)
        stored = _insert(cur, location, parsed, key, sha, size, uid, uidvalidity, day, written)
    except BaseException:
        store.forget(cur, written)
        raise
    if not stored.new:
        store.forget(cur, written)
    elif keys is not None:
        keys.extend(written)
    return stored


def _insert(
    cur,
    location: Location,
    parsed: parse.ParsedMail,
    key: str,
    sha: str,
    size: int,
    uid: int | None,
    uidvalidity: int | None,
    day: date,
    written: list[str],
) -> Stored:
    links = linking.find_links(
        cur,
        subject=parsed.subject,
        from_address=parsed.from_address,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        keywords=location.link_keywords,
        body=parsed.body_text,
    )
    # a mail in a ticket location always ends up with its case
    linked = links or (location.ticket_enabled and not parsed.malformed)
    status = "malformed" if parsed.malformed else ("linked" if linked else "unlinked")
    defect_count = len(parsed.defects[: store.MAX_DEFECTS])
    mail_id = store.insert_message(
        cur,
        location,
        parsed,
        key=key,
        sha=sha,
        size=size,
        uid=uid,
        uidvalidity=uidvalidity,
        status=status,
    )
    if mail_id is None:  # stored meanwhile under the same Message-ID or hash
        return Stored(store.existing(cur, location, parsed.message_id, sha), False, "duplicate")
    store.store_attachments(cur, location, parsed, mail_id, key, written)
    ticket = None
    if location.ticket_enabled and not parsed.malformed:
        ticket = tickets.open_or_join(
            cur,
            case_ids=[link.entity_id for link in links if link.entity_type == "case"],
            subject=parsed.subject,
            queue=location.ticket_queue,
            project_id=location.ticket_project_id,
            partner_id=next((x.entity_id for x in links if x.entity_type == "partner"), None),
        )
        if ticket.opened:
            links.append(linking.Link("case", ticket.case_id, "ticket"))
    linking.store_links(cur, mail_id, links)
    if len(parsed.defects[: store.MAX_DEFECTS]) != defect_count:  # the attachments had more
        status = "malformed"
        store.set_malformed(cur, mail_id, parsed)
    if location.autoreply_enabled and not parsed.malformed:
        autoreply.autoreply(
            cur,
            location_id=location.id,
            account_id=location.autoreply_account_id,
            language=location.language,
            subject_template=location.autoreply_subject,
            body_template=location.autoreply_body,
            sender=parsed.from_address,
            headers=parsed.headers,
            subject=parsed.subject,
            message_id=parsed.message_id,
            references=parsed.references,
            ticket=ticket,
            day=day,
        )
    return Stored(mail_id, True, status)


def import_location(
    location_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    wait: bool = True,
    run_key: str | None = None,
    fetch_chunk: int = fetch.FETCH_CHUNK,
    day: date | None = None,
    fault: Callable[[str], None] | None = None,
    conn: psycopg2.extensions.connection | None = None,
) -> Summary:
    """Import one location: new mail above the watermark, or a backfill of [since, until).

    ``fault(point)`` is called at ``"after_commit"`` (between the commit and the server
    change) so tests can kill the run there.
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
        try:
            _run(conn, location, summary, since, until, fetch_chunk, day or clock.today(), fault)
            _finish(conn, location, summary, run_key)
        finally:
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
    fault: Callable[[str], None] | None,
) -> None:
    started = time.monotonic()
    with ImapHook(location.conn_id).client() as client:
        uidvalidity = fetch.open_folder(client, location)
        last_uid, summary.uidvalidity_reset = fetch.watermark(conn, location, uidvalidity)
        uids = fetch.search(client, last_uid, since, until)
        rescan = since is not None or summary.uidvalidity_reset
        candidates = list(fetch.candidates(client, uids, rescan))
        known = set()
        if rescan:
            ids = [c.message_id for c in candidates if c.message_id]
            known = store.known_message_ids(conn, location, ids)
        chunks, outside = fetch.in_chunks(location, candidates, since, until, fetch_chunk)
        summary.candidates = len(uids) - outside

        def wanted(chunk: list[Candidate]) -> list[int]:
            return [
                c.uid
                for c in chunk
                if c.size <= min(location.max_message_bytes, fetch.FETCH_CHUNK_BYTES)
                and c.message_id not in known
            ]

        # tickets and autoreplies go mail by mail: each may depend on the one before
        together = (
            0 if location.ticket_enabled or location.autoreply_enabled else PARSE_FROM_STORE_BYTES
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
                    client, imap, conn, location, summary, chunk, uidvalidity, day, fault, advance
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
    fault: Callable[[str], None] | None,
    advance: bool,
) -> bool:
    """Store one chunk in one transaction, then change the server; False once one failed."""
    done: list[int] = list(chunk.known)
    summary.duplicates += len(chunk.known)
    keys: list[str] = []
    failed = False
    single = chunk.single
    with db.transaction(conn) as cur:
        for cand in chunk.oversize:
            summary.oversize += 1
            store.record_skipped(
                cur, location, uidvalidity, cand.uid, cand.size, cand.internal_date
            )
        if chunk.bulk:
            prepared = [store.prepare(c.uid, c.internal_date, raw) for c, raw in chunk.bulk]
            cur.execute("SAVEPOINT chunk")
            try:
                uids, new, duplicates = store.store_chunk(
                    cur, location, uidvalidity, prepared, keys
                )
            except Exception:
                cur.execute("ROLLBACK TO SAVEPOINT chunk")
                log.warning(
                    "%s: storing %d mails together failed; storing them one by one",
                    location.name,
                    len(chunk.bulk),
                    exc_info=True,
                )
                single = chunk.bulk + single
            else:
                cur.execute("RELEASE SAVEPOINT chunk")
                done.extend(uids)
                summary.duplicates += duplicates
                for mail_id, status, size in new:
                    _count(summary, Stored(mail_id, True, status), size)
            del prepared
        chunk.bulk = chunk.single = []
        cur.execute("SAVEPOINT mail")  # each mail fails alone, rolled back to here
        while single:
            cand, raw = single.pop(0)
            if raw is None:  # alone, so that at most one large mail is in memory
                raw = fetch.fetch_one(imap, client, cand.uid)
            if raw is None:
                continue  # expunged by someone else since the search
            box = [raw]
            size = len(raw)
            del raw
            try:
                stored = _import_one(
                    cur,
                    location,
                    box,
                    cand.uid,
                    uidvalidity,
                    cand.internal_date,
                    day,
                    cand.message_id is not None,
                    keys,
                )
            except Exception:
                cur.execute("ROLLBACK TO SAVEPOINT mail")
                summary.failed += 1
                failed = True
                log.exception(
                    "%s: UID %s could not be imported; left on the server", location.name, cand.uid
                )
                continue
            # one round trip: keep this mail, open the next one's savepoint
            cur.execute("RELEASE SAVEPOINT mail; SAVEPOINT mail")
            done.append(cand.uid)
            if stored.new:
                _count(summary, stored, size)
            else:
                summary.duplicates += 1
        # the files are on disk before the rows that point at them are committed
        archive.sync(keys)
    if fault:
        fault("after_commit")
    imap.submit(fetch.server_action, client, location, done).result()
    advance = advance and not failed
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
    else:
        summary.malformed += 1


def _finish(conn, location: Location, summary: Summary, run_key: str | None) -> None:
    with db.transaction(conn) as cur:
        if summary.unlinked and location.notify_address:
            key = run_key or f"{min(summary.new_ids)}-{max(summary.new_ids)}"
            summary.alert_outbox_id = autoreply.alert_unlinked(cur, location, summary.new_ids, key)
        cur.execute(AUDIT, (location.name, json.dumps(summary.as_dict(), default=str)))
