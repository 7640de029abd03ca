"""Rendering the letters of a documents-on-demand run: each of a letter's documents as its
form (an ERP document from ``include/templates/<kind>/``, a payment advice rendered again
from its own letter's context) or as archived, all of them in a row as the letter's archived
PDF, each document's pages noted; a document that fails fails alone."""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psycopg2.extensions

from erpmail.core import archive, db
from erpmail.documents import runs
from erpmail.documents.on_demand import ERP_KINDS, KIND
from erpmail.documents.rendering import TO_RENDER, archive_key, rendered_letter
from erpmail.documents.runs import SET_FAILED, Run, load_run

log = logging.getLogger(__name__)

DOCUMENTS = """
SELECT id, letter_id, kind, number, document_id, advice_letter_id, source_path
  FROM erp.run_documents WHERE letter_id = ANY(%s) AND status = 'requested'
 ORDER BY letter_id, position, id"""
ERP_DOCUMENTS = """
SELECT id, kind, number, doc_date, due_date, customer_ref, currency, net_amount, tax_amount,
       gross_amount
  FROM erp.documents WHERE id = ANY(%s)"""
ERP_LINES = """
SELECT document_id, position, description, quantity, unit, unit_price, amount
  FROM erp.document_lines WHERE document_id = ANY(%s) ORDER BY document_id, position"""
ADVICE_RUN = "SELECT run_id FROM erp.letters WHERE id = %s"
SET_DOCUMENT = """
UPDATE erp.run_documents SET status = %s, error = %s, first_page = %s, page_count = %s
 WHERE id = %s AND status = 'requested'"""
SET_LETTER = """
UPDATE erp.letters SET status = %s, pdf_path = %s, updated_at = now()
 WHERE id = %s AND status = 'generated'"""


def erp_contexts(
    cur: psycopg2.extensions.cursor, run: Run, wanted: dict[int, Any]
) -> dict[int, Any]:
    """Per erp.documents id its form's ``LetterContext`` for the addressee in ``wanted``:
    ``doc`` (the head: number, dates, customer reference, amounts) and ``lines``."""
    from erpmail.documents.templates import LetterContext

    company, _, _ = runs.load_company(cur, run.company)
    cur.execute(ERP_LINES, (list(wanted),))
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    names = ("position", "description", "quantity", "unit", "unit_price", "amount")
    for document_id, *row in cur.fetchall():
        lines[document_id].append(dict(zip(names, row, strict=True)))
    cur.execute(ERP_DOCUMENTS, (list(wanted),))
    out = {}
    head_names = ("id", "kind", "number", "doc_date", "due_date", "customer_ref", "currency")
    for document_id, *head, net, tax, gross in cur.fetchall():
        doc = {**dict(zip(head_names, (document_id, *head), strict=True))}
        doc.update(net_amount=net, tax_amount=tax, gross_amount=gross)
        out[document_id] = LetterContext(
            document=doc["kind"],
            company=company,
            partner=wanted[document_id],
            key_date=doc["doc_date"],
            items=(),
            texts=None,
            reference=doc["number"],
            sender=company.email,
            sender_name=company.name,
            extra={"doc": doc, "lines": lines.get(document_id, [])},
        )
    return out


def _advice_context(cur: psycopg2.extensions.cursor, advice_letter_id: int) -> Any:
    """The reprinted payment advice's context, as its own run made it."""
    from erpmail.documents.payment_advice import advice_contexts

    cur.execute(ADVICE_RUN, (advice_letter_id,))
    advice_run = load_run(cur, cur.fetchone()[0])
    return advice_contexts(cur, advice_run, [advice_letter_id]).get(advice_letter_id) or (
        LookupError(f"letter {advice_letter_id} not found")
    )


def _page_count(data: bytes) -> int:
    import pypdf

    return len(pypdf.PdfReader(io.BytesIO(data)).pages)


