"""Documents on demand, a document kind of the shared pipeline in ``erpmail.documents.runs``.

The ERP asks for documents by reference: an ERP document (invoice, offer, order confirmation
by number, from erp.documents), a payment advice reprint (a payment run's number: each
payee's advice as archived, or rendered again), or an archived PDF (its archive key). Each
partner gets ONE letter carrying all its documents (erp.run_documents), so ONE mail with one
PDF per document; the letter's own PDF is all of them in a row, for the print batch. A
reference that names nothing fails alone (erp.run_documents, with kind and number).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json, execute_values

from erpmail.core import archive
from erpmail.documents import runs
from erpmail.documents.runs import DocumentKind, Run, RunRequest
from erpmail.documents.statements import always_email

KIND = "on_demand"  # erp.runs.kind, erp.letters.document, include/templates/on_demand
ERP_KINDS = ("invoice", "offer", "order_confirmation")
ADVICE = "payment_advice"
ARCHIVE = "archive"
REFERENCE_KINDS = (*ERP_KINDS, ADVICE, ARCHIVE)
# Whose address (and language) a document goes to first, before the partner's own address.
CONTACT_ROLES = {
    "invoice": "accounting",
    "offer": "purchasing",
    "order_confirmation": "purchasing",
    ADVICE: "accounting",
    ARCHIVE: "general",
}
MAX_DOCUMENTS = 500

PARTNER = "SELECT id FROM erp.partners WHERE company = %s AND number = %s"
ERP_DOCUMENT = """
SELECT d.id, d.partner_id, p.number FROM erp.documents d JOIN erp.partners p ON p.id = d.partner_id
 WHERE d.company = %s AND d.kind = %s AND d.number = %s"""
PAYMENT_RUN = "SELECT id FROM erp.payment_runs WHERE company = %s AND number = %s"
# Per payee the advice to reprint: the latest letter of a (non-dry) payment advice run of that
# payment run that was rendered, preferring one whose PDF is still archived.
ADVICE_LETTERS = """
SELECT DISTINCT ON (l.partner_id) l.id, l.partner_id, l.pdf_path
  FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id
  JOIN erp.partners p ON p.id = l.partner_id
 WHERE r.kind = 'payment_advice' AND NOT r.dry_run AND r.company = %(company)s
   AND r.params->>'payment_run' = %(payment_run)s
   AND l.status <> 'withheld' AND NOT (l.status = 'failed' AND l.pdf_path IS NULL)
   AND (%(partner)s::text IS NULL OR p.number = %(partner)s)
 ORDER BY l.partner_id, l.pdf_path IS NULL, l.id DESC"""
ARCHIVED_LETTER = """
SELECT l.partner_id FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id
 WHERE l.pdf_path = %s AND r.company = %s ORDER BY l.id DESC LIMIT 1"""
ROLE_CONTACT = """
SELECT c.email FROM erp.contacts c
 WHERE c.partner_id = %s AND c.role = %s AND coalesce(c.email, '') <> '' ORDER BY c.id LIMIT 1"""
INSERT_LETTERS = """
INSERT INTO erp.letters (run_id, partner_id, document, language, recipient, totals) VALUES %s
ON CONFLICT (run_id, partner_id) DO NOTHING
RETURNING id, partner_id"""
INSERT_DOCUMENTS = """
INSERT INTO erp.run_documents (run_id, position, kind, number, partner_id, letter_id,
    document_id, advice_letter_id, source_path, status, error)
