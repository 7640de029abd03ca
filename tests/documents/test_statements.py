"""Balance confirmations and payment advice: selection rules, letters through the shared
pipeline (erpmail.documents.runs) on seeded data, PDFs against hand-computed figures, reruns."""

from __future__ import annotations

import email
import io
from collections import defaultdict
from datetime import date
from decimal import Decimal
from email import policy

import psycopg2.errors
import psycopg2.extensions
import pypdf
import pytest

from erpmail.core import archive, db
from erpmail.documents import runs, statements
from erpmail.documents.runs import DocumentKind
from erpmail.documents.statements import BALANCE_CONFIRMATION, PAYMENT_ADVICE, OpenItem
from tests.mailaccounts import SENDER, company_account
from tests.partners import hand_balances, statement_partners
from tests.pdftext import pdf_text

KEY = date.today()

PARTNERS = "SELECT number, is_customer, is_supplier FROM erp.partners ORDER BY number"
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


def _item(side: str, amount: str, currency: str = "EUR", partner_id: int = 1) -> OpenItem:
    value = Decimal(amount)
    kind = "invoice" if value > 0 else "credit_note"
    return OpenItem(1, partner_id, side, kind, "D1", KEY, KEY, value, value, currency)


def _rows(conn: psycopg2.extensions.connection, sql: str, *args) -> list[tuple]:
    with db.transaction(conn) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


# --- the rules, pure --------------------------------------------------------------------


def test_balance_is_receivables_minus_payables_per_currency() -> None:
    items = [
        _item("receivable", "1000.00"),
        _item("receivable", "-150.00"),
        _item("payable", "400.00"),
        _item("receivable", "250.50", "CHF"),
    ]
    assert statements.balance_of(items) == {"CHF": Decimal("250.50"), "EUR": Decimal("450.00")}


def test_minimum_and_zero_balances() -> None:
    small = [_item("receivable", "40.00"), _item("payable", "45.00", "CHF")]
    zero = [_item("receivable", "100.00"), _item("payable", "100.00")]
    propose = statements.propose_confirmation
    assert propose(1, small, min_abs_balance=Decimal("50")) is None
    # the largest absolute balance in any currency counts: CHF -45 reaches 45
    assert propose(1, small, min_abs_balance=Decimal("45")).balance == {
        "CHF": Decimal("-45.00"),
        "EUR": Decimal("40.00"),
    }
    assert propose(1, zero) is None
    assert propose(1, []) is None
    assert propose(1, zero, include_zero=True).is_zero
    # a zero balance is included regardless of the minimum
    assert propose(1, [], include_zero=True, min_abs_balance=Decimal("1000")).balance == {}
    with pytest.raises(ValueError, match="negative"):
        propose(1, small, min_abs_balance=Decimal("-1"))


# --- on seeded data -----------------------------------------------------------------------


