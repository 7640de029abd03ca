"""The dunning proposal under dag.test(): the run waits in ``approve`` (Airflow's
human-in-the-loop request) until a clerk answers on the proposal screen, through Airflow's own
app and auth manager; only approved letters are routed, a reject queues nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import pendulum
import pytest

from tests.dags import dagtest
from tests.dags.test_dunning_run import CONF, setup  # noqa: F401 (the fixture)

LETTERS = """
SELECT p.number, l.status, l.withheld_reason, l.outbox_id IS NOT NULL
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id JOIN erp.runs r ON r.id = l.run_id
 WHERE r.airflow_run_id = %s ORDER BY p.number"""
RUN = "SELECT approval, approval_by, approval_at, proposal, summary FROM erp.runs WHERE airflow_run_id = %s"
QUEUED = """
SELECT count(*) FROM mail.outbox o JOIN erp.letters l ON l.outbox_id = o.id
  JOIN erp.runs r ON r.id = l.run_id WHERE r.airflow_run_id = %s"""


def _run_with_approval(clerk: Callable[[str], None]):
    """Run dunning_run with approval on (dag.test() needs the main thread); ``clerk(run_id)``
    runs in a thread of its own once ``approve`` awaits input, as a clerk would. Returns the
    DAG run and what the clerk raised, if anything."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    failed: list[BaseException] = []

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with create_session() as session:
                waiting = (
                    session.query(TaskInstance.run_id)
                    .filter_by(dag_id="dunning_run", task_id="approve", state="awaiting_input")
                    .first()
                )
            if waiting:
                try:
                    clerk(waiting[0])
                except BaseException as exc:  # reported by the test, after the run
                    failed.append(exc)
                    _answer_anyway(waiting[0])
                return
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    when = pendulum.now("UTC")
    dr = dagtest.dag("dunning_run").test(
        run_conf={**CONF, "approval": True}, logical_date=when, run_after=when
    )
    watcher.join(60)
    return dr, failed


def _answer_anyway(run_id: str) -> None:
    """Reject a run whose clerk's checks failed, so dag.test() returns."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id="dunning_run", task_id="approve", run_id=run_id)
            .one()
        )
        if ti.state != "awaiting_input":
            return
        detail = session.get(HITLDetail, ti.id)
        detail.chosen_options, detail.params_input = ["Reject"], {"exclude": []}
        detail.responded_by = {"id": "test", "name": "test"}
        detail.responded_at = pendulum.now("UTC")
        handle_event_submit(
            TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session
        )


@pytest.mark.timeout(900)
def test_approve_with_one_partner_left_out_routes_the_rest(setup, airflow_api) -> None:  # noqa: F811
    conn, _ = setup
    client, auth = airflow_api
    seen: dict = {}

    def clerk(run_id: str) -> None:
        base = f"/erpmail/runs/dunning_run/{quote(run_id, safe='')}"
        # waiting: rendered and archived, nothing queued; the proposal per level is shown
        seen["queued"] = dagtest.rows(conn, QUEUED, run_id)
        shown = client.get(f"{base}/proposal", params={"format": "json"}, headers=auth["clerk"])
        assert shown.status_code == 200, shown.text
        seen["proposal"] = proposal = shown.json()
        seen["page"] = client.get(f"{base}/proposal", headers=auth["clerk"]).text
        seen["letters_page"] = client.get(f"{base}/letters", headers=auth["clerk"]).text
        seen["left_out"] = left_out = sorted(x["partner"] for x in proposal["letters"])[0]
        form = {"decision": "Approve", "exclude": [left_out]}
        # a viewer may not decide; a partner of no letter is refused by name
        seen["viewer"] = client.post(f"{base}/proposal", data=form, headers=auth["clerk"])
        seen["wrong"] = client.post(
            f"{base}/proposal",
            data={"decision": "Approve", "exclude": ["no-such"]},
            headers=auth["boss"],
            follow_redirects=False,
        )
        seen["still"] = dagtest.rows(conn, RUN, run_id)[0][0]
        seen["approved"] = client.post(
            f"{base}/proposal", data=form, headers=auth["boss"], follow_redirects=False
        )
        seen["again"] = client.post(f"{base}/proposal", data=form, headers=auth["boss"])

    dr, failed = _run_with_approval(clerk)
    assert not failed, failed
    assert dr.state == "success"
    run_id = dr.run_id
    proposal, left_out = seen["proposal"], seen["left_out"]
    assert seen["queued"] == [(0,)]
    assert proposal["approval"] == "waiting"
    letters = {x["partner"]: x for x in proposal["letters"]}
    assert len(letters) >= 3 and all(x["status"] == "archived" for x in letters.values())
    assert sum(level["letters"] for level in proposal["levels"].values()) == len(letters)
    assert all(x["route"] for x in letters.values())  # mail or paper with the reason
    assert "Approve" in seen["page"] and 'name="exclude"' in seen["page"]
    assert 'href="proposal"' in seen["letters_page"]
    assert seen["viewer"].status_code == 403
    assert seen["wrong"].status_code == 303 and "no-such" in seen["wrong"].headers["location"]
    assert seen["still"] == "waiting"
    assert seen["approved"].status_code == 303, seen["approved"].text
    assert seen["again"].status_code == 409  # answered once

    ((state, by, at, stored, summary),) = dagtest.rows(conn, RUN, run_id)
    assert (state, by) == ("approved", "boss") and at is not None
    assert stored["letters"] == len(letters)
    assert summary["approval"]["state"] == "approved" and summary["approval"]["excluded"] == 1
    rows = {number: rest for number, *rest in dagtest.rows(conn, LETTERS, run_id)}
    assert rows[left_out] == ["withheld", "excluded", False]
    others = [rest for number, rest in rows.items() if number != left_out]
    assert all(status in ("released", "paper", "failed") for status, *_ in others)
    assert sum(queued for *_, queued in others) == dagtest.rows(conn, QUEUED, run_id)[0][0] > 0


@pytest.mark.timeout(900)
def test_reject_queues_nothing_and_the_letters_do_not_count_as_sent(setup, airflow_api) -> None:  # noqa: F811
    conn, _ = setup
    client, auth = airflow_api
    answers = []

    def clerk(run_id: str) -> None:
        base = f"/erpmail/runs/dunning_run/{quote(run_id, safe='')}"
        answers.append(
            client.post(
                f"{base}/proposal",
                data={"decision": "Reject"},
                headers=auth["boss"],
                follow_redirects=False,
            ).status_code
        )

    dr, failed = _run_with_approval(clerk)
    assert not failed and answers == [303], (failed, answers)
    assert dr.state == "success"  # closed with its summary, nothing skipped
    run_id = dr.run_id

    ((state, by, _, _, summary),) = dagtest.rows(conn, RUN, run_id)
    assert (state, by, summary["approval"]["state"]) == ("rejected", "boss", "rejected")
    assert dagtest.rows(conn, QUEUED, run_id) == [(0,)]
    statuses = {(status, reason) for _, status, reason, _ in dagtest.rows(conn, LETTERS, run_id)}
    assert statuses == {("withheld", "rejected")}

    # the next run proposes the same letters again: a rejected letter is no previous letter
    later = pendulum.now("UTC")
    dr = dagtest.dag("dunning_run").test(run_conf=CONF, logical_date=later, run_after=later)
    assert dr.state == "success"
    first = [(n, s) for n, s, *_ in dagtest.rows(conn, LETTERS, run_id)]
    again = [n for n, *_ in dagtest.rows(conn, LETTERS, dr.run_id)]
    assert again == [n for n, _ in first]
