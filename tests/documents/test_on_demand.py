"""Documents on demand through the shared pipeline, on real PostgreSQL: one letter and one
mail per partner with one PDF per document (read back with pypdf), a reference naming
nothing failing alone, reruns queuing nothing twice, archived PDFs and payment advice
reprints; what the tests assert is what was stored, queued and rendered."""

from __future__ import annotations

from datetime import date

import pytest

from erpmail.core import archive, db
from erpmail.documents import document_forms, routing, runs, summary
from erpmail.documents.on_demand import ON_DEMAND
from erpmail.documents.payment_advice import PAYMENT_ADVICE
from tests.documents import pipeline
from tests.documents.erp_documents import (
    DOCUMENTS,
    LETTERS,
    REFERENCES,
    attachments,
    three_documents,
)
from tests.pdftext import pdf_text

OUTBOX = "SELECT id, key, recipients, mime FROM mail.outbox ORDER BY id"


def on_demand_run(run_key: str, documents: list[dict], *, dry_run: bool = False) -> int:
    """Every step of a send_documents run, as the DAG runs them; the run's id."""
    form = {"company": "DEMO", "documents": documents, "dry_run": dry_run}
    run_id = runs.start_run(ON_DEMAND, run_key, form)
    batches = runs.plan_batches(run_id, runs.generate(run_id, ON_DEMAND))
    for batch in batches:
        document_forms.render_batch(run_id, batch)
    for batch in batches:
        routing.route_batch(run_id, batch, ON_DEMAND)
    summary.print_batch(run_id, ON_DEMAND.document)
    summary.summarize(run_id)
    return run_id


@pytest.fixture
def books(statements_db):
    with db.transaction(statements_db) as cur:
        partners = three_documents(cur)
    return statements_db, partners


def test_one_mail_per_partner_with_one_pdf_per_document_in_the_partners_language(books):
    conn, _ = books
    run_id = on_demand_run("manual__docs", REFERENCES)

    letters = {row[0]: row for row in pipeline.rows(conn, LETTERS, run_id)}
    assert sorted(letters) == ["000001", "000002"]
    # the invoice's role (accounting) names 000001's address; 000002 has only its own
    assert letters["000001"][2:5] == ("released", "ap@p000001.example.com", "de")
    assert letters["000002"][2:5] == ("released", "p000002@example.com", "en")
    assert [row[4] for row in pipeline.rows(conn, DOCUMENTS, run_id)] == ["rendered"] * 3

    outbox = pipeline.rows(conn, OUTBOX)
    assert len(outbox) == 2
    by_key = {key: (recipients, bytes(mime)) for _, key, recipients, mime in outbox}
    first = by_key[letters["000001"][6]]
    assert first[0] == ["ap@p000001.example.com"]
    files = attachments(first[1])
    assert sorted(files) == ["Angebot AN-2001.pdf", "Rechnung RE-1001.pdf"]
    invoice, offer = pdf_text(files["Rechnung RE-1001.pdf"]), pdf_text(files["Angebot AN-2001.pdf"])
    assert "RE-1001" in invoice and "Schrauben M8 verzinkt" in invoice and "PO-77" in invoice
    assert "Montagearbeiten" not in invoice
    assert "Montagearbeiten Halle 3" in offer and "Schrauben" not in offer
    second = by_key[letters["000002"][6]]
    (name,) = attachments(second[1])
    assert name == "Order confirmation AB-3001.pdf"
    confirmation = pdf_text(attachments(second[1])[name])
    assert "Welding robot service" in confirmation and "Order confirmation" in confirmation
    # the letter's archived PDF holds all of its documents, for the print batch
    whole = pdf_text(archive.read(letters["000001"][5]))
    assert "Schrauben M8 verzinkt" in whole and "Montagearbeiten Halle 3" in whole
    ((stored,),) = pipeline.rows(conn, "SELECT summary FROM erp.runs WHERE id = %s", run_id)
    assert stored["by_status"] == {"released": 2}


