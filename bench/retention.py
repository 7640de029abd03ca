"""Retention purge against a plain single ``DELETE ... WHERE``, on the same data, in one run.

Builds 1,000,000 archived rows (INSERT ... SELECT generate_series; 1% with an attachment row,
1% linked; a sample with real small files) in a scratch database, clones it, then deletes the
older half twice: once with one DELETE statement on the clone (the baseline), once with
``purge.run`` in batches (rows, cascades, pending deletions, audit, file removal).

While each runs, a "clerk" touches random old rows (an UPDATE, as linking or a legal hold
would) and an "import" inserts new mail; their longest waits show how long locks were held.
Target: no lock held longer than one batch; total time within 3x of the single statement.

    .venv/bin/python bench/purge.py [--rows 1000000] [--batch 1000] [--files 5000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg2
from scratch import scratch_database

AS_OF = date(2026, 3, 15)
KEEP_DAYS = 365
SPREAD_DAYS = 730  # archived_at spread evenly over two years: keep_days 365 purges half

INSERT_LOCATIONS = """
INSERT INTO mail.import_locations (name, conn_id)
VALUES ('bench', 'imap_bench'), ('live', 'imap_live')"""
# Rows arrive in time order, as the import appends them: row g (= id) is archived
# (rows - g) / rows * 730 days before AS_OF noon, so the oldest half has the lowest ids.
INSERT_MESSAGES = """
INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path, size_bytes,
                           subject, from_address, archived_at, status)
SELECT 'in', 1, '<bench.' || g || '@example.com>', md5(g::text) || md5(g::text),
       'mail/bench/' || (g / 1000) || '/' || g || '.eml', 2000 + g %% 5000,
       'Re: invoice ' || g, 'sender' || g %% 997 || '@example.com',
       timestamptz '2026-03-15 12:00 Europe/Berlin'
           - (%(rows)s - g) * interval '730 days' / %(rows)s,
       'unlinked'
FROM generate_series(1, %(rows)s) g"""
INSERT_ATTACHMENTS = """
INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)
SELECT id, 'invoice.pdf', 'application/pdf', 30000, sha256,
       replace(eml_path, '.eml', '.pdf')
