"""The tasks of a document run, shared by every DAG that sends documents (dunning, balance
confirmations, payment advice): ``start`` -> ``generate`` -> ``plan`` -> ``render`` and
``route`` (mapped per batch) -> ``print_batch`` -> ``summary``, each over ``erpmail.documents.runs``.

The DAG file names its kind; the kind (and the template, PDF and mail code behind it) is
looked up inside the tasks, so parsing a DAG file stays cheap. Tasks pass run and batch ids
only, and the mapped tasks grow with the number of batches, never with the letters. The
form fields every document run reads the same way (company, partner range, dry run, note)
are defined here too, next to the task that reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk import Param, get_current_context, task

PARTNER_NUMBER = "^[0-9A-Za-z_-]{0,20}$"
# Libraries that log every rendering step at INFO (WeasyPrint: ~6 lines per letter); in a
# task log they bury erpmail's progress. Their warnings and errors still show.
CHATTY_LIBRARIES = ("weasyprint", "fontTools", "PIL", "pydyf", "pypdf")


@contextmanager
def library_chatter_silenced(names: tuple[str, ...] = CHATTY_LIBRARIES) -> Iterator[None]:
    """Raise the named libraries' loggers to WARNING while the block runs, then restore them."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def company_param(description: str) -> Param:
    """The ``company`` field (erp.companies.code), default the demo company."""
    return Param(
        "DEMO", type="string", pattern="^[A-Z0-9_]{1,20}$", title="Company", description=description
    )


def partner_range_params() -> dict[str, Param]:
    """``partner_from`` and ``partner_to``; from after to is refused by ``start``."""
    return {
        "partner_from": Param(
            None,
            type=["null", "string"],
            pattern=PARTNER_NUMBER,
            title="Partner number from",
            description="First partner number (inclusive, compared as text); empty: from the first.",
        ),
        "partner_to": Param(
            None,
            type=["null", "string"],
            pattern=PARTNER_NUMBER,
            title="Partner number to",
            description="Last partner number (inclusive); empty: to the last. Must not be before "
            "'from' (checked by the first task).",
        ),
    }


def run_option_params() -> dict[str, Param]:
    """``dry_run`` and ``note``, the last fields of every document run's form."""
    return {
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Generate and render for review only: nothing archived, nothing queued.",
        ),
        "note": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Note",
            description="Free text kept on the run and in its summary.",
        ),
    }


def document_tasks(kind: str) -> None:
    """Add the document run's tasks for ``kind`` (a name in ``erpmail.documents.runs.KINDS``) to
    the DAG being defined; the DAG's params are the form the kind's ``prepare`` reads."""

    @task(retries=0)
    def start() -> int:
        """Check the form across fields and create (or resume) the run; its id."""
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.documents import runs

        context = get_current_context()
        try:
            return runs.start_run(
                runs.kind_named(kind), context["dag_run"].run_id, context["params"]
            )
        except ValueError as exc:  # a form that does not fit: retrying will not help
            raise AirflowFailException(str(exc)) from exc

    @task
    def generate(erp_run: int) -> int:
        """Letters and their items for the run (once); how many the run has."""
        from erpmail.documents import runs

        return runs.generate(erp_run, runs.kind_named(kind))

    @task
    def plan(erp_run: int, letters: int) -> list[int]:
        """The run's batch numbers (at most runs.MAX_BATCHES)."""
        from erpmail.documents import runs

        return runs.plan_batches(erp_run)

    @task
    def render(erp_run: int, batch: int) -> dict[str, int]:
        """Render and archive one batch of letters."""
        from erpmail.documents import runs

        with library_chatter_silenced():
            return runs.render_batch(erp_run, batch, runs.kind_named(kind))

    @task
    def route(erp_run: int, batch: int) -> dict[str, int]:
        """Queue the batch's mail or mark its letters for paper."""
        from erpmail.documents import runs

        return runs.route_batch(erp_run, batch, runs.kind_named(kind))

    @task
    def print_batch(erp_run: int) -> str | None:
        """All paper letters in one archived PDF."""
        from erpmail.documents import runs

        with library_chatter_silenced():
            return runs.print_batch(erp_run, runs.kind_named(kind).document)

    @task
    def summary(erp_run: int) -> dict:
        """The run's summary, stored and logged."""
        from erpmail.documents import runs

        return runs.summarize(erp_run)

    run = start()
    batches = plan(run, generate(run))
    rendered = render.partial(erp_run=run).expand(batch=batches)
    routed = route.partial(erp_run=run).expand(batch=batches)
    rendered >> routed >> print_batch(run) >> summary(run)
