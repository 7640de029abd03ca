"""The dunning proposal ("Mahnvorschlag"): a rendered run that waits for a clerk, who
approves it (less the partners left out) or rejects it; only approved letters are routed.

``propose`` fixes what the clerk is shown (per level: letters, totals, where they would go,
a sample letter) on the run and marks it ``waiting``; ``decide`` writes the decision, the
user and the time on the run and withholds what is not released, in one transaction.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg2.extras import Json

from erpmail.core import db
from erpmail.documents.routing import route_for
from erpmail.documents.runs import DocumentKind, load_run

log = logging.getLogger(__name__)

PROPOSED = """
SELECT l.id, l.level, l.totals, l.pdf_path IS NOT NULL FROM erp.letters l
  JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status = 'archived'
 ORDER BY p.number, l.id"""
NOT_PROPOSED = "SELECT status, count(*) FROM erp.letters WHERE run_id = %s GROUP BY 1"
SET_PROPOSAL = """
UPDATE erp.runs SET approval = 'waiting', proposal = %s
 WHERE id = %s AND approval IS NULL"""
RUN_PARTNERS = """
SELECT p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND p.number = ANY(%s)"""
DECISION = "SELECT approval, approval_by, approval_at FROM erp.runs WHERE id = %s"
SET_DECISION = """
UPDATE erp.runs SET approval = %s, approval_by = %s, approval_at = %s
 WHERE id = %s AND approval = 'waiting'"""
WITHHOLD = """
UPDATE erp.letters l SET status = 'withheld', withheld_reason = %(reason)s, updated_at = now()
  FROM erp.partners p
 WHERE p.id = l.partner_id AND l.run_id = %(run)s AND l.status = 'archived'
   AND (%(partners)s::text[] IS NULL OR p.number = ANY(%(partners)s))"""


class DecisionRefused(ValueError):
    """A decision that does not fit the run (already decided, a partner not in it)."""


@dataclass(frozen=True)
class Decision:
    """What a clerk decided on a run's proposal."""

    approved: bool
    user: str
    at: datetime
    excluded: tuple[str, ...] = ()


def propose(run_id: int, kind: DocumentKind) -> dict[str, Any]:
    """Fix the run's proposal, once, and mark it ``waiting``; returns the proposal. A rerun
    returns the stored one."""
    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        cur.execute("SELECT proposal FROM erp.runs WHERE id = %s", (run_id,))
        stored = cur.fetchone()[0]
        if stored is not None:
            return stored
        cur.execute(PROPOSED, (run_id,))
        letters = cur.fetchall()
        levels: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"letters": 0, "totals": Counter(), "routes": Counter(), "sample": None}
        )
        routes: dict[str, str] = {}
        for letter_id, level, totals, has_pdf in letters:
            route = route_for(cur, kind, letter_id)
            channel = f"paper_{route.paper_reason}" if route.paper_reason else "mail"
            routes[str(letter_id)] = channel
            entry = levels[str(level) if level is not None else "-"]
            entry["letters"] += 1
            entry["routes"][channel] += 1
            for currency, amount in (totals or {}).items():
                entry["totals"][currency] += Decimal(amount)
            if entry["sample"] is None and has_pdf:
                entry["sample"] = letter_id
        cur.execute(NOT_PROPOSED, (run_id,))
        proposal = {
            "run_id": run_id,
            "key_date": run.key_date.isoformat(),
            "letters": len(letters),
            "by_status": dict(sorted(cur.fetchall())),
            "levels": {
                level: {
                    **entry,
                    "totals": {
                        c: str(a.quantize(Decimal("0.01"))) for c, a in entry["totals"].items()
                    },
                    "routes": dict(sorted(entry["routes"].items())),
                }
                for level, entry in sorted(levels.items())
            },
            "routes": routes,
        }
        cur.execute(SET_PROPOSAL, (Json(proposal), run_id))
    log.info("run %s waits for approval: %d letters proposed", run_id, len(letters))
    return proposal


