"""Archive retention on a real PostgreSQL and a real document store directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pendulum
import psycopg2
import pytest

from erpmail.core import archive
from erpmail.core.db import transaction
from erpmail.retention import purge

AS_OF = date(2026, 3, 15)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/store")
    return tmp_path / "store"


def _location(conn, name: str) -> int:
    with transaction(conn) as cur:
        cur.execute(
            "INSERT INTO mail.import_locations (name, conn_id) VALUES (%s, %s) RETURNING id",
            (name, f"imap_{name}"),
        )
        return cur.fetchone()[0]


def _policy(conn, location: str | None, keep_days, legal=0, invoice=0) -> None:
    with transaction(conn) as cur:
        purge.set_policy(
            cur,
            location=location,
            keep_days=keep_days,
            legal_min_days=legal,
            invoice_legal_min_days=invoice,
        )


def _archived(days_before: int, as_of: date = AS_OF) -> datetime:
    """Noon in Berlin, ``days_before`` days before ``as_of``."""
    day = as_of - timedelta(days=days_before)
    return pendulum.datetime(day.year, day.month, day.day, 12, tz=purge.TIMEZONE)


_seq = iter(range(1, 10**9))


def _mail(
    conn,
    location_id: int | None,
    days_before: int,
    *,
    direction: str = "in",
    hold: bool = False,
    attachments: int = 0,
    invoice_link: bool = False,
    as_of: date = AS_OF,
) -> int:
    """One archived mail with its .eml (and attachment files) in the store; its id."""
    n = next(_seq)
    body = f"Subject: mail {n}\r\n\r\nbody {n}\r\n".encode()
    folder = f"loc{location_id}" if location_id else "sent"
    eml = archive.store(f"mail/{folder}/{n:06d}.eml", body)
    with transaction(conn) as cur:
        cur.execute(
            """INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,
                   size_bytes, legal_hold, archived_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (
                direction,
                location_id,
                f"<m{n}@test>",
                hashlib.sha256(body).hexdigest(),
                eml,
                len(body),
                hold,
                _archived(days_before, as_of),
            ),
        )
        mid = cur.fetchone()[0]
        for i in range(attachments):
            data = f"%PDF attachment {n}/{i}".encode()
            key = archive.store(f"mail/{folder}/{n:06d}/att{i}.pdf", data)
            cur.execute(
                """INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes,
                       sha256, path) VALUES (%s, %s, 'application/pdf', %s, %s, %s)""",
                (mid, f"att{i}.pdf", len(data), hashlib.sha256(data).hexdigest(), key),
            )
        if invoice_link:
            cur.execute(
                """INSERT INTO mail.message_links (message_id, entity_type, entity_id, method)
                   VALUES (%s, 'open_item', 1, 'manual')""",
                (mid,),
            )
    return mid


def _ids(conn) -> set[int]:
    with transaction(conn) as cur:
        cur.execute("SELECT id FROM mail.messages")
        return {r[0] for r in cur.fetchall()}


def _audit(conn) -> list[dict]:
    with transaction(conn, dict_rows=True) as cur:
        cur.execute("SELECT actor, action, subject, details FROM mail.audit_log ORDER BY id")
        return cur.fetchall()


