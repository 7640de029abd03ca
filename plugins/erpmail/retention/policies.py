"""Retention policies: one per import location (its incoming mail) and one for all sent mail
(``mail.retention_policies``): reading and setting them, and the cut-off dates they give,
never below the legal minimums unless forced. keep_days NULL or 0 keeps everything; a
location without a policy keeps its mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import psycopg2.extensions

# The legal minimums a new policy gets: six years for business mail, ten for mail linked
# to an invoice or credit note (an open item).
LEGAL_MIN_DAYS = 2190
INVOICE_LEGAL_MIN_DAYS = 3650

SELECT_POLICIES = """
SELECT p.id, p.scope, p.location_id, l.name, p.keep_days, p.legal_min_days,
       p.invoice_legal_min_days
FROM mail.retention_policies p
LEFT JOIN mail.import_locations l ON l.id = p.location_id
ORDER BY p.scope = 'sent', l.name, p.id"""
SELECT_LOCATION = "SELECT id FROM mail.import_locations WHERE name = %s"
UPSERT_LOCATION_POLICY = """
INSERT INTO mail.retention_policies (scope, location_id, keep_days, legal_min_days,
                                     invoice_legal_min_days)
VALUES ('location', %(location_id)s, %(keep_days)s, %(legal_min_days)s, %(invoice_legal_min_days)s)
ON CONFLICT (location_id) DO UPDATE SET keep_days = EXCLUDED.keep_days,
    legal_min_days = EXCLUDED.legal_min_days,
    invoice_legal_min_days = EXCLUDED.invoice_legal_min_days
RETURNING id"""
UPSERT_SENT_POLICY = """
INSERT INTO mail.retention_policies (scope, keep_days, legal_min_days, invoice_legal_min_days)
VALUES ('sent', %(keep_days)s, %(legal_min_days)s, %(invoice_legal_min_days)s)
ON CONFLICT (scope) WHERE scope = 'sent' DO UPDATE SET keep_days = EXCLUDED.keep_days,
    legal_min_days = EXCLUDED.legal_min_days,
    invoice_legal_min_days = EXCLUDED.invoice_legal_min_days
RETURNING id"""


@dataclass(frozen=True)
class Policy:
    """One row of ``mail.retention_policies``, with its location's name."""

    id: int
    scope: str  # 'location' or 'sent'
    location_id: int | None
    location: str | None
    keep_days: int | None
    legal_min_days: int
    invoice_legal_min_days: int

    @property
    def label(self) -> str:
        return self.location if self.scope == "location" else "sent"

    @property
    def keeps_forever(self) -> bool:
        return not self.keep_days


@dataclass(frozen=True)
class Cutoffs:
    """The dates before which mail may go: by keep_days alone, and with the legal minimums."""

    keep: date
    general: date  # for mail not linked to an open item
    invoice: date  # for mail linked to an open item
    legal: date
    invoice_legal: date


def cutoffs(policy: Policy, as_of: date, *, force: bool = False) -> Cutoffs:
    """The cut-off dates for ``policy`` on ``as_of``; forcing lets the legal minimums give way."""
    keep = as_of - timedelta(days=policy.keep_days or 0)
    legal = as_of - timedelta(days=policy.legal_min_days)
    invoice_legal = as_of - timedelta(days=policy.invoice_legal_min_days)
    if force:
        return Cutoffs(keep, keep, keep, legal, invoice_legal)
    return Cutoffs(keep, min(keep, legal), min(keep, invoice_legal), legal, invoice_legal)


def policies(cur: psycopg2.extensions.cursor, location: str | None = None) -> list[Policy]:
    """The policies, location ones by name then sent; ``location`` picks one ('sent' for sent mail).

    Raises ValueError naming the location when it has no policy or does not exist.
    """
    cur.execute(SELECT_POLICIES)
    found = [Policy(*row) for row in cur.fetchall()]
    if location is None:
        return found
    chosen = [p for p in found if p.label == location]
    if chosen:
        return chosen
    if location != "sent":
        cur.execute(SELECT_LOCATION, (location,))
        if cur.fetchone() is None:
            raise ValueError(f"location {location!r}: no such import location")
    raise ValueError(f"location {location!r}: has no retention policy (its mail is kept)")


def set_policy(
    cur: psycopg2.extensions.cursor,
    *,
    location: str | None,
    keep_days: int | None,
    legal_min_days: int = LEGAL_MIN_DAYS,
    invoice_legal_min_days: int = INVOICE_LEGAL_MIN_DAYS,
) -> int:
    """Create or replace the policy for import location ``location`` (None: sent mail); its id."""
    params = {
        "keep_days": keep_days,
        "legal_min_days": legal_min_days,
        "invoice_legal_min_days": invoice_legal_min_days,
    }
    if location is None:
        cur.execute(UPSERT_SENT_POLICY, params)
    else:
        cur.execute(SELECT_LOCATION, (location,))
        row = cur.fetchone()
        if row is None:
            raise ValueError(f"location {location!r}: no such import location")
        cur.execute(UPSERT_LOCATION_POLICY, {**params, "location_id": row[0]})
    return cur.fetchone()[0]
