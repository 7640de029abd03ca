"""The mailbox import: fetch, parse, dedupe, archive, link; only then change the server.

Per location (``mail.import_locations``): a PostgreSQL advisory lock keeps runs apart; the
folder's UIDVALIDITY and the highest stored UID (``mail.import_watermarks``) say where to
go on; a backfill scans its interval (IMAP SINCE/BEFORE on INTERNALDATE) instead. Every
mail is stored once per location: by Message-ID, else by the SHA-256 of its raw bytes.
The raw ``.eml`` goes to the document store unchanged. The server is flagged, moved or
purged, and the watermark advanced, only after the database commit: a crash in between
means the next run meets the same mails again and the dedupe recognises them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

import pendulum
import psycopg2.extensions
from imapclient import DELETED, SEEN
from psycopg2.extras import execute_values

from erpmail.core import archive, db, locks
from erpmail.inbound import linking, parse, tickets
from erpmail.inbound.imap import ImapHook

log = logging.getLogger(__name__)

LOCK_CLASS = locks.IMPORT_LOCATION  # the second key is the location id
COMPANY_TZ = "Europe/Berlin"
META_CHUNK = 500
FETCH_CHUNK = 100
FETCH_CHUNK_BYTES = 16 * 1024 * 1024
# Mails up to this size are parsed from the fetched bytes and stored a chunk at a time;
# larger ones alone, the fetched copy dropped and the stored file parsed, to bound memory.
PARSE_FROM_STORE_BYTES = 4 * 1024 * 1024
STORE_THREADS = 4
PROGRESS_SECONDS = 5.0
MSGID_HEADER = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"
MSGID_KEY = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"

LOCATION_COLUMNS = """id, name, conn_id, folder, after_import, move_to, archive_folder,
    archive_subfolder, store_attachments, link_keywords, max_message_bytes, ticket_enabled,
    ticket_project_id, ticket_queue, autoreply_enabled, autoreply_account_id,
    autoreply_subject, autoreply_body, notify_address, enabled, language"""
LOCATION_BY_ID = f"SELECT {LOCATION_COLUMNS} FROM mail.import_locations WHERE id = %s"  # noqa: S608
ENABLED_LOCATIONS = "SELECT id FROM mail.import_locations WHERE enabled ORDER BY id"
TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
WAIT_LOCK = "SELECT pg_advisory_lock(%s, %s)"
UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
WATERMARK = """
SELECT uidvalidity, last_uid FROM mail.import_watermarks WHERE location_id = %s AND folder = %s"""
RESET_WATERMARK = """
INSERT INTO mail.import_watermarks (location_id, folder, uidvalidity, last_uid)
VALUES (%s, %s, %s, 0)
ON CONFLICT (location_id, folder)
DO UPDATE SET uidvalidity = EXCLUDED.uidvalidity, last_uid = 0, updated_at = now()"""
ADVANCE_WATERMARK = """
UPDATE mail.import_watermarks SET last_uid = %s, updated_at = now()
WHERE location_id = %s AND folder = %s AND uidvalidity = %s AND last_uid < %s"""
KNOWN_MESSAGE_IDS = """
SELECT message_id FROM mail.messages WHERE location_id = %s AND message_id = ANY(%s)"""
EXISTING_BY_MESSAGE_ID = "SELECT id FROM mail.messages WHERE location_id = %s AND message_id = %s"
EXISTING_BY_SHA = """
SELECT id FROM mail.messages WHERE location_id = %s AND message_id IS NULL AND sha256 = %s"""
RECORD_SKIPPED = """
INSERT INTO mail.import_skipped (location_id, folder, uidvalidity, uid, size_bytes, reason,
    internal_date)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING"""
INSERT_MESSAGE = """
INSERT INTO mail.messages (direction, location_id, folder, uid, uidvalidity, message_id, sha256,
    eml_path, size_bytes, subject, from_address, from_name, to_addresses, cc_addresses,
    sent_date, in_reply_to, refs, body_text, body_html, defects, status)