def _joined(parts: Sequence[bytes]) -> bytes:
    import pypdf

    writer = pypdf.PdfWriter()
    for data in parts:
        writer.append(io.BytesIO(data))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def render_batch(run_id: int, batch: int) -> dict[str, int]:
    """Render the batch's ``generated`` letters: each document's PDF (a failing one ``failed``
    alone, naming kind and number), the letter's PDF archived (``archived``; a dry run's under
    ``review/``, ``rendered``), or the letter ``failed`` when none of its documents rendered.
    Returns counts by letter status."""
    from erpmail.documents import pdf, templates

    engine = templates.default()
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            run = load_run(cur, run_id)
            cur.execute(TO_RENDER, (run_id, batch))
            letters = cur.fetchall()
            heads = {h.letter_id: h for h in runs.letter_heads(cur, [i for i, _ in letters])}
            cur.execute(DOCUMENTS, ([i for i, _ in letters],))
            documents = cur.fetchall()
            wanted = {row[4]: heads[row[1]].partner for row in documents if row[2] in ERP_KINDS}
            contexts = erp_contexts(cur, run, wanted) if wanted else {}
            for doc_id, *_, advice_letter, source in documents:
                if advice_letter and not source:
                    contexts[("advice", doc_id)] = _advice_context(cur, advice_letter)
        ready: dict[int, bytes] = {}  # per document its PDF
        failed: dict[int, str] = {}  # per document why it failed
        sources = []
        for doc_id, _, kind, number, document_id, _, source in documents:
            try:
                if source:
                    ready[doc_id] = archive.read(source)
                    continue
                context = contexts.get(document_id if kind in ERP_KINDS else ("advice", doc_id))
                rendered = rendered_letter(engine, context, kind)
                sources.append(pdf.LetterSource(str(doc_id), rendered.letter_html))
            except Exception as exc:  # this document fails alone
                failed[doc_id] = f"{kind} {number}: {type(exc).__name__}: {exc}"
        own: dict[int, list[tuple]] = defaultdict(list)
        for doc_id, letter_id, kind, number, *_ in documents:
            own[letter_id].append((doc_id, kind, number))
        names = {doc_id: f"{kind} {number}" for doc_id, _, kind, number, *_ in documents}
        for result in pdf.render_batch(sources) if sources else []:
            if result.ok:
                ready[int(result.key)] = result.pdf
            else:
                failed[int(result.key)] = f"{names[int(result.key)]}: {result.error}"
        status = "rendered" if run.dry_run else "archived"
        counts = {status: 0, "failed": 0}
        with db.transaction(conn) as cur:
            for letter_id, partner_number in letters:
                done, parts, first = [], [], 0
                for doc_id, kind, number in own.get(letter_id, []):
                    if doc_id not in ready:
                        cur.execute(SET_DOCUMENT, ("failed", failed[doc_id], None, None, doc_id))
                        continue
                    try:
                        pages = _page_count(ready[doc_id])
                    except Exception as exc:  # an archived file that is no PDF
                        error = f"{kind} {number}: not a PDF: {exc}"
                        cur.execute(SET_DOCUMENT, ("failed", error, None, None, doc_id))
                        failed[doc_id] = error
                        continue
                    done.append((doc_id, first, pages))
                    parts.append(ready[doc_id])
                    first += pages
                if not done:
                    errors = "; ".join(failed[d] for d, *_ in own.get(letter_id, []))
                    cur.execute(SET_FAILED, (errors or "no documents", letter_id))
                    counts["failed"] += 1
                    continue
                key = archive_key(run, KIND, partner_number, letter_id)
                archive.store(key, _joined(parts))
                for doc_id, first_page, pages in done:
                    cur.execute(SET_DOCUMENT, ("rendered", None, first_page, pages, doc_id))
                cur.execute(SET_LETTER, (status, key, letter_id))
                counts[status] += 1
    finally:
        conn.close()
    for error in failed.values():
        log.warning("failed: %s", error)
    log.info("run %s batch %s: %s", run_id, batch, counts)
    return counts
