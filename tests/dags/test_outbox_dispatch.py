"""The outbox_dispatch DAG under Airflow: its schedule and form, and a real run via dag.test()."""

from __future__ import annotations

import pytest

from erpmail.core.db import transaction
from tests.mailaccounts import account_on
from tests.outboxmail import enqueue_many, make_mime, outbox_statuses


@pytest.fixture
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert not {k: v for k, v in bag.import_errors.items() if "outbox_dispatch" in k}
    return bag.get_dag("outbox_dispatch")


def test_schedule_and_limits(dag):
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.schedule == "* * * * *"
    assert "under 60 seconds" in dag.doc_md
    assert set(dag.params) == {"account", "source_type", "source_id", "budget_seconds"}
    assert [t.task_id for t in dag.tasks] == ["dispatch"]
    (task,) = dag.tasks
    assert type(task).__name__ == "DispatchOutboxOperator" and task.pool == "smtp"
    assert set(task.template_fields) == set(dag.params)


def test_run_sends_one_accounts_mail(dag, db, monkeypatch, smtp_server):
    a = account_on(db, monkeypatch, smtp_server, name="ar")
    b = account_on(db, monkeypatch, smtp_server, name="other")
    enqueue_many(db, a, 3, prefix="a")
    enqueue_many(db, b, 2, prefix="b")
    dr = dag.test(run_conf={"account": "ar", "budget_seconds": 20})
    assert dr.state == "success"
    assert outbox_statuses(db) == {"sent": 3, "queued": 2}
    assert len(smtp_server.messages) == 3
    with transaction(db) as cur:
        cur.execute("SELECT key FROM mail.outbox WHERE status = 'queued' ORDER BY key")
        assert [r[0] for r in cur.fetchall()] == ["b0", "b1"]


def test_run_fails_when_an_account_cannot_send(dag, db, monkeypatch, smtp_server_selfsigned):
    account = account_on(db, monkeypatch, smtp_server_selfsigned, name="ar")
    enqueue_many(db, account, 2)
    dr = dag.test(run_conf={"budget_seconds": 10})
    assert dr.state == "failed"
    assert outbox_statuses(db) == {"queued": 2} and smtp_server_selfsigned.messages == []


def test_bad_param_is_refused(dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"source_type": "invoice"})


def test_run_sends_one_source_now_with_the_counts_in_xcom(dag, db, monkeypatch, smtp_server):
    from erpmail.outbound import outbox

    account = account_on(db, monkeypatch, smtp_server, name="ar")
    enqueue_many(db, account, 2, prefix="other")
    with transaction(db) as cur:
        cur.execute("UPDATE mail.outbox SET next_attempt_at = now() + interval '1 hour'")
        letter = outbox.enqueue(
            cur,
            key="letter-7",
            account_id=account.id,
            recipients=["p7@customer.example"],
            mime=make_mime("letter-7", ["p7@customer.example"]),
            source_type="letter",
            source_id=7,
        )
        cur.execute("UPDATE mail.outbox SET next_attempt_at = now() + interval '1 hour'")
    dr = dag.test(run_conf={"source_type": "letter", "source_id": 7, "budget_seconds": 20})
    assert dr.state == "success"
    with transaction(db) as cur:
        cur.execute("SELECT id FROM mail.outbox WHERE status = 'sent'")
        assert cur.fetchall() == [(letter,)]
    (ti,) = dr.get_task_instances()
    counts = ti.xcom_pull(task_ids="dispatch")
    assert (counts["due"], counts["sent"], counts["account_errors"]) == (1, 1, {})