VALUES ('in', %(location_id)s, %(folder)s, %(uid)s, %(uidvalidity)s, %(message_id)s, %(sha256)s,
    %(eml_path)s, %(size_bytes)s, %(subject)s, %(from_address)s, %(from_name)s,
    %(to_addresses)s, %(cc_addresses)s, %(sent_date)s, %(in_reply_to)s, %(refs)s,
    %(body_text)s, %(body_html)s, %(defects)s, %(status)s)
ON CONFLICT DO NOTHING
RETURNING id"""
INSERT_MESSAGES = """
INSERT INTO mail.messages (direction, location_id, folder, uid, uidvalidity, message_id, sha256,
    eml_path, size_bytes, subject, from_address, from_name, to_addresses, cc_addresses,
    sent_date, in_reply_to, refs, body_text, body_html, defects, status)
VALUES %s
ON CONFLICT DO NOTHING
RETURNING id, eml_path"""
INSERT_MESSAGES_ROW = (
    "('in', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s::text[], %s, %s,"
    " %s::text[], %s, %s, %s::text[], %s)"
)
KNOWN_SHAS = """
SELECT sha256 FROM mail.messages WHERE location_id = %s AND message_id IS NULL AND sha256 = ANY(%s)"""
INSERT_ATTACHMENTS = """
INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)
VALUES %s"""
ATTACHMENT_PATH_IN_USE = "SELECT 1 FROM mail.attachments WHERE path = %s LIMIT 1"
SET_STATUS = "UPDATE mail.messages SET status = %s, defects = %s WHERE id = %s"
INSERT_ATTACHMENT = """
INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)
VALUES (%s, %s, %s, %s, %s, %s)"""
KEY_IN_USE = "SELECT 1 FROM mail.messages WHERE eml_path = %s LIMIT 1"
# The alert shows when each mail arrived, on the company's clock.
UNLINKED_MAILS = """
SELECT id, archived_at AT TIME ZONE %s, coalesce(from_address, '?'), subject FROM mail.messages
WHERE id = ANY(%s) AND status = 'unlinked' ORDER BY id"""
AUDIT = """
INSERT INTO mail.audit_log (actor, action, subject, details)
VALUES ('mailbox_import', 'import', %s, %s::jsonb)"""


@dataclass(frozen=True)
class Location:
    """One mailbox folder to import, as configured in ``mail.import_locations``."""

    id: int
    name: str
    conn_id: str
    folder: str
    after_import: str
    move_to: str | None
    archive_folder: str
    archive_subfolder: str
    store_attachments: bool
    link_keywords: dict
    max_message_bytes: int
    ticket_enabled: bool
    ticket_project_id: int | None
    ticket_queue: str
    autoreply_enabled: bool
    autoreply_account_id: int | None
    autoreply_subject: str | None
    autoreply_body: str | None
    notify_address: str | None
    enabled: bool
    language: str | None = None  # autoreply and alert language; None: the default (de)


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


@dataclass(frozen=True)
class Stored:
    """The outcome for one mail: its row id, whether it was new, and its status."""

    message_row_id: int
    new: bool
    status: str


def load_location(cur, location_id: int) -> Location:
    """The location row; a clear error when it does not exist."""
    cur.execute(LOCATION_BY_ID, (location_id,))
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"import location {location_id} does not exist")
    values = list(row)
    values[9] = values[9] or {}
    return Location(*values)


def enabled_location_ids(cur) -> list[int]:
    """Ids of the locations the scheduled import runs for."""
    cur.execute(ENABLED_LOCATIONS)
    return [row[0] for row in cur.fetchall()]


def today() -> date:
    """The business date in the company's time zone (the autoresponder's day)."""
    return pendulum.now(COMPANY_TZ).date()


def eml_key(location: Location, sha256: str, received: datetime | None) -> str:
    """The archive key of a mail: under the location's folder/subfolder, by month."""
    when = (received or datetime.now(UTC)).astimezone(UTC)
    parts = [
        archive.safe_part(p)
        for p in f"{location.archive_folder}/{location.archive_subfolder}".split("/")
        if p.strip()
    ]
    return "/".join([*parts, f"{when:%Y}", f"{when:%m}", f"{location.id}-{sha256}.eml"])


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[: end + 2]


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
    return _import_one(cur, location, [raw], uid, uidvalidity, received, day or today(), False)


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
        parse.message_id_from_header_block(_header_block(raw)) if big else parsed.message_id
    )
    if not (checked and message_id):
        if message_id:
            cur.execute(EXISTING_BY_MESSAGE_ID, (location.id, message_id))
        else:
            cur.execute(EXISTING_BY_SHA, (location.id, sha))
        row = cur.fetchone()
        if row:
            return Stored(row[0], False, "duplicate")
    key = eml_key(location, sha, received)
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
        _forget(cur, written)
        raise
    if not stored.new:
        _forget(cur, written)
    elif keys is not None:
        keys.extend(written)
    return stored


