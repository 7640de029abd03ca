"""Event mail end to end on real PostgreSQL and the test SMTP server: events of each kind
through the event_mail DAG (dag.test()) and outbox_dispatch, received by the right people,
from the right sender, in the right language; digests, toggles, reruns, concurrent runs and
a malformed payload."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from erpmail.core import archive, db
from erpmail.events import journal, mailing
from tests.dags import dagtest
from tests.partners import remake_partner

RULE = """
INSERT INTO mail.event_rules (event_type, recipient_kind, recipient, template, digest, enabled)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"""
EVENTS = "SELECT id, type, outcome, detail FROM erp.events ORDER BY id"


def _received(server) -> list:
    return [message_from_bytes(m.data, policy=policy.default) for m in server.messages]


def _text(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def _dispatch(server, n: int) -> list:
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    server.wait_for(n)
    return _received(server)


@pytest.fixture
def events_db(seeded_db, company_sender, smtp_server, airflow_db, tmp_path, monkeypatch):
    """Seeded data with two partners, a clerk, a group, the company's sender account."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    with db.transaction(seeded_db) as cur:
        cur.execute("DELETE FROM mail.event_rules")  # the migration's default digest rule
        cur.execute(
            "INSERT INTO erp.users VALUES ('anna', 'Anna Berger', 'anna@muster-handels.example.com', 'de'),"
            " ('tom', 'Tom Visser', 'tom@muster-handels.example.com', 'nl'),"
            " ('erpmail', 'Ops', 'ops@muster-handels.example.com', 'en')"
        )
        cur.execute("INSERT INTO erp.user_groups VALUES ('finance')")
        cur.execute(
            "INSERT INTO erp.user_group_members VALUES ('finance', 'anna'), ('finance', 'tom')"
        )
        german = remake_partner(cur, "000001", language="de")
        english = remake_partner(cur, "000002", language="en")
        cur.execute("UPDATE erp.partners SET clerk = 'tom' WHERE id = %s", (english,))
    return seeded_db, smtp_server, {"de": german, "en": english}


def _rule(conn, event_type, kind, recipient, template, digest="immediate", enabled=True) -> int:
    with db.transaction(conn) as cur:
        cur.execute(RULE, (event_type, kind, recipient, template, digest, enabled))
        return cur.fetchone()[0]


def _event(conn, event_type, payload, partner_id=None, company="DEMO") -> int:
    with db.transaction(conn) as cur:
        return journal.record(cur, event_type, payload, company=company, partner_id=partner_id)


CASE = {"case": "C-1001", "subject": "Lieferung prüfen", "due_date": "2026-12-09",
        "link": "https://erp.example.com/cases/C-1001"}  # fmt: skip


def test_a_case_assigned_reaches_the_clerk_in_the_clerks_language(events_db):
    conn, server, partners = events_db
    _rule(conn, "case_assigned", "clerk", None, "case_assigned")
    event = _event(conn, "case_assigned", CASE, partners["en"])

    assert dagtest.dag("event_mail").test().state == "success"
    ((msg,),) = [_dispatch(server, 1)]
    assert msg["To"] == "tom@muster-handels.example.com"  # the partner's clerk
    assert msg["From"].addresses[0].addr_spec == "buchhaltung@muster-handels.example.com"
    assert msg["Subject"] == "Zaak C-1001 toegewezen: Lieferung prüfen"  # Tom reads Dutch
    assert "https://erp.example.com/cases/C-1001" in _text(msg)
    assert "klant 000002" in _text(msg)
    assert dagtest.rows(conn, EVENTS)[0][:3] == (event, "case_assigned", "queued")


def test_a_rule_per_group_and_a_fixed_address_a_toggle_off_and_no_rule(events_db):
    conn, server, partners = events_db
    _rule(conn, "letter_failed", "group", "finance", "letter_failed")
    _rule(conn, "support_request", "address", "support@muster-handels.example.com",
          "support_request", enabled=False)  # fmt: skip
    failed = _event(conn, "letter_failed", {"document": "dunning", "partner": "000001",
        "partner_name": "Schäfer", "recipients": ["p000001@example.com"], "run_id": 7,
        "letter_id": 70, "reply": "550 5.1.1 mailbox unavailable"}, partners["de"])  # fmt: skip
    off = _event(conn, "support_request", {"case": "S-1", "subject": "x"}, partners["de"])
    unknown = _event(conn, "something_else", {}, partners["de"])

    counts = mailing.process()
    assert counts["queued"] == 1 and counts["skipped"] == 2
    outcomes = {i: (o, d) for i, _, o, d in dagtest.rows(conn, EVENTS)}
    assert outcomes[off] == ("skipped", "the rules for support_request are off")
    assert outcomes[unknown] == ("skipped", "no rule for something_else")
    assert outcomes[failed][0] == "queued"
    received = {m["To"]: m for m in _dispatch(server, 2)}
    assert sorted(received) == ["anna@muster-handels.example.com", "tom@muster-handels.example.com"]
    assert received["anna@muster-handels.example.com"]["Subject"].startswith("Brief an 000001")
    assert "550 5.1.1 mailbox unavailable" in _text(received["tom@muster-handels.example.com"])


