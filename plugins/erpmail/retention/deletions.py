"""The files of purged mail (``mail.retention_pending_deletions``): recorded in the
transaction that deletes their rows, removed after its commit unless another row still names
them, and swept by the next run when a run died in between."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg2.extensions

from erpmail.core import archive, db, locks

log = logging.getLogger(__name__)

SELECT_PENDING = """
SELECT id, keys FROM mail.retention_pending_deletions WHERE id > %s ORDER BY id LIMIT 1"""
# The recorded keys no remaining row names: only those files may go (a stored file may be
# shared). Asked after the rows' delete, in the same transaction, so it sees the delete.
UNSHARED_KEYS = """
SELECT k FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS u (k, n)
WHERE NOT EXISTS (SELECT 1 FROM mail.messages m WHERE m.eml_path = u.k)
  AND NOT EXISTS (SELECT 1 FROM mail.attachments a WHERE a.path = u.k)
ORDER BY n"""
SET_PENDING_KEYS = "UPDATE mail.retention_pending_deletions SET keys = %s WHERE id = %s"
CLEAR_PENDING = "DELETE FROM mail.retention_pending_deletions WHERE id = ANY(%s)"


@dataclass
class FileRemoval:
    """What removing recorded files did."""

    removed: int = 0
    missing: int = 0  # already gone (a previous attempt removed it before dying)
    shared: int = 0  # still named by another row, so kept
    failed: int = 0  # left pending for the next run

    def add(self, other: FileRemoval) -> None:
        for name in ("removed", "missing", "shared", "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def remove_unshared(
    conn: psycopg2.extensions.connection, keys: list[str]
) -> tuple[FileRemoval, list[str]]:
    """Remove the files under ``keys`` that no row names (after the rows' delete committed):
    what happened, and the keys that failed."""
    result = FileRemoval()
    with db.transaction(conn) as cur:
        # no import stores a file while these are checked and removed (locks.ARCHIVE_FILES)
        cur.execute(locks.ARCHIVE_FILES_EXCLUSIVE)
        cur.execute(UNSHARED_KEYS, {"keys": keys})
        unshared = [row[0] for row in cur.fetchall()]
        try:
            done, errors = archive.delete_many(unshared), {}
        except archive.DeleteError as exc:  # the others are gone; the failed keys stay pending
            done, errors = exc.done, exc.errors
    result.shared = len(keys) - len(unshared)
    for key, error in errors.items():
        log.error("retention: could not remove %s: %s", key, error)
    result.removed = sum(done.values())
    result.missing = len(done) - result.removed
    result.failed = len(errors)
    return result, list(errors)


def settle(
    cur: psycopg2.extensions.cursor, pending_id: int, removal: Future, result: FileRemoval
) -> None:
    """Clear a pending row once its files are gone (or shared); keep the keys that failed."""
    counts, failed = removal.result()
    result.add(counts)
    if failed:
        cur.execute(SET_PENDING_KEYS, (failed, pending_id))
    else:
        cur.execute(CLEAR_PENDING, ([pending_id],))


def sweep_pending(conn: psycopg2.extensions.connection) -> FileRemoval:
    """Remove files left recorded by a run that died after its commit; what it did."""
    total = FileRemoval()
    after = 0
    while True:
        with db.transaction(conn) as cur:
            cur.execute(SELECT_PENDING, (after,))
            row = cur.fetchone()
        if row is None:
            break
        after, keys = row
        done: Future = Future()
        done.set_result(remove_unshared(conn, keys))
        with db.transaction(conn) as cur:
            settle(cur, after, done, total)
    if total.removed or total.missing or total.shared or total.failed:
        log.info(
            "retention sweep: %s leftover files removed, %s already gone, %s still in use, %s failed",
            total.removed,
            total.missing,
            total.shared,
            total.failed,
        )
    return total
