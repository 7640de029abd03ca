"""Storing received mail: dedupe, the raw ``.eml`` and attachment files, the rows.

A mail is stored once per location: a duplicate is a mail whose bytes (SHA-256) are stored
there already. A Message-ID shared with a stored mail is a new mail, marked with the first
it shares the id with. The raw ``.eml`` goes to the document store unchanged, under the
location's folder by month; attachments, where the location keeps them, beside it. A chunk
of mails is stored with a few statements (files written by a few threads, one ``INSERT ...
RETURNING``). Each attempt notes the files it writes (``Attempt``, journaled by ``pending``):
the caller removes them after rolling the attempt back, the next run after a crash. A mail
whose parse or filing fails keeps its raw ``.eml`` and a row with status ``failed``.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg2.extras import execute_values

from erpmail.campaigns import unsubscribe
from erpmail.core import archive, db, locks
from erpmail.inbound import bounces, headers, linking, parse, pending
from erpmail.inbound.locations import Location

log = logging.getLogger(__name__)

STORE_THREADS = 4
LOOKUP_CHUNK = 500
MAX_DEFECTS = 200

FAILED_HEADER_BYTES = 64 * 1024  # what a failed mail's row is filled from
MAX_FAILURE_CHARS = 1000

KNOWN_UIDS = """
SELECT uid FROM mail.messages
WHERE location_id = %s AND folder = %s AND uidvalidity = %s AND uid = ANY(%s)"""
KNOWN_SHAS = "SELECT sha256 FROM mail.messages WHERE location_id = %s AND sha256 = ANY(%s)"
EXISTING_BY_SHA = "SELECT id FROM mail.messages WHERE location_id = %s AND sha256 = %s"
# the first other mail of the location with the same Message-ID
MARK_SHARED = """
UPDATE mail.messages m SET shares_message_id_with = f.first
FROM (SELECT n.id, min(o.id) AS first FROM mail.messages n
      JOIN mail.messages o ON o.location_id = n.location_id AND o.message_id = n.message_id
                          AND o.id < n.id
      WHERE n.id = ANY(%s) AND n.message_id IS NOT NULL GROUP BY n.id) f
WHERE m.id = f.id"""
INSERT_FAILED = """
INSERT INTO mail.messages (direction, location_id, folder, uid, uidvalidity, message_id, sha256,
    eml_path, size_bytes, subject, from_address, status, failure, attempts)
VALUES ('in', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'failed', %s, 1)
ON CONFLICT DO NOTHING
RETURNING id"""
RECORD_SKIPPED = """
INSERT INTO mail.import_skipped (location_id, folder, uidvalidity, uid, size_bytes, reason,
    internal_date)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING"""
INSERT_MESSAGE = """
INSERT INTO mail.messages (id, direction, location_id, folder, uid, uidvalidity, message_id,
    sha256, eml_path, size_bytes, subject, from_address, from_name, to_addresses, cc_addresses,
    sent_date, in_reply_to, refs, body_text, body_html, defects, status)
VALUES (coalesce(%(id)s, nextval('mail.messages_id_seq')), 'in', %(location_id)s, %(folder)s, %(uid)s, %(uidvalidity)s, %(message_id)s, %(sha256)s,
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
INSERT_ATTACHMENTS = """
INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)
VALUES %s"""
INSERT_ATTACHMENT = """
INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)
VALUES (%s, %s, %s, %s, %s, %s)"""
ATTACHMENT_PATH_IN_USE = "SELECT 1 FROM mail.attachments WHERE path = %s LIMIT 1"
KEY_IN_USE = "SELECT 1 FROM mail.messages WHERE eml_path = %s LIMIT 1"
SET_STATUS = "UPDATE mail.messages SET status = %s, defects = %s WHERE id = %s"


@dataclass(frozen=True)
class Stored:
    """The outcome for one mail: its row id, whether it was new, and its status."""

    message_row_id: int
    new: bool
    status: str


@dataclass
class Attempt:
    """What one storing attempt writes: every file key (to sync, or to remove when the attempt
    is rolled back) and the journal entries naming its ``.eml`` files (cleared with the commit).
    """

    journal: pending.Journal | None
    keys: list[str] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)

    def will_write(self, eml_keys: list[str], others: list[str] = ()) -> None:
        """Note the files before they are written; the ``.eml`` keys journaled and committed."""
        if self.journal is not None and eml_keys:
            self.entries.append(self.journal.record(eml_keys))
        self.keys.extend([*eml_keys, *others])


