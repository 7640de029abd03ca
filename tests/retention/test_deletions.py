"""The files of purged mail: a shared file kept, a dead run's files swept by the next, a file
that cannot go left pending, no orphans after kill -9, and a re-import racing the removal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pendulum
import psycopg2
import pytest

from erpmail.core import archive
from erpmail.core.db import transaction
from erpmail.retention import deletions
from tests.retention.mailstore import (
    AS_OF,
    add_location,
    add_mail,
    add_policy,
    assert_store_matches_rows,
    audit_rows,
    bulk_mails,
    mail_ids,
    purge_now,
)

ROOT = Path(__file__).resolve().parents[2]


def test_a_file_another_row_still_names_is_kept(db, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    old, young = add_mail(db, loc, 100, attachments=1), add_mail(db, loc, 1)
    with db.cursor() as cur:  # the young mail's attachment shares the old one's stored file
        cur.execute(
            "SELECT path, size_bytes, sha256 FROM mail.attachments WHERE message_id = %s", (old,)
        )
        path, size, sha = cur.fetchone()
        cur.execute(
            "INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes, sha256, path)"
            " VALUES (%s, 'same.pdf', 'application/pdf', %s, %s, %s)",
            (young, size, sha, path),
        )
    db.commit()

    summary = purge_now(db)

    assert mail_ids(db) == {young}
    assert archive.exists(path)
    assert summary["policies"][0]["files"] == {"removed": 1, "missing": 0, "shared": 1, "failed": 0}
    assert_store_matches_rows(db, store)


def test_next_real_run_sweeps_files_left_by_a_dead_run(db, store):
    key = archive.store("mail/x/left.eml", b"row already deleted")
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.retention_pending_deletions (run_id, keys) VALUES ('dead', %s)",
            ([key, "mail/x/already-gone.eml"],),
        )
        cur.execute(
            "INSERT INTO mail.audit_log (actor, action, details) "
            "VALUES ('x', 'retention_purge', '{\"status\": \"running\"}') RETURNING id"
        )
        dead_audit = cur.fetchone()[0]
    db.commit()

    dry = purge_now(db, dry_run=True)  # a dry run leaves the leftovers to the real run
    assert dry["swept"] == {"removed": 0, "missing": 0, "shared": 0, "failed": 0}
    assert archive.exists(key)

    summary = purge_now(db)

    assert summary["swept"] == {"removed": 1, "missing": 1, "shared": 0, "failed": 0}
    assert not archive.exists(key)
    assert_store_matches_rows(db, store)
    with db.cursor() as cur:
        cur.execute("SELECT details->>'status' FROM mail.audit_log WHERE id = %s", (dead_audit,))
        assert cur.fetchone()[0] == "interrupted"


def test_a_file_that_cannot_be_removed_stays_pending_and_fails_the_run(db, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    stuck = add_mail(db, loc, 100)
    gone = add_mail(db, loc, 100)
    with db.cursor() as cur:
        cur.execute("SELECT eml_path FROM mail.messages WHERE id = %s", (stuck,))
        key = cur.fetchone()[0]
    db.rollback()
    # a real fault the store cannot get past: a non-empty directory where the file was
    (store / key).unlink()
    (store / key).mkdir()
    (store / key / "inside").write_bytes(b"x")

    with pytest.raises(RuntimeError, match="1 files could not be removed"):
        purge_now(db)

    assert {stuck, gone} & mail_ids(db) == set()
    with db.cursor() as cur:
        cur.execute("SELECT keys FROM mail.retention_pending_deletions")
        assert cur.fetchall() == [([key],)]
    db.rollback()
    [row] = [r for r in audit_rows(db) if r["details"]["location"] == "sales"]
    assert row["details"]["files"]["failed"] == 1 and row["details"]["status"] == "done"


# A real purge in its own process. With PAUSE_AFTER set, it stops inside the file removal
# after that many files (rows committed, files half removed) so the kill lands there.
CHILD = """
import logging, os, sys, time
from datetime import date
from erpmail.core import archive
from erpmail.retention import purge
logging.basicConfig(level=logging.INFO)
pause_after = int(os.environ.get("PAUSE_AFTER", "0"))
if pause_after:  # archive.delete_many unlinks each file of a local store
    real_unlink, calls, root = os.unlink, [0], str(archive.local_root())
    def unlink(path, *args, **kwargs):
        if str(path).startswith(root):
            calls[0] += 1
            if calls[0] == pause_after:
                open(os.environ["MARKER"], "w").close()
                time.sleep(600)
        return real_unlink(path, *args, **kwargs)
    os.unlink = unlink
