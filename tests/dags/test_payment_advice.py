"""payment_advice end to end with dag.test(): seeded payment runs, real PostgreSQL, aiosmtpd
behind outbox_dispatch; each advice lists exactly its run's lines; reruns and a second run
for the same payment run send nothing twice; bad Params are refused."""

from __future__ import annotations

import email
from collections import defaultdict
from decimal import Decimal
from email import policy

import pendulum
import pytest

from erpmail.core import archive, db
from tests.dags import dagtest
from tests.pdftext import pdf_text

TODAY = pendulum.today("Europe/Berlin").date()
LETTERS = """
SELECT p.number, l.id, l.status, l.paper_reason, l.recipient, l.totals, l.pdf_path, o.key,
       l.error
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""
PAYMENT_RUNS = "SELECT number FROM erp.payment_runs WHERE company = 'DEMO'"
LINES = """
SELECT p.number, pl.id, pl.doc_number, pl.gross_amount, pl.discount, pl.fees, pl.paid_amount,
       pl.currency, r.number
  FROM erp.payment_lines pl JOIN erp.payment_runs r ON r.id = pl.payment_run_id
  JOIN erp.partners p ON p.id = pl.partner_id ORDER BY pl.id"""
# Keep six payees of the first run (rendering is slow on a shared machine), including one
# paid in both runs and one with a deduction when the seed has them.
KEEP = """
DELETE FROM erp.payment_lines pl USING erp.payment_runs r, erp.partners p
 WHERE r.id = pl.payment_run_id AND p.id = pl.partner_id AND r.number = %s
   AND NOT p.number = ANY(%s)"""


@pytest.fixture
def payment_runs(statement_book, company_sender, smtp_server, airflow_db, tmp_path, monkeypatch):
    """The seed's two payment runs, the first cut down to six payees; the company's account
    sending through ``smtp_server``, a temp store."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    conn, server = statement_book, smtp_server
    first, second = sorted(number for (number,) in dagtest.rows(conn, PAYMENT_RUNS))
    lines = dagtest.rows(conn, LINES)
    in_second = {n for n, *_, run in lines if run == second}
    payees = sorted({n for n, *_, run in lines if run == first})
    both = [n for n in payees if n in in_second][:2]
    deducted = [n for n, _, _, _, d, f, *_, run in lines if run == first and (d or f)][:2]
    keep = list(dict.fromkeys(both + deducted))
    keep = sorted(keep + [n for n in payees if n not in keep][: 6 - len(keep)])
    with db.transaction(conn) as cur:
        cur.execute(KEEP, (first, keep))
    return conn, server, first, second, keep


@pytest.mark.timeout(900)
def test_payment_advice_lists_exactly_its_runs_lines_and_reruns_send_nothing_twice(
    payment_runs,
) -> None:
    conn, server, first, second, payees = payment_runs
    conf = {"payment_run": first, "company": "DEMO", "note": "test"}
    logical_date = pendulum.now("UTC")
    dag = dagtest.dag("payment_advice")
    dr = dag.test(run_conf=conf, logical_date=logical_date, run_after=logical_date)
    assert dr.state == "success"
    ((run_id, key_date),) = dagtest.rows(
        conn, "SELECT id, key_date FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    assert key_date == TODAY  # the payment date
    assert dagtest.dag("outbox_dispatch").test().state == "success"

    lines = dagtest.rows(conn, LINES)
    letters = {row[0]: row for row in dagtest.rows(conn, LETTERS, run_id)}
    assert sorted(letters) == payees
    for number, row in letters.items():
        own = [line for line in lines if line[0] == number and line[8] == first]
        paid: dict[str, Decimal] = defaultdict(Decimal)
        for line in own:
            assert line[6] == line[3] - line[4] - line[5]
            paid[line[7]] += line[6]
        assert {c: Decimal(v) for c, v in row[5].items()} == paid, number
        assert row[2] in ("sent", "paper"), row
        text = pdf_text(archive.read(row[6]))
        for line in own:
            assert line[2] in text, (number, line[2])
        for other in lines:
            if other[0] == number and other[8] == second:
                assert other[2] not in text, (number, other[2])
    # exactly the run's lines are on its letters, each once
    listed = dagtest.rows(
        conn,
        "SELECT lpl.payment_line_id FROM erp.letter_payment_lines lpl "
        "JOIN erp.letters l ON l.id = lpl.letter_id WHERE l.run_id = %s ORDER BY 1",
        run_id,
    )
    assert [row[0] for row in listed] == sorted(line[1] for line in lines if line[8] == first)

    # each mail carries its payee's archived PDF
    received = server.messages
    outbox = dict(dagtest.rows(conn, "SELECT message_id, key FROM mail.outbox"))
    by_key = {row[7]: row for row in letters.values() if row[7]}
    assert len(received) == sum(1 for row in letters.values() if row[2] == "sent")
    for mail in received:
        message = email.message_from_bytes(mail.data, policy=policy.default)
        letter = by_key[outbox[message["Message-ID"]]]
        assert mail.rcpt_tos == [letter[4]]
        assert first in message["Subject"] and f"relnr {letter[0]}" in message["Subject"]
        (attachment,) = list(message.iter_attachments())
        assert attachment.get_content() == archive.read(letter[6])

    # rerun the same Airflow run: nothing new; a new Airflow run for the same payment run:
    # no letter at all, since every line was advised
    before = dagtest.rows(conn, LETTERS, run_id)
    keys = dagtest.rows(conn, "SELECT id, key FROM mail.outbox ORDER BY id")
    dr2 = dag.test(run_conf=conf, logical_date=logical_date, run_after=logical_date)
    assert (dr2.run_id, dr2.state) == (dr.run_id, "success")
    dr3 = dag.test(run_conf=conf)
    assert dr3.state == "success" and dr3.run_id != dr.run_id
    ((again,),) = dagtest.rows(
        conn, "SELECT id FROM erp.runs WHERE airflow_run_id = %s", dr3.run_id
    )
    assert dagtest.rows(conn, LETTERS, again) == []
    assert dagtest.rows(conn, LETTERS, run_id) == before
    assert dagtest.rows(conn, "SELECT id, key FROM mail.outbox ORDER BY id") == keys
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    assert len(server.messages) == len(received)


def test_bad_params_and_unknown_payment_runs_are_refused(payment_runs) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    conn, _, first, _, _ = payment_runs
    dag = dagtest.dag("payment_advice")
    for bad in ({"payment_run": ""}, {"payment_run": "P1; drop"}, {"company": "demo"}):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={"payment_run": first, **bad})
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={})  # the payment run is required
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date) "
            "VALUES ('DEMO', 'PROPOSED', %s)",
            (TODAY,),
        )
    for number in ("NOPE", "PROPOSED"):
        dr = dag.test(run_conf={"payment_run": number})
        dagtest.assert_refused_at_start(conn, dr)
