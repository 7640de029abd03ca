"""The document pipeline shared by dunning, balance confirmations and payment advice.

A run (erp.runs, one per kind and Airflow run id) goes: generate letters -> render in
batches -> archive each PDF -> route (outbox message, or paper with a reason) -> print
batch of the paper letters -> summary. Each step is idempotent and resumes where a
cleared or rerun task left off; a letter that fails fails alone with its reason.

What differs per kind (the form it takes, selection, letter context, whether a letter may
go by mail) is a ``DocumentKind``, found by its name with ``kind_named``; everything else
lives here, and ``erpmail.operators.document_run`` wires it into a DAG.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
from email_validator import EmailNotValidError, validate_email
from psycopg2.extras import Json, execute_values

from erpmail.core import archive, db

if TYPE_CHECKING:  # templates pulls in babel: imported where a letter is rendered
    from erpmail.documents.templates import Company, Partner

PROGRESS_SECONDS = 5.0
SUMMARY_TEMPLATES = "run_summary"  # include/templates/run_summary/<lang>/body.txt
# Batches per run: mapped render + route tasks stay at 2 x this (the DAG has 4 more tasks).
MAX_BATCHES = 20
MIN_BATCH_SIZE = 200
# Letters per routing transaction (each letter in its own savepoint).
ROUTE_CHUNK = 100

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
TO_RENDER = """
SELECT l.id, p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.batch = %s AND l.status = 'generated'
 ORDER BY p.number, l.id"""
SET_RENDERED = """
UPDATE erp.letters l SET status = v.status, pdf_path = v.pdf_path, language = v.language,
       language_fallback = v.language_fallback, updated_at = now()
  FROM (VALUES %s) AS v (id, status, pdf_path, language, language_fallback)
 WHERE l.id = v.id AND l.status = 'generated'"""
SET_FAILED = """
UPDATE erp.letters SET status = 'failed', error = %s, updated_at = now()
 WHERE id = %s AND status NOT IN ('released', 'sent')"""
TO_ROUTE = """
SELECT l.id, l.pdf_path, p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.batch = %s AND l.status = 'archived'
 ORDER BY p.number, l.id"""
SET_PAPER = """
UPDATE erp.letters SET status = 'paper', paper_reason = %s, recipient = %s, updated_at = now()
 WHERE id = %s AND status = 'archived'"""
SET_RELEASED = """
UPDATE erp.letters SET status = 'released', outbox_id = %s, recipient = %s, updated_at = now()
 WHERE id = %s AND status = 'archived'"""
# A letter whose message already went (dispatcher quicker than us) takes the message's state.
FOLLOW_OUTBOX = """
UPDATE erp.letters l SET status = CASE o.status WHEN 'sent' THEN 'sent' ELSE 'failed' END,
       error = CASE WHEN o.status <> 'sent' THEN erp.outbox_failure_reason(o.id) END
  FROM mail.outbox o
 WHERE o.id = l.outbox_id AND l.id = %s AND o.status IN ('sent', 'failed', 'cancelled')"""
PRINT_LETTERS = """
SELECT l.pdf_path FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status = %s AND l.pdf_path IS NOT NULL
 ORDER BY p.number, l.id"""
SET_PRINT_BATCH = "UPDATE erp.runs SET print_batch_path = %s, status = %s WHERE id = %s"
SUMMARY_COUNTS = """
SELECT l.status, l.level, l.paper_reason, count(*) FROM erp.letters l WHERE l.run_id = %s
 GROUP BY 1, 2, 3"""
SUMMARY_TOTALS = """
SELECT l.status, t.key, sum(t.value::numeric)
  FROM erp.letters l, jsonb_each_text(l.totals) t
 WHERE l.run_id = %s GROUP BY 1, 2 ORDER BY 1, 2"""
SUMMARY_FAILURES = """
SELECT l.id, p.number, l.error FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status = 'failed' ORDER BY p.number LIMIT 200"""
SUMMARY_SAMPLE = """
SELECT l.pdf_path FROM erp.letters l WHERE l.run_id = %s AND l.pdf_path IS NOT NULL
 ORDER BY l.id LIMIT 1"""
FINISH_RUN = """
UPDATE erp.runs SET summary = %s, status = 'done', finished_at = coalesce(finished_at, now())
 WHERE id = %s"""
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
    "balance_confirmation": "erpmail.documents.statements:BALANCE_CONFIRMATION",
    "payment_advice": "erpmail.documents.statements:PAYMENT_ADVICE",
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
    import pendulum

    cur.execute(COMPANY_TIMEZONE, (code,))
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"company {code!r} not found in erp.companies (param 'company')")
    try:
        return pendulum.now(row[0]).date()
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


def start_run(kind: DocumentKind, airflow_run_id: str, form: Mapping[str, Any]) -> int:
    """Check the form with the kind's ``prepare`` and create (or, on a rerun, find) the run.

    A ``ValueError`` naming the param when the form does not fit; nothing is written then.
    """
    with db.transaction() as cur:
        request = kind.prepare(cur, form)
    return create_run(
        kind=kind.kind,
        airflow_run_id=airflow_run_id,
        company=form["company"],
        key_date=request.key_date,
        dry_run=bool(form.get("dry_run")),
        params=request.params,
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


class Progress:
    """Logs done/total, rate and time left every few seconds, and once at the end."""

    def __init__(self, what: str, total: int, every: float = PROGRESS_SECONDS) -> None:
        self.what, self.total, self.every = what, total, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, n: int = 1, *, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.started) if now > self.started else 0.0
            left = (self.total - self.done) / rate if rate else 0.0
            log.info("%s: %d/%d, %.1f/s, %.0f s left", self.what, self.done, self.total, rate, left)


def plan_batches(
    run_id: int, *, max_batches: int = MAX_BATCHES, min_size: int = MIN_BATCH_SIZE
) -> list[int]:
    """Split the run's letters into at most ``max_batches`` batches, once; their numbers.

    Always at least ``[0]``, so the mapped steps run (and find nothing) on an empty run.
    """
    with db.transaction() as cur:
        load_run(cur, run_id, lock=True)
        cur.execute(BATCHES, (run_id,))
        batches = [row[0] for row in cur.fetchall()]
        if not batches:
            cur.execute(COUNT_LETTERS, (run_id,))
            total = cur.fetchone()[0]
            size = max(min_size, math.ceil(total / max_batches))
            cur.execute(ASSIGN_BATCHES, {"size": size, "run_id": run_id})
            cur.execute(BATCHES, (run_id,))
            batches = [row[0] for row in cur.fetchall()]
    return batches or [0]


def archive_key(run: Run, document: str, partner_number: str, letter_id: int) -> str:
    """Where a letter's PDF is stored; a dry run's PDFs go under ``review/``."""
    folder = f"{document}/{archive.safe_part(run.company)}/{run.key_date:%Y}/run-{run.id}"
    name = f"{archive.safe_part(partner_number)}-{letter_id}.pdf"
    return f"review/{folder}/{name}" if run.dry_run else f"{folder}/{name}"


def render_batch(
    run_id: int,
    batch: int,
    kind: DocumentKind,
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, int]:
    """Render the batch's ``generated`` letters in one pass and store each PDF.

    A letter becomes ``archived`` with its ``pdf_path`` (dry run: ``rendered``, PDF under
    ``review/``), or ``failed`` with the reason; the others go on. Returns counts by status.
    """
    from erpmail.documents import pdf, templates

    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            run = load_run(cur, run_id)
            cur.execute(TO_RENDER, (run_id, batch))
            todo = cur.fetchall()
            contexts = kind.contexts(cur, run, [letter_id for letter_id, _ in todo]) if todo else {}
        engine = templates.default()
        sources, meta, failed = [], {}, {}
        for letter_id, number in todo:
            try:
                context = contexts.get(letter_id) or LookupError("letter has no context")
                if isinstance(context, Exception):
                    raise context
                rendered = engine.render_letter(context)
                if not rendered.letter_html:
                    raise templates.TemplateError(
                        f"document {kind.document!r} has no letter.html in {rendered.language!r}",
                        template=f"{kind.document}/{rendered.language}/letter.html",
                        language=rendered.language,
                    )
            except Exception as exc:  # one letter's template fails that letter alone
                failed[letter_id] = f"letter {letter_id} (partner {number}): {exc}"
                continue
            sources.append(pdf.LetterSource(str(letter_id), rendered.letter_html))
            meta[letter_id] = (number, rendered.language, rendered.fallback_from)
        # one letter after the other in this process: the run's parallelism is its mapped
        # render tasks over the worker slots (workers and chunk_size no longer change anything)
        results = pdf.render_many(sources) if sources else []
        status = "rendered" if run.dry_run else "archived"
        done = []
        for result in results:
            letter_id = int(result.key)
            number, language, fallback = meta[letter_id]
            if not result.ok:
                failed[letter_id] = f"letter {letter_id} (partner {number}): {result.error}"
                continue
            key = archive_key(run, kind.document, number, letter_id)
            try:
                archive.store(key, result.pdf)
            except Exception as exc:
                failed[letter_id] = f"letter {letter_id} (partner {number}): archive: {exc}"
                continue
            done.append((letter_id, status, key, language, fallback))
        with db.transaction(conn) as cur:
            if done:
                execute_values(cur, SET_RENDERED, done, page_size=1000)
            for letter_id, error in failed.items():
                cur.execute(SET_FAILED, (error, letter_id))
    finally:
        conn.close()
    for error in failed.values():
        log.warning("failed: %s", error)
    log.info("run %s batch %s: %d %s, %d failed", run_id, batch, len(done), status, len(failed))
    return {status: len(done), "failed": len(failed)}


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _letter_message(
    cur: psycopg2.extensions.cursor,
    run: Run,
    letter_id: int,
    number: str,
    pdf_path: str,
    address: str,
    context: Any,
    senders: dict[str, Any],
) -> tuple[str, int, bytes]:
    """The letter's mail: (outbox key, account id, MIME bytes) with the archived PDF attached."""
    from erpmail.documents import mime, templates
    from erpmail.outbound import accounts

    if isinstance(context, Exception):
        raise context
    rendered = templates.default().render_letter(context)
    sender = context.sender or context.company.email
    if sender not in senders:
        senders[sender] = accounts.select_account(cur, sender)
    account = senders[sender]
    key = f"{run.kind}:run-{run.id}:letter-{letter_id}"
    message = mime.build_message(
        sender=(context.sender_name or account.display_name, sender),
        to=[address],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        attachments=[
            mime.Attachment(
                filename=f"{rendered.subject.replace('/', '-')}.pdf", data=archive.read(pdf_path)
            )
        ],
        inline_images=rendered.signature.images if rendered.signature else (),
        message_id=mime.make_message_id(key, _domain(account.from_address)),
        reply_to=context.extra.get("reply_address") or None,
        context=f"letter {letter_id} partner {number}",
    )
    return key, account.id, message.as_bytes()


