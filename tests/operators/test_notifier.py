"""OutboxNotifier: a failing task's callback queues one mail in the outbox, sends nothing."""

from __future__ import annotations

from email import message_from_bytes, policy

import pendulum
import pytest

from erpmail.core.db import transaction
from erpmail.operators.notifier import OutboxNotifier
from tests.mailaccounts import add_account

QUEUED = """
SELECT o.status, o.source_type, o.recipients, o.subject, o.mime, a.name
FROM mail.outbox o JOIN mail.accounts a ON a.id = o.account_id"""


def failing_dag(dag_id: str, notifier: OutboxNotifier, folder):
    """A DAG whose first task fails with ``notifier`` as its failure callback, stored in
    Airflow's metadata as the DAG processor would (``dag.test()`` runs only stored DAGs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG, task

    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
        default_args={"retries": 0},
    ) as dag:

        @task(on_failure_callback=notifier)
        def book_payments() -> None:
            raise ValueError("Zahlungsdatei 2026-11 nicht lesbar")

        @task
        def after(_: None) -> None:
            pass

        after(book_payments())
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=folder)
    bag.dags[dag.dag_id] = dag
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def queued(db) -> list[tuple]:
    with transaction(db) as cur:
        cur.execute(QUEUED)
        return cur.fetchall()


def test_a_failing_task_queues_one_notice(airflow_db, db, smtp_server, tmp_path):
    add_account(db, "ops", is_default=True)
    add_account(db, "ar")
    dag = failing_dag("notice_default", OutboxNotifier(to="ops-team@demo.example"), tmp_path)
    dr = dag.test()
    assert dr.state == "failed"
    ((status, source, recipients, subject, mime, account),) = queued(db)
    assert (status, source, recipients, account) == (
        "queued",
        "alert",
        ["ops-team@demo.example"],
        "ops",
    )
    assert subject == f"notice_default.book_payments failed ({dr.run_id})"
    msg = message_from_bytes(bytes(mime), policy=policy.default)
    text = msg.get_content()
    assert f"DAG notice_default, run {dr.run_id}" in text
    assert "Task book_payments, try 1" in text
    assert "Zahlungsdatei 2026-11 nicht lesbar" in text
    assert msg["From"] == "ops@demo.example" and msg["Auto-Submitted"] == "auto-generated"
    assert smtp_server.messages == []  # queued, not sent


def test_template_and_account_are_the_callers(airflow_db, db, tmp_path):
    add_account(db, "ops", is_default=True)
    add_account(db, "ar", display_name="Buchhaltung")
    notifier = OutboxNotifier(
        to=["a@demo.example", "b@demo.example"],
        subject="Fehler in {{ ti.task_id }}",
        body="Bitte prüfen: {{ exception }}",
        account="ar",
    )
    dag = failing_dag("notice_custom", notifier, tmp_path)
    assert dag.test().state == "failed"
    ((_, _, recipients, subject, mime, account),) = queued(db)
    assert (recipients, subject, account) == (
        ["a@demo.example", "b@demo.example"],
        "Fehler in book_payments",
        "ar",
    )
    msg = message_from_bytes(bytes(mime), policy=policy.default)
    assert msg.get_content().strip() == "Bitte prüfen: Zahlungsdatei 2026-11 nicht lesbar"
    assert msg["From"] == "Buchhaltung <ar@demo.example>"


def test_the_same_callback_twice_queues_once(db):
    from erpmail.operators.notifier import queue_notice

    add_account(db, "ops", is_default=True)
    first = queue_notice(to=["x@demo.example"], subject="s", text="t", key="notice:k")
    again = queue_notice(to=["x@demo.example"], subject="s", text="t", key="notice:k")
    assert first == again and len(queued(db)) == 1


def test_without_a_default_account_it_says_so(db):
    from erpmail.operators.notifier import queue_notice

    add_account(db, "ar")
    with pytest.raises(LookupError, match="no default mail account"):
        queue_notice(to=["x@demo.example"], subject="s", text="t", key="notice:none")
