"""ERP documents written by hand for the documents-on-demand tests, and the rows and mails
those runs leave."""

from __future__ import annotations

import email
from datetime import date, timedelta
from decimal import Decimal
from email import policy

from tests.partners import remake_partner

INSERT_DOCUMENT = """
INSERT INTO erp.documents (company, kind, number, partner_id, doc_date, due_date, customer_ref,
    currency, net_amount, tax_amount, gross_amount)
VALUES ('DEMO', %s, %s, %s, %s, %s, %s, 'EUR', %s, %s, %s) RETURNING id"""
INSERT_LINE = """
INSERT INTO erp.document_lines (document_id, position, description, quantity, unit, unit_price,
    amount)
VALUES (%s, %s, %s, %s, 'Stk', %s, %s)"""
DOCUMENTS = """
SELECT d.position, d.kind, d.number, p.number, d.status, d.error, d.letter_id
  FROM erp.run_documents d LEFT JOIN erp.partners p ON p.id = d.partner_id
 WHERE d.run_id = %s ORDER BY d.position, d.id"""
LETTERS = """
SELECT p.number, l.id, l.status, l.recipient, l.language, l.pdf_path, o.key, l.error
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""
# What each line of every document says (description -> amounts), for the PDF checks.
LINES = {
    "RE-1001": [("Schrauben M8 verzinkt", "100", "0.25")],
    "AN-2001": [("Montagearbeiten Halle 3", "8", "72.50"), ("Anfahrt", "1", "45.00")],
    "AB-3001": [("Welding robot service", "2", "380.00")],
}


def erp_document(cur, kind: str, number: str, partner_id: int, *, ref: str = "") -> int:
    """A document of ``LINES[number]`` with 19 % tax, dated today; its id."""
    today = date.today()
    lines = [(d, Decimal(q), Decimal(p)) for d, q, p in LINES[number]]
    net = sum((q * p).quantize(Decimal("0.01")) for _, q, p in lines)
    tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
    cur.execute(
        INSERT_DOCUMENT,
        (kind, number, partner_id, today, today + timedelta(days=30), ref, net, tax, net + tax),
    )
    document_id = cur.fetchone()[0]
    for position, (description, quantity, price) in enumerate(lines, start=1):
        amount = (quantity * price).quantize(Decimal("0.01"))
        cur.execute(INSERT_LINE, (document_id, position, description, quantity, price, amount))
    return document_id


def three_documents(cur) -> dict[str, int]:
    """Partner 000001 (German, an accounting contact) with invoice RE-1001 and offer AN-2001,
    000002 (English) with order confirmation AB-3001; partner ids by number."""
    first = remake_partner(cur, "000001", language="de")
    second = remake_partner(cur, "000002", language="en")
    cur.execute(
        "INSERT INTO erp.contacts (partner_id, name, email, role) "
        "VALUES (%s, 'Buchhaltung', 'ap@p000001.example.com', 'accounting')",
        (first,),
    )
    erp_document(cur, "invoice", "RE-1001", first, ref="PO-77")
    erp_document(cur, "offer", "AN-2001", first)
    erp_document(cur, "order_confirmation", "AB-3001", second)
    return {"000001": first, "000002": second}


REFERENCES = [
    {"kind": "invoice", "number": "RE-1001"},
    {"kind": "order_confirmation", "number": "AB-3001"},
    {"kind": "offer", "number": "AN-2001"},
]


def attachments(data: bytes) -> dict[str, bytes]:
    """A mail's attachments by file name."""
    message = email.message_from_bytes(data, policy=policy.default)
    return {part.get_filename(): part.get_content() for part in message.iter_attachments()}
