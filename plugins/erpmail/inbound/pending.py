"""Files written ahead of their rows: no file without a row after a crash.

Before an import writes a mail's ``.eml`` (and its attachments beside it), the key is
recorded in ``mail.import_pending_files`` on a connection of its own, committed at once; the
transaction that stores the rows deletes the entry. A run killed in between leaves the entry:
the location's next run removes the files that no committed row names, under the location's
lock, so no other import of it is writing them.
"""

from __future__ import annotations

import logging

import psycopg2.extensions

from erpmail.core import archive, db

log = logging.getLogger(__name__)

RECORD = "INSERT INTO mail.import_pending_files (location_id, keys) VALUES (%s, %s) RETURNING id"
CLEAR = "DELETE FROM mail.import_pending_files WHERE id = ANY(%s)"
LEFT = "SELECT id, keys FROM mail.import_pending_files WHERE location_id = %s ORDER BY id"
ROW_OF_EML = "SELECT id FROM mail.messages WHERE eml_path = %s"
ATTACHMENT_FILES = "SELECT path FROM mail.attachments WHERE message_id = %s AND path IS NOT NULL"


class Journal:
    """Records the ``.eml`` keys a location's import is about to write, each record committed
    before the files exist; ``clear`` in the storing transaction removes them with its commit."""

    def __init__(self, location_id: int, conn: psycopg2.extensions.connection | None = None):
        self.location_id = location_id
        self._conn = conn
        self._own = conn is None

    def record(self, eml_keys: list[str]) -> int:
        """Commit an entry for ``eml_keys``; its id, for ``clear``."""
        if self._conn is None:
            self._conn = db.connect()
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(RECORD, (self.location_id, eml_keys))
            return cur.fetchone()[0]

    def close(self) -> None:
        """Close the journal's own connection."""
        if self._own and self._conn is not None:
            self._conn.close()
            self._conn = None


def clear(cur, entry_ids: list[int]) -> None:
    """Drop the entries in the caller's transaction: their files are now named by rows."""
    if entry_ids:
        cur.execute(CLEAR, (entry_ids,))


def sweep(conn, location_id: int) -> int:
    """Remove what killed runs of the location left: files no row names, temp files; return
    how many were removed. The caller holds the location's import lock."""
    removed = 0
    with db.transaction(conn) as cur:
        cur.execute(LEFT, (location_id,))
        entries = cur.fetchall()
        for _, keys in entries:
            for key in keys:
                removed += _sweep_mail(cur, key)
        clear(cur, [entry_id for entry_id, _ in entries])
    if removed:
        log.warning("location %s: removed %d files of an interrupted import", location_id, removed)
    return removed


def _sweep_mail(cur, eml_key: str) -> int:
    cur.execute(ROW_OF_EML, (eml_key,))
    row = cur.fetchone()
    keep: set[str] = set()
    if row is not None:
        keep.add(eml_key)
        cur.execute(ATTACHMENT_FILES, (row[0],))
        keep.update(path for (path,) in cur.fetchall())
    folder = eml_key.removesuffix(".eml")
    found = [eml_key, *archive.temp_keys(eml_key), *archive.keys_under(folder)]
    gone = [key for key in found if key not in keep]
    return sum(archive.delete_many(gone).values())
