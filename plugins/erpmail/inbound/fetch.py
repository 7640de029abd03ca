"""The IMAP side of the import: the folder and its watermark, the search, the fetches, and
the server actions (flag, move, delete) once the mails are committed.

The folder's UIDVALIDITY and the highest stored UID (``mail.import_watermarks``) say where to
go on; a changed UIDVALIDITY resets the watermark and rescans the folder. A backfill searches
its interval (IMAP SINCE/BEFORE on whole days, then the exact INTERNALDATE) instead. Bodies
are fetched in chunks bounded by count and bytes, one chunk ahead in the thread that owns the
session. The server is changed, and the watermark advanced, only after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from imapclient import DELETED, SEEN

from erpmail.core import db
from erpmail.inbound.locations import Location

log = logging.getLogger(__name__)

META_CHUNK = 500
FETCH_CHUNK = 100
FETCH_CHUNK_BYTES = 16 * 1024 * 1024

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


@dataclass
class Candidate:
    """A mail found by the search, before its body is fetched."""

    uid: int
    size: int
    internal_date: datetime | None


def open_folder(client, location: Location) -> int:
    """Select the location's folder (and make its move target); its UIDVALIDITY."""
    client.normalise_times = False
    uidvalidity = int(client.select_folder(location.folder)[b"UIDVALIDITY"])
    if location.after_import == "move" and not client.folder_exists(location.move_to):
        client.create_folder(location.move_to)
    return uidvalidity


def watermark(conn, location: Location, uidvalidity: int) -> tuple[int, bool]:
    """The highest UID stored before, and whether UIDVALIDITY changed (the watermark reset)."""
    with db.transaction(conn) as cur:
        cur.execute(WATERMARK, (location.id, location.folder))
        row = cur.fetchone()
        if row is not None and row[0] == uidvalidity:
            return row[1], False
        if row is not None:
            log.warning(
                "%s: UIDVALIDITY of %s changed from %s to %s; rescanning the folder",
                location.name,
                location.folder,
                row[0],
                uidvalidity,
            )
        cur.execute(RESET_WATERMARK, (location.id, location.folder, uidvalidity))
        return 0, row is not None


def advance_watermark(conn, location: Location, uidvalidity: int, top: int) -> None:
    """Move the watermark up to ``top`` (never down), after the chunk's commit."""
    with db.transaction(conn) as cur:
        cur.execute(ADVANCE_WATERMARK, (top, location.id, location.folder, uidvalidity, top))


def search(client, last_uid: int, since: datetime | None, until: datetime | None) -> list[int]:
    """UIDs above ``last_uid``, or for a backfill those received around [since, until)."""
    if since is None:
        return sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
    # IMAP dates are whole days; the INTERNALDATE check later trims to the exact interval
    start = since.astimezone(UTC).date() - timedelta(days=1)
    end = until.astimezone(UTC).date() + timedelta(days=2)
    return sorted(client.search(["SINCE", start, "BEFORE", end]))


def candidates(client, uids: list[int]) -> Iterator[Candidate]:
    """Size and INTERNALDATE of each UID; expunged ones go."""
    for start in range(0, len(uids), META_CHUNK):
        chunk = uids[start : start + META_CHUNK]
        meta = client.fetch(chunk, ["RFC822.SIZE", "INTERNALDATE"])
        for uid in chunk:
            item = meta.get(uid)
            if item is None:  # expunged meanwhile
                continue
            internal = item.get(b"INTERNALDATE")
            if internal is not None and internal.tzinfo is None:
                internal = internal.replace(tzinfo=UTC)
            yield Candidate(uid, int(item.get(b"RFC822.SIZE") or 0), internal)


def in_chunks(
    location: Location,
    found: list[Candidate],
    since: datetime | None,
    until: datetime | None,
    fetch_chunk: int,
) -> tuple[list[list[Candidate]], int]:
    """The candidates in fetch chunks (by count and bytes), and how many fell outside a
    backfill's exact interval."""
    chunks: list[list[Candidate]] = []
    batch: list[Candidate] = []
    batch_bytes = 0
    outside = 0
    for cand in found:
        if since is not None and cand.internal_date is not None:
            if not (since <= cand.internal_date < until):
                outside += 1
                continue
        batch.append(cand)
        batch_bytes += min(cand.size, location.max_message_bytes)
        if len(batch) >= fetch_chunk or batch_bytes >= FETCH_CHUNK_BYTES:
            chunks.append(batch)
            batch, batch_bytes = [], 0
    if batch:
        chunks.append(batch)
    return chunks, outside


@dataclass
class Chunk:
    """One chunk sorted out before its transaction: what to skip, to store together, alone."""

    candidates: list[Candidate]
    oversize: list[Candidate]
    known: list[int]  # UIDs stored already (backfills)
    bulk: list[tuple[Candidate, bytes]]
    single: list[tuple[Candidate, bytes | None]]


def sort_out(
    location: Location,
    candidates: list[Candidate],
    fetched: dict,
    known: set[int],
    together_bytes: int,
) -> Chunk:
    """Split a fetched chunk: over the size limit, stored already (``known`` UIDs),
    fetched and up to ``together_bytes`` (stored together), the rest (one by one)."""
    oversize, done, bulk, single = [], [], [], []
    for cand in candidates:
        if cand.size > location.max_message_bytes:
            oversize.append(cand)
            continue
        if cand.uid in known:
            done.append(cand.uid)
            continue
        item = fetched.pop(cand.uid, None) if cand.size <= FETCH_CHUNK_BYTES else None
        raw = item.get(b"BODY[]") if item else None
        if raw is not None and len(raw) <= together_bytes:
            bulk.append((cand, raw))
        else:
            single.append((cand, raw))
    return Chunk(candidates, oversize, done, bulk, single)


def fetch(client, uids: list[int]) -> dict:
    """``BODY.PEEK[]`` of ``uids`` (nothing flagged by the fetch)."""
    return client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}


def fetch_one(imap: Executor, client, uid: int) -> bytes | None:
    """One mail's bytes through the session's thread; None when it is gone from the server."""
    item = imap.submit(fetch, client, [uid]).result().pop(uid, None)
    return item.pop(b"BODY[]", None) if item else None


def fetched_ahead(
    imap: Executor,
    client,
    chunks: list[list[Candidate]],
    wanted: Callable[[list[Candidate]], list[int]],
) -> Iterator[tuple[list[Candidate], dict]]:
    """Each chunk with its fetched bodies (of the ``wanted`` UIDs); chunk n + 1 is fetched in
    the session's thread while the caller works on chunk n."""
    if not chunks:
        return
    fetching = imap.submit(fetch, client, wanted(chunks[0]))
    for n, part in enumerate(chunks):
        fetched = fetching.result()
        if n + 1 < len(chunks):
            fetching = imap.submit(fetch, client, wanted(chunks[n + 1]))
        yield part, fetched
        del fetched


def server_action(client, location: Location, uids: list[int]) -> None:
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
