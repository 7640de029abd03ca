"""
### Dunning run

From overdue open items to dunning letters: one letter per partner, as an archived PDF, sent
by e-mail through the outbox or collected into one print batch for paper.

**Steps** `start` (checks the form, creates the run; one per Airflow run, a rerun resumes it)
-> `generate` (letters and their items, status `generated`) -> `plan` (fixes the batches)
-> `render` (mapped per batch: one WeasyPrint pass per chunk, split per letter, each PDF
archived: `archived`) -> `route` (mapped per batch: e-mail to the dunning contact or the
partner, queued in the outbox in the same transaction: `released`; else `paper` with the
reason `no_address`, `blocked`, `invalid_address` or `paper_only`) -> `print_batch` (all paper
letters in one PDF, archived) -> `summary` (per status and level, totals, paper reasons,
failures; stored on `erp.runs.summary` and in the task log).

The letter then follows its mail: `sent` or `failed` (with the server's reply) when the
`outbox_dispatch` DAG sends it. Per run, `erp.letter_status` is the "Versandstatus".

**Rules** (see `erpmail.dunning`): items overdue by more than a level's days, without dunning
block or dispute; first letter level 1, then one level up once the previous letter is older
than the next level's days; items under the level's minimum wait; credit notes net only
within their currency; the fee is the highest level's.

**Dry run**: letters are generated and rendered for review (PDFs and one review batch under
`review/` in the document store); nothing is archived as sent, nothing is queued, and the
dry run does not count as a previous letter.

**Reruns**: clearing any task, or the whole run, creates no second letter and no second mail
(outbox keys are `dunning:run-<run>:letter-<letter>`). A letter that fails to render or to
build its mail is `failed` alone with its reason; the run goes on.

**Partner from/to**: the form checks each field; JSON schema cannot compare two fields, so
"from after to" is refused by the first task (`start`), before anything is written, with an
error naming both values.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

LEVEL_NAMES = {"1": "1 - Zahlungserinnerung", "2": "2 - 1. Mahnung", "3": "3 - Letzte Mahnung"}
PARTNER_NUMBER = "^[0-9A-Za-z_-]{0,20}$"

with DAG(
    dag_id="dunning_run",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "dunning", "documents"],
    default_args={"owner": "erpmail", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "key_date": Param(
            pendulum.today("Europe/Berlin").to_date_string(),
            type="string",
            format="date",
            title="Key date",
            description="Date items are overdue at and letters are dated (YYYY-MM-DD); default today.",
        ),
        "company": Param(
            "DEMO",
            type="string",
            pattern="^[A-Z0-9_]{1,20}$",
            title="Company",
            description="Company code (erp.companies) whose customers are dunned.",
        ),
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
        "partner_from": Param(
            "",
            type="string",
            pattern=PARTNER_NUMBER,
            title="Partner number from",
            description="First partner number (inclusive, compared as text); empty: from the first.",
        ),
        "partner_to": Param(
            "",
            type="string",
            pattern=PARTNER_NUMBER,
            title="Partner number to",
            description="Last partner number (inclusive); empty: to the last. Must not be before "
            "'from' (checked by the first task).",
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
        """Check the form across fields and create (or resume) the run; its id."""
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail import documents

        context = get_current_context()
        params = context["params"]
        low, high = params["partner_from"] or None, params["partner_to"] or None
        if low and high and low > high:
            raise AirflowFailException(
                f"partner_from {low!r} is after partner_to {high!r}: nothing generated"
            )
        try:
            return documents.create_run(
                kind="dunning",
                airflow_run_id=context["dag_run"].run_id,
                company=params["company"],
                key_date=pendulum.parse(params["key_date"]).date(),
                dry_run=params["dry_run"],
                params={
                    "levels": sorted({int(level) for level in params["levels"]}),
                    "partner_from": low,
                    "partner_to": high,
                },
                note=params["note"],
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def generate(erp_run: int) -> int:
        """Letters and their items for the run (once); how many the run has."""
        from erpmail import documents
        from erpmail.dunning import DUNNING

        return documents.generate(erp_run, DUNNING)

    @task
    def plan(erp_run: int, letters: int) -> list[int]:
        """The run's batch numbers (at most documents.MAX_BATCHES)."""
        from erpmail import documents

        return documents.plan_batches(erp_run)

    @task
    def render(erp_run: int, batch: int) -> dict[str, int]:
        """Render and archive one batch of letters."""
        from erpmail import documents
        from erpmail.dunning import DUNNING

        return documents.render_batch(erp_run, batch, DUNNING)

    @task
    def route(erp_run: int, batch: int) -> dict[str, int]:
        """Queue the batch's mail or mark its letters for paper."""
        from erpmail import documents
        from erpmail.dunning import DUNNING

        return documents.route_batch(erp_run, batch, DUNNING)

    @task
    def print_batch(erp_run: int) -> str | None:
        """All paper letters in one archived PDF."""
        from erpmail import documents
        from erpmail.dunning import DOCUMENT

        return documents.print_batch(erp_run, DOCUMENT)

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
