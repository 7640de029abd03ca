"""The document pipeline shared by dunning, balance confirmations and payment advice.

A run (erp.runs, one per kind and Airflow run id) goes: generate letters -> render in
batches -> archive each PDF -> route (outbox message, or paper with a reason) -> print
batch of the paper letters -> summary. Each step is idempotent and resumes where a
cleared or rerun task left off; a letter that fails fails alone with its reason.

What differs per kind (the form it takes, selection, letter context, whether a letter may
go by mail) is a ``DocumentKind``, found by its name with ``kind_named``. This module holds
the kinds, the run rows, generating and planning; ``rendering``, ``routing`` and ``summary``
the later steps, and ``erpmail.operators.document_run`` wires them into a DAG.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg2.extensions
from psycopg2.extras import Json

from erpmail.core import archive, clock, db

if TYPE_CHECKING:  # templates pulls in babel: imported where a letter is rendered
    from erpmail.documents.templates import Company, Partner

# Batches per run: mapped render + route tasks stay at 2 x this (the DAG has 4 more tasks).
MAX_BATCHES = 20
MIN_BATCH_SIZE = 200

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
COMPANY_TIMEZONE = "SELECT timezone FROM erp.companies WHERE code = %s"
COMPANY = """
SELECT code, name, street, postcode, city, country, email, phone, iban, language, currency
  FROM erp.companies WHERE code = %s"""
# Each letter with its addressee, for the letter contexts of every kind.
LETTER_HEADS = """
SELECT l.id, l.language, l.level, l.fee, l.fee_currency, l.totals,
       p.id, p.number, p.name, p.street, p.postcode, p.city, p.country, p.email
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.id = ANY(%s)"""
# Correspondence language: the kind's contact's (one with an address), else the partner's,
# else the company's.
PARTNER_LANGUAGES = """
SELECT p.id, coalesce(
         (SELECT c.language FROM erp.contacts c
           WHERE c.partner_id = p.id AND c.role = %(role)s AND c.email IS NOT NULL
           ORDER BY c.id LIMIT 1),
         p.language, co.language)
  FROM erp.partners p JOIN erp.companies co ON co.code = p.company
 WHERE p.id = ANY(%(ids)s)"""
SET_RUN_STATUS = "UPDATE erp.runs SET status = %s WHERE id = %s"
COUNT_LETTERS = "SELECT count(*) FROM erp.letters WHERE run_id = %s"
BATCHES = (
    "SELECT DISTINCT batch FROM erp.letters WHERE run_id = %s AND batch IS NOT NULL ORDER BY 1"
)
# Batches are contiguous runs of letters by partner number, fixed once.
ASSIGN_BATCHES = """
UPDATE erp.letters l SET batch = b.batch
  FROM (SELECT l2.id, ((row_number() OVER (ORDER BY p.number, l2.id) - 1) / %(size)s)::int AS batch
          FROM erp.letters l2 JOIN erp.partners p ON p.id = l2.partner_id
         WHERE l2.run_id = %(run_id)s) b
 WHERE l.id = b.id AND l.batch IS NULL"""
SET_FAILED = """
UPDATE erp.letters SET status = 'failed', error = %s, updated_at = now()
 WHERE id = %s AND status NOT IN ('released', 'sent')"""


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
class RunRequest:
    """What a kind makes of the DAG's form: the run's key date and its params (erp.runs)."""

    key_date: date
    params: dict[str, Any]


@dataclass(frozen=True)
class DocumentKind:
    """What the pipeline needs from one kind of document run.

    ``prepare(cur, form)`` checks the DAG's params across fields and turns them into a
    ``RunRequest`` (a ``ValueError`` naming the param when they do not fit; ``company``,
    ``dry_run`` and ``note`` are every form's and taken as they are);
    ``generate(cur, run)`` writes the run's letters (status ``generated``) and returns how many;
    ``contexts(cur, run, letter_ids)`` gives each letter's ``templates.LetterContext``, or
    the exception that fails that letter alone (``extra["reply_address"]``, when set,
    becomes the mail's Reply-To);
    ``sends_email(cur, letter_id)`` says whether the letter may go by mail at all.
    """

    kind: str  # erp.runs.kind, and the name kind_named finds it by
    document: str  # template folder under include/templates/
    contact_role: str  # the contact whose address (and language) beats the partner's
    prepare: Callable[[psycopg2.extensions.cursor, Mapping[str, Any]], RunRequest]
    generate: Callable[[psycopg2.extensions.cursor, Run], int]
    contexts: Callable[[psycopg2.extensions.cursor, Run, Sequence[int]], dict[int, Any]]
    sends_email: Callable[[psycopg2.extensions.cursor, int], bool]


# Where each kind is defined, by name: resolved on first use, so that a DAG file can name its
# kind without importing the kind's module (and the template engine behind it).
KINDS = {
    "dunning": "erpmail.documents.dunning:DUNNING",
    "balance_confirmation": "erpmail.documents.balance_confirmation:BALANCE_CONFIRMATION",
    "payment_advice": "erpmail.documents.payment_advice:PAYMENT_ADVICE",
    "on_demand": "erpmail.documents.on_demand:ON_DEMAND",
}


def kind_named(name: str) -> DocumentKind:
    """The document kind registered in ``KINDS`` under ``name``; an error naming it when unknown."""
    where = KINDS.get(name)
    if where is None:
        raise LookupError(f"document kind {name!r} is not one of {sorted(KINDS)}")
    module, _, attribute = where.partition(":")
    kind = getattr(importlib.import_module(module), attribute)
    if not isinstance(kind, DocumentKind) or kind.kind != name:
        raise LookupError(f"document kind {name!r}: {where} is not DocumentKind {name!r}")
    return kind


@dataclass(frozen=True)
class LetterHead:
    """A stored letter as its context starts: its row's values and the addressee."""

    letter_id: int
    language: str
    level: int | None
    fee: Decimal | None
    fee_currency: str | None
    totals: dict[str, str]
    partner: Partner  # templates.Partner, in the letter's language


def load_run(cur: psycopg2.extensions.cursor, run_id: int, *, lock: bool = False) -> Run:
    """The run with this id (``lock``: FOR UPDATE); an error naming the id when missing."""
    cur.execute(RUN_COLUMNS + (" FOR UPDATE" if lock else ""), (run_id,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"run {run_id} not found in erp.runs")
    return Run(*row)


def run_folder(run: Run, document: str) -> str:
    """The archive folder of a run's PDFs: document, company, key date's year, run."""
    return f"{document}/{archive.safe_part(run.company)}/{run.key_date:%Y}/run-{run.id}"


def load_company(cur: psycopg2.extensions.cursor, code: str) -> tuple[Company, str, str]:
    """The company as letterhead (``templates.Company``), its language and its currency."""
    from erpmail.documents.templates import Company

    cur.execute(COMPANY, (code,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"company {code!r} not found in erp.companies")
    *fields, language, currency = row
    return Company(*fields), language, currency


def partner_languages(
    cur: psycopg2.extensions.cursor, partner_ids: Sequence[int], role: str
) -> dict[int, str]:
    """Per partner its correspondence language: the ``role`` contact's, the partner's, or
    the company's."""
    cur.execute(PARTNER_LANGUAGES, {"role": role, "ids": list(partner_ids)})
    return dict(cur.fetchall())


def form_date(form: Mapping[str, Any], name: str) -> date:
    """The form's field ``name`` as a date (YYYY-MM-DD); an error naming the field."""
    try:
        return date.fromisoformat(str(form[name]))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"param {name!r}: {form.get(name)!r} is not a date (YYYY-MM-DD)") from exc


def company_today(cur: psycopg2.extensions.cursor, code: str) -> date:
    """Today on the company's clock (erp.companies.timezone); an error naming the param."""
    cur.execute(COMPANY_TIMEZONE, (code,))
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"company {code!r} not found in erp.companies (param 'company')")
    try:
        return clock.today(row[0])
    except Exception as exc:  # pendulum raises its own error types for an unknown zone
        raise ValueError(f"company {code!r}: time zone {row[0]!r} is not known") from exc


def letter_heads(cur: psycopg2.extensions.cursor, letter_ids: Sequence[int]) -> list[LetterHead]:
    """The letters with these ids (those that exist), each with its addressee."""
    from erpmail.documents.templates import Partner

    cur.execute(LETTER_HEADS, (list(letter_ids),))
    return [
        LetterHead(
            letter_id,
            language,
            level,
            fee,
            fee_currency,
            totals or {},
            Partner(*partner, language=language),
        )
        for letter_id, language, level, fee, fee_currency, totals, *partner in cur.fetchall()
    ]


def partner_range(form: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The form's ``partner_from``/``partner_to`` (empty: open); an error when from is after to.

    JSON schema cannot compare two fields, so the run's first task does.
    """
    low, high = form.get("partner_from") or None, form.get("partner_to") or None
    if low and high and low > high:
        raise ValueError(f"partner_from {low!r} is after partner_to {high!r}: nothing generated")
    return low, high


def start_run(
    kind: DocumentKind, airflow_run_id: str, form: Mapping[str, Any], *, user: str | None = None
) -> int:
    """Check the form with the kind's ``prepare`` and create (or, on a rerun, find) the run.
    ``user``: who triggered it (the Airflow login, an ``erp.users`` login), kept in its params
    as ``user`` unless the form names one: whose certificate signs where that user signs.

    A ``ValueError`` naming the param when the form does not fit; nothing is written then.
    """
    with db.transaction() as cur:
        request = kind.prepare(cur, form)
    params = dict(request.params)
    if user and not params.get("user"):
        params["user"] = user
    return create_run(
        kind=kind.kind,
        airflow_run_id=airflow_run_id,
        company=form["company"],
        key_date=request.key_date,
        dry_run=bool(form.get("dry_run")),
        params=params,
        note=form.get("note") or "",
    )


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


def plan_batches(
    run_id: int,
    letters: int | None = None,
    *,
    max_batches: int = MAX_BATCHES,
    min_size: int = MIN_BATCH_SIZE,
) -> list[int]:
    """Split the run's letters into at most ``max_batches`` batches, once; their numbers.

    ``letters`` is how many the run has (``generate``'s count); None: counted here. Always
    at least ``[0]``, so the mapped steps run (and find nothing) on an empty run.
    """
    with db.transaction() as cur:
        load_run(cur, run_id, lock=True)
        cur.execute(BATCHES, (run_id,))
        batches = [row[0] for row in cur.fetchall()]
        if not batches:
            if letters is None:
                cur.execute(COUNT_LETTERS, (run_id,))
                letters = cur.fetchone()[0]
            size = max(min_size, math.ceil(letters / max_batches))
            cur.execute(ASSIGN_BATCHES, {"size": size, "run_id": run_id})
            cur.execute(BATCHES, (run_id,))
            batches = [row[0] for row in cur.fetchall()]
    return batches or [0]