def test_the_digest_sends_one_mail_with_three_events_when_due(events_db):
    conn, server, partners = events_db
    _rule(conn, "case_assigned", "address", "anna@muster-handels.example.com", "case_assigned",
          digest="hourly")  # fmt: skip
    for n in range(3):
        _event(conn, "case_assigned", {**CASE, "case": f"C-{n}"}, partners["de"])
    now = datetime(2026, 12, 2, 10, 20, tzinfo=UTC)

    assert mailing.process(now=now) == {"digest": 3, "events": 3, "digests": 0}
    assert mailing.process(now=now + timedelta(minutes=30))["digests"] == 0  # 10:50: not due
    assert mailing.process(now=now + timedelta(minutes=41))["digests"] == 1  # 11:01
    assert mailing.process(now=now + timedelta(hours=2))["digests"] == 0  # sent once
    (msg,) = _dispatch(server, 1)
    assert msg["Subject"] == "3 Vorgänge zugewiesen"
    assert all(f"C-{n}" in _text(msg) for n in range(3))


def test_a_rerun_and_a_concurrent_run_send_nothing_twice(events_db):
    conn, server, partners = events_db
    _rule(conn, "case_assigned", "payload", "assignee", "case_assigned")
    for n in range(40):
        _event(conn, "case_assigned", {**CASE, "case": f"C-{n}", "assignee": "anna"})
    results: list[dict] = []
    runs = [threading.Thread(target=lambda: results.append(mailing.process())) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert sum(r.get("queued", 0) for r in results) == 40
    assert mailing.process() == {"events": 0, "digests": 0}  # the rerun finds nothing
    keys = dagtest.rows(conn, "SELECT count(*), count(DISTINCT source_id) FROM mail.outbox")
    assert keys == [(40, 40)]
    received = _dispatch(server, 40)
    assert sorted(_text(m).split(":")[0] for m in received) == sorted(
        f"Ihnen wurde der Vorgang C-{n} zugewiesen" for n in range(40)
    )


def test_a_malformed_payload_fails_that_event_alone_with_its_reason(events_db):
    conn, server, partners = events_db
    _rule(conn, "case_assigned", "clerk", None, "case_assigned")
    _rule(conn, "support_request", "address", "support@muster-handels.example.com",
          "support_request")  # fmt: skip
    no_case = _event(conn, "case_assigned", {"subject": "x"}, partners["en"])
    missing_file = _event(conn, "support_request", {"case": "S-2", "subject": "Drucker",
        "attachments": [{"name": "foto.jpg", "key": "support/none.jpg"}]}, partners["de"])  # fmt: skip
    fine = _event(conn, "case_assigned", CASE, partners["en"])

    counts = mailing.process()
    assert (counts["failed"], counts["queued"]) == (2, 1)
    outcomes = {i: (o, d) for i, _, o, d in dagtest.rows(conn, EVENTS)}
    assert outcomes[no_case][0] == "failed" and "case" in outcomes[no_case][1]
    assert outcomes[missing_file] == (
        "failed",
        f"ValueError: event {missing_file}: attachment 'support/none.jpg' is not in the "
        "document store",
    )
    assert outcomes[fine][0] == "queued"
    assert dagtest.rows(conn, "SELECT count(*) FROM mail.outbox") == [(1,)]


def test_a_support_request_goes_to_support_with_its_attachments(events_db):
    conn, server, partners = events_db
    _rule(conn, "support_request", "address", "support@muster-handels.example.com",
          "support_request")  # fmt: skip
    key = archive.store("support/S-3/foto.jpg", b"\xff\xd8jpeg")
    _event(conn, "support_request", {"case": "S-3", "subject": "Drucker druckt nicht",
        "description": "Seit Montag.", "contact": "Frau Schäfer",
        "attachments": [{"name": "foto.jpg", "key": key, "type": "image/jpeg"}]},
        partners["de"])  # fmt: skip
    mailing.process()
    (msg,) = _dispatch(server, 1)
    assert msg["To"] == "support@muster-handels.example.com"
    assert msg["Subject"] == "Supportanfrage S-3: Drucker druckt nicht"
    assert "Seit Montag." in _text(msg) and "Kontakt: Frau Schäfer" in _text(msg)
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "foto.jpg"
    assert attachment.get_content() == b"\xff\xd8jpeg"


def test_a_reply_and_a_bounce_reach_the_partners_accounting_contact_in_its_language(events_db):
    conn, server, partners = events_db
    with db.transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.contacts (partner_id, name, email, role, language)"
            " VALUES (%s, 'Jan', 'jan@p000002.example.com', 'accounting', 'nl')",
            (partners["en"],),
        )
    for event_type in ("balance_reply_received", "mail_bounced"):
        _rule(conn, event_type, "contact", "accounting", event_type)
    _event(conn, "balance_reply_received", {"letter_id": 5, "run_id": 2, "partner": "000002",
        "partner_name": "Van der Berg", "mail_id": 31, "from": "boekhouding@p2.example",
        "subject": "Re: Saldobevestiging", "key_date": "2026-12-31"}, partners["en"])  # fmt: skip
    _event(conn, "mail_bounced", {"partner": "000001", "partner_name": "Schäfer",
        "recipients": ["old@p000001.example.com"], "subject": "Mahnung",
        "reply": "bounced: 5.1.1 user unknown"}, partners["de"])  # fmt: skip

    assert mailing.process()["queued"] == 2
    received = {m["To"]: m for m in _dispatch(server, 2)}
    reply = received["jan@p000002.example.com"]  # the contact, in the contact's language
    assert reply["Subject"] == "Antwoord op de saldobevestiging: 000002 Van der Berg"
    assert "e-mail #31 is gekoppeld aan brief 5" in _text(reply)
    bounce = received["p000001@example.com"]  # no accounting contact: the partner, German
    assert bounce["Subject"] == "Unzustellbar: 000001 Schäfer"
    assert "bounced: 5.1.1 user unknown" in _text(bounce)
