"""The document pipeline's steps run one after the other, as the DAG runs them, and the
rows they leave: shared by the tests of runs, rendering, routing, summary and the kinds."""

from __future__ import annotations

from datetime import date

import psycopg2.extensions

from erpmail.core import db
from erpmail.documents import rendering, routing, runs, summary
from erpmail.documents.dunning import DUNNING
from erpmail.documents.runs import DocumentKind

KEY = date(2026, 3, 2)  # the dunning runs' key date (the ``ledger`` fixture is seeded for it)
STATEMENTS_KEY = date.today()  # the statements' (the ``statements_db`` fixture)

LETTERS = """
SELECT l.id, p.number, l.status, l.paper_reason, l.pdf_path, l.outbox_id, l.recipient, l.error
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id WHERE l.run_id = %s ORDER BY p.number"""
OUTBOX = "SELECT id, key, source_id, recipients, mime FROM mail.outbox ORDER BY id"


def dunning_run(airflow_run_id: str = "manual__1", *, dry_run: bool = False) -> int:
    """A dunning run at KEY with its letters generated; its id."""
    run = runs.create_run(
        kind="dunning", airflow_run_id=airflow_run_id, company="DEMO", key_date=KEY, dry_run=dry_run
    )
    runs.generate(run, DUNNING)
    return run


def run_steps(run: int) -> tuple[list[int], str | None, dict]:
    """Plan (small batches), render, route, print batch and summary of a dunning run."""
    batches = runs.plan_batches(run, max_batches=3, min_size=4)
    for batch in batches:
        rendering.render_batch(run, batch, DUNNING)
    for batch in batches:
        routing.route_batch(run, batch, DUNNING)
    printed = summary.print_batch(run, "dunning")
    return batches, printed, summary.summarize(run)


def kind_run(kind: DocumentKind, run_key: str, key_date: date, params: dict) -> int:
    """Every step of the shared pipeline for ``kind``, as the DAG runs them; the run's id."""
    run_id = runs.create_run(
        kind=kind.kind, airflow_run_id=run_key, company="DEMO", key_date=key_date, params=params
    )
    letters = runs.generate(run_id, kind)
    batches = runs.plan_batches(run_id, letters)
    for batch in batches:
        rendering.render_batch(run_id, batch, kind)
    for batch in batches:
        routing.route_batch(run_id, batch, kind)
    summary.print_batch(run_id, kind.document)
    summary.summarize(run_id)
    return run_id


def rows(conn: psycopg2.extensions.connection, sql: str, *args) -> list[tuple]:
    """All rows of one query, in a transaction of its own."""
    with db.transaction(conn) as cur:
        cur.execute(sql, args)
        return cur.fetchall()
