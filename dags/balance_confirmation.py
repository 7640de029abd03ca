"""
### Balance confirmation

Asks partners to confirm their balance with us at a key date (usually the year end): one
letter per partner, as an archived PDF with a reply form, sent by e-mail through the outbox
or collected into one print batch for paper. Same pipeline as `dunning_run`
(`erpmail.documents.runs`), document kind
`erpmail.documents.balance_confirmation.BALANCE_CONFIRMATION`.

**Steps** `start` (checks the form, creates the run; one per Airflow run, a rerun resumes it)
-> `generate` (letters and their open items, status `generated`) -> `plan` (fixes the
batches) -> `batch`, mapped per batch: `batch.render` (archived PDFs) then `batch.route`
(e-mail to the accounting contact or the partner, queued in the outbox: `released`; else
`paper` with the reason) -> `print_batch` -> `summary` (stored on `erp.runs.summary`, in the
task log).

**Rules** (see `erpmail.documents.balance_confirmation`): the open items at the key date of the chosen side
(debtors = receivables, creditors = payables, both); the balance per currency, receivables
positive, payables negative; a partner that is customer and supplier gets ONE letter with
both sides. A partner is included when its absolute balance in some currency reaches the
minimum; partners with a zero balance (or nothing open) only when "include zero balances" is
set.

**Replies**: the subject carries `relnr <partner number>`; with `relnr` mapped to `partner`
in the import location's `link_keywords`, `mailbox_import` files the answer against the
partner (a reply to the mail itself is linked by In-Reply-To as well). The letter names the
reply address (the form's, else the company's e-mail), and each mail carries it as
its Reply-To.

**Key date**: empty means the last year end in the company's time zone, fixed by `start`
and kept on the run (`erp.runs.key_date`).

**Dry run**: generated and rendered for review under `review/` in the document store;
nothing queued. **Reruns**: clearing any task or the whole run creates no second letter and
no second mail (outbox keys `balance_confirmation:run-<run>:letter-<letter>`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.document_run import (
    company_param,
    document_tasks,
    partner_range_params,
    run_option_params,
)
from erpmail.operators.notifier import OutboxNotifier

AMOUNT = "^[0-9]{1,13}([.][0-9]{1,2})?$"
SIDES = {
    "debtors": "Debtors (customers, receivables)",
    "creditors": "Creditors (suppliers, payables)",
    "both": "Both (one letter per partner)",
}

with DAG(
    dag_id="balance_confirmation",
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
        "key_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Key date",
            description="Date the balance is confirmed at (YYYY-MM-DD); empty: the last year end "
            "in the company's time zone, fixed by the first task and kept on the run.",
        ),
        "company": company_param("Company code (erp.companies) whose partners are asked."),
        "side": Param(
            "both",
            type="string",
            enum=list(SIDES),
            values_display=SIDES,
            title="Side",
            description="Debtors, creditors, or both: a customer that is also a supplier then "
            "gets one letter listing both sides.",
        ),
        **partner_range_params(),
        "min_abs_balance": Param(
            "0.00",
            type="string",
            pattern=AMOUNT,
            title="Minimum absolute balance",
            description="Only partners whose balance in some currency is at least this much, "
            "either way (e.g. 100.00; a decimal, not converted between currencies).",
        ),
        "include_zero": Param(
            False,
            type="boolean",
            title="Include zero balances",
            description="Also ask partners of the side whose balance is zero or who have "
            "nothing open.",
        ),
        "reply_address": Param(
            None,
            type=["null", "string"],
            maxLength=254,
            pattern="^$|^[^@\\s]+@[^@\\s]+$",
            title="Reply address",
            description="Address printed for replies and set as each mail's Reply-To; empty: "
            "the company's e-mail. The mailbox import should read it.",
        ),
        **run_option_params(),
    },
):
    document_tasks("balance_confirmation")