def _assert_store_matches_rows(conn, store: Path) -> None:
    """Every row's files exist, every stored file is named by a row, nothing pending."""
    with transaction(conn) as cur:
        cur.execute(
            "SELECT eml_path FROM mail.messages UNION ALL "
            "SELECT path FROM mail.attachments WHERE path IS NOT NULL"
        )
        named = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT count(*) FROM mail.retention_pending_deletions")
        pending = cur.fetchone()[0]
    stored = (
        {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
        if store.exists()
        else set()
    )
    assert sorted(named - stored) == [], "rows pointing at missing files"
    assert sorted(stored - named) == [], "orphaned files"
    assert pending == 0


def _purge(conn, **kw):
    kw.setdefault("as_of", AS_OF)
    kw.setdefault("dry_run", False)
    kw.setdefault("actor", "tester")
    return purge.run(conn, **kw)


def test_one_day_inside_stays_one_day_outside_goes(db, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30)
    inside = _mail(db, loc, 29, attachments=1)
    on_the_day = _mail(db, loc, 30)
    outside = _mail(db, loc, 31, attachments=2)

    summary = _purge(db)

    assert _ids(db) == {inside, on_the_day}
    _assert_store_matches_rows(db, store)
    assert not archive.exists(f"mail/loc{loc}/{outside:06d}.eml")
    [sales] = [p for p in summary["policies"] if p["location"] == "sales"]
    assert (sales["mails"], sales["attachments"]) == (1, 2)
    assert sales["cutoff"] == (AS_OF - timedelta(days=30)).isoformat()
    assert sales["files"]["removed"] == 3
    rows = [r for r in _audit(db) if r["details"]["location"] == "sales"]
    [row] = rows
    assert row["action"] == "retention_purge" and row["actor"] == "tester"
    d = row["details"]
    assert d["status"] == "done" and d["mails"] == 1 and d["attachments"] == 2
    assert d["bytes_freed"] > 0 and d["bytes_freed"] == sales["bytes"]
    assert d["cutoff_date"] == "2026-02-13" and d["forced"] is False and d["forced_by"] is None


@pytest.mark.parametrize("keep_days", [0, None])
def test_zero_or_empty_keep_days_keeps_everything(db, store, keep_days):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=keep_days)
    _policy(db, None, keep_days=keep_days)
    ids = {_mail(db, loc, 5000), _mail(db, None, 5000, direction="out"), _mail(db, loc, 1)}

    summary = _purge(db, force=True, force_reason="even forced, 0 means forever")

    assert _ids(db) == ids
    _assert_store_matches_rows(db, store)
    assert all(p["cutoff"] is None and p["mails"] == 0 for p in summary["policies"])
    assert {r["details"]["cutoff_date"] for r in _audit(db)} == {None}


def test_mail_without_a_policy_is_kept(db, store):
    loc = _location(db, "sales")
    old = _mail(db, loc, 9000)
    _purge(db)
    assert _ids(db) == {old}


def test_legal_minimum_holds_without_force_and_gives_way_with_it(db, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30, legal=365, invoice=3650)
    young = _mail(db, loc, 100)  # past keep_days, under the legal minimum
    old = _mail(db, loc, 400)  # past both
    invoice_mail = _mail(db, loc, 2000, invoice_link=True)  # under the invoice minimum
    plain_mail = _mail(db, loc, 2000)

    summary = _purge(db)
    assert _ids(db) == {young, invoice_mail}
    [sales] = summary["policies"][:1]
    assert sales["cutoff"] == (AS_OF - timedelta(days=365)).isoformat()
    assert sales["under_legal_minimum"] == 2
    assert plain_mail not in _ids(db) and old not in _ids(db)

    with pytest.raises(ValueError, match="force_reason"):
        _purge(db, force=True, force_reason="  ")
    assert _ids(db) == {young, invoice_mail}

    _purge(db, force=True, force_reason="customer asked for erasure, ticket 4711", actor="anna")
    assert _ids(db) == set()
    _assert_store_matches_rows(db, store)
    forced = [r for r in _audit(db) if r["details"]["forced"]]
    [row] = [r for r in forced if r["details"]["location"] == "sales"]
    assert row["details"]["forced_by"] == "anna" and row["actor"] == "anna"
    assert row["details"]["force_reason"] == "customer asked for erasure, ticket 4711"
    assert row["details"]["mails"] == 2
    assert row["details"]["cutoff_date"] == (AS_OF - timedelta(days=30)).isoformat()


