"""
### Dunning run

From overdue open items to dunning letters: one letter per partner, as an archived PDF, sent
by e-mail through the outbox or collected into one print batch for paper.

**Steps** (the operators of `erpmail.operators.document_run`, shared with
`balance_confirmation` and `payment_advice`): `start` (checks the form, creates the run; one
per Airflow run, a rerun resumes it) -> `generate` (letters and their items, status
`generated`) -> `plan` (fixes the batches) -> `batch`, mapped per batch: `batch.render` (each
letter's PDF, archived: `archived`) then `batch.route` (e-mail to the dunning contact or the
partner, queued in the outbox in the same transaction: `released`; else `paper` with the
reason `no_address`, `blocked`, `invalid_address` or `paper_only`); a batch routes, and its
mail can go, as soon as it is rendered -> `print_batch` (all paper letters in one PDF,
archived) -> `summary` (per status and level, totals, paper reasons, failures; stored on
`erp.runs.summary` and in the task log).

**Approval** (the "Mahnvorschlag", on by default): after every batch is rendered and
archived, `approve` waits for a clerk. The proposal (letters per level, totals, mail or
paper with the reason, a sample PDF per level) is on the run's Letters screen and in the
task's Required Actions; the clerk approves, leaving single partners out, or rejects. Only
approved letters are routed; the rest are `withheld` (`excluded` or `rejected`) and never
count as a previous letter. The decision, user and time are on the run (`erp.runs.approval`,
`approval_by`, `approval_at`). With approval off, or in a dry run, `approval_gate` skips
`approve` and each batch routes as soon as it is rendered.

The letter then follows its mail: `sent` or `failed` (with the server's reply) when the
`outbox_dispatch` DAG sends it. Per run, `erp.letter_status` is the "Versandstatus".

**Rules** (see `erpmail.documents.dunning`): items overdue by more than a level's days, without dunning
block or dispute; first letter level 1, then one level up once the previous letter is older
than the next level's days; items under the level's minimum wait; credit notes net only
within their currency; the fee is the highest level's.

**Dry run**: letters are generated and rendered for review (PDFs and one review batch under
`review/` in the document store); nothing is archived as sent, nothing is queued, and the
dry run does not count as a previous letter.

**Reruns**: clearing any task, or the whole run, creates no second letter and no second mail
(outbox keys are `dunning:run-<run>:letter-<letter>`). A letter that fails to render or to
build its mail is `failed` alone with its reason; the run goes on.

**Key date**: empty means today in the company's time zone (`erp.companies.timezone`),
fixed by `start` and kept on the run (`erp.runs.key_date`), so a rerun the next day keeps it.
Every optional field may stay empty: the form submits as it opens.

**Partner from/to**: the form checks each field; JSON schema cannot compare two fields, so
"from after to" is refused by the first task (`start`), before anything is written, with an
error naming both values.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.document_run import (
    approval_param,
    company_param,
    document_tasks,
    partner_range_params,
    run_option_params,
)
from erpmail.operators.notifier import OutboxNotifier

LEVEL_NAMES = {"1": "1 - Zahlungserinnerung", "2": "2 - 1. Mahnung", "3": "3 - Letzte Mahnung"}

with DAG(
    dag_id="dunning_run",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "dunning", "documents"],
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
            description="Date items are overdue at and letters are dated (YYYY-MM-DD); empty: "
            "today in the company's time zone, fixed by the first task and kept on the run.",
        ),
        "company": company_param("Company code (erp.companies) whose customers are dunned."),
        "levels": Param(
            ["1", "2", "3"],
            type="array",
            title="Levels",
            examples=["1", "2", "3"],
            values_display=LEVEL_NAMES,
            items={"type": ["string", "integer"], "enum": ["1", "2", "3", 1, 2, 3]},
            minItems=1,
            uniqueItems=True,
            description="Levels this run may reach; an item due for another level waits.",
        ),
        **partner_range_params(),
        **approval_param(),
        **run_option_params(),
    },
):
    document_tasks("dunning", approval=True)
