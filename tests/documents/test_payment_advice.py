"""Payment advice through the shared pipeline on seeded data: exactly its payment run's
lines, never advised twice, bad input refused."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import psycopg2.errors
import psycopg2.extensions
import pytest

from erpmail.core import archive, db
from erpmail.documents import payment_advice, runs
from erpmail.documents.payment_advice import PAYMENT_ADVICE
from tests.documents.pipeline import STATEMENTS_KEY, kind_run, rows
from tests.pdftext import pdf_text

KEY = STATEMENTS_KEY


LETTERS = """
SELECT p.number, l.id, l.status, l.paper_reason, l.recipient, l.totals, l.pdf_path, o.key,
       l.error, l.language
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""


# The seeded payment runs (erpmail.seed.seed_payment_runs) and their lines.
PAYMENT_RUNS = """
SELECT r.number, count(pl.id) FROM erp.payment_runs r
  LEFT JOIN erp.payment_lines pl ON pl.payment_run_id = r.id
 WHERE r.company = 'DEMO' GROUP BY 1 ORDER BY 1"""


PAYMENT_LINES = """
SELECT p.number, pl.id, pl.doc_number, pl.gross_amount, pl.discount, pl.fees, pl.paid_amount,
       pl.currency, r.number
  FROM erp.payment_lines pl JOIN erp.payment_runs r ON r.id = pl.payment_run_id
  JOIN erp.partners p ON p.id = pl.partner_id ORDER BY pl.id"""


def seeded_payment_runs(conn) -> dict[str, int]:
    """The seed's payment runs: number -> lines left after the hand-built partners."""
    return dict(rows(conn, PAYMENT_RUNS))


@pytest.mark.timeout(600)
def test_payment_advice_lists_exactly_its_runs_lines(statements_db) -> None:
    conn = statements_db
    counts = seeded_payment_runs(conn)
    first, second = sorted(counts)
    assert counts[first] > 0 and counts[second] > 0
    lines = rows(conn, PAYMENT_LINES)
    payees = sorted({n for n, *_, run in lines if run == first})[:6]
    # the advice for six payees of the first run (rendering all is slow on a shared machine)
    with db.transaction(conn) as cur:
        cur.execute(
            "DELETE FROM erp.payment_lines pl USING erp.payment_runs r, erp.partners p "
            "WHERE r.id = pl.payment_run_id AND p.id = pl.partner_id AND r.number = %s "
            "AND NOT p.number = ANY(%s)",
            (first, payees),
        )
    lines = rows(conn, PAYMENT_LINES)
    run_id = kind_run(PAYMENT_ADVICE, "manual__pa", KEY, {"payment_run": first})
    letters = {row[0]: row for row in rows(conn, LETTERS, run_id)}
    assert set(letters) == set(payees)
    listed = rows(
        conn,
        "SELECT l.id, lpl.payment_line_id FROM erp.letter_payment_lines lpl "
        "JOIN erp.letters l ON l.id = lpl.letter_id WHERE l.run_id = %s",
        run_id,
    )
    mine = {line_id for number, line_id, *_, run in lines if run == first}
    assert {line_id for _, line_id in listed} == mine
    for number, row in letters.items():
        own = [line for line in lines if line[0] == number and line[8] == first]
        paid: dict[str, Decimal] = defaultdict(Decimal)
        for line in own:
            paid[line[7]] += line[6]
        assert {c: Decimal(v) for c, v in row[5].items()} == paid, number
        text = pdf_text(archive.read(row[6]))
        for line in own:
            assert line[2] in text, (number, line)
        for other in lines:
            if other[8] == second and other[0] == number:
                assert other[2] not in text, (number, other)  # the other run's documents
        assert f"relnr {number}" in text and first in text
    # a deduction is printed with its document
    with_discount = [line for line in lines if line[8] == first and line[4]]
    if with_discount:
        line = with_discount[0]
        text = pdf_text(archive.read(letters[line[0]][6]))
        assert "Skonto" in text or "Discount" in text or "Korting" in text

    # a second advice run for the same payment run advises nothing again
    again = kind_run(PAYMENT_ADVICE, "manual__pa_again", KEY, {"payment_run": first})
    assert rows(conn, LETTERS, again) == []


def test_the_advice_form_becomes_a_run_or_a_clear_error(statements_db) -> None:
    with db.transaction(statements_db) as cur:
        first = sorted(seeded_payment_runs(statements_db))[0]
        request = payment_advice.prepare_advice(cur, {"company": "DEMO", "payment_run": first})
        assert request.params == {"payment_run": first}
        with pytest.raises(ValueError, match="'NOPE' .* not found"):
            payment_advice.prepare_advice(cur, {"company": "DEMO", "payment_run": "NOPE"})


def test_payment_advice_bad_input(statements_db) -> None:
    conn = statements_db
    with db.transaction(conn) as cur:
        with pytest.raises(ValueError, match="'NOPE' .* not found .*payment_run"):
            payment_advice.load_payment_run(cur, "DEMO", "NOPE")
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date, status) VALUES "
            "('DEMO', 'PROP', %s, 'proposed'), ('DEMO', 'GONE', %s, 'cancelled')",
            (KEY, KEY),
        )
    with db.transaction(conn) as cur:
        with pytest.raises(ValueError, match="'PROP' is proposed, not executed"):
            payment_advice.load_payment_run(cur, "DEMO", "PROP")
        assert payment_advice.load_payment_run(cur, "DEMO", "PROP", dry_run=True).number == "PROP"
        with pytest.raises(ValueError, match="'GONE' is cancelled"):
            payment_advice.load_payment_run(cur, "DEMO", "GONE", dry_run=True)
    # a payee whose payment is not positive fails alone with the reason; the others go on
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date, status) "
            "VALUES ('DEMO', 'NEG', %s, 'executed') RETURNING id",
            (KEY,),
        )
        run = cur.fetchone()[0]
        cur.execute("SELECT id, number FROM erp.partners WHERE number IN ('000002', '000003')")
        ids = dict((n, i) for i, n in cur.fetchall())
        cur.execute(
            "INSERT INTO erp.payment_lines (payment_run_id, partner_id, doc_number, "
            "gross_amount, paid_amount, currency) VALUES (%s, %s, 'CN-9', -50, -50, 'EUR'), "
            "(%s, %s, 'INV-9', 80, 80, 'EUR')",
            (run, ids["000002"], run, ids["000003"]),
        )
    # deductions that do not add up are refused by the table
    with pytest.raises(psycopg2.errors.CheckViolation), db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.payment_lines (payment_run_id, partner_id, doc_number, "
            "gross_amount, discount, paid_amount, currency) "
            "VALUES (%s, %s, 'BAD', 80, 5, 80, 'EUR')",
            (run, ids["000003"]),
        )
    run_id = runs.create_run(
        kind="payment_advice",
        airflow_run_id="manual__neg",
        company="DEMO",
        key_date=KEY,
        params={"payment_run": "NEG"},
    )
    assert runs.generate(run_id, PAYMENT_ADVICE) == 2
    letters = {row[0]: row for row in rows(conn, LETTERS, run_id)}
    assert letters["000002"][2] == "failed" and "EUR -50.00 is not positive" in letters["000002"][8]
    assert letters["000003"][2] == "generated"