def test_held_mail_stays_even_when_forced(db, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30, legal=365)
    held = _mail(db, loc, 5000, hold=True, attachments=1)
    gone = _mail(db, loc, 5000)

    summary = _purge(db, force=True, force_reason="clean-up")

    assert _ids(db) == {held}
    assert gone not in _ids(db)
    _assert_store_matches_rows(db, store)
    assert summary["policies"][0]["on_hold"] == 1


def test_sent_policy_covers_outgoing_mail_only(db, store):
    loc = _location(db, "sales")
    _policy(db, None, keep_days=10)
    incoming = _mail(db, loc, 100)
    sent = _mail(db, None, 100, direction="out")
    _purge(db, location="sent")
    assert _ids(db) == {incoming}
    assert sent not in _ids(db)


def test_dry_run_reports_per_location_and_month_and_deletes_nothing(db, store, caplog):
    sales, support = _location(db, "sales"), _location(db, "support")
    _policy(db, "sales", keep_days=30)
    _policy(db, "support", keep_days=30)
    _policy(db, None, keep_days=30)
    as_of = date(2026, 3, 15)
    ids = {
        _mail(db, sales, 40, attachments=1),  # 2026-02-03
        _mail(db, sales, 41),  # 2026-02-02
        _mail(db, sales, 80),  # 2025-12-25
        _mail(db, support, 45),  # 2026-01-29
        _mail(db, None, 200, direction="out"),  # 2025-08-27
        _mail(db, sales, 10),  # inside the period
        _mail(db, sales, 400, hold=True),
    }
    with db.cursor() as cur:
        cur.execute(
            "SELECT m.size_bytes + coalesce(sum(a.size_bytes), 0) FROM mail.messages m "
            "LEFT JOIN mail.attachments a ON a.message_id = m.id "
            "WHERE m.location_id = %s AND m.archived_at < %s GROUP BY m.id ORDER BY m.archived_at",
            (sales, _archived(35)),
        )
        sales_sizes = [r[0] for r in cur.fetchall()]
    db.rollback()

    with caplog.at_level("INFO", logger="erpmail.retention.purge"):
        summary = _purge(db, dry_run=True, as_of=as_of)

    assert _ids(db) == ids
    _assert_store_matches_rows(db, store)
    months = [(m["location"], m["month"], m["mails"]) for m in summary["months"]]
    assert months == [
        ("sales", "2025-12", 1),
        ("sales", "2026-02", 2),
        ("support", "2026-01", 1),
        ("sent", "2025-08", 1),
    ]
    assert summary["months"][0]["bytes"] == sales_sizes[1]  # the held one is first
    assert summary["months"][1]["bytes"] == sales_sizes[2] + sales_sizes[3]
    assert all(r["action"] == "retention_dry_run" for r in _audit(db))
    table = purge.format_months(summary["months"])
    assert "sales     2026-02           2" in table
    assert table in caplog.text


def test_unknown_location_is_named(db, store):
    with pytest.raises(ValueError, match="'nowhere': no such import location"):
        _purge(db, location="nowhere")
    _location(db, "sales")
    with pytest.raises(ValueError, match="'sales': has no retention policy"):
        _purge(db, location="sales")


def test_a_file_another_row_still_names_is_kept(db, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30)
    old, young = _mail(db, loc, 100, attachments=1), _mail(db, loc, 1)
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

    summary = _purge(db)

    assert _ids(db) == {young}
    assert archive.exists(path)
    assert summary["policies"][0]["files"] == {"removed": 1, "missing": 0, "shared": 1, "failed": 0}
    _assert_store_matches_rows(db, store)


def test_next_run_sweeps_files_left_by_a_dead_run(db, store):
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

    summary = _purge(db, dry_run=True)

    assert summary["swept"] == {"removed": 1, "missing": 1, "shared": 0, "failed": 0}
    assert not archive.exists(key)
    _assert_store_matches_rows(db, store)
    with db.cursor() as cur:
        cur.execute("SELECT details->>'status' FROM mail.audit_log WHERE id = %s", (dead_audit,))
        assert cur.fetchone()[0] == "interrupted"