@dataclass
class Prepared:
    """A fetched mail after hashing and parsing: what the database and the store need."""

    uid: int
    received: datetime | None
    raw: bytes
    sha: str
    parsed: parse.ParsedMail


def prepare(uid: int, received: datetime | None, raw: bytes) -> Prepared:
    """Hash and parse one fetched mail; its attachments are decoded when stored."""
    return Prepared(uid, received, raw, hashlib.sha256(raw).hexdigest(), parse.parse(raw))


def eml_key(location: Location, sha256: str, received: datetime | None) -> str:
    """The archive key of a mail: under the location's folder/subfolder, by month."""
    when = (received or datetime.now(UTC)).astimezone(UTC)
    parts = [
        archive.safe_part(p)
        for p in f"{location.archive_folder}/{location.archive_subfolder}".split("/")
        if p.strip()
    ]
    return "/".join([*parts, f"{when:%Y}", f"{when:%m}", f"{location.id}-{sha256}.eml"])


def header_block(raw: bytes) -> bytes:
    """The header lines of a raw mail, up to and including the blank line."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[: end + 2]


def existing(cur, location: Location, sha: str) -> int | None:
    """The row id of the mail with these bytes at the location, if stored."""
    cur.execute(EXISTING_BY_SHA, (location.id, sha))
    row = cur.fetchone()
    return row[0] if row else None


def known_uids(conn, location: Location, uidvalidity: int, uids: list[int]) -> set[int]:
    """Those of ``uids`` of the location's folder stored already (a backfill skips them)."""
    known: set[int] = set()
    with db.transaction(conn) as cur:
        for start in range(0, len(uids), LOOKUP_CHUNK):
            chunk = uids[start : start + LOOKUP_CHUNK]
            cur.execute(KNOWN_UIDS, (location.id, location.folder, uidvalidity, chunk))
            known.update(row[0] for row in cur.fetchall())
    return known


def mark_shared(cur, mail_ids: list[int]) -> None:
    """Mark each new mail whose Message-ID an earlier mail of its location has."""
    if mail_ids:
        cur.execute(MARK_SHARED, (mail_ids,))


def failure_reason(exc: BaseException) -> str:
    """An exception as stored on a failed mail: its type and message, bounded."""
    return parse.clean_text(f"{type(exc).__name__}: {exc}", MAX_FAILURE_CHARS)


def insert_failed(
    cur,
    location: Location,
    *,
    key: str,
    sha: str,
    size: int,
    uid: int | None,
    uidvalidity: int | None,
    head: bytes,
    reason: str,
) -> int | None:
    """Insert the row of a mail stored raw whose import failed; None when the same bytes
    were stored meanwhile. Message-ID, subject and sender come from the header block, as far
    as it can be read."""
    facts = headers.brief(head)
    cur.execute(
        INSERT_FAILED,
        (
            location.id,
            location.folder,
            uid,
            uidvalidity,
            parse.normalize_message_id(facts.message_id),
            sha,
            key,
            size,
            parse.clean_text(facts.subject, parse.MAX_SUBJECT_CHARS),
            facts.from_address and parse.clean_text(facts.from_address, 500),
            reason,
        ),
    )
    row = cur.fetchone()
    return row[0] if row else None


def record_skipped(cur, location: Location, uidvalidity: int, uid: int, size: int, when) -> None:
    """Record a mail over the location's size limit; it stays on the server."""
    cur.execute(
        RECORD_SKIPPED,
        (
            location.id,
            location.folder,
            uidvalidity,
            uid,
            size,
            f"size {size} bytes over the limit {location.max_message_bytes}",
            when,
        ),
    )
    log.warning(
        "%s: UID %s is %d bytes, over the limit of %d; left on the server",
        location.name,
        uid,
        size,
        location.max_message_bytes,
    )


def defects(parsed: parse.ParsedMail) -> list[str]:
    """The mail's defects as stored: bounded in number and length."""
    return [parse.clean_text(d, 500) for d in parsed.defects[:MAX_DEFECTS]]


def insert_message(
    cur,
    location: Location,
    parsed: parse.ParsedMail,
    *,
    key: str,
    sha: str,
    size: int,
    uid: int | None,
    uidvalidity: int | None,
    status: str,
    row_id: int | None = None,
) -> int | None:
    """Insert one mail's row (under ``row_id`` when it replaces a failed one); its id, or
    None when the same mail was stored meanwhile."""
    cur.execute(
        INSERT_MESSAGE,
        {
            "id": row_id,
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
            "defects": defects(parsed),
            "status": status,
        },
    )
    row = cur.fetchone()
    return row[0] if row else None


