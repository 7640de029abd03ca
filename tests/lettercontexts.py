"""Dunning letter contexts loaded straight from the seeded rows, for tests of rendering, PDFs
and MIME that need realistic letters without a dunning run (erpmail.documents.dunning does it for real)."""

from __future__ import annotations

from datetime import date

from erpmail.core.db import transaction
from erpmail.documents.templates import Company, LetterContext, LetterItem, LetterTexts, Partner

COMPANY_SQL = """
SELECT code, name, street, postcode, city, country, email, phone, iban
FROM erp.companies WHERE code = 'DEMO'"""
PARTNERS_SQL = """
SELECT p.id, p.number, p.name, p.street, p.postcode, p.city, p.country, p.email, p.language
FROM erp.partners p
WHERE p.company = 'DEMO' AND EXISTS (
    SELECT 1 FROM erp.open_items i
    WHERE i.partner_id = p.id AND i.side = 'receivable' AND i.open_amount <> 0)
ORDER BY p.number"""
ITEMS_SQL = """
SELECT partner_id, doc_number, doc_type, doc_date, due_date, amount, open_amount, currency
FROM erp.open_items
WHERE side = 'receivable' AND open_amount <> 0 AND partner_id = ANY(%s)
ORDER BY partner_id, due_date, doc_number"""
LEVELS_SQL = "SELECT level, days_overdue, fee, fee_currency FROM erp.dunning_levels WHERE company = 'DEMO' ORDER BY level"
TEXTS_SQL = (
    "SELECT level, language, subject, intro, closing FROM erp.dunning_texts WHERE company = 'DEMO'"
)


def load_contexts(
    conn, *, limit: int | None = None, key_date: date | None = None
) -> list[LetterContext]:
    """Dunning letter contexts for seeded partners with open receivables (all items listed)."""
    key_date = key_date or date.today()
    with transaction(conn) as cur:
        cur.execute(COMPANY_SQL)
        company = Company(*cur.fetchone())
        cur.execute(PARTNERS_SQL)
        partners = [Partner(*row) for row in cur.fetchall()][:limit]
        cur.execute(ITEMS_SQL, ([p.id for p in partners],))
        rows = cur.fetchall()
        cur.execute(LEVELS_SQL)
        levels = cur.fetchall()
        cur.execute(TEXTS_SQL)
        texts = {(lv, lang): LetterTexts(s, i, c) for lv, lang, s, i, c in cur.fetchall()}
    items: dict[int, list[LetterItem]] = {p.id: [] for p in partners}
    for partner_id, number, doc_type, doc_date, due, amount, open_amount, currency in rows:
        days = (key_date - due).days
        level = max((lv for lv, need, _, _ in levels if days >= need), default=None)
        items[partner_id].append(
            LetterItem(
                number, doc_type, doc_date, due, amount, open_amount, currency, max(days, 0), level
            )
        )
    contexts = []
    for partner in partners:
        level = max((i.level for i in items[partner.id] if i.level), default=1)
        _, _, fee, fee_currency = levels[level - 1]
        contexts.append(
            LetterContext(
                document="dunning",
                company=company,
                partner=partner,
                key_date=key_date,
                items=items[partner.id],
                texts=texts[(level, partner.language or "de")],
                reference=f"T1-{partner.number}",
                level=level,
                fee=fee,
                fee_currency=fee_currency,
            )
        )
    return contexts
