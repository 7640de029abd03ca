"""
### Balance confirmation

Asks partners to confirm their balance with us at a key date (usually the year end): one
letter per partner, as an archived PDF with a reply form, sent by e-mail through the outbox
or collected into one print batch for paper. Same pipeline as `dunning_run`
(`erpmail.documents`), document kind `erpmail.statements.BALANCE_CONFIRMATION`.

**Steps** `start` (checks the form, creates the run; one per Airflow run, a rerun resumes it)
-> `generate` (letters and their open items, status `generated`) -> `plan` (fixes the
batches) -> `render` (mapped per batch: archived PDFs) -> `route` (mapped per batch: e-mail to
the accounting contact or the partner, queued in the outbox: `released`; else `paper` with the
reason) -> `print_batch` -> `summary` (stored on `erp.runs.summary`, in the task log).

**Rules** (see `erpmail.statements`): the open items at the key date of the chosen side
(debtors = receivables, creditors = payables, both); the balance per currency, receivables
positive, payables negative; a partner that is customer and supplier gets ONE letter with
both sides. A partner is included when its absolute balance in some currency reaches the
minimum; partners with a zero balance (or nothing open) only when "include zero balances" is
set.

**Replies**: the subject carries `relnr <partner number>`; with `relnr` mapped to `partner`
in the import location's `link_keywords`, `mailbox_import` files the answer against the
partner (a reply to the mail itself is linked by In-Reply-To as well). The letter names the
reply address (the form's, else the company's e-mail).

**Dry run**: generated and rendered for review under `review/` in the document store;
nothing queued. **Reruns**: clearing any task or the whole run creates no second letter and
no second mail (outbox keys `balance_confirmation:run-<run>:letter-<letter>`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

PARTNER_NUMBER = "^[0-9A-Za-z_-]{0,20}$"
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
    default_args={"owner": "erpmail", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "key_date": Param(
            pendulum.today("Europe/Berlin").start_of("year").subtract(days=1).to_date_string(),
            type="string",
            format="date",
            title="Key date",
            description="Date the balance is confirmed at (YYYY-MM-DD); default the last year end.",
        ),
        "company": Param(
            "DEMO",
            type="string",
            pattern="^[A-Z0-9_]{1,20}$",
            title="Company",
            description="Company code (erp.companies) whose partners are asked.",
        ),
        "side": Param(
            "both",
            type="string",
            enum=list(SIDES),
            values_display=SIDES,
            title="Side",
            description="Debtors, creditors, or both: a customer that is also a supplier then "
            "gets one letter listing both sides.",
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
            "",
            type="string",
            maxLength=254,
            pattern="^$|^[^@\\s]+@[^@\\s]+$",
            title="Reply address",
            description="Address printed for replies; empty: the company's e-mail. The "
            "mailbox import should read it.",
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
        from email_validator import EmailNotValidError, validate_email

        from erpmail import documents

        context = get_current_context()
        params = context["params"]
        low, high = params["partner_from"] or None, params["partner_to"] or None
        if low and high and low > high:
            raise AirflowFailException(
                f"partner_from {low!r} is after partner_to {high!r}: nothing generated"
            )
        reply = params["reply_address"] or None
        if reply:
            try:
                reply = validate_email(reply, check_deliverability=False).normalized
            except EmailNotValidError as exc:
                raise AirflowFailException(f"reply_address {reply!r}: {exc}") from exc
        try:
            return documents.create_run(
                kind="balance_confirmation",
                airflow_run_id=context["dag_run"].run_id,
                company=params["company"],
                key_date=pendulum.parse(params["key_date"]).date(),
                dry_run=params["dry_run"],
                params={
                    "side": params["side"],
                    "partner_from": low,
                    "partner_to": high,
                    "min_abs_balance": params["min_abs_balance"],
                    "include_zero": params["include_zero"],
                    "reply_address": reply,
                },
                note=params["note"],
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def generate(erp_run: int) -> int:
        """Letters and their items for the run (once); how many the run has."""
        from erpmail import documents
        from erpmail.statements import BALANCE_CONFIRMATION

        return documents.generate(erp_run, BALANCE_CONFIRMATION)

    @task
    def plan(erp_run: int, letters: int) -> list[int]:
        """The run's batch numbers (at most documents.MAX_BATCHES)."""
        from erpmail import documents

        return documents.plan_batches(erp_run)

    @task
    def render(erp_run: int, batch: int) -> dict[str, int]:
        """Render and archive one batch of letters."""
        from erpmail import documents
        from erpmail.statements import BALANCE_CONFIRMATION

        return documents.render_batch(erp_run, batch, BALANCE_CONFIRMATION)

    @task
    def route(erp_run: int, batch: int) -> dict[str, int]:
        """Queue the batch's mail or mark its letters for paper."""
        from erpmail import documents
        from erpmail.statements import BALANCE_CONFIRMATION

        return documents.route_batch(erp_run, batch, BALANCE_CONFIRMATION)

    @task
    def print_batch(erp_run: int) -> str | None:
        """All paper letters in one archived PDF."""
        from erpmail import documents
        from erpmail.statements import BALANCE_KIND

        return documents.print_batch(erp_run, BALANCE_KIND)

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