def decided(run_id: int) -> Decision | None:
    """The decision already made on the run, or None (not asked for, or waiting)."""
    with db.transaction() as cur:
        cur.execute(DECISION, (run_id,))
        row = cur.fetchone()
    if row is None or row[0] not in ("approved", "rejected"):
        return None
    return Decision(approved=row[0] == "approved", user=row[1], at=row[2])


def decide(run_id: int, decision: Decision) -> dict[str, int]:
    """Write the decision on the waiting run and withhold what is not released: every letter
    when rejected, the excluded partners' when approved. Returns the letters per outcome.

    The same decision again (a resumed task) changes nothing; another one, or a partner
    without a letter in the run, is refused."""
    excluded = sorted({number.strip() for number in decision.excluded if number.strip()})
    state = "approved" if decision.approved else "rejected"
    with db.transaction() as cur:
        load_run(cur, run_id, lock=True)
        cur.execute(DECISION, (run_id,))
        current, by, _ = cur.fetchone()
        if current == state and by == decision.user:
            return _outcome(cur, run_id)
        if current != "waiting":
            raise DecisionRefused(
                f"run {run_id}: approval is {current or 'not asked for'}, not waiting"
            )
        if excluded:
            if unknown := _unknown(cur, run_id, excluded):
                raise DecisionRefused(
                    f"run {run_id}: exclude names partners without a letter in this run: "
                    + ", ".join(unknown)
                )
        cur.execute(SET_DECISION, (state, decision.user, decision.at, run_id))
        if decision.approved:
            if excluded:
                cur.execute(WITHHOLD, {"reason": "excluded", "run": run_id, "partners": excluded})
        else:
            cur.execute(WITHHOLD, {"reason": "rejected", "run": run_id, "partners": None})
        outcome = _outcome(cur, run_id)
    log.info("run %s %s by %s: %s", run_id, state, decision.user, outcome)
    return outcome


def unknown_partners(run_id: int, numbers: Sequence[str]) -> list[str]:
    """The partner numbers among ``numbers`` that have no letter in the run."""
    with db.transaction() as cur:
        return _unknown(cur, run_id, numbers)


def _unknown(cur: Any, run_id: int, numbers: Sequence[str]) -> list[str]:
    cur.execute(RUN_PARTNERS, (run_id, list(numbers)))
    return sorted(set(numbers) - {n for (n,) in cur.fetchall()})


def _outcome(cur: Any, run_id: int) -> dict[str, int]:
    cur.execute(
        "SELECT coalesce(withheld_reason, 'released'), count(*) FROM erp.letters"
        " WHERE run_id = %s AND status IN ('archived', 'withheld') GROUP BY 1",
        (run_id,),
    )
    return dict(cur.fetchall())


def proposal_text(proposal: dict[str, Any], link: str | None = None) -> str:
    """The proposal as the approval request's body (Markdown): per level, the letters, their
    totals and where they go."""
    lines = [
        f"**Dunning proposal**, key date {proposal['key_date']}: "
        f"{proposal['letters']} letters to release.",
        "",
        "| Level | Letters | Amount | By mail | Paper |",
        "|---|---|---|---|---|",
    ]
    for level, entry in proposal["levels"].items():
        amount = ", ".join(f"{a} {c}" for c, a in sorted(entry["totals"].items()))
        paper = ", ".join(
            f"{n} {route.removeprefix('paper_').replace('_', ' ')}"
            for route, n in entry["routes"].items()
            if route != "mail"
        )
        lines.append(
            f"| {level} | {entry['letters']} | {amount} | {entry['routes'].get('mail', 0)} "
            f"| {paper or 0} |"
        )
    if link:
        lines += ["", f"Letters, samples and the form to leave partners out: [{link}]({link})"]
    return "\n".join(lines)


def excluded_numbers(value: Sequence[str] | str | None) -> tuple[str, ...]:
    """Partner numbers from a form: a list, or text with one per line or comma separated."""
    if value is None:
        return ()
    items = value.replace(",", "\n").splitlines() if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())