purge.run(dry_run=False, as_of=date.fromisoformat(sys.argv[1]), batch_size=int(sys.argv[2]),
              actor="child")
"""


def _child(db_url: str, store: Path, marker: Path, pause_after: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "ERPMAIL_DB_URL": db_url,
        "ERPMAIL_ARCHIVE_URL": f"file://{store}",
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        "PAUSE_AFTER": str(pause_after),
        "MARKER": str(marker),
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, AS_OF.isoformat(), "100"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _count(url: str, sql: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("moment", ["in_file_removal", "between_batches"])
def test_kill_9_mid_run_then_rerun_leaves_no_orphans(db, db_url, store, tmp_path, moment):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    n = 3000
    bulk_mails(db, loc, n, 100, with_files=True)
    keep = {add_mail(db, loc, 5, attachments=1), add_mail(db, loc, 500, hold=True)}
    marker = tmp_path / "paused"
    child = _child(db_url, store, marker, pause_after=450 if moment == "in_file_removal" else 0)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if moment == "in_file_removal" and marker.exists():
                break
            left = _count(db_url, "SELECT count(*) FROM mail.messages")
            if moment == "between_batches" and left < n - 500:
                break
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    left = _count(db_url, "SELECT count(*) FROM mail.messages")
    assert len(keep) < left < n + len(keep), "the kill did not land in the middle of the run"
    if moment == "in_file_removal":
        # rows committed, files recorded but not all removed: the window the sweep is for
        assert _count(db_url, "SELECT count(*) FROM mail.retention_pending_deletions") > 0
    # at every moment: no row names a missing file
    with db.cursor() as cur:
        cur.execute(
            "SELECT eml_path FROM mail.messages UNION ALL "
            "SELECT path FROM mail.attachments WHERE path IS NOT NULL"
        )
        assert [k for (k,) in cur.fetchall() if not archive.exists(k)] == []
    db.rollback()

    purge_now(db)

    assert mail_ids(db) == keep
    assert_store_matches_rows(db, store)
    sales = [r for r in audit_rows(db) if r["details"]["location"] == "sales"]
    assert [r["details"]["status"] for r in sales] == ["interrupted", "done"]
    # the killed run's audit row counted exactly what it had committed
    first, second = sales
    assert first["details"]["mails"] + second["details"]["mails"] == n


def test_a_mail_imported_again_while_its_file_is_purged_keeps_its_file(db, db_url, store):
    """Archive files are named by content: an import of a purged mail's bytes reuses the name.
    The purge's file removal waits for the import's transaction, then sees its row."""
    from erpmail.inbound import importer

    loc = add_location(db, "sales")
    raw = b"From: a@example.org\r\nDate: Fri, 01 Mar 2024 10:00:00 +0000\r\n\r\nagain\r\n"
    received = pendulum.datetime(2024, 3, 1, tz="UTC")
    with transaction(db) as cur:
        location = importer.load_location(cur, loc)
        first = importer.import_message(cur, location, raw, received=received)
        cur.execute("SELECT eml_path FROM mail.messages WHERE id = %s", (first.message_row_id,))
        key = cur.fetchone()[0]
    with transaction(db) as cur:  # the purge's batch has deleted the row and committed
        cur.execute("DELETE FROM mail.messages WHERE id = %s", (first.message_row_id,))

    importing = psycopg2.connect(db_url)
    remover = psycopg2.connect(db_url)
    try:
        with importing.cursor() as cur:  # the same bytes come in again, not yet committed
            again = importer.import_message(cur, location, raw, received=received)
        assert again.new and archive.exists(key)
        with remover.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            remover_pid = cur.fetchone()[0]
        remover.commit()
        removal = {}
        thread = threading.Thread(
            target=lambda: removal.update(result=deletions.remove_unshared(remover, [key]))
        )
        thread.start()
        waiting = False
        for _ in range(200):  # until the removal waits for the import's lock
            with transaction(db) as cur:
                cur.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                    (remover_pid,),
                )
                waiting = bool(cur.fetchone()[0])
            if waiting or not thread.is_alive():
                break
            time.sleep(0.05)
        assert waiting, "the file removal did not wait for the import's transaction"
        importing.commit()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        importing.close()
        remover.close()

    counts, failed = removal["result"]
    assert (counts.removed, counts.shared, failed) == (0, 1, [])
    assert archive.read(key) == raw
    assert_store_matches_rows(db, store)
