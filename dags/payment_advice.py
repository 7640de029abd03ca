"""
### Payment advice

Tells each payee of one payment run what was paid: the paid documents, the deductions
(discount, fees) and the payment per currency, as an archived PDF sent by e-mail through the
outbox or collected into one print batch for paper. Same pipeline as `dunning_run`
(`erpmail.documents.runs`), document kind `erpmail.documents.payment_advice.PAYMENT_ADVICE`.

**Trigger**: after the ERP has executed a payment run (`erp.payment_runs.status =
'executed'`), it triggers this DAG with the run's number, e.g. through the REST API:
`POST /api/v2/dags/payment_advice/dagRuns` with `{"conf": {"payment_run": "P20261231-1"}}`,
or a clerk does so from the form. A proposed (not yet executed) payment run can only be
previewed as a dry run; a cancelled one is refused.

**Steps** `start` (checks the payment run, creates the run with the payment date as key
date) -> `generate` (one letter per payee with its lines, `generated`; a payee whose payment
in a currency is not positive is `failed` with the reason) -> `plan` -> `batch`, mapped per
batch: `batch.render` then `batch.route` (e-mail to the accounting contact or the payee, else
paper) -> `print_batch` -> `summary`.

**Reruns**: clearing any task or the whole run creates no second letter and no second mail.
A second Airflow run for the same payment run advises only lines no earlier (non-dry)
advice listed, so the same payment is never advised twice.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.document_run import (
    company_param,
    document_tasks,
    run_option_params,
)
from erpmail.operators.notifier import OutboxNotifier

with DAG(
    dag_id="payment_advice",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "statements", "documents"],
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    params={
        "payment_run": Param(
            type="string",
            pattern="^[0-9A-Za-z_-]{1,20}$",
            title="Payment run",
            description="Number of the executed payment run (erp.payment_runs.number).",
        ),
        "company": company_param("Company code (erp.companies) of the payment run."),
        **run_option_params(),
    },
):
    document_tasks("payment_advice")
