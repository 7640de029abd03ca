"""Tickets (``erp.cases``) from received mail: a location with tickets on opens a case for a
new thread and joins replies to theirs (by References or by the ticket number in the subject).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NEXT_TICKET_NUMBER = "SELECT 'T' || lpad(nextval('erp.ticket_number_seq')::text, 6, '0')"
INSERT_CASE = """
INSERT INTO erp.cases (number, subject, queue, partner_id, project_id)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (number) DO NOTHING
RETURNING id"""
CASE_NUMBER = "SELECT number FROM erp.cases WHERE id = %s"


@dataclass(frozen=True)
class Ticket:
    """The case a mail was filed under; ``opened`` when this mail started it."""

    case_id: int
    number: str
    opened: bool


def open_or_join(
    cur,
    *,
    case_ids: Sequence[int],
    subject: str,
    queue: str,
    project_id: int | None,
    partner_id: int | None,
) -> Ticket:
    """Join the first case the mail already links to, or open a new one in the queue."""
    if case_ids:
        cur.execute(CASE_NUMBER, (case_ids[0],))
        return Ticket(case_ids[0], cur.fetchone()[0], False)
    while True:  # a number an operator typed in by hand is skipped, not reused
        cur.execute(NEXT_TICKET_NUMBER)
        number = cur.fetchone()[0]
        cur.execute(
            INSERT_CASE, (number, (subject or "(no subject)")[:500], queue, partner_id, project_id)
        )
        row = cur.fetchone()
        if row:
            return Ticket(row[0], number, True)
