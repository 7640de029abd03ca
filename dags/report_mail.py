"""
### Report mail

Every 15 minutes: the lists and reports that are due (`mail.report_subscriptions`, each
with its own cron schedule in the company's time zone) run and go to their recipients as PDF
(a table whose header repeats on every page) and/or CSV, through the outbox. The reports are
the named queries of `sql/reports/` (title, parameters and columns declared in their
comments): `open_items_aging`, `dunning_runs_last_week`, `unlinked_mail_of_the_week`. A
report without rows is sent only when the subscription says `send_empty`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from erpmail.operators.notifier import OutboxNotifier
from erpmail.operators.report import MailReportsOperator

with DAG(
    dag_id="report_mail",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "mail", "reports"],
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
):
    MailReportsOperator(task_id="mail_due_reports")
