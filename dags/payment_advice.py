"""
### Payment advice

Tells each payee of one payment run what was paid: the paid documents, the deductions
(discount, fees) and the payment per currency, as an archived PDF sent by e-mail through the
outbox or collected into one print batch for paper. Same pipeline as `dunning_run`
(`erpmail.documents`), document kind `erpmail.statements.PAYMENT_ADVICE`.

**Trigger**: after the ERP has executed a payment run (`erp.payment_runs.status =
'executed'`), it triggers this DAG with the run's number, e.g. through the REST API:
`POST /api/v2/dags/payment_advice/dagRuns` with `{"conf": {"payment_run": "P20261231-1"}}`,
or a clerk does so from the form. A proposed (not yet executed) payment run can only be
previewed as a dry run; a cancelled one is refused.

**Steps** `start` (checks the payment run, creates the run with the payment date as key
date) -> `generate` (one letter per payee with its lines, `generated`; a payee whose payment
in a currency is not positive is `failed` with the reason) -> `plan` -> `render` (mapped) ->
`route` (mapped: e-mail to the accounting contact or the payee, else paper) -> `print_batch`
-> `summary`.

**Reruns**: clearing any task or the whole run creates no second letter and no second mail.
A second Airflow run for the same payment run advises only lines no earlier (non-dry)
advice listed, so the same payment is never advised twice.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

with DAG(
    dag_id="payment_advice",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "statements", "documents"],
    default_args={"owner": "erpmail", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "payment_run": Param(
            type="string",
            pattern="^[0-9A-Za-z_-]{1,20}$",
            title="Payment run",
            description="Number of the executed payment run (erp.payment_runs.number).",
        ),
        "company": Param(
            "DEMO",
            type="string",
            pattern="^[A-Z0-9_]{1,20}$",
            title="Company",
            description="Company code (erp.companies) of the payment run.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Generate and render for review only: nothing archived, nothing queued.",
        ),
        "note": Param(
            "",
            type="string",
            maxLength=500,
            title="Note",
            description="Free text kept on the run and in its summary.",
        ),
    },
):

    @task(retries=0)
    def start() -> int:
        """Check the payment run and create (or resume) the run; its id."""
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail import db, documents, statements

        context = get_current_context()
        params = context["params"]
        try:
            with db.transaction() as cur:
                payment_run = statements.load_payment_run(
                    cur, params["company"], params["payment_run"], dry_run=params["dry_run"]
                )
            return documents.create_run(
                kind="payment_advice",
                airflow_run_id=context["dag_run"].run_id,
                company=params["company"],
                key_date=payment_run.payment_date,
                dry_run=params["dry_run"],
                params={"payment_run": payment_run.number},
                note=params["note"],
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def generate(erp_run: int) -> int:
        """Letters and their payment lines for the run (once); how many the run has."""
        from erpmail import documents
        from erpmail.statements import PAYMENT_ADVICE

        return documents.generate(erp_run, PAYMENT_ADVICE)

    @task
    def plan(erp_run: int, letters: int) -> list[int]:
        """The run's batch numbers (at most documents.MAX_BATCHES)."""
        from erpmail import documents

        return documents.plan_batches(erp_run)

    @task
    def render(erp_run: int, batch: int) -> dict[str, int]:
        """Render and archive one batch of letters."""
        from erpmail import documents
        from erpmail.statements import PAYMENT_ADVICE

        return documents.render_batch(erp_run, batch, PAYMENT_ADVICE)

    @task
    def route(erp_run: int, batch: int) -> dict[str, int]:
        """Queue the batch's mail or mark its letters for paper."""
        from erpmail import documents
        from erpmail.statements import PAYMENT_ADVICE

        return documents.route_batch(erp_run, batch, PAYMENT_ADVICE)

    @task
    def print_batch(erp_run: int) -> str | None:
        """All paper letters in one archived PDF."""
        from erpmail import documents
        from erpmail.statements import ADVICE_KIND

        return documents.print_batch(erp_run, ADVICE_KIND)

    @task
    def summary(erp_run: int) -> dict:
        """The run's summary, stored and logged."""
        from erpmail import documents

        return documents.summarize(erp_run)

    run = start()
    batches = plan(run, generate(run))
    rendered = render.partial(erp_run=run).expand(batch=batches)
    routed = route.partial(erp_run=run).expand(batch=batches)
    printed = print_batch(run)
    rendered >> routed >> printed >> summary(run)
