"""Dunning: overdue open items -> a level per item -> one letter per partner per run.

The rules, decided here and tested in tests/test_dunning.py:

* Candidates are a partner's open receivable items (invoices with an open amount, open
  credit notes) issued by the key date. A partner under dunning block gets nothing; an item
  under dunning block or disputed is left out entirely (a disputed credit note is not
  netted either: the dispute may change it).
* Level per invoice: with no previous letter it is level 1 once the item is overdue by more
  than level 1's days (key date > due date + days). With a previous letter at level n, it
  rises to the next level once the letter in which the item reached n is older than the next
  level's days (key date - that letter's key date > days), up to the highest level. An item
  whose open amount is under the target level's minimum waits (not raised). Levels not
  selected for the run are not reached in it.
* "Previous letter": a letter of an earlier, non-dry dunning run that did not fail. A second
  run on the same key date therefore finds every item already at its level and raises none.
  A letter that failed (rendering, or its mail refused by the server) never reached the
  partner, so the next run dunns its items again at the same level.
* Netting is per currency only: open credit notes reduce the overdue items of their own
  currency; a currency whose net is not positive is dropped from the letter (exchange rates
  are not ours to choose). A partner gets a letter only if at least one item is raised in a
  currency that stays on the letter; the letter lists every overdue item with its own level
  (items not raised keep their previous level), the credit notes netted, the fee of the
  letter's highest level, and the net total per currency.
* Partner numbers are compared as text (they are zero-padded, leading zeros significant).
* Open amounts are today's: the ERP keeps no history of payments, so a key date in the past
  dunns what is open now.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json, execute_values

from erpmail.core import locks
from erpmail.documents import runs
from erpmail.documents.runs import DocumentKind, Run, RunRequest
from erpmail.documents.templates import LetterContext, LetterItem, LetterTexts

log = logging.getLogger(__name__)

KIND = "dunning"
DOCUMENT = "dunning"
CONTACT_ROLE = "dunning"

LEVELS = """
SELECT level, days_overdue, min_amount, fee, fee_currency, send_email, archive
  FROM erp.dunning_levels WHERE company = %s ORDER BY level"""
# Items of partners without a dunning block, in the partner range; credit notes included.
CANDIDATES = """
SELECT o.partner_id, o.id, o.doc_type, o.doc_number, o.doc_date, o.due_date,
       o.open_amount, o.currency
  FROM erp.open_items o
  JOIN erp.partners p ON p.id = o.partner_id
 WHERE p.company = %(company)s
   AND NOT p.dunning_block
   AND o.side = 'receivable'
   AND o.open_amount <> 0
   AND NOT o.dunning_block
   AND NOT o.disputed
   AND o.doc_date <= %(key_date)s
   AND (%(partner_from)s::text IS NULL OR p.number >= %(partner_from)s)
   AND (%(partner_to)s::text IS NULL OR p.number <= %(partner_to)s)
 ORDER BY p.number, o.due_date, o.doc_number, o.id"""
# Per item its highest level on a previous letter, and the first letter that gave it that level.
PREVIOUS = """
SELECT DISTINCT ON (li.open_item_id) li.open_item_id, li.level, r.key_date
  FROM erp.letter_items li
  JOIN erp.letters l ON l.id = li.letter_id
  JOIN erp.runs r ON r.id = l.run_id
 WHERE li.open_item_id = ANY(%(items)s)
   AND li.level IS NOT NULL
   AND r.kind = 'dunning'
   AND NOT r.dry_run
   AND r.id <> %(run_id)s
   AND l.status NOT IN ('failed', 'withheld')
 ORDER BY li.open_item_id, li.level DESC, r.key_date, r.id"""
INSERT_LETTERS = """
INSERT INTO erp.letters (run_id, partner_id, document, language, level, totals, fee, fee_currency,
    keep_pdf)
VALUES %s
ON CONFLICT (run_id, partner_id) DO NOTHING
RETURNING id, partner_id"""
INSERT_LETTER_ITEMS = """
INSERT INTO erp.letter_items (letter_id, open_item_id, level, previous_level, raised,
    days_overdue, amount, currency)
VALUES %s ON CONFLICT DO NOTHING"""
# Serialises generation per company: two runs at once must not both see "no previous letter".

# Invoices by due date, then the credit notes netted against them.
LETTER_LINES = """
SELECT li.letter_id, o.doc_number, o.doc_type, o.doc_date, o.due_date, o.amount, li.amount,
       li.currency, li.days_overdue, li.level
  FROM erp.letter_items li JOIN erp.open_items o ON o.id = li.open_item_id
 WHERE li.letter_id = ANY(%s)
 ORDER BY li.letter_id, o.doc_type DESC, o.due_date, o.doc_number"""
TEXTS = "SELECT level, language, subject, intro, closing FROM erp.dunning_texts WHERE company = %s"
LETTER_SENDS_EMAIL = """
SELECT coalesce(d.send_email, true)
  FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id
  LEFT JOIN erp.dunning_levels d ON d.company = r.company AND d.level = l.level
 WHERE l.id = %s"""


@dataclass(frozen=True)
class Level:
    """One row of erp.dunning_levels."""

    level: int
    days_overdue: int
    min_amount: Decimal
    fee: Decimal
    fee_currency: str
    send_email: bool = True
    archive: bool = True


@dataclass(frozen=True)
class Item:
    """An open receivable item: invoice (positive) or credit note (negative)."""

    id: int
    partner_id: int
    doc_type: str
    doc_number: str
    doc_date: date
    due_date: date
    open_amount: Decimal
    currency: str


@dataclass(frozen=True)
class Previous:
    """An item's level on an earlier letter and the key date of the letter that gave it."""

    level: int
    key_date: date


