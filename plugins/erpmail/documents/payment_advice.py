"""Payment advice, a document kind of the shared pipeline in ``erpmail.documents.runs``.

Per payee of one payment run, the lines of that run (paid documents,
discount, fees, paid amount), and the payment per currency. Amounts are the payee's view
(see sql/050_payments.sql). A line advised by an earlier non-dry advice run is not advised
again; a payee whose payment in a currency is not positive gets a ``failed`` letter with
the reason (tested in tests/documents/test_payment_advice.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg2.extensions
from psycopg2.extras import execute_values

from erpmail.core import locks
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

ADVICE_KIND = "payment_advice"

PAYMENT_RUN = """
SELECT id, company, number, payment_date, status FROM erp.payment_runs
 WHERE company = %s AND number = %s"""
# The run's lines not yet on a letter of another non-dry advice run (that did not fail).
ADVICE_CANDIDATES = """
SELECT pl.id, pl.partner_id, pl.paid_amount, pl.currency
  FROM erp.payment_lines pl
  JOIN erp.partners p ON p.id = pl.partner_id
 WHERE pl.payment_run_id = %(payment_run_id)s
   AND NOT EXISTS (
       SELECT 1 FROM erp.letter_payment_lines lpl
         JOIN erp.letters l ON l.id = lpl.letter_id
         JOIN erp.runs r ON r.id = l.run_id
        WHERE lpl.payment_line_id = pl.id AND r.id <> %(run_id)s AND NOT r.dry_run
          AND l.status <> 'failed')
 ORDER BY p.number, pl.currency, pl.doc_number, pl.id"""
INSERT_LETTER_LINES = """
INSERT INTO erp.letter_payment_lines (letter_id, payment_line_id) VALUES %s
ON CONFLICT DO NOTHING"""
ADVICE_LINES = """
SELECT lpl.letter_id, pl.doc_number, coalesce(o.doc_type,
         CASE WHEN pl.gross_amount > 0 THEN 'invoice' ELSE 'credit_note' END),
       coalesce(pl.doc_date, o.doc_date), o.due_date, pl.gross_amount, pl.discount, pl.fees,
       pl.paid_amount, pl.currency
  FROM erp.letter_payment_lines lpl
  JOIN erp.payment_lines pl ON pl.id = lpl.payment_line_id
  LEFT JOIN erp.open_items o ON o.id = pl.open_item_id
 WHERE lpl.letter_id = ANY(%s)
 ORDER BY lpl.letter_id, pl.currency, pl.gross_amount < 0, pl.doc_number, pl.id"""


@dataclass(frozen=True)
class PaymentRun:
    """A row of erp.payment_runs."""

    id: int
    company: str
    number: str
    payment_date: date
    status: str


def load_payment_run(
    cur: psycopg2.extensions.cursor, company: str, number: str, *, dry_run: bool = False
) -> PaymentRun:
    """The payment run ``number`` of ``company``; an error naming the param when it is
    missing, cancelled, or (unless ``dry_run``) not executed yet."""
    cur.execute(PAYMENT_RUN, (company, number))
    row = cur.fetchone()
    if row is None:
        raise ValueError(
            f"payment run {number!r} of company {company!r} not found in erp.payment_runs "
            "(param 'payment_run')"
        )
    payment_run = PaymentRun(*row)
    if payment_run.status == "cancelled":
        raise ValueError(f"payment run {number!r} is cancelled (param 'payment_run')")
    if payment_run.status != "executed" and not dry_run:
        raise ValueError(
            f"payment run {number!r} is {payment_run.status}, not executed: advice only for "
            "executed runs, or as a dry run (param 'payment_run')"
        )
    return payment_run


def prepare_advice(cur: psycopg2.extensions.cursor, form: Mapping[str, Any]) -> RunRequest:
    """The ``payment_advice`` form as a run: the payment run (executed, or any but a cancelled
    one for a dry run) and its payment date as the key date."""
    payment_run = load_payment_run(
        cur, form["company"], form.get("payment_run") or "", dry_run=bool(form.get("dry_run"))
    )
    return RunRequest(key_date=payment_run.payment_date, params={"payment_run": payment_run.number})


def generate_advice(cur: psycopg2.extensions.cursor, run: Run) -> int:
    """Write one payment advice per payee of the run's payment run (``generated``, or
    ``failed`` when its payment in a currency is not positive); how many were written."""
    # one advice generation per company at a time: two runs must not both find a line unadvised
    cur.execute(locks.PAYMENT_ADVICE_COMPANY, (run.company,))
    params = run.params or {}
    payment_run = load_payment_run(
        cur, run.company, params.get("payment_run", ""), dry_run=run.dry_run
    )
    cur.execute(ADVICE_CANDIDATES, {"payment_run_id": payment_run.id, "run_id": run.id})
    per_payee: dict[int, list[tuple[int, Decimal, str]]] = defaultdict(list)
    for line_id, partner_id, paid, currency in cur.fetchall():
        per_payee[partner_id].append((line_id, paid, currency))
    if not per_payee:
        return 0
    languages = runs.partner_languages(cur, list(per_payee), CONTACT_ROLE)
    rows = []
    for partner_id, lines in per_payee.items():
        totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
        for _, paid, currency in lines:
            totals[currency] += paid
        bad = {c: t for c, t in totals.items() if t <= 0}
        error = (
            "payment "
            + ", ".join(f"{c} {t}" for c, t in sorted(bad.items()))
            + f" is not positive (erp.payment_lines of payment run {payment_run.number})"
            if bad
            else None
        )
        rows.append(
            (
                run.id,
                partner_id,
                ADVICE_KIND,
                languages[partner_id],
                money_json(dict(sorted(totals.items()))),
                "failed" if error else "generated",
                error,
            )
        )
    inserted = execute_values(cur, INSERT_LETTERS, rows, page_size=1000, fetch=True)
    letter_rows = [
        (letter_id, line_id)
        for letter_id, partner_id in inserted
        for line_id, *_ in per_payee[partner_id]
    ]
    execute_values(cur, INSERT_LETTER_LINES, letter_rows, page_size=2000)
    return len(inserted)


def advice_contexts(
    cur: psycopg2.extensions.cursor, run: Run, letter_ids: Sequence[int]
) -> dict[int, LetterContext | Exception]:
    """Each payment advice's ``LetterContext``: one item per paid document (``amount`` the
    gross, ``open_amount`` the paid amount), ``totals`` = the payment per currency; ``extra``:
    ``lines`` (with discount and fees), ``payments`` (per currency gross, discount, fees,
    paid), ``payment_run``, ``payment_date``, ``has_deductions``, ``link``."""
    company, _, _ = runs.load_company(cur, run.company)
    params = run.params or {}
    cur.execute(ADVICE_LINES, (list(letter_ids),))
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (
        letter_id,
        number,
        doc_type,
        doc_date,
        due,
        gross,
        discount,
        fees,
        paid,
        currency,
    ) in cur.fetchall():
        doc_date = doc_date or run.key_date
        due = due or doc_date
        item = LetterItem(
            number,
            doc_type,
            doc_date,
            due,
            gross,
            paid,
            currency,
            max(0, (run.key_date - due).days),
        )
        lines[letter_id].append(
            {
                "item": item,
                "gross": gross,
                "discount": discount,
                "fees": fees,
                "paid": paid,
                "currency": currency,
            }
        )
    out: dict[int, LetterContext | Exception] = {}
    for head in runs.letter_heads(cur, letter_ids):
        letter_id = head.letter_id
        own = lines.get(letter_id, [])
        if not own:
            out[letter_id] = LookupError("payment advice lists no payment line")
            continue
        payments: dict[str, dict[str, Decimal]] = {}
        for line in own:
            sums = payments.setdefault(
                line["currency"], {"gross": ZERO, "discount": ZERO, "fees": ZERO, "paid": ZERO}
            )
            for key in sums:
                sums[key] += line[key]
        out[letter_id] = statement_letter(
            ADVICE_KIND,
            run,
            company,
            head.partner,
            [line["item"] for line in own],
            f"{params.get('payment_run', '')}-{head.partner.number}",
            {
                "letter_id": letter_id,
                "lines": own,
                "payments": dict(sorted(payments.items())),
                "payment_run": params.get("payment_run", ""),
                "payment_date": run.key_date,
                "has_deductions": any(line["discount"] or line["fees"] for line in own),
                "link": f"{LINK_KEYWORD} {head.partner.number}",
            },
        )
    return out


PAYMENT_ADVICE = DocumentKind(
    kind=ADVICE_KIND,
    document=ADVICE_KIND,
    contact_role=CONTACT_ROLE,
    prepare=prepare_advice,
    generate=generate_advice,
    contexts=advice_contexts,
    sends_email=always_email,
)
