"""The document pipeline shared by dunning, balance confirmations and payment advice.

A run (erp.runs, one per kind and Airflow run id) goes: generate letters -> render in
batches -> archive each PDF -> route (outbox message, or paper with a reason) -> print
batch of the paper letters -> summary. Each step is idempotent and resumes where a
cleared or rerun task left off; a letter that fails fails alone with its reason.

What differs per kind (selection, letter context, whether a letter may go by mail) is a
``DocumentKind``; everything else lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg2.extensions
from email_validator import EmailNotValidError, validate_email
from psycopg2.extras import Json

from erpmail import db

log = logging.getLogger(__name__)

UPSERT_RUN = """
INSERT INTO erp.runs (kind, airflow_run_id, company, key_date, dry_run, params, note)
VALUES (%(kind)s, %(airflow_run_id)s, %(company)s, %(key_date)s, %(dry_run)s, %(params)s, %(note)s)
ON CONFLICT (kind, airflow_run_id) DO UPDATE SET kind = EXCLUDED.kind
RETURNING id"""
RUN_COLUMNS = """
SELECT id, kind, airflow_run_id, company, key_date, dry_run, params, note, status,
       print_batch_path, summary
  FROM erp.runs WHERE id = %s"""
COMPANY_EXISTS = "SELECT 1 FROM erp.companies WHERE code = %s"
SET_RUN_STATUS = "UPDATE erp.runs SET status = %s WHERE id = %s"
COUNT_LETTERS = "SELECT count(*) FROM erp.letters WHERE run_id = %s"
# The addresses a letter may go to: the contact of the kind's role first, then the partner.
ADDRESSES = """
SELECT p.email, p.email_blocked,
       (SELECT c.email FROM erp.contacts c
         WHERE c.partner_id = p.id AND c.role = %(role)s AND coalesce(c.email, '') <> ''
         ORDER BY c.id LIMIT 1)
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.id = %(letter_id)s"""


@dataclass(frozen=True)
class Run:
    """A row of erp.runs."""

    id: int
    kind: str
    airflow_run_id: str
    company: str
    key_date: date
    dry_run: bool = False
    params: dict[str, Any] | None = None
    note: str = ""
    status: str = "created"
    print_batch_path: str | None = None
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class DocumentKind:
    """What the pipeline needs from one kind of document run.

    ``generate(cur, run)`` writes the run's letters (status ``generated``) and returns how many;
    ``contexts(cur, run, letter_ids)`` gives each letter's ``templates.LetterContext``;
    ``sends_email(cur, letter_id)`` says whether the letter may go by mail at all.
    """

    kind: str  # erp.runs.kind
    document: str  # template folder under include/templates/
    contact_role: str  # the contact whose address beats the partner's
    generate: Callable[[psycopg2.extensions.cursor, Run], int]
    contexts: Callable[[psycopg2.extensions.cursor, Run, Sequence[int]], dict[int, Any]]
    sends_email: Callable[[psycopg2.extensions.cursor, int], bool]


@dataclass(frozen=True)
class Route:
    """Where a letter goes: an address, or paper with the reason (erp.letters.paper_reason)."""

    address: str | None
    paper_reason: str | None = None


def choose_route(
    *,
    sends_email: bool,
    partner_email: str | None,
    email_blocked: bool,
    contact_email: str | None = None,
) -> Route:
    """Mail to the contact's address, else the partner's; paper when the level is paper only,
    the partner's e-mail is blocked (that holds for its contacts too), there is no address,
    or the address is not valid (syntax only, no DNS)."""
    if not sends_email:
        return Route(None, "paper_only")
    if email_blocked:
        return Route(None, "blocked")
    address = (contact_email or partner_email or "").strip()
    if not address:
        return Route(None, "no_address")
    try:
        normalized = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return Route(address, "invalid_address")
    return Route(normalized)


def route_for(cur: psycopg2.extensions.cursor, kind: DocumentKind, letter_id: int) -> Route:
    """``choose_route`` for a stored letter."""
    cur.execute(ADDRESSES, {"role": kind.contact_role, "letter_id": letter_id})
    partner_email, blocked, contact_email = cur.fetchone()
    return choose_route(
        sends_email=kind.sends_email(cur, letter_id),
        partner_email=partner_email,
        email_blocked=blocked,
        contact_email=contact_email,
    )


def load_run(cur: psycopg2.extensions.cursor, run_id: int, *, lock: bool = False) -> Run:
    """The run with this id (``lock``: FOR UPDATE); an error naming the id when missing."""
    cur.execute(RUN_COLUMNS + (" FOR UPDATE" if lock else ""), (run_id,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"run {run_id} not found in erp.runs")
    return Run(*row)


def create_run(
    *,
    kind: str,
    airflow_run_id: str,
    company: str,
    key_date: date,
    dry_run: bool = False,
    params: dict[str, Any] | None = None,
    note: str = "",
) -> int:
    """The run for this Airflow run id: created on the first call, the same id on a rerun."""
    with db.transaction() as cur:
        cur.execute(COMPANY_EXISTS, (company,))
        if cur.fetchone() is None:
            raise ValueError(f"company {company!r} not found in erp.companies (param 'company')")
        cur.execute(
            UPSERT_RUN,
            {
                "kind": kind,
                "airflow_run_id": airflow_run_id,
                "company": company,
                "key_date": key_date,
                "dry_run": dry_run,
                "params": Json(params or {}),
                "note": note,
            },
        )
        return cur.fetchone()[0]


def generate(run_id: int, kind: DocumentKind) -> int:
    """Write the run's letters once; a rerun finds the run generated and writes nothing.

    Returns the number of letters the run has.
    """
    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        if run.status == "created":
            written = kind.generate(cur, run)
            cur.execute(SET_RUN_STATUS, ("generated", run_id))
            log.info("run %s: %d letters generated", run_id, written)
        cur.execute(COUNT_LETTERS, (run_id,))
        return cur.fetchone()[0]