@dataclass(frozen=True)
class Line:
    """An item as listed on a letter; ``level`` is None for a netted credit note."""

    item: Item
    level: int | None
    previous_level: int | None
    raised: bool
    days_overdue: int


@dataclass
class Proposal:
    """The letter one partner gets in a run."""

    partner_id: int
    lines: list[Line]
    level: int
    fee: Decimal
    fee_currency: str
    totals: dict[str, Decimal] = field(default_factory=dict)


def item_level(
    item: Item,
    previous: Previous | None,
    key_date: date,
    levels: Sequence[Level],
    selected: Iterable[int] | None = None,
) -> tuple[int | None, bool]:
    """The item's level on this run's letter and whether it was raised to it.

    ``(None, False)``: not dunnable yet (not overdue, under the minimum, or level not selected).
    """
    by_level = {lv.level: lv for lv in levels}
    allowed = set(by_level) if selected is None else set(selected) & set(by_level)
    current = previous.level if previous else None
    higher = sorted(n for n in by_level if current is None or n > current)
    if not higher:
        return current, False  # already at the highest level
    target = by_level[higher[0]]
    days_overdue = (key_date - item.due_date).days
    eligible = days_overdue > target.days_overdue
    if previous is not None:
        eligible = eligible and (key_date - previous.key_date).days > target.days_overdue
    if eligible and target.level in allowed and item.open_amount >= target.min_amount:
        return target.level, True
    return current, False


def propose(
    partner_id: int,
    items: Sequence[Item],
    previous: dict[int, Previous],
    key_date: date,
    levels: Sequence[Level],
    selected: Iterable[int] | None = None,
) -> Proposal | None:
    """One partner's letter from its candidate items, or None when nothing is to be dunned."""
    selected = None if selected is None else set(selected)
    lines: list[Line] = []
    for item in items:
        days = (key_date - item.due_date).days
        if item.doc_type == "credit_note":
            lines.append(Line(item, None, None, False, days))
            continue
        prev = previous.get(item.id)
        level, raised = item_level(item, prev, key_date, levels, selected)
        if level is not None:
            lines.append(Line(item, level, prev.level if prev else None, raised, days))
    by_currency: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        by_currency[line.item.currency].append(line)
    kept: list[Line] = []
    totals: dict[str, Decimal] = {}
    for currency in sorted(by_currency):
        group = by_currency[currency]
        net = sum((line.item.open_amount for line in group), Decimal("0"))
        if net > 0 and any(line.level is not None for line in group):
            kept.extend(group)
            totals[currency] = net
    if not any(line.raised for line in kept):
        return None
    top = max(line.level for line in kept if line.level is not None)
    level = next(lv for lv in levels if lv.level == top)
    return Proposal(partner_id, kept, top, level.fee, level.fee_currency, totals)


def letter_totals(proposal: Proposal) -> dict[str, Decimal]:
    """What the letter asks for per currency: the net of its items plus the fee."""
    totals = dict(proposal.totals)
    if proposal.fee:
        fee_cur = proposal.fee_currency
        totals[fee_cur] = totals.get(fee_cur, Decimal("0")) + proposal.fee
    return dict(sorted(totals.items()))


def load_levels(cur: psycopg2.extensions.cursor, company: str) -> list[Level]:
    """The company's dunning levels, lowest first; an error when it has none."""
    cur.execute(LEVELS, (company,))
    levels = [Level(*row) for row in cur.fetchall()]
    if not levels:
        raise ValueError(f"company {company!r} has no dunning levels (erp.dunning_levels)")
    return levels


def select(
    cur: psycopg2.extensions.cursor,
    *,
    run_id: int,
    company: str,
    key_date: date,
    levels: Iterable[int] | None = None,
    partner_from: str | None = None,
    partner_to: str | None = None,
) -> list[Proposal]:
    """The letters a run on ``key_date`` produces, by partner number; writes nothing."""
    all_levels = load_levels(cur, company)
    cur.execute(
        CANDIDATES,
        {
            "company": company,
            "key_date": key_date,
            "partner_from": partner_from or None,
            "partner_to": partner_to or None,
        },
    )
    per_partner: dict[int, list[Item]] = {}
    for row in cur.fetchall():
        item = Item(row[1], row[0], *row[2:])
        per_partner.setdefault(item.partner_id, []).append(item)
    ids = [item.id for items in per_partner.values() for item in items]
    cur.execute(PREVIOUS, {"items": ids, "run_id": run_id})
    previous = {row[0]: Previous(row[1], row[2]) for row in cur.fetchall()}
    proposals = []
    for partner_id, items in per_partner.items():
        proposal = propose(partner_id, items, previous, key_date, all_levels, levels)
        if proposal:
            proposals.append(proposal)
    return proposals


