"""OutboxNotifier: a failing task's callback queues one mail in the outbox, sends nothing."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy

import pendulum
import pytest

from erpmail.core.db import transaction
from erpmail.operators.notifier import OutboxNotifier
from tests.mailaccounts import add_account

QUEUED = """
SELECT o.status, o.source_type, o.recipients, o.subject, o.mime, a.name
FROM mail.outbox o JOIN mail.accounts a ON a.id = o.account_id"""


def failing_dag(dag_id: str, notifier: OutboxNotifier, folder, owner: str = "airflow"):
    """A DAG whose first task fails with ``notifier`` as its failure callback, stored in
    Airflow's metadata as the DAG processor would (``dag.test()`` runs only stored DAGs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG, task

    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
        default_args={"retries": 0, "owner": owner},
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


def test_a_failing_task_mails_its_owner_once(airflow_db, db, tmp_path):
    add_account(db, "ops", is_default=True)
    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO erp.users VALUES ('erpmail', 'Ops', 'ops-team@demo.example', 'en')"
        )
    dag = failing_dag("notice_owner", OutboxNotifier(), tmp_path, owner="erpmail")
    assert dag.test().state == "failed"
    ((status, _, recipients, subject, _, _),) = queued(db)
    assert (status, recipients) == ("queued", ["ops-team@demo.example"])
    assert subject.startswith("notice_owner.book_payments failed")


def test_an_owner_is_an_address_a_user_or_a_group(db):
    from erpmail.operators.notifier import owner_addresses

    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO erp.users VALUES ('anna', 'A', 'anna@demo.example', NULL),"
            " ('tom', 'T', 'tom@demo.example', NULL)"
        )
        cur.execute("INSERT INTO erp.user_groups VALUES ('ops')")
        cur.execute("INSERT INTO erp.user_group_members VALUES ('ops', 'anna'), ('ops', 'tom')")
        assert owner_addresses(cur, "ops") == ["anna@demo.example", "tom@demo.example"]
        assert owner_addresses(cur, "tom, x@demo.example") == ["tom@demo.example", "x@demo.example"]
        with pytest.raises(LookupError, match="'nobody'"):
            owner_addresses(cur, "nobody")


def test_every_dag_alerts_its_owner_and_a_late_import_too(airflow_db, db):
    import asyncio

    from airflow.sdk import DeadlineReference

    from tests.dags import dagtest

    for dag_id in ("archive_retention", "balance_confirmation", "campaign_send", "dunning_run",
                   "event_mail", "link_mail", "mailbox_import", "outbox_dispatch",
                   "payment_advice", "report_mail"):  # fmt: skip
        dag = dagtest.dag(dag_id)
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(isinstance(c, OutboxNotifier) for c in callbacks), (dag_id, task.task_id)

    from airflow.dag_processing.dagbag import DagBag

    (deadline,) = DagBag().get_dag("mailbox_import").deadline
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval == timedelta(minutes=30)
    assert deadline.callback.path == "erpmail.operators.notifier.OutboxNotifier"

    # as the triggerer runs it: the class with its kwargs and the deadline's context, awaited
    add_account(db, "ops", is_default=True)
    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO erp.users VALUES ('erpmail', 'Ops', 'ops-team@demo.example', 'en')"
        )
    context = {
        "dag_run": {"dag_id": "mailbox_import", "dag_run_id": "scheduled__x", "queued_at": "09:00"},
        "deadline": {"id": "d1", "deadline_time": "09:30"},
    }

    async def miss() -> None:
        await OutboxNotifier(context=context, **deadline.callback.kwargs)

    asyncio.run(miss())
    asyncio.run(miss())  # the same deadline again: one mail
    ((_, _, recipients, subject, mime, _),) = queued(db)
    assert recipients == ["ops-team@demo.example"]
    assert subject == "mailbox_import scheduled__x not finished 30 minutes after it was due"
    text = message_from_bytes(bytes(mime), policy=policy.default).get_content()
    assert "(queued 09:00) had not finished at 09:30" in text