def _forget(cur, keys: list[str]) -> None:
    """Remove files this attempt wrote and no stored mail refers to."""
    for key in keys:
        try:
            # an identical mail stored before has the same keys: its files stay
            cur.execute("SAVEPOINT forget")
            cur.execute(KEY_IN_USE if key.endswith(".eml") else ATTACHMENT_PATH_IN_USE, (key,))
            in_use = cur.fetchone() is not None
            cur.execute("RELEASE SAVEPOINT forget")
            if in_use:
                continue
            archive.delete(key)
        except Exception:  # the transaction is aborted or the store is gone: leave the orphan
            log.warning("could not remove %s after a failed import", key)


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
    )
    # a mail in a ticket location always ends up with its case
    linked = links or (location.ticket_enabled and not parsed.malformed)
    status = "malformed" if parsed.malformed else ("linked" if linked else "unlinked")
    cur.execute(
        INSERT_MESSAGE,
        {
            "location_id": location.id,
            "folder": location.folder,
            "uid": uid,
            "uidvalidity": uidvalidity,
            "message_id": parsed.message_id,
            "sha256": sha,
            "eml_path": key,
            "size_bytes": size,
            "subject": parsed.subject,
            "from_address": parsed.from_address,
            "from_name": parsed.from_name,
            "to_addresses": parsed.to_addresses,
            "cc_addresses": parsed.cc_addresses,
            "sent_date": parsed.sent_date,
            "in_reply_to": parsed.in_reply_to,
            "refs": parsed.references,
            "body_text": parsed.body_text,
            "body_html": parsed.body_html,
            "defects": _defects(parsed),
            "status": status,
        },
    )
    defect_count = len(parsed.defects[:200])
    row = cur.fetchone()
    if row is None:  # stored meanwhile under the same Message-ID or hash
        cur.execute(
            EXISTING_BY_MESSAGE_ID if parsed.message_id else EXISTING_BY_SHA,
            (location.id, parsed.message_id or sha),
        )
        return Stored(cur.fetchone()[0], False, "duplicate")
    mail_id = row[0]
    _attachments(cur, location, parsed, mail_id, key, written)
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
    defects = _defects(parsed)
    if len(defects) != defect_count:  # decoding the attachments found more
        status = "malformed"
        cur.execute(SET_STATUS, (status, defects, mail_id))
    if location.autoreply_enabled and not parsed.malformed:
        tickets.autoreply(
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


def _defects(parsed: parse.ParsedMail) -> list[str]:
    return [parse.clean_text(d, 500) for d in parsed.defects[:200]]


def _attachments(
    cur,
    location: Location,
    parsed: parse.ParsedMail,
    mail_id: int,
    key: str,
    written: list[str],
) -> None:
    folder = key.removesuffix(".eml")
    for att in parsed.attachments:
        path = None
        if location.store_attachments:
            path = f"{folder}/{att.filename}"
            written.append(path)
            archive.store_stream(path, att.chunks())
        else:
            att.consume()  # size and hash only
        cur.execute(
            INSERT_ATTACHMENT,
            (mail_id, att.filename, att.content_type, att.size, att.sha256, path),
        )


# --- the pipeline: IMAP thread, parse and store here, one chunk per transaction --------------
# Nothing here starts a process: the import runs inside an executor's task process (a Celery
# worker's child may not have children); locations run in parallel as mapped tasks.


@dataclass
class _Prepared:
    """A fetched mail after hashing and parsing: what the database and the store need."""

    uid: int
    received: datetime | None
    raw: bytes
    sha: str
    parsed: parse.ParsedMail


def _prepare(cand: _Candidate, raw: bytes) -> _Prepared:
    """Hash and parse one fetched mail; its attachments are decoded when stored."""
    return _Prepared(
        cand.uid, cand.internal_date, raw, hashlib.sha256(raw).hexdigest(), parse.parse(raw)
    )


@dataclass
class _Chunk:
    """One chunk sorted out before its transaction: what to skip, to store together, alone."""

    candidates: list[_Candidate]
    oversize: list[_Candidate]
    known: list[int]  # UIDs whose Message-ID is stored already (rescans)
    bulk: list[tuple[_Candidate, bytes]]
    single: list[tuple[_Candidate, bytes | None]]


def _sort_out(
    location: Location, candidates: list[_Candidate], fetched: dict, known: set[str]
) -> _Chunk:
    """Split a fetched chunk into the mails stored together and those taken one by one."""
    oversize, done, bulk, single = [], [], [], []
    # tickets and autoreplies go mail by mail: each may depend on the one before
    together = not (location.ticket_enabled or location.autoreply_enabled)
    for cand in candidates:
        if cand.size > location.max_message_bytes:
            oversize.append(cand)
            continue
        if cand.message_id in known:
            done.append(cand.uid)
            continue
        item = fetched.pop(cand.uid, None) if cand.size <= FETCH_CHUNK_BYTES else None
        raw = item.get(b"BODY[]") if item else None
        if together and raw is not None and len(raw) <= PARSE_FROM_STORE_BYTES:
            bulk.append((cand, raw))
        else:
            single.append((cand, raw))
    return _Chunk(candidates, oversize, done, bulk, single)


@dataclass
class _Candidate:
    uid: int
    size: int
    internal_date: datetime | None
    message_id: str | None  # only when fetched ahead (rescans), else None


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


def _search(client, last_uid: int, since: datetime | None, until: datetime | None) -> list[int]:
    if since is None:
        return sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
    # IMAP dates are whole days; the INTERNALDATE check later trims to the exact interval
    start = since.astimezone(UTC).date() - timedelta(days=1)
    end = until.astimezone(UTC).date() + timedelta(days=2)
    return sorted(client.search(["SINCE", start, "BEFORE", end]))


def _candidates(client, uids: list[int], with_message_ids: bool) -> Iterator[_Candidate]:
    # The Message-ID ahead costs Dovecot a header read per mail; it pays off only on a
    # rescan (backfill, UIDVALIDITY change), where most mails are stored already. New mail
    # above the watermark is deduplicated after its fetch.
    items = ["RFC822.SIZE", "INTERNALDATE"] + ([MSGID_HEADER] if with_message_ids else [])
    for start in range(0, len(uids), META_CHUNK):
        chunk = uids[start : start + META_CHUNK]
        meta = client.fetch(chunk, items)
        for uid in chunk:
            item = meta.get(uid)
            if item is None:  # expunged meanwhile
                continue
            internal = item.get(b"INTERNALDATE")
            if internal is not None and internal.tzinfo is None:
                internal = internal.replace(tzinfo=UTC)
            yield _Candidate(
                uid,
                int(item.get(b"RFC822.SIZE") or 0),
                internal,
                parse.message_id_from_header_block(item.get(MSGID_KEY) or b"")
                if with_message_ids
                else None,
            )


def _known_message_ids(conn, location: Location, candidates: list[_Candidate]) -> set[str]:
    ids = [c.message_id for c in candidates if c.message_id]
    known: set[str] = set()
    with db.transaction(conn) as cur:
        for start in range(0, len(ids), META_CHUNK):
            cur.execute(KNOWN_MESSAGE_IDS, (location.id, ids[start : start + META_CHUNK]))
            known.update(row[0] for row in cur.fetchall())
    return known


def _fetch(client, uids: list[int]) -> dict:
    return client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}