def prepare(cur: psycopg2.extensions.cursor, form: Mapping[str, Any]) -> RunRequest:
    """The ``dunning_run`` form as a run: key date (empty: today on the company's clock), the
    levels it may reach, partner range."""
    low, high = runs.partner_range(form)
    return RunRequest(
        key_date=runs.form_date(form, "key_date")
        if form.get("key_date")
        else runs.company_today(cur, form["company"]),
        params={
            "levels": sorted({int(level) for level in form.get("levels") or ()}),
            "partner_from": low,
            "partner_to": high,
        },
    )


def generate(cur: psycopg2.extensions.cursor, run: Run) -> int:
    """Write the run's letters (``generated``) with their items; return how many were written.

    Idempotent: a partner that already has a letter in the run is skipped.
    """
    cur.execute(locks.DUNNING_COMPANY, (run.company,))
    params = run.params or {}
    proposals = select(
        cur,
        run_id=run.id,
        company=run.company,
        key_date=run.key_date,
        levels=params.get("levels") or None,
        partner_from=params.get("partner_from"),
        partner_to=params.get("partner_to"),
    )
    if not proposals:
        return 0
    languages = runs.partner_languages(cur, [p.partner_id for p in proposals], CONTACT_ROLE)
    # the level's "archive the generated document": off keeps the PDF only until it is sent
    archived = {level.level: level.archive for level in load_levels(cur, run.company)}
    rows = [
        (
            run.id,
            p.partner_id,
            DOCUMENT,
            languages[p.partner_id],
            p.level,
            Json({c: str(v) for c, v in letter_totals(p).items()}),
            p.fee,
            p.fee_currency,
            archived.get(p.level, True),
        )
        for p in proposals
    ]
    inserted = execute_values(cur, INSERT_LETTERS, rows, page_size=1000, fetch=True)
    letter_of = {partner_id: letter_id for letter_id, partner_id in inserted}
    item_rows = [
        (
            letter_of[p.partner_id],
            line.item.id,
            line.level,
            line.previous_level,
            line.raised,
            line.days_overdue,
            line.item.open_amount,
            line.item.currency,
        )
        for p in proposals
        if p.partner_id in letter_of
        for line in p.lines
    ]
    execute_values(cur, INSERT_LETTER_ITEMS, item_rows, page_size=2000)
    return len(inserted)


def sends_email(cur: psycopg2.extensions.cursor, letter_id: int) -> bool:
    """Whether the letter's level goes out by e-mail (else it is paper only)."""
    cur.execute(LETTER_SENDS_EMAIL, (letter_id,))
    row = cur.fetchone()
    return bool(row[0]) if row else True


def contexts(
    cur: psycopg2.extensions.cursor, run: Run, letter_ids: Sequence[int]
) -> dict[int, LetterContext | Exception]:
    """The template context of each letter (erpmail.documents.templates.LetterContext), or the error
    that fails that letter alone."""
    company, company_language, company_currency = runs.load_company(cur, run.company)
    cur.execute(TEXTS, (run.company,))
    texts = {(lv, lang): LetterTexts(s, i, c) for lv, lang, s, i, c in cur.fetchall()}
    cur.execute(LETTER_LINES, (list(letter_ids),))
    lines: dict[int, list[LetterItem]] = defaultdict(list)
    for letter_id, *values in cur.fetchall():
        lines[letter_id].append(LetterItem(*values))
    out: dict[int, LetterContext | Exception] = {}
    for head in runs.letter_heads(cur, letter_ids):
        letter_id, level, language = head.letter_id, head.level, head.language
        text = texts.get((level, language)) or texts.get((level, company_language))
        if text is None:
            out[letter_id] = LookupError(
                f"no dunning text for level {level} in {language!r} nor "
                f"{company_language!r} (erp.dunning_texts, company {run.company})"
            )
            continue
        out[letter_id] = LetterContext(
            document=DOCUMENT,
            company=company,
            partner=head.partner,
            key_date=run.key_date,
            items=lines.get(letter_id, []),
            texts=text,
            reference=f"{run.id}-{head.partner.number}",
            level=level,
            fee=head.fee,
            fee_currency=head.fee_currency or company_currency,
            sender=company.email,
            sender_name=company.name,
            extra={"letter_id": letter_id},
        )
    return out


DUNNING = DocumentKind(
    kind=KIND,
    document=DOCUMENT,
    contact_role=CONTACT_ROLE,
    prepare=prepare,
    generate=generate,
    contexts=contexts,
    sends_email=sends_email,
)
