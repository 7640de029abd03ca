"""Archive retention's purge on a real PostgreSQL and a real document store directory: the
cut-off day, legal holds, the dry run's report, scheduled runs, progress and the summary."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import date, timedelta

import psycopg2

from erpmail.core import archive
from erpmail.core.db import transaction
from erpmail.retention import purge
from tests.retention.mailstore import (
    AS_OF,
    add_location,
    add_mail,
    add_policy,
    archived_at,
    assert_store_matches_rows,
    audit_rows,
    bulk_mails,
    mail_ids,
    purge_now,
)


def test_one_day_inside_stays_one_day_outside_goes(db, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    inside = add_mail(db, loc, 29, attachments=1)
    on_the_day = add_mail(db, loc, 30)
    outside = add_mail(db, loc, 31, attachments=2)

    summary = purge_now(db)

    assert mail_ids(db) == {inside, on_the_day}
    assert_store_matches_rows(db, store)
    assert not archive.exists(f"mail/loc{loc}/{outside:06d}.eml")
    [sales] = [p for p in summary["policies"] if p["location"] == "sales"]
    assert (sales["mails"], sales["attachments"]) == (1, 2)
    assert sales["cutoff"] == (AS_OF - timedelta(days=30)).isoformat()
    assert sales["files"]["removed"] == 3
    rows = [r for r in audit_rows(db) if r["details"]["location"] == "sales"]
    [row] = rows
    assert row["action"] == "retention_purge" and row["actor"] == "tester"
    d = row["details"]
    assert d["status"] == "done" and d["mails"] == 1 and d["attachments"] == 2
    assert d["bytes_freed"] > 0 and d["bytes_freed"] == sales["bytes"]
    assert d["cutoff_date"] == "2026-02-13" and d["forced"] is False and d["forced_by"] is None


def test_held_mail_stays_even_when_forced(db, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30, legal=365)
    held = add_mail(db, loc, 5000, hold=True, attachments=1)
    gone = add_mail(db, loc, 5000)

    summary = purge_now(db, force=True, force_reason="clean-up")

    assert mail_ids(db) == {held}
    assert gone not in mail_ids(db)
    assert_store_matches_rows(db, store)
    assert summary["policies"][0]["on_hold"] == 1


def test_dry_run_reports_per_location_and_month_and_deletes_nothing(db, store, caplog):
    sales, support = add_location(db, "sales"), add_location(db, "support")
    add_policy(db, "sales", keep_days=30)
    add_policy(db, "support", keep_days=30)
    add_policy(db, None, keep_days=30)
    as_of = date(2026, 3, 15)
    ids = {
        add_mail(db, sales, 40, attachments=1),  # 2026-02-03
        add_mail(db, sales, 41),  # 2026-02-02
        add_mail(db, sales, 80),  # 2025-12-25
        add_mail(db, support, 45),  # 2026-01-29
        add_mail(db, None, 200, direction="out"),  # 2025-08-27
        add_mail(db, sales, 10),  # inside the period
        add_mail(db, sales, 400, hold=True),
    }
    with db.cursor() as cur:
        cur.execute(
            "SELECT m.size_bytes + coalesce(sum(a.size_bytes), 0) FROM mail.messages m "
            "LEFT JOIN mail.attachments a ON a.message_id = m.id "
            "WHERE m.location_id = %s AND m.archived_at < %s GROUP BY m.id ORDER BY m.archived_at",
            (sales, archived_at(35)),
        )
        sales_sizes = [r[0] for r in cur.fetchall()]
    db.rollback()

    with caplog.at_level("INFO", logger="erpmail.retention.purge"):
        summary = purge_now(db, dry_run=True, as_of=as_of)

    assert mail_ids(db) == ids
    assert_store_matches_rows(db, store)
    months = [(m["location"], m["month"], m["mails"]) for m in summary["months"]]
    assert months == [
        ("sales", "2025-12", 1),
        ("sales", "2026-02", 2),
        ("support", "2026-01", 1),
        ("sent", "2025-08", 1),
    ]
    assert summary["months"][0]["bytes"] == sales_sizes[1]  # the held one is first
    assert summary["months"][1]["bytes"] == sales_sizes[2] + sales_sizes[3]
    assert audit_rows(db) == []  # a dry run writes nothing, its report included
    table = purge.format_months(summary["months"])
    assert "sales     2026-02           2" in table
    assert table in caplog.text


def test_dry_run_for_scheduled_and_manual_runs():
    assert purge.dry_run_for("scheduled", True) is False
    assert purge.dry_run_for("manual", True) is True
    assert purge.dry_run_for("manual", False) is False
    assert purge.dry_run_for("backfill", True) is True


def test_import_inserting_during_a_purge_is_not_blocked(db, db_url, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    n = 40000
    bulk_mails(db, loc, n, 100, with_files=False)
    failure: list[BaseException] = []

    def purge() -> None:
        conn = psycopg2.connect(db_url)
        try:
            purge_now(conn, batch_size=200)
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
                    (loc, f"<new{i}@test>", f"{i:x}".rjust(64, "f"), f"mail/new/{i}.eml"),
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
        assert mail_ids(db) == set(inserted)
    finally:
        stop_event = locals().get("stop")
        if stop_event is not None:
            stop_event.set()
        importer.close()
        watcher.close()


def test_a_purge_logs_its_progress_and_ends_with_the_total(db, store, caplog):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    for _ in range(3):
        add_mail(db, loc, 100)
    with caplog.at_level("INFO", logger="erpmail.retention.purge"):
        purge_now(db, batch_size=2)
    assert "purge sales: 3/3 mails (100%)" in caplog.text
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


def _dump(db_url: str) -> list[str]:
    """Schema and data; without pg_dump's per-dump random \\restrict key."""
    out = subprocess.run(
        ["pg_dump", "--no-owner", "--inserts", db_url], check=True, capture_output=True, text=True
    ).stdout
    return [
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    ]


def _files(store) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_a_dry_run_changes_nothing_even_with_a_crashed_purge_left_over(db, db_url, store):
    location = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30)
    add_policy(db, None, keep_days=30)
    for days in (10, 40, 400):
        add_mail(db, location, days)
    add_mail(db, None, 400, direction="out", invoice_link=True)
    leftover = archive.store("mail/sales/leftover.eml", b"left by a purge that died")
    with transaction(db) as cur:  # what a purge killed after its commit leaves behind
        cur.execute(
            "INSERT INTO mail.retention_pending_deletions (run_id, keys) VALUES ('dead', %s)",
            ([leftover],),
        )
        cur.execute(
            "INSERT INTO mail.audit_log (actor, action, subject, details) VALUES"
            " ('x', 'retention_purge', 'policy', '{\"status\": \"running\"}')"
        )
    before, files = _dump(db_url), _files(store)

    summary = purge_now(db, dry_run=True, as_of=AS_OF)

    assert sum(p["mails"] for p in summary["policies"]) == 3  # it did report
    assert _dump(db_url) == before
    assert _files(store) == files