def route_batch(
    run_id: int, batch: int, kind: DocumentKind, *, chunk_size: int = ROUTE_CHUNK
) -> dict[str, int]:
    """Route the batch's ``archived`` letters: an outbox message with the PDF (``released``),
    queued in the same transaction as the status change, or ``paper`` with the reason.

    The outbox key is derived from run and letter, so a rerun queues nothing new. A letter
    whose message cannot be built is ``failed`` alone (its savepoint rolled back). A dry run
    routes nothing.
    """
    from erpmail.outbound import outbox

    counts: Counter[str] = Counter()
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            run = load_run(cur, run_id)
            if run.dry_run:
                log.info("run %s is a dry run: nothing routed", run_id)
                return {}
            cur.execute(TO_ROUTE, (run_id, batch))
            todo = cur.fetchall()
        progress = Progress(f"run {run_id} batch {batch}: routed", len(todo))
        senders: dict[str, Any] = {}
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            # one commit per chunk: each letter and its outbox row still commit together
            with db.transaction(conn) as cur:
                contexts = kind.contexts(cur, run, [letter_id for letter_id, *_ in chunk])
                for letter_id, pdf_path, number in chunk:
                    cur.execute("SAVEPOINT letter")
                    try:
                        route = route_for(cur, kind, letter_id)
                        if route.paper_reason:
                            cur.execute(SET_PAPER, (route.paper_reason, route.address, letter_id))
                            counts[f"paper_{route.paper_reason}"] += 1
                        else:
                            context = contexts.get(letter_id) or LookupError("no letter context")
                            key, account_id, message = _letter_message(
                                cur,
                                run,
                                letter_id,
                                number,
                                pdf_path,
                                route.address,
                                context,
                                senders,
                            )
                            outbox_id = outbox.enqueue(
                                cur,
                                key=key,
                                account_id=account_id,
                                recipients=[route.address],
                                mime=message,
                                source_type="letter",
                                source_id=letter_id,
                            )
                            cur.execute(SET_RELEASED, (outbox_id, route.address, letter_id))
                            cur.execute(FOLLOW_OUTBOX, (letter_id,))
                            counts["released"] += 1
                        cur.execute("RELEASE SAVEPOINT letter")
                    except (psycopg2.OperationalError, psycopg2.InterfaceError):
                        raise  # the connection is gone: the task fails and its retry resumes
                    except Exception as exc:  # this letter fails alone
                        error = (
                            f"letter {letter_id} (partner {number}): {type(exc).__name__}: {exc}"
                        )
                        log.warning("failed: %s", error)
                        cur.execute("ROLLBACK TO SAVEPOINT letter")
                        cur.execute(SET_FAILED, (error, letter_id))
                        counts["failed"] += 1
                    progress.add()
    finally:
        conn.close()
    log.info("run %s batch %s routed: %s", run_id, batch, dict(counts) or "nothing to route")
    return dict(counts)


