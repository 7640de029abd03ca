"""archive_retention end to end with dag.test(): dry run by default, a real purge, force checks."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pendulum
import pytest

from erpmail.core import archive, clock
from erpmail.core.db import transaction
from erpmail.retention import policies, purge


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/store")
    return tmp_path / "store"


@pytest.fixture
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag().get_dag("archive_retention")


@pytest.fixture
def archived(db, store):
    """Location 'sales' keeping 30 days: one mail 31 days old, one 29 days old; their ids."""
    today = clock.today()
    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO mail.import_locations (name, conn_id) VALUES ('sales', 'imap_sales') "
            "RETURNING id"
        )
        loc = cur.fetchone()[0]
        policies.set_policy(
            cur, location="sales", keep_days=30, legal_min_days=0, invoice_legal_min_days=0
        )
        ids = {}
        for age in (31, 29):
            day = today - timedelta(days=age)
            body = f"Subject: {age} days\r\n\r\nx\r\n".encode()
            key = archive.store(f"mail/sales/{age}.eml", body)
            cur.execute(
                """INSERT INTO mail.messages (direction, location_id, sha256, eml_path,
                       size_bytes, archived_at) VALUES ('in', %s, %s, %s, %s, %s) RETURNING id""",
                (
                    loc,
                    hashlib.sha256(body).hexdigest(),
                    key,
                    len(body),
                    pendulum.datetime(day.year, day.month, day.day, 12, tz=purge.TIMEZONE),
                ),
            )
            ids[age] = cur.fetchone()[0]
    return ids


def _rows(db, sql):
    with db.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    db.rollback()
    return rows


def _state(dr, task_id):
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}[task_id]


def test_manual_run_is_a_dry_run_by_default(dag, db, archived):
    dr = dag.test()

    assert dr.state == "success"
    assert {r[0] for r in _rows(db, "SELECT id FROM mail.messages")} == set(archived.values())
    assert archive.exists("mail/sales/31.eml")
    # a dry run changes nothing: no audit row either (its report is the task's log and result)
    assert _rows(db, "SELECT action FROM mail.audit_log") == []


def test_manual_run_with_dry_run_off_purges(dag, db, archived):
    dr = dag.test(run_conf={"dry_run": False, "location": "sales", "batch_size": 1})

    assert dr.state == "success"
    assert [r[0] for r in _rows(db, "SELECT id FROM mail.messages")] == [archived[29]]
    assert not archive.exists("mail/sales/31.eml") and archive.exists("mail/sales/29.eml")
    [(actor, details)] = _rows(
        db, "SELECT actor, details FROM mail.audit_log WHERE action = 'retention_purge'"
    )
    assert details["mails"] == 1 and details["status"] == "done"
    assert details["cutoff_date"] == (clock.today() - timedelta(days=30)).isoformat()
    assert actor == "dag_test"  # the triggering user dag.test() sets
    assert _rows(db, "SELECT count(*) FROM mail.retention_pending_deletions") == [(0,)]


def test_force_without_reason_fails_before_anything_is_touched(dag, db, archived):
    dr = dag.test(run_conf={"dry_run": False, "force": True, "force_reason": " "})

    assert dr.state == "failed"
    assert _state(dr, "check_request") == "failed"
    assert _state(dr, "purge") in ("upstream_failed", None)
    assert len(_rows(db, "SELECT id FROM mail.messages")) == 2
    assert _rows(db, "SELECT count(*) FROM mail.audit_log") == [(0,)]


def test_bad_param_is_refused(dag, db_url):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"batch_size": 0})


def test_unknown_location_fails_the_run_without_retrying(dag, db, archived):
    dr = dag.test(run_conf={"location": "nowhere"})
    assert dr.state == "failed"
    assert _state(dr, "purge") == "failed"
    assert len(_rows(db, "SELECT id FROM mail.messages")) == 2


def test_forced_run_records_who_and_why(dag, db, store):
    with transaction(db) as cur:
        policies.set_policy(cur, location=None, keep_days=10)  # 6 years' legal minimum
        body = b"Subject: sent\r\n\r\nx\r\n"
        key = archive.store("mail/sent/1.eml", body)
        cur.execute(
            """INSERT INTO mail.messages (direction, sha256, eml_path, size_bytes, archived_at)
               VALUES ('out', %s, %s, %s, now() - interval '100 days')""",
            (hashlib.sha256(body).hexdigest(), key, len(body)),
        )
    dr = dag.test(
        run_conf={
            "dry_run": False,
            "location": "sent",
            "force": True,
            "force_reason": "erasure request 2026-17",
        }
    )
    assert dr.state == "success"
    assert _rows(db, "SELECT count(*) FROM mail.messages") == [(0,)]
    assert not archive.exists(key)
    [(details,)] = _rows(db, "SELECT details FROM mail.audit_log")
    assert details["forced"] is True and details["forced_by"] == "dag_test"
    assert details["force_reason"] == "erasure request 2026-17"