def test_a_missing_document_fails_alone_naming_it_and_a_rerun_queues_nothing_twice(books):
    conn, _ = books
    refs = [
        *REFERENCES,
        {"kind": "invoice", "number": "RE-9999"},
        {"kind": "payment_advice", "number": "P-NONE"},
    ]
    run_id = on_demand_run("manual__missing", refs)
    docs = pipeline.rows(conn, DOCUMENTS, run_id)
    failed = {row[2]: row[5] for row in docs if row[4] == "failed"}
    assert sorted(failed) == ["P-NONE", "RE-9999"]
    assert "invoice RE-9999 not found" in failed["RE-9999"]
    assert "payment_advice P-NONE" in failed["P-NONE"]
    assert sum(1 for row in docs if row[4] == "rendered") == 3
    statuses = [row[2] for row in pipeline.rows(conn, LETTERS, run_id)]
    assert statuses == ["released", "released"]
    status_view = pipeline.rows(
        conn,
        "SELECT number, status, error FROM erp.run_document_status WHERE run_id = %s "
        "ORDER BY position",
        run_id,
    )
    assert [row[1] for row in status_view] == ["released"] * 3 + ["failed"] * 2

    before = (pipeline.rows(conn, LETTERS, run_id), pipeline.rows(conn, OUTBOX), docs)
    assert on_demand_run("manual__missing", refs) == run_id
    after = (pipeline.rows(conn, LETTERS, run_id), pipeline.rows(conn, OUTBOX))
    assert after == before[:2]
    assert pipeline.rows(conn, DOCUMENTS, run_id) == docs


def test_an_archived_pdf_goes_as_stored_to_the_address_named(books):
    conn, _ = books
    stored = archive.store("inbox-scans/2026/lieferschein-4711.pdf", _pdf("Lieferschein 4711"))
    refs = [
        {"kind": "archive", "path": stored, "partner": "000002", "to": "Einkauf@Kunde.example"},
        {"kind": "archive", "path": "inbox-scans/none.pdf", "partner": "000002"},
    ]
    run_id = on_demand_run("manual__archived", refs)
    ((number, _, status, recipient, *_),) = pipeline.rows(conn, LETTERS, run_id)
    assert (number, status, recipient) == ("000002", "released", "Einkauf@kunde.example")
    ((_, _, recipients, mime),) = pipeline.rows(conn, OUTBOX)
    assert recipients == ["Einkauf@kunde.example"]
    assert attachments(bytes(mime)) == {"lieferschein-4711.pdf": archive.read(stored)}
    missing = [row for row in pipeline.rows(conn, DOCUMENTS, run_id) if row[4] == "failed"]
    assert "inbox-scans/none.pdf not found in the document store" in missing[0][5]


def test_a_payment_advice_reprint_sends_the_archived_advice_or_renders_it_again(books):
    conn, partners = books
    payment_run = _payment_run(conn, partners)
    advice_run = pipeline.kind_run(
        PAYMENT_ADVICE, "advice__1", date.today(), {"payment_run": payment_run}
    )
    advices = {row[0]: row for row in pipeline.rows(conn, LETTERS, advice_run)}
    assert sorted(advices) == ["000001", "000002"]

    run_id = on_demand_run("manual__reprint", [{"kind": "payment_advice", "number": payment_run}])
    letters = {row[0]: row for row in pipeline.rows(conn, LETTERS, run_id)}
    assert sorted(letters) == ["000001", "000002"]
    mails = {key: bytes(mime) for _, key, _, mime in pipeline.rows(conn, OUTBOX)}
    for number, letter in letters.items():
        (data,) = attachments(mails[letter[6]]).values()
        assert data == archive.read(advices[number][5])  # the archived advice, as stored

    # an advice whose PDF is no longer archived is rendered again from its own lines
    with db.transaction(conn) as cur:
        cur.execute("UPDATE erp.letters SET pdf_path = NULL WHERE id = %s", (advices["000002"][1],))
    refs = [{"kind": "payment_advice", "number": payment_run, "partner": "000002"}]
    run_id = on_demand_run("manual__reprint2", refs)
    ((number, *_, key, error),) = pipeline.rows(conn, LETTERS, run_id)
    assert number == "000002" and error is None
    ((mime,),) = pipeline.rows(conn, "SELECT mime FROM mail.outbox WHERE key = %s", key)
    ((name, data),) = attachments(bytes(mime)).items()
    assert name == f"Payment advice {payment_run}.pdf"
    text = pdf_text(data)
    assert "ADV-2-1" in text and "ADV-1-1" not in text and payment_run in text