def test_a_file_that_cannot_be_removed_stays_pending_and_fails_the_run(db, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30)
    stuck = _mail(db, loc, 100)
    gone = _mail(db, loc, 100)
    with db.cursor() as cur:
        cur.execute("SELECT eml_path FROM mail.messages WHERE id = %s", (stuck,))
        key = cur.fetchone()[0]
    db.rollback()
    # a real fault the store cannot get past: a non-empty directory where the file was
    (store / key).unlink()
    (store / key).mkdir()
    (store / key / "inside").write_bytes(b"x")

    with pytest.raises(RuntimeError, match="1 files could not be removed"):
        _purge(db)

    assert {stuck, gone} & _ids(db) == set()
    with db.cursor() as cur:
        cur.execute("SELECT keys FROM mail.retention_pending_deletions")
        assert cur.fetchall() == [([key],)]
    db.rollback()
    [row] = [r for r in _audit(db) if r["details"]["location"] == "sales"]
    assert row["details"]["files"]["failed"] == 1 and row["details"]["status"] == "done"


def test_dry_run_for_scheduled_and_manual_runs():
    assert purge.dry_run_for("scheduled", True) is False
    assert purge.dry_run_for("manual", True) is True
    assert purge.dry_run_for("manual", False) is False
    assert purge.dry_run_for("backfill", True) is True


# --- crash and concurrency ---------------------------------------------------------

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


def _bulk_mails(conn, location_id: int, n: int, days_before: int, with_files: bool) -> None:
    """``n`` old mails fast; with files, every mail's .eml and every third one's attachment."""
    with transaction(conn) as cur:
        cur.execute(
            """INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,
                   size_bytes, archived_at)
               SELECT 'in', %(loc)s, '<bulk' || g || '@test>', md5(g::text) || md5(g::text),
                      'mail/bulk/' || lpad(g::text, 7, '0') || '.eml', 20,
                      %(at)s - g * interval '1 second'
               FROM generate_series(1, %(n)s) g""",
            {"loc": location_id, "n": n, "at": _archived(days_before)},
        )
        cur.execute(
            """INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes,
                   sha256, path)
               SELECT id, 'a.pdf', 'application/pdf', 5, sha256, replace(eml_path, '.eml', '.pdf')
               FROM mail.messages WHERE eml_path LIKE 'mail/bulk/%' AND id % 3 = 0"""
        )
        if with_files:
            cur.execute(
                "SELECT eml_path FROM mail.messages WHERE eml_path LIKE 'mail/bulk/%' "
                "UNION ALL SELECT path FROM mail.attachments WHERE path LIKE 'mail/bulk/%'"
            )
            for (key,) in cur.fetchall():
                archive.store(key, b"x" * 20)


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
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30)
    n = 3000
    _bulk_mails(db, loc, n, 100, with_files=True)
    keep = {_mail(db, loc, 5, attachments=1), _mail(db, loc, 500, hold=True)}
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

    _purge(db)

    assert _ids(db) == keep
    _assert_store_matches_rows(db, store)
    sales = [r for r in _audit(db) if r["details"]["location"] == "sales"]
    assert [r["details"]["status"] for r in sales] == ["interrupted", "done"]
    # the killed run's audit row counted exactly what it had committed
    first, second = sales
    assert first["details"]["mails"] + second["details"]["mails"] == n