def _store_chunk(
    cur, location: Location, uidvalidity: int, mails: list[_Prepared], keys: list[str]
) -> tuple[list[int], list[tuple[int, str, int]], int]:
    """Store parsed mails with a few statements; returns (UIDs done, (row id, status, bytes)
    of the new ones, duplicates). All or nothing: the caller falls back to one by one."""
    ids = [m.parsed.message_id for m in mails if m.parsed.message_id]
    shas = [m.sha for m in mails if not m.parsed.message_id]
    known: set[str] = set()
    if ids:
        cur.execute(KNOWN_MESSAGE_IDS, (location.id, ids))
        known.update(row[0] for row in cur.fetchall())
    if shas:
        cur.execute(KNOWN_SHAS, (location.id, shas))
        known.update(row[0] for row in cur.fetchall())
    done, fresh = [], []
    for mail in mails:
        ident = mail.parsed.message_id or mail.sha
        done.append(mail.uid)
        if ident not in known:
            known.add(ident)  # a second copy within the chunk is a duplicate too
            fresh.append(mail)
    duplicates = len(mails) - len(fresh)
    if not fresh:
        return done, [], duplicates
    found = linking.find_links_many(
        cur,
        [
            linking.LinkQuery(
                m.parsed.subject, m.parsed.from_address, m.parsed.in_reply_to, m.parsed.references
            )
            for m in fresh
        ],
        location.link_keywords,
    )
    written: list[str] = []
    files: dict[str, tuple[_Prepared, list[linking.Link], list[str | None]]] = {}
    try:
        for mail, links in zip(fresh, found, strict=True):
            key = eml_key(location, mail.sha, mail.received)
            folder = key.removesuffix(".eml")
            paths = [
                f"{folder}/{att.filename}" if location.store_attachments else None
                for att in mail.parsed.attachments
            ]
            files[key] = (mail, links, paths)
            written.extend([key, *(p for p in paths if p)])
        # creating files is slow on a busy disk and releases the GIL: several at once
        cur.execute(locks.ARCHIVE_FILES_SHARED)
        with ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store") as writer:
            for _ in writer.map(_store_files, files.items()):
                pass
        rows = []
        for key, (mail, links, _) in files.items():
            parsed = mail.parsed  # its defects now include those found decoding attachments
            status = "malformed" if parsed.malformed else ("linked" if links else "unlinked")
            rows.append(
                (
                    location.id,
                    location.folder,
                    mail.uid,
                    uidvalidity,
                    parsed.message_id,
                    mail.sha,
                    key,
                    len(mail.raw),
                    parsed.subject,
                    parsed.from_address,
                    parsed.from_name,
                    parsed.to_addresses,
                    parsed.cc_addresses,
                    parsed.sent_date,
                    parsed.in_reply_to,
                    parsed.references,
                    parsed.body_text,
                    parsed.body_html,
                    _defects(parsed),
                    status,
                )
            )
        inserted = execute_values(
            cur,
            INSERT_MESSAGES,
            rows,
            template=INSERT_MESSAGES_ROW,
            page_size=len(rows),
            fetch=True,
        )
        new, atts, link_rows = [], [], []
        by_key = dict(row[::-1] for row in inserted)
        for row in rows:
            key, status = row[6], row[19]
            mail_id = by_key.get(key)
            if mail_id is None:  # stored meanwhile by someone else: a duplicate after all
                duplicates += 1
                continue
            mail, links, paths = files[key]
            new.append((mail_id, status, len(mail.raw)))
            link_rows.append((mail_id, links))
            for att, path in zip(mail.parsed.attachments, paths, strict=True):
                atts.append((mail_id, att.filename, att.content_type, att.size, att.sha256, path))
        if atts:
            execute_values(cur, INSERT_ATTACHMENTS, atts, page_size=1000)
        linking.store_links_many(cur, link_rows)
    except BaseException:
        _forget(cur, written)
        raise
    # the losers of a race on the unique index: their files go unless the winner's are theirs
    _forget(
        cur,
        [
            k
            for key, (_, _, paths) in files.items()
            if by_key.get(key) is None
            for k in (key, *(p for p in paths if p))
        ],
    )
    keys.extend(written)
    return done, new, duplicates


