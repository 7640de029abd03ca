"""
### Send documents

Sends single documents from the ERP by e-mail: invoices, offers and order confirmations
(rendered from their forms, `include/templates/<kind>/`), a payment advice again
("Druckwiederholung Zahlungsavis": each payee's archived advice, or rendered again), or any
PDF already in the document store. One mail per partner with all of its documents, one PDF
each, in the partner's language, through the outbox; no address: the print batch.

**Trigger** from the ERP, `POST /api/v2/dags/send_documents/dagRuns` with
`{"logical_date": null, "conf": {"documents": [{"kind": "invoice", "number": "RE-1001"},
{"kind": "payment_advice", "number": "P20261231-1", "partner": "000042"}]}}`, or from the
form. Each reference: `kind`, `number` (an archived PDF: `path`), optionally `partner` and
`to` (an address instead of the partner's: the contact of the document's role, accounting
for invoices and advice, purchasing for offers and order confirmations, then the partner).

**Steps** as every document run (`erpmail.operators.document_run`): `start` -> `generate`
(one letter per partner, `erp.run_documents` per document; a reference naming nothing is
`failed` alone, naming kind and number) -> `plan` -> `batch.render` (the documents' PDFs)
-> `batch.route` -> `print_batch` -> `summary`. The Letters tab shows each partner's mail.

**Reruns**: clearing any task or the whole run sends nothing twice (outbox keys
`on_demand:run-<run>:letter-<letter>`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from erpmail.operators.document_run import company_param, document_tasks, run_option_params
from erpmail.operators.notifier import OutboxNotifier
from erpmail.operators.send_documents import RenderDocumentsOperator, documents_param

with DAG(
    dag_id="send_documents",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    tags=["erpmail", "documents"],
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    params={
        **documents_param(),
        "company": company_param("Company code (erp.companies) whose documents are sent."),
        **run_option_params(),
    },
):
    document_tasks("on_demand", render=RenderDocumentsOperator)