def test_import_inserting_during_a_purge_is_not_blocked(db, db_url, store):
    loc = _location(db, "sales")
    _policy(db, "sales", keep_days=30)
    n = 40000
    _bulk_mails(db, loc, n, 100, with_files=False)
    failure: list[BaseException] = []

    def purge() -> None:
        conn = psycopg2.connect(db_url)
        try:
            _purge(conn, batch_size=200)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            conn.close()

    purger = threading.Thread(target=purge)
    importer = psycopg2.connect(db_url)
    watcher = psycopg2.connect(db_url)
    watcher.autocommit = True
    try:
        with importer.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            importer_pid = cur.fetchone()[0]
        importer.commit()
        purger.start()
        with watcher.cursor() as cur:
            while purger.is_alive():
                cur.execute("SELECT count(*) FROM mail.messages")
                if cur.fetchone()[0] < n - 1000:
                    break
                time.sleep(0.01)
        waits = []
        stop = threading.Event()

        def watch() -> None:  # samples whether the importer ever waits for a lock
            conn = psycopg2.connect(db_url)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute(
                        "SELECT locktype, mode FROM pg_locks WHERE pid = %s AND NOT granted",
                        (importer_pid,),
                    )
                    waits.extend(cur.fetchall())
            conn.close()

        sampler = threading.Thread(target=watch)
        sampler.start()
        inserted = []
        for i in range(5):  # the import: a mail with attachment and link, one transaction each
            with transaction(importer) as cur:
                cur.execute(
                    """INSERT INTO mail.messages (direction, location_id, message_id, sha256,
                           eml_path, size_bytes) VALUES ('in', %s, %s, %s, %s, 10) RETURNING id""",
                    (loc, f"<new{i}@test>", "f" * 64, f"mail/new/{i}.eml"),
                )
                mid = cur.fetchone()[0]
                cur.execute(
                    """INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes,
                           sha256, path) VALUES (%s, 'a.pdf', 'application/pdf', 1, %s, NULL)""",
                    (mid, "e" * 64),
                )
                cur.execute(
                    "INSERT INTO mail.message_links VALUES (%s, 'partner', 1, 'sender')", (mid,)
                )
            inserted.append(mid)
        # the inserts committed while the purge was still at work
        with watcher.cursor() as cur:
            cur.execute(
                "SELECT details->>'status' FROM mail.audit_log WHERE action = 'retention_purge'"
            )
            assert cur.fetchone()[0] == "running"
            cur.execute("SELECT count(*) FROM mail.messages WHERE eml_path LIKE 'mail/bulk/%'")
            assert cur.fetchone()[0] > 0
        stop.set()
        sampler.join()
        purger.join(120)
        assert not failure, failure
        assert waits == []
        assert _ids(db) == set(inserted)
    finally:
        stop_event = locals().get("stop")
        if stop_event is not None:
            stop_event.set()
        importer.close()
        watcher.close()


def test_progress_logs_done_total_rate_and_time_left(caplog):
    progress = purge.Progress("purge sales", 1000, every=0.0)
    with caplog.at_level("INFO", logger="erpmail.retention.purge"):
        progress.add(250)
    assert "purge sales: 250/1,000 mails (25.0%)" in caplog.text
    assert "/s, about " in caplog.text and " left" in caplog.text


def test_summary_reads_like_a_report():
    summary = {
        "dry_run": False,
        "as_of": "2026-03-15",
        "forced": True,
        "actor": "anna",
        "force_reason": "erasure request",
        "policies": [
            {
                "location": "sales",
                "cutoff": "2026-02-13",
                "invoice_cutoff": "2026-02-13",
                "mails": 1200,
                "bytes": 5 * 1024 * 1024,
                "on_hold": 2,
                "under_legal_minimum": 0,
            },
            {"location": "sent", "cutoff": None},
        ],
        "months": [],
    }
    text = purge.format_summary(summary)
    assert "forced by anna: erasure request" in text
    assert "sales: deleted 1,200 mails (5.0 MB) archived before 2026-02-13" in text
    assert "sent: keeps everything" in text
    json.dumps(summary)


def test_a_mail_imported_again_while_its_file_is_purged_keeps_its_file(db, db_url, store):
    """Archive files are named by content: an import of a purged mail's bytes reuses the name.
    The purge's file removal waits for the import's transaction, then sees its row."""
    from erpmail.inbound import importer

    loc = _location(db, "sales")
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
            target=lambda: removal.update(result=purge._remove_unshared(remover, [key]))
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
    _assert_store_matches_rows(db, store)