def test_bad_forms_are_refused_before_anything_is_written(books):
    conn, _ = books
    for documents, named in (
        ([], "param 'documents'"),
        ([{"kind": "invoice"}], "needs its number"),
        ([{"kind": "memo", "number": "1"}], "kind 'memo'"),
        ([{"kind": "invoice", "number": "RE-1001", "to": "not an address"}], "field to"),
    ):
        with pytest.raises(ValueError, match=named):
            runs.start_run(ON_DEMAND, "manual__bad", {"company": "DEMO", "documents": documents})
    assert pipeline.rows(conn, "SELECT count(*) FROM erp.runs") == [(0,)]


def _pdf(text: str) -> bytes:
    from erpmail.documents import pdf

    html = f"<html><body><p>{text}</p></body></html>"
    (result,) = pdf.render_batch([pdf.LetterSource("scan", html)])
    return result.pdf


def _payment_run(conn, partners: dict[str, int]) -> str:
    """An executed payment run paying 000001 and 000002 one line each; its number."""
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date, status) "
            "VALUES ('DEMO', 'PR-ONDEMAND', %s, 'executed') RETURNING id",
            (date.today(),),
        )
        run = cur.fetchone()[0]
        for n, number in enumerate(("000001", "000002"), start=1):
            cur.execute(
                "INSERT INTO erp.payment_lines (payment_run_id, partner_id, doc_number, doc_date,"
                " gross_amount, paid_amount, currency) VALUES (%s, %s, %s, %s, 100, 100, 'EUR')",
                (run, partners[number], f"ADV-{n}-1", date.today()),
            )
    return "PR-ONDEMAND"


DUE = {
    "invoice": {"de": "Fällig am", "en": "Due date", "nl": "Vervaldatum"},
    "offer": {"de": "Gültig bis", "en": "Valid until", "nl": "Geldig tot"},
    "order_confirmation": {"de": "Liefertermin", "en": "Delivery date", "nl": "Leverdatum"},
}


@pytest.mark.parametrize("language", ["de", "en", "nl"])
@pytest.mark.parametrize("kind", ["invoice", "offer", "order_confirmation"])
def test_every_erp_document_and_the_mail_render_in_every_language(books, kind, language):
    from erpmail.documents import templates
    from erpmail.documents.on_demand import document_title

    conn, partners = books
    with db.transaction(conn) as cur:
        cur.execute("SELECT id FROM erp.documents WHERE number = 'AN-2001'")
        (document_id,) = cur.fetchone()
        cur.execute("UPDATE erp.documents SET kind = %s WHERE id = %s", (kind, document_id))
        partner = templates.Partner(partners["000001"], "000001", "Kunde", language=language)
        (context,) = document_forms.erp_contexts(
            cur, runs.load_run(cur, _run(cur)), {document_id: partner}
        ).values()
    rendered = templates.default().render_letter(context)
    assert (rendered.language, rendered.fallback_from) == (language, None)
    assert "AN-2001" in rendered.subject and "Montagearbeiten Halle 3" in rendered.letter_html
    assert DUE[kind][language] in rendered.letter_html  # the kind's own label on the shared form
    title = document_title(kind, "AN-2001", language)
    assert title.endswith(" AN-2001") and title != "AN-2001"
    mail = templates.default().render_document(
        "on_demand",
        {"company": context.company, "documents": [{"title": title}]},
        language=language,
    )
    assert title in mail.subject and title in mail.text and title in mail.html


def _run(cur) -> int:
    cur.execute(
        "INSERT INTO erp.runs (kind, airflow_run_id, company, key_date) "
        "VALUES ('on_demand', 'manual__forms', 'DEMO', current_date) RETURNING id"
    )
    return cur.fetchone()[0]