def print_batch(run_id: int, document: str) -> str | None:
    """Merge the run's paper letters (dry run: every rendered letter, for review) into one
    PDF by partner number, store it, and name it on the run; None when there are none."""
    import pypdf

    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        cur.execute(PRINT_LETTERS, (run_id, "rendered" if run.dry_run else "paper"))
        paths = [row[0] for row in cur.fetchall()]
        key = None
        if paths:
            writer = pypdf.PdfWriter()
            progress = Progress(f"run {run_id}: print batch", len(paths))
            for path in paths:
                writer.append(io.BytesIO(archive.read(path)))
                progress.add()
            out = io.BytesIO()
            writer.write(out)
            name = "review-batch" if run.dry_run else "print-batch"
            folder = f"{document}/{archive.safe_part(run.company)}/{run.key_date:%Y}/run-{run.id}"
            key = archive.store(
                f"{'review/' if run.dry_run else ''}{folder}/{name}-{run.id}.pdf", out.getvalue()
            )
            log.info("run %s: %d letters in %s", run_id, len(paths), key)
        cur.execute(SET_PRINT_BATCH, (key, "rendered" if run.dry_run else "routed", run_id))
    return key


def summarize(run_id: int) -> dict[str, Any]:
    """Letters per status and level, totals, paper reasons, failures and paths: stored on
    the run (which is then ``done``) and logged as a readable text."""
    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        _, language, _ = load_company(cur, run.company)
        cur.execute(SUMMARY_COUNTS, (run_id,))
        by_status: Counter[str] = Counter()
        by_level: dict[str, Counter[str]] = defaultdict(Counter)
        reasons: Counter[str] = Counter()
        for status, level, reason, n in cur.fetchall():
            by_status[status] += n
            by_level[str(level) if level is not None else "-"][status] += n
            if reason:
                reasons[reason] += n
        cur.execute(SUMMARY_TOTALS, (run_id,))
        totals: dict[str, dict[str, str]] = defaultdict(dict)
        for status, currency, amount in cur.fetchall():
            totals[status][currency] = str(Decimal(amount).quantize(Decimal("0.01")))
        cur.execute(SUMMARY_FAILURES, (run_id,))
        failures = [{"letter_id": i, "partner": n, "error": e} for i, n, e in cur.fetchall()]
        cur.execute(SUMMARY_SAMPLE, (run_id,))
        sample = cur.fetchone()
        summary = {
            "run_id": run_id,
            "kind": run.kind,
            "airflow_run_id": run.airflow_run_id,
            "company": run.company,
            "key_date": run.key_date.isoformat(),
            "dry_run": run.dry_run,
            "note": run.note,
            "letters": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "by_level": {lv: dict(sorted(c.items())) for lv, c in sorted(by_level.items())},
            "paper_reasons": dict(sorted(reasons.items())),
            "totals": dict(totals),
            "failures": failures,
            "print_batch": run.print_batch_path,
            "sample_pdf": sample[0] if sample else None,
            "archive_root": str(archive.root()),
            "language": language,
        }
        cur.execute(FINISH_RUN, (Json(summary), run_id))
    log.info("%s", summary_text(summary))
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as a clerk reads it: in the company's language (``run_summary/<lang>/``
    templates, amounts and dates as in the letters), the print batch and a sample PDF as
    URLs that open them."""
    from erpmail.documents import templates

    engine = templates.default()
    language, _ = engine.language_for(SUMMARY_TEMPLATES, summary.get("language"))
    variables = {
        "summary": summary,
        "key_date": date.fromisoformat(summary["key_date"]),
        "levels": {lv: c for lv, c in summary["by_level"].items() if lv != "-"},
        "print_batch_url": archive_url(summary.get("print_batch")),
        "sample_pdf_url": archive_url(summary.get("sample_pdf")),
    }
    return engine.render(f"{SUMMARY_TEMPLATES}/{language}/body.txt", language, variables).strip()


def archive_url(key: str | None) -> str | None:
    """A URL a user opens a stored file with: ``file://`` for the local store, else the
    store's own (fsspec) URL, without connection ids; None for no key."""
    if not key:
        return None
    target = archive.path_of(key)
    if archive.local_root() is not None:
        return Path(target.path).resolve().as_uri()
    return target.as_uri()
