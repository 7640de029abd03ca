"""Balance confirmations (debtors and creditors), a document kind of the shared pipeline in
``erpmail.documents.runs``.

Rules (tested in tests/documents/test_balance_confirmation.py):

* The open items at the key date are a partner's items with an open amount, issued by the
  key date, of the selected side(s): ``debtors`` = receivable, ``creditors`` = payable,
  ``both``. Disputed and dunning-blocked items are open items too and are listed. Open
  amounts are today's: the ERP keeps no payment history (as in ``erpmail.documents.dunning``).
* The balance is per currency (no exchange rates), seen from our books: receivables count
  positive (the partner owes us), payables negative (we owe the partner). A partner that is
  customer and supplier gets ONE letter with both sides when side is ``both``.
* A partner with a non-zero balance gets a letter when the absolute balance in at least one
  currency reaches the minimum. A partner of the side (customer for debtors, supplier for
  creditors) whose balance is zero in every currency, or who has no open item, gets one only
  when zero balances are included.
* The letter's subject carries ``relnr <partner number>`` so a reply is linked to the partner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg2.extensions
from email_validator import EmailNotValidError, validate_email
from psycopg2.extras import execute_values

from erpmail.documents import runs
from erpmail.documents.runs import DocumentKind, Run, RunRequest
from erpmail.documents.statements import (
    CONTACT_ROLE,
    INSERT_LETTERS,
    LINK_KEYWORD,
    ZERO,
    always_email,
    money_json,
    statement_letter,
)
from erpmail.documents.templates import LetterContext, LetterItem

BALANCE_KIND = "balance_confirmation"
SIDES = {"debtors": ("receivable",), "creditors": ("payable",), "both": ("receivable", "payable")}

# Partners of the side by role, and any partner with an open item of the side.
BALANCE_PARTNERS = """
SELECT p.id FROM erp.partners p
 WHERE p.company = %(company)s
   AND ((%(receivable)s AND p.is_customer) OR (%(payable)s AND p.is_supplier)
        OR EXISTS (SELECT 1 FROM erp.open_items o
                    WHERE o.partner_id = p.id AND o.side = ANY(%(sides)s)))
   AND (%(partner_from)s::text IS NULL OR p.number >= %(partner_from)s)
   AND (%(partner_to)s::text IS NULL OR p.number <= %(partner_to)s)
 ORDER BY p.number"""
BALANCE_ITEMS = """
SELECT o.id, o.partner_id, o.side, o.doc_type, o.doc_number, o.doc_date, o.due_date,
       o.amount, o.open_amount, o.currency
  FROM erp.open_items o
  JOIN erp.partners p ON p.id = o.partner_id
 WHERE p.company = %(company)s
   AND o.side = ANY(%(sides)s)
   AND o.open_amount <> 0
   AND o.doc_date <= %(key_date)s
   AND (%(partner_from)s::text IS NULL OR p.number >= %(partner_from)s)
   AND (%(partner_to)s::text IS NULL OR p.number <= %(partner_to)s)
 ORDER BY p.number, o.side DESC, o.currency, o.due_date, o.doc_number, o.id"""
INSERT_LETTER_ITEMS = """
INSERT INTO erp.letter_items (letter_id, open_item_id, days_overdue, amount, currency)
VALUES %s ON CONFLICT DO NOTHING"""
BALANCE_LINES = """
SELECT li.letter_id, o.side, o.doc_number, o.doc_type, o.doc_date, o.due_date, o.amount,
       li.amount, li.currency, li.days_overdue
  FROM erp.letter_items li JOIN erp.open_items o ON o.id = li.open_item_id
 WHERE li.letter_id = ANY(%s)
 ORDER BY li.letter_id, o.side DESC, li.currency, o.due_date, o.doc_number"""


@dataclass(frozen=True)
class OpenItem:
    """An open item of either side, as stored (receivable and payable alike: invoice > 0)."""

    id: int
    partner_id: int
    side: str  # 'receivable' | 'payable'
    doc_type: str
    doc_number: str
    doc_date: date
    due_date: date
    amount: Decimal
    open_amount: Decimal
    currency: str

    @property
    def balance(self) -> Decimal:
        """The item's effect on the partner's balance in our books: + they owe us."""
        return self.open_amount if self.side == "receivable" else -self.open_amount


@dataclass
class Confirmation:
    """The balance confirmation one partner gets: its items and balance per currency."""

    partner_id: int
    items: list[OpenItem]
    balance: dict[str, Decimal] = field(default_factory=dict)

    @property
    def is_zero(self) -> bool:
        return all(amount == 0 for amount in self.balance.values())


def balance_of(items: Iterable[OpenItem]) -> dict[str, Decimal]:
    """Net balance per currency (receivables minus payables), currencies sorted."""
    sums: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for item in items:
        sums[item.currency] += item.balance
    return dict(sorted(sums.items()))


def propose_confirmation(
    partner_id: int,
    items: Sequence[OpenItem],
    *,
    min_abs_balance: Decimal = ZERO,
    include_zero: bool = False,
) -> Confirmation | None:
    """One partner's confirmation, or None when its balance is under the minimum (or zero
    and zero balances are not included)."""
    if min_abs_balance < 0:
        raise ValueError(f"min_abs_balance {min_abs_balance} is negative")
    confirmation = Confirmation(partner_id, list(items), balance_of(items))
    if confirmation.is_zero:
        return confirmation if include_zero else None
    if max(abs(amount) for amount in confirmation.balance.values()) >= min_abs_balance:
        return confirmation
    return None


def select_confirmations(
    cur: psycopg2.extensions.cursor,
    *,
    company: str,
    key_date: date,
    side: str = "both",
    partner_from: str | None = None,
    partner_to: str | None = None,
    min_abs_balance: Decimal = ZERO,
    include_zero: bool = False,
) -> list[Confirmation]:
    """The confirmations a run at ``key_date`` produces, by partner number; writes nothing."""
    if side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {sorted(SIDES)} (param 'side')")
    sides = list(SIDES[side])
    args = {
        "company": company,
        "key_date": key_date,
        "sides": sides,
        "receivable": "receivable" in sides,
        "payable": "payable" in sides,
        "partner_from": partner_from or None,
        "partner_to": partner_to or None,
    }
    cur.execute(BALANCE_PARTNERS, args)
    partner_ids = [row[0] for row in cur.fetchall()]
    cur.execute(BALANCE_ITEMS, args)
    per_partner: dict[int, list[OpenItem]] = defaultdict(list)
    for row in cur.fetchall():
        item = OpenItem(*row)
        per_partner[item.partner_id].append(item)
    out = []
    for partner_id in partner_ids:
        proposal = propose_confirmation(
            partner_id,
            per_partner.get(partner_id, []),
            min_abs_balance=min_abs_balance,
            include_zero=include_zero,
        )
        if proposal:
            out.append(proposal)
    return out


def prepare_confirmation(cur: psycopg2.extensions.cursor, form: Mapping[str, Any]) -> RunRequest:
    """The ``balance_confirmation`` form as a run: key date (empty: the last year end on the
    company's clock), side, partner range, minimum, zero balances, and the reply address
    (normalised; empty: the company's e-mail)."""
    low, high = runs.partner_range(form)
    if form.get("key_date"):
        key_date = runs.form_date(form, "key_date")
    else:
        key_date = date(runs.company_today(cur, form["company"]).year - 1, 12, 31)
    reply = form.get("reply_address") or None
    if reply:
        try:
            reply = validate_email(reply, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"param 'reply_address' {reply!r}: {exc}") from exc
    side = form.get("side", "both")
    if side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {sorted(SIDES)} (param 'side')")
    return RunRequest(
        key_date=key_date,
        params={
            "side": side,
            "partner_from": low,
            "partner_to": high,
            "min_abs_balance": str(form.get("min_abs_balance") or "0"),
            "include_zero": bool(form.get("include_zero")),
            "reply_address": reply,
        },
    )


def generate_confirmations(cur: psycopg2.extensions.cursor, run: Run) -> int:
    """Write the run's balance confirmations (``generated``) with their items; how many.

    Idempotent: a partner that already has a letter in the run is skipped.
    """
    params = run.params or {}
    confirmations = select_confirmations(
        cur,
        company=run.company,
        key_date=run.key_date,
        side=params.get("side", "both"),
        partner_from=params.get("partner_from"),
        partner_to=params.get("partner_to"),
        min_abs_balance=Decimal(str(params.get("min_abs_balance") or "0")),
        include_zero=bool(params.get("include_zero")),
    )
    if not confirmations:
        return 0
    languages = runs.partner_languages(cur, [c.partner_id for c in confirmations], CONTACT_ROLE)
    rows = [
        (
            run.id,
            c.partner_id,
            BALANCE_KIND,
            languages[c.partner_id],
            money_json(c.balance),
            "generated",
            None,
        )
        for c in confirmations
    ]
    inserted = execute_values(cur, INSERT_LETTERS, rows, page_size=1000, fetch=True)
    letter_of = {partner_id: letter_id for letter_id, partner_id in inserted}
    item_rows = [
        (
            letter_of[c.partner_id],
            item.id,
            max(0, (run.key_date - item.due_date).days),
            item.open_amount,
            item.currency,
        )
        for c in confirmations
        if c.partner_id in letter_of
        for item in c.items
    ]
    execute_values(cur, INSERT_LETTER_ITEMS, item_rows, page_size=2000)
    return len(inserted)


def confirmation_contexts(
    cur: psycopg2.extensions.cursor, run: Run, letter_ids: Sequence[int]
) -> dict[int, LetterContext | Exception]:
    """Each balance confirmation's ``LetterContext``: items signed from our books (payables
    negative), ``totals`` = the balance per currency; ``extra``: ``sides`` (per side its items
    and open totals as the ledger shows them), ``balance``, ``ledger`` (per currency the
    receivable and payable totals and the balance), ``reply_address`` (printed, and the
    mail's Reply-To), ``link``."""
    company, _, company_currency = runs.load_company(cur, run.company)
    params = run.params or {}
    reply_address = params.get("reply_address") or company.email or ""
    cur.execute(BALANCE_LINES, (list(letter_ids),))
    lines: dict[int, list[tuple[str, LetterItem, Decimal]]] = defaultdict(list)
    for (
        letter_id,
        side,
        number,
        doc_type,
        doc_date,
        due,
        amount,
        open_amount,
        currency,
        days,
    ) in cur.fetchall():
        sign = 1 if side == "receivable" else -1
        item = LetterItem(
            number, doc_type, doc_date, due, sign * amount, sign * open_amount, currency, days
        )
        lines[letter_id].append((side, item, open_amount))
    out: dict[int, LetterContext | Exception] = {}
    for head in runs.letter_heads(cur, letter_ids):
        letter_id, totals = head.letter_id, head.totals
        own = lines.get(letter_id, [])
        sides = []
        for side in ("receivable", "payable"):
            side_lines = [(item, open_amount) for s, item, open_amount in own if s == side]
            if side_lines:
                side_totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
                for item, open_amount in side_lines:
                    side_totals[item.currency] += open_amount
                sides.append(
                    {
                        "side": side,
                        "items": [item for item, _ in side_lines],
                        "totals": dict(sorted(side_totals.items())),
                    }
                )
        balance = {c: Decimal(v) for c, v in sorted(totals.items())} or {company_currency: ZERO}
        ledger = {
            currency: {"receivable": ZERO, "payable": ZERO, "balance": amount}
            for currency, amount in balance.items()
        }
        for side in sides:
            for currency, amount in side["totals"].items():
                ledger[currency][side["side"]] += amount
        number = head.partner.number
        out[letter_id] = statement_letter(
            BALANCE_KIND,
            run,
            company,
            head.partner,
            [item for _, item, _ in own],
            f"{run.id}-{number}",
            {
                "letter_id": letter_id,
                "sides": sides,
                "balance": balance,
                "ledger": ledger,
                "reply_address": reply_address,
                "link": f"{LINK_KEYWORD} {number}",
            },
        )
    return out


BALANCE_CONFIRMATION = DocumentKind(
    kind=BALANCE_KIND,
    document=BALANCE_KIND,
    contact_role=CONTACT_ROLE,
    prepare=prepare_confirmation,
    generate=generate_confirmations,
    contexts=confirmation_contexts,
    sends_email=always_email,
)