VALUES %s"""
LETTER_DOCUMENTS = """
SELECT d.letter_id, d.kind, d.number, d.source_path, d.first_page, d.page_count, l.pdf_path
  FROM erp.run_documents d JOIN erp.letters l ON l.id = d.letter_id
 WHERE d.letter_id = ANY(%s) AND d.status = 'rendered'
 ORDER BY d.letter_id, d.position, d.id"""


def prepare_documents(cur: psycopg2.extensions.cursor, form: Mapping[str, Any]) -> RunRequest:
    """The ``send_documents`` form as a run: its references checked across fields (what JSON
    schema cannot say) and kept on the run; today in the company's time zone as key date."""
    from erpmail.documents import mime

    references = form.get("documents") or []
    if not references or len(references) > MAX_DOCUMENTS:
        raise ValueError(f"param 'documents': 1 to {MAX_DOCUMENTS} references, not {references!r}")
    kept = []
    for n, ref in enumerate(references):
        where = f"param 'documents' item {n}"
        kind = ref.get("kind")
        if kind not in REFERENCE_KINDS:
            raise ValueError(f"{where}: kind {kind!r} is not one of {list(REFERENCE_KINDS)}")
        number = (ref.get("path") if kind == ARCHIVE else ref.get("number")) or ""
        if not number.strip():
            need = "path" if kind == ARCHIVE else "number"
            raise ValueError(f"{where}: a {kind} needs its {need}")
        to = ref.get("to") or None
        if to:
            to = mime.check_address(to, context=where, field="to")
        kept.append(
            {
                "kind": kind,
                "number": number.strip(),
                "partner": ref.get("partner") or None,
                "to": to,
            }
        )
    return RunRequest(key_date=runs.company_today(cur, form["company"]), params={"documents": kept})