def _store_files(item: tuple[str, tuple[_Prepared, list, list[str | None]]]) -> None:
    """Write one mail's .eml and, where a path is given, its decoded attachments."""
    key, (mail, _, paths) = item
    archive.store(key, mail.raw)
    for att, path in zip(mail.parsed.attachments, paths, strict=True):
        if path is None:
            att.consume()  # size and hash only
        else:
            archive.store_stream(path, att.chunks())


def _server_action(client, location: Location, uids: list[int]) -> None:
    """Flag, move or delete stored mails on the server, after their commit."""
    if not uids or location.after_import == "none":
        return
    if location.after_import == "flag_seen":
        client.add_flags(uids, [SEEN])
    elif location.after_import == "move":
        if client.has_capability("MOVE"):
            client.move(uids, location.move_to)
        else:
            client.copy(uids, location.move_to)
            _purge(client, uids)
    elif location.after_import == "delete":
        _purge(client, uids)


def _purge(client, uids: list[int]) -> None:
    client.add_flags(uids, [DELETED])
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()


class _Progress:
    def __init__(self, location: Location, total: int) -> None:
        self.location, self.total = location, total
        self.started = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = done / (now - self.started) if now > self.started else 0.0
        left = (self.total - done) / rate if rate else float("inf")
        log.info(
            "%s: %d/%d mails, %.0f mails/s, about %.0f s left",
            self.location.name,
            done,
            self.total,
            rate,
            left,
        )


