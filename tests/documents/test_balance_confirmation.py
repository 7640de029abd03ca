"""Balance confirmations: the selection rules, and letters through the shared pipeline on
seeded data, PDFs against hand-computed figures, reruns."""

from __future__ import annotations

import email
import io
from decimal import Decimal
from email import policy

import pypdf
import pytest

from erpmail.core import archive, db
from erpmail.documents import balance_confirmation
from erpmail.documents.balance_confirmation import BALANCE_CONFIRMATION, OpenItem
from tests.documents.pipeline import STATEMENTS_KEY, kind_run, rows
from tests.mailaccounts import SENDER
from tests.partners import hand_balances
from tests.pdftext import pdf_text

KEY = STATEMENTS_KEY


PARTNERS = "SELECT number, is_customer, is_supplier FROM erp.partners ORDER BY number"


LETTERS = """
SELECT p.number, l.id, l.status, l.paper_reason, l.recipient, l.totals, l.pdf_path, o.key,
       l.error, l.language
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""


def _item(side: str, amount: str, currency: str = "EUR", partner_id: int = 1) -> OpenItem:
    value = Decimal(amount)
    kind = "invoice" if value > 0 else "credit_note"
    return OpenItem(1, partner_id, side, kind, "D1", KEY, KEY, value, value, currency)


def test_balance_is_receivables_minus_payables_per_currency() -> None:
    items = [
        _item("receivable", "1000.00"),
        _item("receivable", "-150.00"),
        _item("payable", "400.00"),
        _item("receivable", "250.50", "CHF"),
    ]
    assert balance_confirmation.balance_of(items) == {
        "CHF": Decimal("250.50"),
        "EUR": Decimal("450.00"),
    }


def test_minimum_and_zero_balances() -> None:
    small = [_item("receivable", "40.00"), _item("payable", "45.00", "CHF")]
    zero = [_item("receivable", "100.00"), _item("payable", "100.00")]
    propose = balance_confirmation.propose_confirmation
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


def _select(conn, **kwargs) -> dict[str, dict[str, Decimal]]:
    with db.transaction(conn) as cur:
        found = balance_confirmation.select_confirmations(
            cur, company="DEMO", key_date=KEY, **kwargs
        )
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
    roles = {n: (c, s) for n, c, s in rows(conn, PARTNERS)}
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
    customers = {n for n, c, _ in rows(conn, PARTNERS) if c}
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


@pytest.mark.timeout(600)
def test_balance_confirmation_pdfs_mail_and_rerun(statements_db) -> None:
    conn = statements_db
    params = {"side": "both", "partner_from": "000001", "partner_to": "000012"}
    run_id = kind_run(BALANCE_CONFIRMATION, "manual__bc", KEY, params)
    letters = {row[0]: row for row in rows(conn, LETTERS, run_id)}
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
    (raw,) = rows(conn, "SELECT mime FROM mail.outbox WHERE key = %s", letters["000001"][7])[0]
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
    outbox = rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id")
    before = rows(conn, LETTERS, run_id)
    assert kind_run(BALANCE_CONFIRMATION, "manual__bc", KEY, params) == run_id
    assert rows(conn, LETTERS, run_id) == before
    assert rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id") == outbox


@pytest.mark.timeout(600)
def test_creditor_confirmations_go_to_suppliers_only(statements_db) -> None:
    conn = statements_db
    params = {"side": "creditors", "partner_from": "000001", "partner_to": "000030"}
    run_id = kind_run(BALANCE_CONFIRMATION, "manual__creditors", KEY, params)
    letters = {row[0]: row for row in rows(conn, LETTERS, run_id)}
    roles = {n: (c, s) for n, c, s in rows(conn, PARTNERS)}
    assert letters and all(roles[n][1] for n in letters)
    text = pdf_text(archive.read(letters["000001"][6]))
    assert "HB1-P1" in text and "HB1-R1" not in text and "HB1-CHF" not in text
    assert "zu Ihren Gunsten" in text


def test_the_confirmation_form_becomes_a_run_or_a_clear_error(statements_db) -> None:
    form = {"company": "DEMO", "key_date": KEY.isoformat(), "side": "creditors"}
    with db.transaction(statements_db) as cur:
        request = balance_confirmation.prepare_confirmation(
            cur, {**form, "reply_address": "Saldo@Muster-Handels.example.com"}
        )
        assert request.key_date == KEY
        assert request.params["side"] == "creditors"
        assert request.params["reply_address"] == "Saldo@muster-handels.example.com"
        assert balance_confirmation.prepare_confirmation(cur, form).params["reply_address"] is None
        with pytest.raises(ValueError, match="param 'reply_address' 'not@an@address'"):
            balance_confirmation.prepare_confirmation(
                cur, {**form, "reply_address": "not@an@address"}
            )
        with pytest.raises(ValueError, match="partner_from '000009' is after partner_to"):
            balance_confirmation.prepare_confirmation(
                cur, {**form, "partner_from": "000009", "partner_to": "000001"}
            )
