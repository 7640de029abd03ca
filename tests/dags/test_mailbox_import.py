"""The mailbox_import and link_mail DAGs under Airflow, against Dovecot, via dag.test()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from erpmail.inbound.imap import ImapHook
from tests import mailcorpus
from tests.dags import dagtest
from tests.mailcorpus import simple


@pytest.fixture
def bag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert not {
        k: v for k, v in bag.import_errors.items() if "mailbox_import" in k or "link_mail" in k
    }
    return bag


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path / 'archive'}")


def count(conn, sql: str = "SELECT count(*) FROM mail.messages", *args) -> int:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        n = cur.fetchone()[0]
    conn.commit()
    return n


def test_schedule_limits_and_form(bag):
    dag = dagtest.dag("mailbox_import")
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.summary == "*/15 * * * *"
    assert dag.timetable.__class__.__name__ == "CronDataIntervalTimetable"
    assert set(dag.params) == {"location", "scan_from", "scan_to"}
    assert "backfill" in dag.doc_md
    assert dag.default_args["owner"] == "erpmail"


def test_one_mapped_task_per_enabled_location(bag, db, dovecot, monkeypatch, store):
    users = [dovecot.add_user() for _ in range(3)]
    for n, user in enumerate(users):
        mailcorpus.imap_conn(monkeypatch, f"imap_dag{n}", user)
        mailcorpus.add_location(db, f"box{n}", f"imap_dag{n}", enabled=n < 2)
        with ImapHook(f"imap_dag{n}").client() as client:
            for m in range(n + 2):
                client.append("INBOX", simple(10 * n + m))

    dr = dagtest.dag("mailbox_import").test()

    assert dr.state == "success"
    mapped = [ti for ti in dr.get_task_instances() if ti.task_id == "import_mail"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1]
    assert count(db) == 2 + 3  # box2 is disabled: its 4 mails stay unread
    assert count(db, "SELECT count(*) FROM mail.audit_log WHERE action = 'import'") == 2


def test_rescan_interval_imports_only_the_missing(bag, db, imap_user, monkeypatch, store):
    mailcorpus.imap_conn(monkeypatch, "imap_dag", imap_user)
    location = mailcorpus.add_location(db, "box", "imap_dag", after_import="none")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with ImapHook("imap_dag").client() as client:
        for n in range(4):
            client.append("INBOX", simple(n), msg_time=day + timedelta(hours=n))
        client.append("INBOX", simple(9), msg_time=day - timedelta(days=3))
    dag = dagtest.dag("mailbox_import")
    assert dag.test(run_conf={"location": location}).state == "success"
    with db.cursor() as cur:  # lose two stored mails, as if the database were restored
        cur.execute("DELETE FROM mail.messages WHERE subject IN ('Mail 1', 'Mail 9')")
    db.commit()

    dr = dag.test(
        run_conf={
            "location": location,
            "scan_from": day.isoformat(),
            "scan_to": (day + timedelta(days=1)).isoformat(),
        }
    )

    assert dr.state == "success"
    subjects = count(db, "SELECT string_agg(subject, ',' ORDER BY subject) FROM mail.messages")
    assert subjects == "Mail 0,Mail 1,Mail 2,Mail 3"


def test_bad_location_param_is_refused(bag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dagtest.dag("mailbox_import").test(run_conf={"location": "inbox"})


def test_link_mail_links_by_hand(bag, seeded_db):
    location = mailcorpus.add_location(seeded_db, "box", "imap_x")
    with seeded_db.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,"
            " size_bytes) VALUES ('in', %s, '<hand@x>', repeat('b', 64), 'x.eml', 1) RETURNING id",
            (location,),
        )
        mail_id = cur.fetchone()[0]
    seeded_db.commit()
    dag = dagtest.dag("link_mail")

    dr = dag.test(run_conf={"message": "<hand@x>", "entity_type": "project", "number": "12,2,1"})

    assert dr.state == "success"
    assert (
        count(
            seeded_db,
            "SELECT count(*) FROM mail.message_links l JOIN erp.projects p ON p.id = l.entity_id"
            " WHERE l.message_id = %s AND p.number = '12' AND l.method = 'manual'",
            mail_id,
        )
        == 1
    )
    assert count(seeded_db, "SELECT count(*) FROM mail.messages WHERE status = 'linked'") == 1
    failed = dag.test(run_conf={"message": str(mail_id), "entity_type": "case", "number": "T999"})
    assert failed.state == "failed"


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"message": "1", "entity_type": "customer", "number": "1"}, "customer"),
        ({"message": "\u00b2", "entity_type": "letter", "number": "1"}, "\u00b2"),
        ({"message": "1", "entity_type": "contact", "number": "\u00b2"}, "\u00b2"),
        ({"message": "1", "entity_type": "letter", "number": "1\u0663"}, "1\u0663"),
    ],
)
def test_link_mail_refuses_bad_params_at_trigger_time(bag, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=field):
        dagtest.dag("link_mail").test(run_conf=conf)