FROM mail.messages WHERE id % 100 = 7"""
INSERT_LINKS = """
INSERT INTO mail.message_links (message_id, entity_type, entity_id, method)
SELECT id, 'partner', id % 200, 'sender' FROM mail.messages WHERE id % 100 = 3"""
SAMPLE_KEYS = """
SELECT eml_path FROM mail.messages WHERE id %% %(step)s = 0
UNION ALL SELECT path FROM mail.attachments WHERE message_id %% %(step)s = 0"""
BASELINE_DELETE = """
DELETE FROM mail.messages
WHERE location_id = 1 AND direction = 'in' AND NOT legal_hold AND archived_at < %s"""
COUNT_LEFT = "SELECT count(*) FROM mail.messages WHERE location_id = 1"
TOUCH = "UPDATE mail.messages SET status = 'linked' WHERE id = %s"
IMPORT_ONE = """
INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path, size_bytes)
VALUES ('in', 2, %s, %s, %s, 100)"""
XACT_AGE = """
SELECT extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity
WHERE pid = %s AND backend_xid IS NOT NULL"""


class Pressure:
    """A clerk touching random old rows and an import inserting new mail, each timing its waits;
    and, for ``watch_pid``, the longest-open writing transaction seen (one holding row locks)."""

    def __init__(self, url: str, old_ids: list[int], watch_pid: int) -> None:
        self.url, self.old_ids, self.watch_pid = url, old_ids, watch_pid
        self.stop = threading.Event()
        self.waits: dict[str, list[float]] = {"touch": [], "import": []}
        self.longest_xact = 0.0
        self.threads = [
            threading.Thread(target=self._clerk),
            threading.Thread(target=self._import),
            threading.Thread(target=self._watch),
        ]

    def __enter__(self) -> Pressure:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _loop(self, name: str, sql: str, args) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                started = time.perf_counter()
                cur.execute(sql, args())
                self.waits[name].append(time.perf_counter() - started)
                time.sleep(0.02)
        conn.close()

    def _clerk(self) -> None:
        self._loop("touch", TOUCH, lambda: (random.choice(self.old_ids),))

    def _import(self) -> None:
        def args():
            n = uuid.uuid4().hex
            return (f"<{n}@import>", n + n, f"mail/live/{n}.eml")

        self._loop("import", IMPORT_ONE, args)

    def _watch(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute(XACT_AGE, (self.watch_pid,))
                row = cur.fetchone()
                if row and row[0] is not None:
                    self.longest_xact = max(self.longest_xact, float(row[0]))
                time.sleep(0.005)
        conn.close()

    def summary(self) -> str:
        t, i = self.waits["touch"], self.waits["import"]
        return (
            f"longest transaction {self.longest_xact:.3f} s; clerk UPDATE on an old row: "
            f"max {max(t, default=0):.3f} s over {len(t)}; import INSERT: "
            f"max {max(i, default=0):.3f} s over {len(i)}"
        )


def _pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    conn.commit()
    return pid


def _timed(url: str, old_ids: list[int], work) -> tuple[float, object, Pressure]:
    """Run ``work(conn)`` under the clerk's and the import's pressure: seconds, result, waits."""
    conn = psycopg2.connect(url)
    try:
        with Pressure(url, old_ids, _pid(conn)) as pressure:
            started = time.perf_counter()
            result = work(conn)
            took = time.perf_counter() - started
    finally:
        conn.close()
    return took, result, pressure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--files", type=int, default=5000, help="mails with real files (a sample)")
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="erpmail-bench-retention-"))
    os.environ["ERPMAIL_ARCHIVE_URL"] = f"file://{store}"
    try:
        started = time.perf_counter()
        with scratch_database("erpmail_bench_ret") as url:
            os.environ["ERPMAIL_DB_URL"] = url
            run(args, url, store, started)
    finally:
        for p in sorted(store.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        store.rmdir()
    return 0


def run(args: argparse.Namespace, url: str, store: Path, started: float) -> None:
    """Build the rows in the scratch database ``url``, clone it, and time both ways."""
    from erpmail.core import archive, db
    from erpmail.retention import policies, purge

    conn = psycopg2.connect(url)
    with db.transaction(conn) as cur:
        cur.execute(INSERT_LOCATIONS)
        cur.execute(INSERT_MESSAGES, {"rows": args.rows})
        cur.execute(INSERT_ATTACHMENTS)
        cur.execute(INSERT_LINKS)
        policies.set_policy(
            cur,
            location="bench",
            keep_days=KEEP_DAYS,
            legal_min_days=0,
            invoice_legal_min_days=0,
        )
        cur.execute(SAMPLE_KEYS, {"step": max(1, args.rows // args.files)})
        keys = [r[0] for r in cur.fetchall()]
    for key in keys:
        archive.store(key, b"x" * 512)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.autocommit = False
    conn.close()
    built = time.perf_counter() - started
    oldest_half = args.rows - args.rows * (KEEP_DAYS + 1) // SPREAD_DAYS
    old_ids = list(range(1, oldest_half, 97))
    cutoff = f"{AS_OF.replace(year=AS_OF.year - 1).isoformat()} 00:00 Europe/Berlin"
    print(
        f"retention bench: {args.rows:,} archived rows ({len(keys):,} sample files), "
        f"built in {built:.1f} s; purge archived before {cutoff} in batches of {args.batch:,}"
    )

    # baseline: one statement, one transaction, on the clone
    def single_delete(conn) -> int:
        with conn.cursor() as cur:
            cur.execute(BASELINE_DELETE, (cutoff,))
            rows = cur.rowcount
        conn.commit()
        return rows

    with scratch_database("erpmail_bench_ret_base", clone_of=url) as base_url:
        single, single_rows, pressure = _timed(base_url, old_ids, single_delete)
    print(
        f"single DELETE ... WHERE: {single:6.1f} s  {single_rows / single:9,.0f} rows/s  "
        f"({single_rows:,} rows)\n    {pressure.summary()}"
    )

    # purge.run: batches, cascades, pending deletions, audit rows, files
    def batched_purge(conn) -> dict:
        return purge.run(
            conn,
            dry_run=False,
            location="bench",
            as_of=AS_OF,
            batch_size=args.batch,
            actor="bench",
        )

    batched, summary, pressure = _timed(url, old_ids, batched_purge)
    [policy] = summary["policies"]
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(COUNT_LEFT)
        left = cur.fetchone()[0]
    conn.close()
    files_left = sum(1 for p in store.rglob("*") if p.is_file())
    # a row the clerk held locked at that moment is skipped (SKIP LOCKED): the next run takes it
    skipped = single_rows - policy["mails"]
    print(
        f"purge.run (batched): {batched:6.1f} s  {policy['mails'] / batched:9,.0f} rows/s  "
        f"({policy['mails']:,} rows, {left:,} left, {policy['files']['removed']:,} files "
        f"removed, {files_left:,} files left, {skipped:,} skipped while locked)\n"
        f"    {pressure.summary()}"
    )
    ratio = batched / single
    print(
        f"ratio: batched / single statement = {ratio:.2f}x (target <= 3x: "
        f"{'met' if ratio <= 3 else 'NOT met'}); longest purge transaction "
        f"{pressure.longest_xact:.3f} s vs {single:.1f} s for the single statement"
    )


if __name__ == "__main__":
    sys.exit(main())
