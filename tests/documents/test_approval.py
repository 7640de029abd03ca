"""The dunning proposal on real PostgreSQL: fixed once on the rendered run, decided once;
the partners left out and a rejected run's letters are withheld and routed nowhere."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from erpmail.documents import approval, rendering, routing, runs, summary
from erpmail.documents.dunning import DUNNING
from tests.documents.pipeline import dunning_run, rows

AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
STATUSES = (
    "SELECT status, withheld_reason, count(*) FROM erp.letters WHERE run_id = %s GROUP BY 1, 2"
)
RUN = "SELECT approval, approval_by, approval_at FROM erp.runs WHERE id = %s"


def _rendered(airflow_run_id: str = "manual__1") -> tuple[int, list[int]]:
    run = dunning_run(airflow_run_id)
    batches = runs.plan_batches(run, max_batches=3, min_size=4)
    for batch in batches:
        rendering.render_batch(run, batch, DUNNING)
    return run, batches


def _route_and_close(run: int, batches: list[int]) -> dict:
    for batch in batches:
        routing.route_batch(run, batch, DUNNING)
    summary.print_batch(run, "dunning")
    return summary.summarize(run)


def test_the_proposal_counts_each_level_and_where_its_letters_go(ledger):
    run, _ = _rendered()
    proposal = approval.propose(run, DUNNING)

    letters = rows(ledger, "SELECT id, level, totals FROM erp.letters WHERE run_id = %s", run)
    assert proposal["letters"] == len(letters) > 0
    assert sorted(proposal["routes"]) == sorted(str(i) for i, *_ in letters)
    for level, entry in proposal["levels"].items():
        mine = [t for _, lv, t in letters if str(lv) == level]
        assert entry["letters"] == len(mine) == sum(entry["routes"].values())
        eur = sum(float(t.get("EUR", 0)) for t in mine)
        assert float(entry["totals"].get("EUR", 0)) == pytest.approx(eur)
        assert entry["sample"] in [i for i, lv, _ in letters if str(lv) == level]
    assert rows(ledger, RUN, run) == [("waiting", None, None)]
    # fixed once: a rerun of the task shows the same proposal
    assert approval.propose(run, DUNNING) == proposal
    text = approval.proposal_text(proposal, "/erpmail/x")
    assert f"{proposal['letters']} letters" in text and "(/erpmail/x)" in text


def test_approved_less_one_partner_routes_the_rest_and_the_decision_is_kept(ledger):
    run, batches = _rendered()
    approval.propose(run, DUNNING)
    ((number,),) = rows(
        ledger,
        "SELECT p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id"
        " WHERE l.run_id = %s ORDER BY p.number LIMIT 1",
        run,
    )
    decision = approval.Decision(approved=True, user="clerk", at=AT, excluded=(number, " "))
    outcome = approval.decide(run, decision)
    assert outcome["excluded"] == 1 and outcome["released"] > 0
    assert approval.decide(run, decision) == outcome  # the same answer again: no change
    assert approval.decided(run) == approval.Decision(approved=True, user="clerk", at=AT)
    with pytest.raises(approval.DecisionRefused, match="approved, not waiting"):
        approval.decide(run, approval.Decision(approved=False, user="boss", at=AT))

    closed = _route_and_close(run, batches)
    assert closed["approval"] == {
        "state": "approved",
        "by": "clerk",
        "at": AT.isoformat(),
        "excluded": 1,
    }
    withheld = rows(
        ledger,
        "SELECT p.number, l.outbox_id FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id"
        " WHERE l.run_id = %s AND l.status = 'withheld'",
        run,
    )
    assert withheld == [(number, None)]
    assert "Approval: approved by clerk at 2026-03-02 09:30 UTC, 1 partners left out" in (
        summary.summary_text({**closed, "language": "en"})
    )


def test_a_partner_without_a_letter_is_refused_and_nothing_is_decided(ledger):
    run, _ = _rendered()
    approval.propose(run, DUNNING)
    ((number,),) = rows(
        ledger,
        "SELECT min(p.number) FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id"
        " WHERE l.run_id = %s",
        run,
    )
    assert approval.unknown_partners(run, ["nobody", number]) == ["nobody"]
    with pytest.raises(approval.DecisionRefused, match="nobody"):
        approval.decide(
            run, approval.Decision(approved=True, user="clerk", at=AT, excluded=("nobody",))
        )
    assert rows(ledger, RUN, run) == [("waiting", None, None)]
    assert {s for s, *_ in rows(ledger, STATUSES, run)} == {"archived"}


def test_a_rejected_run_queues_nothing_and_is_no_previous_letter(ledger):
    run, batches = _rendered()
    approval.propose(run, DUNNING)
    approval.decide(run, approval.Decision(approved=False, user="boss", at=AT))
    closed = _route_and_close(run, batches)

    assert [(s, r) for s, r, _ in rows(ledger, STATUSES, run)] == [("withheld", "rejected")]
    assert rows(ledger, "SELECT count(*) FROM mail.outbox") == [(0,)]
    assert closed["by_status"] == {"withheld": closed["letters"]}
    # the next run proposes the same letters at the same levels
    again = dunning_run("manual__2")
    levels = "SELECT partner_id, level FROM erp.letters WHERE run_id = %s ORDER BY 1"
    assert rows(ledger, levels, again) == rows(ledger, levels, run)


def test_a_run_never_asked_cannot_be_decided(ledger):
    run, _ = _rendered()
    with pytest.raises(approval.DecisionRefused, match="not asked for"):
        approval.decide(run, approval.Decision(approved=True, user="clerk", at=AT))
    assert approval.decided(run) is None


def test_excluded_numbers_come_as_a_list_or_as_text():
    assert approval.excluded_numbers(None) == ()
    assert approval.excluded_numbers(["000001", " ", "000002 "]) == ("000001", "000002")
    assert approval.excluded_numbers("000001, 000002\n000003") == ("000001", "000002", "000003")
