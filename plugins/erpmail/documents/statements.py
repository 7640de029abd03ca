"""What balance confirmations and payment advice share as document kinds: the accounting
contact, the ``relnr`` link keyword, the letter rows, the letter context and going by mail."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json

from erpmail.documents.runs import Run
from erpmail.documents.templates import Company, LetterContext, LetterItem, Partner

CONTACT_ROLE = "accounting"
LINK_KEYWORD = "relnr"  # mail.import_locations.link_keywords maps it to 'partner'
ZERO = Decimal("0.00")

INSERT_LETTERS = """
INSERT INTO erp.letters (run_id, partner_id, document, language, totals, status, error)
VALUES %s
ON CONFLICT (run_id, partner_id) DO NOTHING
RETURNING id, partner_id"""


def money_json(amounts: dict[str, Decimal]) -> Json:
    """Amounts per currency as erp.letters.totals stores them (decimal strings)."""
    return Json({currency: str(amount) for currency, amount in amounts.items()})


def statement_letter(
    document: str,
    run: Run,
    company: Company,
    partner: Partner,
    items: Sequence[LetterItem],
    reference: str,
    extra: dict[str, Any],
) -> LetterContext:
    """A statement's letter context; its texts live in its templates (texts.txt per language)."""
    return LetterContext(
        document=document,
        company=company,
        partner=partner,
        key_date=run.key_date,
        items=items,
        texts=None,
        reference=reference,
        sender=company.email,
        sender_name=company.name,
        extra=extra,
    )


def always_email(cur: psycopg2.extensions.cursor, letter_id: int) -> bool:
    """These documents go by e-mail whenever the partner has a usable address."""
    return True