@pytest.fixture
def statements_db(seeded_db, tmp_path, monkeypatch):
    """Seeded data, partners 000001-000003 rebuilt by hand, a sending account, a temp store."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    with db.transaction(seeded_db) as cur:
        statement_partners(cur, KEY)
        company_account(cur)
    return seeded_db


def _select(conn, **kwargs) -> dict[str, dict[str, Decimal]]:
    with db.transaction(conn) as cur:
        found = statements.select_confirmations(cur, company="DEMO", key_date=KEY, **kwargs)
        cur.execute("SELECT id, number FROM erp.partners")
        numbers = dict(cur.fetchall())
    return {numbers[c.partner_id]: c.balance for c in found}


def test_selection_matches_balances_computed_from_the_items(statements_db) -> None:
    conn = statements_db
    for side in ("debtors", "creditors", "both"):
        expected = {n: b for n, b in hand_balances(conn, side, KEY).items() if any(b.values())}
        assert _select(conn, side=side) == expected, side
    both = _select(conn, side="both")
    assert both["000001"] == {"CHF": Decimal("250.50"), "EUR": Decimal("450.00")}
    assert both["000002"] == {"EUR": Decimal("-1234.56")}
    assert "000003" not in both  # zero balance, excluded by default
    # one letter per partner even when it is customer and supplier with items on both sides
    assert len(both) == len(set(both))
    # creditors: suppliers only, payables only
    creditors = _select(conn, side="creditors")
    roles = {n: (c, s) for n, c, s in _rows(conn, PARTNERS)}
    assert creditors and all(roles[n][1] for n in creditors)
    assert creditors["000001"] == {"EUR": Decimal("-400.00")}
    assert _select(conn, side="debtors")["000001"] == {
        "CHF": Decimal("250.50"),
        "EUR": Decimal("850.00"),
    }


def test_zero_balances_excluded_then_included_and_minimum_and_range(statements_db) -> None:
    conn = statements_db
    without = _select(conn, side="debtors")
    with_zero = _select(conn, side="debtors", include_zero=True)
    zero = {n for n, b in with_zero.items() if not any(b.values())}
    customers = {n for n, c, _ in _rows(conn, PARTNERS) if c}
    # every customer without a balance is in, and only those are added
    assert zero == customers - set(without)
    assert set(with_zero) - zero == set(without)
    assert "000003" in _select(conn, side="both", include_zero=True)
    limited = _select(conn, side="both", min_abs_balance=Decimal("1000.00"))
    assert "000002" in limited and "000001" not in limited  # 450 EUR, 250.50 CHF
    assert all(max(abs(v) for v in b.values()) >= 1000 for b in limited.values())
    ranged = _select(conn, side="both", partner_from="000002", partner_to="000010")
    assert min(ranged) >= "000002" and max(ranged) <= "000010"
    with pytest.raises(ValueError, match="side"):
        _select(conn, side="everyone")


def _run_pipeline(kind: DocumentKind, run_key: str, key_date: date, params: dict) -> int:
    """Every step of the shared pipeline, as the DAG runs them."""
    run_id = runs.create_run(
        kind=kind.kind, airflow_run_id=run_key, company="DEMO", key_date=key_date, params=params
    )
    runs.generate(run_id, kind)
    batches = runs.plan_batches(run_id)
    for batch in batches:
        runs.render_batch(run_id, batch, kind, workers=1)
    for batch in batches:
        runs.route_batch(run_id, batch, kind)
    runs.print_batch(run_id, kind.document)
    runs.summarize(run_id)
    return run_id


@pytest.mark.timeout(600)
def test_balance_confirmation_pdfs_mail_and_rerun(statements_db) -> None:
    conn = statements_db
    params = {"side": "both", "partner_from": "000001", "partner_to": "000012"}
    run_id = _run_pipeline(BALANCE_CONFIRMATION, "manual__bc", KEY, params)
    letters = {row[0]: row for row in _rows(conn, LETTERS, run_id)}
    expected = {
        n: b
        for n, b in hand_balances(conn, "both", KEY).items()
        if "000001" <= n <= "000012" and any(b.values())
    }
    assert set(letters) == set(expected)
    for number, row in letters.items():
        assert {c: Decimal(v) for c, v in row[5].items()} == expected[number], number
        assert row[2] in ("released", "paper"), row

    # the customer-and-supplier partner: one German letter, both sides, both currencies
    text = pdf_text(archive.read(letters["000001"][6]))
    for doc in ("HB1-R1", "HB1-CN", "HB1-P1", "HB1-CHF"):
        assert doc in text
    assert "-400,00 €" in text  # a payable counts against the partner
    assert "850,00 €" in text and "400,00 €" in text and "450,00 €" in text  # sides, balance
    assert "250,50 CHF" in text
    assert "zu unseren Gunsten" in text and "Antwort zur Saldenbestätigung" in text
    # the layout's order: items, the balances, the closing text, then the reply form alone
    # on the last page
    assert text.index("HB1-CHF") < text.index("zu unseren Gunsten") < text.index("Bitte prüfen")
    pages = pypdf.PdfReader(io.BytesIO(archive.read(letters["000001"][6]))).pages
    assert len(pages) >= 2
    assert "Antwort zur Saldenbestätigung" in pages[-1].extract_text()
    assert "Bitte prüfen" not in pages[-1].extract_text()
    assert all("Antwort zur Saldenbestätigung" not in page.extract_text() for page in pages[:-1])
    assert "relnr 000001" in text and f"{run_id}-000001" in text
    # the supplier: English, in its favour
    text = pdf_text(archive.read(letters["000002"][6]))
    assert "€1,234.56" in text and "in your favour" in text and "HB1-R1" not in text

    # the mail: subject with the link keyword, the archived PDF attached
    (raw,) = _rows(conn, "SELECT mime FROM mail.outbox WHERE key = %s", letters["000001"][7])[0]
    message = email.message_from_bytes(bytes(raw), policy=policy.default)
    assert message["Subject"] == f"Saldenbestätigung zum {KEY:%d.%m.%Y} – relnr 000001"
    assert message["To"] == "p000001@example.com"
    assert message["Reply-To"] == SENDER  # no reply address in the params: the company's
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content() == archive.read(letters["000001"][6])
    assert (
        letters["000001"][7] == f"balance_confirmation:run-{run_id}:letter-{letters['000001'][1]}"
    )

    # rerun every step of the same run: nothing new, nothing changed
    outbox = _rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id")
    before = _rows(conn, LETTERS, run_id)
    assert _run_pipeline(BALANCE_CONFIRMATION, "manual__bc", KEY, params) == run_id
    assert _rows(conn, LETTERS, run_id) == before
    assert _rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id") == outbox


@pytest.mark.timeout(600)
def test_creditor_confirmations_go_to_suppliers_only(statements_db) -> None:
    conn = statements_db
    params = {"side": "creditors", "partner_from": "000001", "partner_to": "000030"}
    run_id = _run_pipeline(BALANCE_CONFIRMATION, "manual__creditors", KEY, params)
    letters = {row[0]: row for row in _rows(conn, LETTERS, run_id)}
    roles = {n: (c, s) for n, c, s in _rows(conn, PARTNERS)}
    assert letters and all(roles[n][1] for n in letters)
    text = pdf_text(archive.read(letters["000001"][6]))
    assert "HB1-P1" in text and "HB1-R1" not in text and "HB1-CHF" not in text
    assert "zu Ihren Gunsten" in text


def seeded_payment_runs(conn) -> dict[str, int]:
    """The seed's payment runs: number -> lines left after the hand-built partners."""
    return dict(_rows(conn, PAYMENT_RUNS))


