"""send_documents end to end with dag.test(): ERP documents written by hand on the seeded
books, real PostgreSQL, aiosmtpd behind outbox_dispatch. Three documents for two partners
arrive as two mails with the right PDFs, a missing document fails alone naming it, a rerun
sends nothing twice, a payment advice is reprinted; malformed references are refused."""

from __future__ import annotations

from datetime import date

import pendulum
import pytest

from erpmail.core import archive, db
from erpmail.documents.payment_advice import PAYMENT_ADVICE
from tests.dags import dagtest
from tests.documents import pipeline
from tests.documents.erp_documents import (
    DOCUMENTS,
    LETTERS,
    REFERENCES,
    attachments,
    three_documents,
)
from tests.pdftext import pdf_text

OUTBOX = "SELECT id, key, status FROM mail.outbox ORDER BY id"
STATUS = """
SELECT kind, number, partner_number, status, error FROM erp.run_document_status
 WHERE airflow_run_id = %s ORDER BY position, run_document_id"""


@pytest.fixture
def books(seeded_db, company_sender, smtp_server, airflow_db, tmp_path, monkeypatch):
    """The seeded books with ``three_documents``, the company's account sending through
    ``smtp_server``, a temp store."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    with db.transaction(seeded_db) as cur:
        partners = three_documents(cur)
    return seeded_db, smtp_server, partners


@pytest.mark.timeout(900)
def test_three_documents_for_two_partners_arrive_as_two_mails_and_a_rerun_sends_nothing_twice(
    books,
) -> None:
    conn, server, _ = books
    conf = {"documents": [*REFERENCES, {"kind": "offer", "number": "AN-404"}]}
    logical_date = pendulum.now("UTC")
    dag = dagtest.dag("send_documents")
    dr = dag.test(run_conf=conf, logical_date=logical_date, run_after=logical_date)
    assert dr.state == "success"
    assert dagtest.dag("outbox_dispatch").test().state == "success"

    statuses = dagtest.rows(conn, STATUS, dr.run_id)
    assert [row[:4] for row in statuses] == [
        ("invoice", "RE-1001", "000001", "sent"),
        ("order_confirmation", "AB-3001", "000002", "sent"),
        ("offer", "AN-2001", "000001", "sent"),
        ("offer", "AN-404", None, "failed"),
    ]
    assert "offer AN-404 not found" in statuses[3][4]

    received = {tuple(mail.rcpt_tos): mail for mail in server.messages}
    assert sorted(received) == [("ap@p000001.example.com",), ("p000002@example.com",)]
    first = attachments(received[("ap@p000001.example.com",)].data)
    assert sorted(first) == ["Angebot AN-2001.pdf", "Rechnung RE-1001.pdf"]
    assert "Schrauben M8 verzinkt" in pdf_text(first["Rechnung RE-1001.pdf"])
    assert "Montagearbeiten Halle 3" in pdf_text(first["Angebot AN-2001.pdf"])
    second = attachments(received[("p000002@example.com",)].data)
    assert list(second) == ["Order confirmation AB-3001.pdf"]
    assert "Welding robot service" in pdf_text(second["Order confirmation AB-3001.pdf"])
    ((run_id,),) = dagtest.rows(
        conn, "SELECT id FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    assert [row[2] for row in dagtest.rows(conn, LETTERS, run_id)] == ["sent", "sent"]

    # the same Airflow run again: no new letter, document or mail
    before = (
        dagtest.rows(conn, LETTERS, run_id),
        dagtest.rows(conn, DOCUMENTS, run_id),
        dagtest.rows(conn, OUTBOX),
    )
    dr2 = dag.test(run_conf=conf, logical_date=logical_date, run_after=logical_date)
    assert (dr2.run_id, dr2.state) == (dr.run_id, "success")
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    after = (
        dagtest.rows(conn, LETTERS, run_id),
        dagtest.rows(conn, DOCUMENTS, run_id),
        dagtest.rows(conn, OUTBOX),
    )
    assert after == before
    assert len(server.messages) == 2


@pytest.mark.timeout(900)
def test_a_payment_advice_reprint_goes_through_the_same_path(books) -> None:
    conn, server, partners = books
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date, status) "
            "VALUES ('DEMO', 'PR-REPRINT', %s, 'executed') RETURNING id",
            (date.today(),),
        )
        cur.execute(
            "INSERT INTO erp.payment_lines (payment_run_id, partner_id, doc_number, doc_date,"
            " gross_amount, paid_amount, currency) VALUES (%s, %s, 'LIEF-77', %s, 250, 250, 'EUR')",
            (cur.fetchone()[0], partners["000002"], date.today()),
        )
    advice_run = pipeline.kind_run(
        PAYMENT_ADVICE, "advice__reprint", date.today(), {"payment_run": "PR-REPRINT"}
    )
    ((_, _, status, _, _, advice_pdf, *_),) = dagtest.rows(conn, LETTERS, advice_run)
    assert status == "released"

    conf = {"documents": [{"kind": "payment_advice", "number": "PR-REPRINT", "partner": "000002"}]}
    dr = dagtest.dag("send_documents").test(run_conf=conf)
    assert dr.state == "success"
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    (status,) = dagtest.rows(conn, STATUS, dr.run_id)
    assert status[:4] == ("payment_advice", "PR-REPRINT", "000002", "sent")
    reprints = [
        m for m in server.messages if "Payment advice PR-REPRINT.pdf" in attachments(m.data)
    ]
    (reprint,) = reprints
    data = attachments(reprint.data)["Payment advice PR-REPRINT.pdf"]
    assert data == archive.read(advice_pdf) and "LIEF-77" in pdf_text(data)


def test_malformed_references_are_refused_at_trigger_time(books) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagtest.dag("send_documents")
    for bad in (
        [],
        [{"kind": "invoice"}],
        [{"kind": "receipt", "number": "1"}],
        [{"kind": "archive", "number": "1"}],
        [{"kind": "archive", "path": "../etc/passwd"}],
        [{"kind": "invoice", "number": "RE 1; drop"}],
        [{"kind": "invoice", "number": "RE-1", "to": "two words"}],
        [{"kind": "invoice", "number": "RE-1", "extra": 1}],
    ):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={"documents": bad})
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={})  # the documents are required
