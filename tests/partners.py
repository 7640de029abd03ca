"""Partners and open items built by hand on top of seeded data, and the balances computed by
hand from the items, for tests that derive their expectations from what they wrote."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import pendulum
import pytest

from erpmail.core import db

REMAKE_PARTNER = """
UPDATE erp.partners SET is_customer = %(customer)s, is_supplier = %(supplier)s, email = %(email)s,
       email_blocked = %(blocked)s, dunning_block = false, language = %(language)s, country = 'DE'
 WHERE company = 'DEMO' AND number = %(number)s RETURNING id"""
# Payment lines first: they may point at the partner's open items.
CLEAR_PARTNER = """
DELETE FROM erp.payment_lines WHERE partner_id = %(id)s;
DELETE FROM erp.open_items WHERE partner_id = %(id)s;
DELETE FROM erp.contacts WHERE partner_id = %(id)s"""
ALL_ITEMS = """
SELECT p.number, o.side, o.open_amount, o.currency
  FROM erp.open_items o JOIN erp.partners p ON p.id = o.partner_id
 WHERE o.open_amount <> 0 AND o.doc_date <= %s"""
SIDES = {"debtors": {"receivable"}, "creditors": {"payable"}, "both": {"receivable", "payable"}}
INSERT_ITEM = """
INSERT INTO erp.open_items (partner_id, side, doc_number, doc_type, doc_date, due_date, amount,
    open_amount, currency, dunning_block, disputed)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""


def remake_partner(
    cur,
    number: str,
    *,
    email: str | None = "default",
    blocked: bool = False,
    customer: bool = True,
    supplier: bool = False,
    language: str | None = "de",
) -> int:
    """Seeded partner ``number`` (company DEMO) with these roles, address and language, and no
    open items, payment lines or contacts left; its id. ``email`` "default": p<number>@example.com."""
    address = f"p{number}@example.com" if email == "default" else email
    cur.execute(
        REMAKE_PARTNER,
        {
            "customer": customer,
            "supplier": supplier,
            "email": address,
            "blocked": blocked,
            "language": language,
            "number": number,
        },
    )
    partner_id = cur.fetchone()[0]
    cur.execute(CLEAR_PARTNER, {"id": partner_id})
    return partner_id


def open_item(
    cur,
    partner_id: int,
    doc: str,
    amount: str,
    *,
    due: date,
    doc_date: date | None = None,
    side: str = "receivable",
    currency: str = "EUR",
    blocked: bool = False,
    disputed: bool = False,
) -> int:
    """An open item for its whole amount (negative: a credit note), dated 14 days before it is
    due unless ``doc_date`` says otherwise; its id."""
    value = Decimal(amount)
    cur.execute(
        INSERT_ITEM,
        (
            partner_id,
            side,
            doc,
            "credit_note" if value < 0 else "invoice",
            doc_date or due - timedelta(days=14),
            due,
            value,
            value,
            currency,
            blocked,
            disputed,
        ),
    )
    return cur.fetchone()[0]


def statement_partners(cur, key_date: date) -> None:
    """Partners 000001-000003 remade for balance confirmations, items dated back from
    ``key_date``: 000001 customer and supplier in two currencies (EUR 1000 - 150 - 400 = 450,
    CHF 250.50), 000002 supplier only, in English (EUR -1234.56), 000003 customer and supplier
    whose sides cancel (a zero balance, in Dutch)."""

    def item(partner_id: int, side: str, doc: str, amount: str, age: int, currency="EUR"):
        day = key_date - timedelta(days=age)
        open_item(cur, partner_id, doc, amount, due=day, doc_date=day, side=side, currency=currency)

    p = remake_partner(cur, "000001", customer=True, supplier=True, language="de")
    item(p, "receivable", "HB1-R1", "1000.00", 40)
    item(p, "receivable", "HB1-CN", "-150.00", 5)
    item(p, "payable", "HB1-P1", "400.00", 10)
    item(p, "receivable", "HB1-CHF", "250.50", 3, currency="CHF")
    p = remake_partner(cur, "000002", customer=False, supplier=True, language="en")
    item(p, "payable", "HB2-P1", "1234.56", 0)
    p = remake_partner(cur, "000003", customer=True, supplier=True, language="nl")
    item(p, "receivable", "HB3-R1", "300.00", 1)
    item(p, "payable", "HB3-P1", "300.00", 1)


def hand_balances(conn, side: str, key_date: date) -> dict[str, dict[str, Decimal]]:
    """Per partner number its balance per currency (receivables minus payables) on
    ``key_date``, summed here from the raw open items of ``side`` (debtors, creditors, both)."""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    with db.transaction(conn) as cur:
        cur.execute(ALL_ITEMS, (key_date,))
        for number, item_side, amount, currency in cur.fetchall():
            if item_side in SIDES[side]:
                out[number][currency] += amount if item_side == "receivable" else -amount
    return {n: dict(sorted(c.items())) for n, c in out.items()}


@pytest.fixture
def statement_book(seeded_db):
    """``seeded_db`` with ``statement_partners`` as of today in the company's time zone."""
    with db.transaction(seeded_db) as cur:
        statement_partners(cur, pendulum.today("Europe/Berlin").date())
    return seeded_db