@pytest.mark.timeout(600)
def test_payment_advice_lists_exactly_its_runs_lines(statements_db) -> None:
    conn = statements_db
    counts = seeded_payment_runs(conn)
    first, second = sorted(counts)
    assert counts[first] > 0 and counts[second] > 0
    lines = _rows(conn, PAYMENT_LINES)
    payees = sorted({n for n, *_, run in lines if run == first})[:6]
    # the advice for six payees of the first run (rendering all is slow on a shared machine)
    with db.transaction(conn) as cur:
        cur.execute(
            "DELETE FROM erp.payment_lines pl USING erp.payment_runs r, erp.partners p "
            "WHERE r.id = pl.payment_run_id AND p.id = pl.partner_id AND r.number = %s "
            "AND NOT p.number = ANY(%s)",
            (first, payees),
        )
    lines = _rows(conn, PAYMENT_LINES)
    run_id = _run_pipeline(PAYMENT_ADVICE, "manual__pa", KEY, {"payment_run": first})
    letters = {row[0]: row for row in _rows(conn, LETTERS, run_id)}
    assert set(letters) == set(payees)
    listed = _rows(
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
    again = _run_pipeline(PAYMENT_ADVICE, "manual__pa_again", KEY, {"payment_run": first})
    assert _rows(conn, LETTERS, again) == []


def test_forms_become_runs_or_clear_errors(statements_db) -> None:
    form = {"company": "DEMO", "key_date": KEY.isoformat(), "side": "creditors"}
    with db.transaction(statements_db) as cur:
        request = statements.prepare_confirmation(
            cur, {**form, "reply_address": "Saldo@Muster-Handels.example.com"}
        )
        assert request.key_date == KEY
        assert request.params["side"] == "creditors"
        assert request.params["reply_address"] == "Saldo@muster-handels.example.com"
        assert statements.prepare_confirmation(cur, form).params["reply_address"] is None
        with pytest.raises(ValueError, match="param 'reply_address' 'not@an@address'"):
            statements.prepare_confirmation(cur, {**form, "reply_address": "not@an@address"})
        with pytest.raises(ValueError, match="partner_from '000009' is after partner_to"):
            statements.prepare_confirmation(
                cur, {**form, "partner_from": "000009", "partner_to": "000001"}
            )
        first = sorted(seeded_payment_runs(statements_db))[0]
        request = statements.prepare_advice(cur, {"company": "DEMO", "payment_run": first})
        assert request.params == {"payment_run": first}
        with pytest.raises(ValueError, match="'NOPE' .* not found"):
            statements.prepare_advice(cur, {"company": "DEMO", "payment_run": "NOPE"})


def test_payment_advice_bad_input(statements_db) -> None:
    conn = statements_db
    with db.transaction(conn) as cur:
        with pytest.raises(ValueError, match="'NOPE' .* not found .*payment_run"):
            statements.load_payment_run(cur, "DEMO", "NOPE")
        cur.execute(
            "INSERT INTO erp.payment_runs (company, number, payment_date, status) VALUES "
            "('DEMO', 'PROP', %s, 'proposed'), ('DEMO', 'GONE', %s, 'cancelled')",
            (KEY, KEY),
        )
    with db.transaction(conn) as cur:
        with pytest.raises(ValueError, match="'PROP' is proposed, not executed"):
            statements.load_payment_run(cur, "DEMO", "PROP")
        assert statements.load_payment_run(cur, "DEMO", "PROP", dry_run=True).number == "PROP"
        with pytest.raises(ValueError, match="'GONE' is cancelled"):
            statements.load_payment_run(cur, "DEMO", "GONE", dry_run=True)
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
    rows = {row[0]: row for row in _rows(conn, LETTERS, run_id)}
    assert rows["000002"][2] == "failed" and "EUR -50.00 is not positive" in rows["000002"][8]
    assert rows["000003"][2] == "generated"