def set_malformed(cur, mail_id: int, parsed: parse.ParsedMail) -> None:
    """Mark a stored mail malformed, with the defects found since its insert."""
    cur.execute(SET_STATUS, ("malformed", defects(parsed), mail_id))


def store_attachments(
    cur,
    location: Location,
    parsed: parse.ParsedMail,
    mail_id: int,
    key: str,
    attempt: Attempt,
) -> None:
    """Decode each attachment (to a file beside the .eml where the location keeps them) and
    insert its row; file keys are noted on ``attempt`` before they are created."""
    folder = key.removesuffix(".eml")
    for att in parsed.attachments:
        path = None
        if location.store_attachments:
            path = f"{folder}/{att.filename}"
            attempt.keys.append(path)
            archive.store_stream(path, att.chunks())
        else:
            att.consume()  # size and hash only
        cur.execute(
            INSERT_ATTACHMENT,
            (mail_id, att.filename, att.content_type, att.size, att.sha256, path),
        )


def forget(cur, keys: list[str]) -> None:
    """Remove files an attempt wrote that no stored mail refers to; the caller's transaction
    must be usable (after the attempt's rollback, not before)."""
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


def store_chunk(
    cur, location: Location, uidvalidity: int, mails: list[Prepared], attempt: Attempt
) -> tuple[list[int], list[tuple[int, str, int]], int]:
    """Store parsed mails with a few statements; returns (UIDs done, (row id, status, bytes)
    of the new ones, duplicates). All or nothing: on an error the caller rolls back, removes
    ``attempt.keys`` and stores the mails one by one."""
    known: set[str] = set()
    cur.execute(KNOWN_SHAS, (location.id, [m.sha for m in mails]))
    known.update(row[0] for row in cur.fetchall())
    done, fresh = [], []
    for mail in mails:
        done.append(mail.uid)
        if mail.sha not in known:
            known.add(mail.sha)  # a second copy within the chunk is a duplicate too
            fresh.append(mail)
    duplicates = len(mails) - len(fresh)
    if not fresh:
        return done, [], duplicates
    found = linking.find_links_many(
        cur,
        [
            linking.LinkQuery(
                m.parsed.subject,
                m.parsed.from_address,
                m.parsed.in_reply_to,
                m.parsed.references,
                m.parsed.body_text or "",
            )
            for m in fresh
        ],
        location.link_keywords,
    )
    files: dict[str, tuple[Prepared, list[linking.Link], list[str | None]]] = {}
    for mail, links in zip(fresh, found, strict=True):
        key = eml_key(location, mail.sha, mail.received)
        folder = key.removesuffix(".eml")
        paths = [
            f"{folder}/{att.filename}" if location.store_attachments else None
            for att in mail.parsed.attachments
        ]
        files[key] = (mail, links, paths)
    attempt.will_write(
        list(files), [p for _, _, paths in files.values() for p in paths if p is not None]
    )
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
                defects(parsed),
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
    mark_shared(cur, [mail_id for mail_id, _, _ in new])
    bounces.file_received(
        cur,
        [
            (by_key[key], files[key][0].raw, files[key][0].parsed.from_address)
            for key in files
            if by_key.get(key) is not None
        ],
    )
    for key in (key for key in files if by_key.get(key) is not None):  # mailto: unsubscribes
        unsubscribe.by_mail(
            cur, files[key][0].parsed.to_addresses + files[key][0].parsed.cc_addresses
        )
    # the losers of a race on the unique index: their files go unless the winner's are theirs
    forget(
        cur,
        [
            k
            for key, (_, _, paths) in files.items()
            if by_key.get(key) is None
            for k in (key, *(p for p in paths if p))
        ],
    )
    return done, new, duplicates


def _store_files(item: tuple[str, tuple[Prepared, list, list[str | None]]]) -> None:
    """Write one mail's .eml and, where a path is given, its decoded attachments."""
    key, (mail, _, paths) = item
    archive.store(key, mail.raw)
    for att, path in zip(mail.parsed.attachments, paths, strict=True):
        if path is None:
            att.consume()  # size and hash only
        else:
            archive.store_stream(path, att.chunks())
