"""A campaign end to end on PostgreSQL, the test SMTP server and Airflow's own app: 2,000
recipients in three languages, some blocked, bounced, suppressed or opted out; each of the
rest received once, in its language, with a one-click unsubscribe that works; a kill -9
while queueing, pause and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from email import message_from_bytes, policy

import pytest

from erpmail.campaigns import recipients, sending, unsubscribe
from erpmail.core import db
from tests.dags import dagtest

N = 2000
PARTNERS = """
INSERT INTO erp.partners (company, number, name, email, language, country, customer_group,
    email_blocked, marketing_opt_out)
SELECT 'DEMO', 'C' || lpad(n::text, 5, '0'), 'Kunde ' || n, 'c' || n || '@example.com',
       (ARRAY['de', 'en', 'nl'])[n %% 3 + 1], 'DE', 'CAMP', n %% 97 = 0, n %% 89 = 0
  FROM generate_series(1, %s) n"""
TEXTS = [
    ("de", "Neuheiten für {{ partner.name }}", "<p>Hallo {{ partner.name }} &amp; Team</p>",
     "Hallo {{ partner.name }}"),
    ("en", "News for {{ partner.name }}", None, "Hello {{ partner.name }}"),
    ("nl", "Nieuws voor {{ partner.name }}", None, "Hallo {{ partner.name }} (nl)"),
]  # fmt: skip


def _campaign(conn, name: str, status: str = "scheduled") -> int:
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO mail.campaigns (name, company, account, customer_groups, start_at,"
            " status) VALUES (%s, 'DEMO', 'accounting', ARRAY['CAMP'], now(), %s) RETURNING id",
            (name, status),
        )
        (campaign,) = cur.fetchone()
        for language, subject, html, text in TEXTS:
            cur.execute(
                "INSERT INTO mail.campaign_texts VALUES (%s, %s, %s, %s, %s)",
                (campaign, language, subject, html, text),
            )
    return campaign


@pytest.fixture
def crowd(seeded_db, company_sender, smtp_server, airflow_db, monkeypatch):
    monkeypatch.setenv(unsubscribe.SECRET_ENV, "test-secret-0123456789abcdef")
    monkeypatch.setenv(unsubscribe.PUBLIC_URL_ENV, "https://erp.example.com")
    with db.transaction(seeded_db) as cur:
        cur.execute(PARTNERS, (N,))
        cur.execute(
            "INSERT INTO mail.address_health (address, hard_bounces, blocked_at)"
            " SELECT 'c' || n || '@example.com', 3, now() FROM generate_series(5, %s, 101) n",
            (N,),
        )
        cur.execute(
            "INSERT INTO mail.suppressions (address, scope, company, source)"
            " SELECT 'c' || n || '@example.com', 'marketing', '', 'manual'"
            " FROM generate_series(7, %s, 103) n",
            (N,),
        )
    return seeded_db, smtp_server


def _expected(n: int) -> str | None:
    """Why partner n is skipped (as the fixture built them), or None."""
    if n % 89 == 0:
        return "opted_out"
    if n % 97 == 0:
        return "blocked"
    if n >= 5 and (n - 5) % 101 == 0:
        return "hard_bounced"
    if n >= 7 and (n - 7) % 103 == 0:
        return "suppressed"
    return None


@pytest.mark.timeout(900)
def test_the_right_set_gets_it_once_in_its_language_and_one_click_unsubscribes(crowd, airflow_api):
    conn, server = crowd
    campaign = _campaign(conn, "winter")
    dr = dagtest.dag("campaign_send").test(run_conf={"campaign": campaign, "batch_size": 300})
    assert dr.state == "success"

    reasons = dict(dagtest.rows(conn, "SELECT address, coalesce(reason, status)"
                                      " FROM mail.campaign_recipients WHERE campaign_id = %s",
                                campaign))  # fmt: skip
    expected = {f"c{n}@example.com": _expected(n) or "queued" for n in range(1, N + 1)}
    assert reasons == expected
    assert dagtest.rows(conn, "SELECT status FROM mail.campaigns WHERE id = %s", campaign) == [
        ("done",)
    ]
    wanted = {a for a, r in expected.items() if r == "queued"}
    deadline = time.monotonic() + 600
    while len(server.messages) < len(wanted) and time.monotonic() < deadline:
        assert (
            dagtest.dag("outbox_dispatch").test(run_conf={"budget_seconds": 300}).state == "success"
        )
    received = [message_from_bytes(m.data, policy=policy.default) for m in server.messages]
    assert sorted(m["To"] for m in received) == sorted(wanted)  # each once, no one else
    by_address = {m["To"]: m for m in received}
    languages = {0: "de", 1: "en", 2: "nl"}  # as PARTNERS gives them: n % 3
    for n in (1, 2, 3):
        msg = by_address[f"c{n}@example.com"]
        subject = {"de": "Neuheiten für", "en": "News for", "nl": "Nieuws voor"}[languages[n % 3]]
        assert msg["Subject"] == f"{subject} Kunde {n}"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Precedence"] == "bulk" and msg["Auto-Submitted"] is None
    raw = next(m.data for m in server.messages if b"To: c1@example.com\r\n" in m.data)
    assert b"List-Unsubscribe: <https://erp.example.com/erpmail/unsubscribe/" in raw
    # a campaign keeps no copy per recipient: the campaign and its recipients are the record
    assert dagtest.rows(conn, "SELECT count(*) FROM mail.messages WHERE direction = 'out'") == [
        (0,)
    ]
    html = by_address["c3@example.com"].get_body(("html",)).get_content()
    assert "Hallo Kunde 3 &amp; Team" in html

    # the one-click URL works through Airflow's app, without a login
    client, _ = airflow_api
    header = by_address["c1@example.com"]["List-Unsubscribe"]
    url = header.split("<", 1)[1].split(">", 1)[0]
    assert url.startswith("https://erp.example.com/erpmail/unsubscribe/")
    path = url.removeprefix("https://erp.example.com")
    page = client.get(path)
    assert page.status_code == 200 and "c1@example.com" in page.text and "<form" in page.text
    assert dagtest.rows(
        conn, "SELECT count(*) FROM mail.suppressions WHERE address = 'c1@example.com'"
    ) == [(0,)]
    done = client.post(path, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert done.status_code == 200 and 'id="done"' in done.text
    assert dagtest.rows(
        conn, "SELECT scope, source FROM mail.suppressions WHERE address = 'c1@example.com'"
    ) == [("marketing", "one_click")]
    assert client.post(path[:-3] + "xyz").status_code == 404  # a forged token
    assert "mailto:unsubscribe+" in header

    # a second campaign skips that address
    again = _campaign(conn, "spring")
    with db.transaction(conn) as cur:
        recipients.freeze(cur, again)
        cur.execute(
            "SELECT reason FROM mail.campaign_recipients WHERE campaign_id = %s AND address = %s",
            (again, "c1@example.com"),
        )
        assert cur.fetchone() == ("suppressed",)


def test_a_kill_while_queueing_then_a_rerun_queues_each_once_and_pause_holds(crowd):
    conn, _ = crowd
    campaign = _campaign(conn, "kill")
    code = f"from erpmail.campaigns import sending; sending.send({campaign}, batch=20)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (queued,) = dagtest.rows(
            conn, "SELECT count(*) FROM mail.outbox WHERE source_type = 'campaign'"
        )[0]
        if queued >= 100:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    (partial,) = dagtest.rows(
        conn, "SELECT count(*) FROM mail.outbox WHERE source_type = 'campaign'"
    )[0]
    assert 100 <= partial < N

    assert sending.set_status(campaign, "paused")
    assert sending.send(campaign) == sending.send(campaign)  # paused: nothing more queued
    assert dagtest.rows(
        conn, "SELECT count(*) FROM mail.outbox WHERE source_type = 'campaign'"
    ) == [(partial,)]
    assert sending.set_status(campaign, "sending")
    summary = sending.send(campaign)
    expected = sum(1 for n in range(1, N + 1) if _expected(n) is None)
    assert summary["queued:queued"] == expected
    assert dagtest.rows(
        conn,
        "SELECT count(*), count(DISTINCT recipients[1]) FROM mail.outbox WHERE source_type = 'campaign'",
    ) == [(expected, expected)]


def test_a_missing_field_fails_the_recipient_and_transactional_mail_ignores_suppressions(crowd):
    conn, _ = crowd
    from erpmail.operators.notifier import queue_notice

    campaign = _campaign(conn, "broken")
    with db.transaction(conn) as cur:
        cur.execute(
            "UPDATE mail.campaign_texts SET text = 'Hallo {{ partner.vat_id }}'"
            " WHERE campaign_id = %s AND language = 'de'",
            (campaign,),
        )
    summary = sending.send(campaign)
    failed = dagtest.rows(conn, "SELECT r.language, r.reason FROM mail.campaign_recipients r"
                                " WHERE campaign_id = %s AND status = 'failed'", campaign)  # fmt: skip
    assert failed and {lang for lang, _ in failed} == {"de"}
    assert all("vat_id" in reason for _, reason in failed)
    assert summary["queued:queued"] > 0  # the others went on
    # c7 is suppressed for marketing: a notice (or a letter) to it is queued as ever
    outbox_id, _ = queue_notice(to=["c7@example.com"], subject="s", text="t", key="notice:c7")
    mime = dagtest.rows(conn, "SELECT mime FROM mail.outbox WHERE id = %s", outbox_id)[0][0]
    assert b"List-Unsubscribe" not in bytes(mime)