def _resolve(
    cur: psycopg2.extensions.cursor, run: Run, ref: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The documents one reference names: each with its partner and source, or one row with
    the error that fails it alone."""
    kind, number, partner = ref["kind"], ref["number"], ref.get("partner")
    name = f"{kind} {number}"
    found: list[dict[str, Any]] = []
    partner_id = None
    if partner:
        cur.execute(PARTNER, (run.company, partner))
        row = cur.fetchone()
        if row is None:
            return [{"error": f"{name}: partner {partner} not found in company {run.company}"}]
        partner_id = row[0]
    if kind in ERP_KINDS:
        cur.execute(ERP_DOCUMENT, (run.company, kind, number))
        row = cur.fetchone()
        if row is None:
            return [{"error": f"{name} not found in erp.documents of company {run.company}"}]
        if partner_id is not None and row[1] != partner_id:
            return [{"error": f"{name} belongs to partner {row[2]}, not {partner}"}]
        found.append({"partner_id": row[1], "document_id": row[0]})
    elif kind == ADVICE:
        cur.execute(PAYMENT_RUN, (run.company, number))
        if cur.fetchone() is None:
            return [{"error": f"{name}: payment run not found in erp.payment_runs"}]
        cur.execute(
            ADVICE_LETTERS, {"company": run.company, "payment_run": number, "partner": partner}
        )
        for letter_id, payee, pdf_path in cur.fetchall():
            found.append({"partner_id": payee, "advice_letter_id": letter_id, "source": pdf_path})
        if not found:
            whom = f" for partner {partner}" if partner else ""
            return [{"error": f"{name}: no payment advice was made{whom} (run payment_advice)"}]
    else:
        try:
            stored = archive.exists(number)
        except ValueError as exc:
            return [{"error": f"{name}: {exc}"}]
        if not stored:
            return [{"error": f"{name} not found in the document store"}]
        if partner_id is None:
            cur.execute(ARCHIVED_LETTER, (number, run.company))
            row = cur.fetchone()
            if row is None:
                return [{"error": f"{name}: no letter names it; give its partner"}]
            partner_id = row[0]
        found.append({"partner_id": partner_id, "source": number})
    return found


def generate_documents(cur: psycopg2.extensions.cursor, run: Run) -> int:
    """Resolve the run's references and write one letter per partner (``generated``) with its
    documents; a reference naming nothing is a failed document of its own. How many letters."""
    documents: list[dict[str, Any]] = []
    for position, ref in enumerate((run.params or {}).get("documents", [])):
        for found in _resolve(cur, run, ref):
            documents.append({**found, "position": position, "ref": ref})
    per_partner: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for doc in documents:
        if not doc.get("error"):
            per_partner[doc["partner_id"]].append(doc)
    recipients: dict[int, str | None] = {}
    roles: dict[int, str] = {}
    for partner_id, own in per_partner.items():
        roles[partner_id] = CONTACT_ROLES[own[0]["ref"]["kind"]]
        named = next((doc["ref"]["to"] for doc in own if doc["ref"].get("to")), None)
        for doc in own:
            to = doc["ref"].get("to")
            if to and to != named:
                doc["error"] = (
                    f"{doc['ref']['kind']} {doc['ref']['number']}: recipient {to} differs from "
                    f"{named}, named for the partner's other documents (one mail per partner)"
                )
        if named is None:
            cur.execute(ROLE_CONTACT, (partner_id, roles[partner_id]))
            row = cur.fetchone()
            named = row[0] if row else None  # None: routing takes the general contact or partner
        recipients[partner_id] = named
    languages: dict[int, str] = {}
    for role in set(roles.values()):
        ids = [p for p, r in roles.items() if r == role]
        languages.update(runs.partner_languages(cur, ids, role))
    rows = [(run.id, p, KIND, languages[p], recipients[p], Json({})) for p in sorted(per_partner)]
    inserted = execute_values(cur, INSERT_LETTERS, rows, fetch=True) if rows else []
    letters = {partner_id: letter_id for letter_id, partner_id in inserted}
    execute_values(
        cur,
        INSERT_DOCUMENTS,
        [
            (
                run.id,
                doc["position"],
                doc["ref"]["kind"],
                doc["ref"]["number"],
                doc.get("partner_id"),
                None if doc.get("error") else letters[doc["partner_id"]],
                doc.get("document_id"),
                doc.get("advice_letter_id"),
                doc.get("source"),
                "failed" if doc.get("error") else "requested",
                doc.get("error"),
            )
            for doc in documents
        ],
    )
    return len(inserted)


def document_title(kind: str, number: str, language: str) -> str:
    """A document's name as its mail lists it and names its file, in ``language``
    (``on_demand/<lang>/title.txt``); an archived one by its file name."""
    from erpmail.documents import templates

    engine = templates.default()
    used, _ = engine.language_for(KIND, language)
    shown = number.rpartition("/")[2].removesuffix(".pdf") if kind == ARCHIVE else number
    variables = {"kind": kind, "number": shown}
    return engine.render(f"{KIND}/{used}/title.txt", used, variables).strip()


def _pages(data: bytes, first: int, count: int) -> bytes:
    """Pages ``first`` to ``first + count - 1`` of a PDF, as a PDF of their own."""
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    writer = pypdf.PdfWriter()
    for number in range(first, first + count):
        writer.add_page(reader.pages[number])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def document_contexts(
    cur: psycopg2.extensions.cursor, run: Run, letter_ids: Sequence[int]
) -> dict[int, Any]:
    """Each letter's mail context (``on_demand`` templates): ``documents`` (kind, number,
    title) and, once the letter is archived, ``attachments``: one PDF per document, an
    archived one as stored, a rendered one cut from the letter's PDF."""
    from erpmail.documents import mime
    from erpmail.documents.templates import LetterContext

    company, _, _ = runs.load_company(cur, run.company)
    cur.execute(LETTER_DOCUMENTS, (list(letter_ids),))
    own: dict[int, list[tuple]] = defaultdict(list)
    for letter_id, *row in cur.fetchall():
        own[letter_id].append(tuple(row))
    out: dict[int, Any] = {}
    for head in runs.letter_heads(cur, letter_ids):
        docs = own.get(head.letter_id)
        if not docs:
            out[head.letter_id] = LookupError("no document of this letter was rendered")
            continue
        listed, attachments, letter_pdf = [], [], None
        for kind, number, source, first, count, pdf_path in docs:
            title = document_title(kind, number, head.language)
            listed.append({"kind": kind, "number": number, "title": title})
            if pdf_path is None:
                continue  # not archived yet (or a dry run's review): nothing to attach
            if source:
                data = archive.read(source)
            else:
                letter_pdf = letter_pdf or archive.read(pdf_path)
                data = _pages(letter_pdf, first, count)
            attachments.append(mime.Attachment(filename=f"{title}.pdf", data=data))
        out[head.letter_id] = LetterContext(
            document=KIND,
            company=company,
            partner=head.partner,
            key_date=run.key_date,
            items=(),
            texts=None,
            reference=f"{run.id}-{head.partner.number}",
            sender=company.email,
            sender_name=company.name,
            extra={"letter_id": head.letter_id, "documents": listed, "attachments": attachments},
        )
    return out


ON_DEMAND = DocumentKind(
    kind=KIND,
    document=KIND,
    contact_role="general",  # when neither the ERP nor the document's role names an address
    prepare=prepare_documents,
    generate=generate_documents,
    contexts=document_contexts,
    sends_email=always_email,
)