def import_location(
    location_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    wait: bool = True,
    run_key: str | None = None,
    fetch_chunk: int = FETCH_CHUNK,
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
            _run(conn, location, summary, since, until, fetch_chunk, day or today(), fault)
            _finish(conn, location, summary, run_key)
        finally:
            with db.transaction(conn) as cur:
                cur.execute(UNLOCK, (LOCK_CLASS, location.id))
    finally:
        if own:
            conn.close()
    log.info("%s", summary)
    return summary


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
        client.normalise_times = False
        uidvalidity = int(client.select_folder(location.folder)[b"UIDVALIDITY"])
        if location.after_import == "move" and not client.folder_exists(location.move_to):
            client.create_folder(location.move_to)
        with db.transaction(conn) as cur:
            cur.execute(WATERMARK, (location.id, location.folder))
            row = cur.fetchone()
            last_uid = 0
            if row is None or row[0] != uidvalidity:
                if row is not None:
                    summary.uidvalidity_reset = True
                    log.warning(
                        "%s: UIDVALIDITY of %s changed from %s to %s; rescanning the folder",
                        location.name,
                        location.folder,
                        row[0],
                        uidvalidity,
                    )
                cur.execute(RESET_WATERMARK, (location.id, location.folder, uidvalidity))
            else:
                last_uid = row[1]
        uids = _search(client, last_uid, since, until)
        summary.candidates = len(uids)
        rescan = since is not None or summary.uidvalidity_reset
        candidates = list(_candidates(client, uids, rescan))
        known = _known_message_ids(conn, location, candidates) if rescan else set()
        chunks: list[list[_Candidate]] = []
        batch: list[_Candidate] = []
        batch_bytes = 0
        for cand in candidates:
            if since is not None and cand.internal_date is not None:
                if not (since <= cand.internal_date < until):
                    summary.candidates -= 1
                    continue
            batch.append(cand)
            batch_bytes += min(cand.size, location.max_message_bytes)
            if len(batch) >= fetch_chunk or batch_bytes >= FETCH_CHUNK_BYTES:
                chunks.append(batch)
                batch, batch_bytes = [], 0
        if batch:
            chunks.append(batch)

        def wanted(chunk: list[_Candidate]) -> list[int]:
            return [
                c.uid
                for c in chunk
                if c.size <= min(location.max_message_bytes, FETCH_CHUNK_BYTES)
                and c.message_id not in known
            ]

        progress = _Progress(location, summary.candidates)
        done = 0
        advance = since is None
        # the thread owns the IMAP session: it fetches chunk n + 1 while chunk n is parsed,
        # stored and committed here, and does this run's server changes in between
        imap = ThreadPoolExecutor(1, thread_name_prefix="imap")
        try:
            if chunks:
                fetching = imap.submit(_fetch, client, wanted(chunks[0]))
            for n, part in enumerate(chunks):
                fetched = fetching.result()
                if n + 1 < len(chunks):
                    fetching = imap.submit(_fetch, client, wanted(chunks[n + 1]))
                chunk = _sort_out(location, part, fetched, known)
                del fetched
                advance = _batch(
                    client, imap, conn, location, summary, chunk, uidvalidity, day, fault, advance
                )
                done += len(chunk.candidates)
                progress.tick(done)
        finally:
            imap.shutdown(wait=True, cancel_futures=True)
    summary.seconds = round(time.monotonic() - started, 3)


def _batch(
    client,
    imap: Executor,
    conn,
    location: Location,
    summary: Summary,
    chunk: _Chunk,
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
            cur.execute(
                RECORD_SKIPPED,
                (
                    location.id,
                    location.folder,
                    uidvalidity,
                    cand.uid,
                    cand.size,
                    f"size {cand.size} bytes over the limit {location.max_message_bytes}",
                    cand.internal_date,
                ),
            )
            log.warning(
                "%s: UID %s is %d bytes, over the limit of %d; left on the server",
                location.name,
                cand.uid,
                cand.size,
                location.max_message_bytes,
            )
        if chunk.bulk:
            prepared = [_prepare(cand, raw) for cand, raw in chunk.bulk]
            cur.execute("SAVEPOINT chunk")
            try:
                uids, new, duplicates = _store_chunk(cur, location, uidvalidity, prepared, keys)
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
                item = imap.submit(_fetch, client, [cand.uid]).result().pop(cand.uid, None)
                raw = item.pop(b"BODY[]", None) if item else None
                del item
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
    imap.submit(_server_action, client, location, done).result()
    advance = advance and not failed
    if advance:
        top = max(c.uid for c in chunk.candidates)
        with db.transaction(conn) as cur:
            cur.execute(ADVANCE_WATERMARK, (top, location.id, location.folder, uidvalidity, top))
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
            cur.execute(UNLINKED_MAILS, (COMPANY_TZ, summary.new_ids))
            cols = ("id", "received_at", "sender", "subject")
            mails = [
                {**dict(zip(cols, row, strict=True)), "location": location.name}
                for row in cur.fetchall()
            ]
            key = run_key or f"{min(summary.new_ids)}-{max(summary.new_ids)}"
            summary.alert_outbox_id = tickets.notify_unlinked(
                cur,
                location_id=location.id,
                location_name=location.name,
                notify_address=location.notify_address,
                account_id=location.autoreply_account_id,
                language=location.language,
                mails=mails,
                run_key=key,
            )
        cur.execute(AUDIT, (location.name, json.dumps(summary.as_dict(), default=str)))
