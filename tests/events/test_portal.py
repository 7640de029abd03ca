"""The customer portal's mails per customer group, end to end on PostgreSQL and the test SMTP
server: recipients, sender, language, the group's texts and toggles; a password-reset link
in the received mail and nowhere else."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from psycopg2 import sql

from erpmail.core import db
from erpmail.events import journal, mailing
from tests.dags import dagtest
from tests.events.test_event_mail import _dispatch, _text, events_db  # noqa: F401
from tests.partners import remake_partner

LINK = "https://portal.muster-handels.example.com/reset?token=Zq81-secret-7Hh"
TEXTS = {
    ("access_request", "de"): ("Zugangsanfrage von {{ partner.name }}",
                               "{{ contact_name }} ({{ contact_email }}) möchte Zugang."),
    ("access_request", "en"): ("Access request for {{ partner.name }}",
                               "{{ contact_name }} ({{ contact_email }}) asked for access."),
    ("validation_confirmed", "de"): ("Ihr Zugang ist freigeschaltet", "Willkommen, {{ contact_name }}."),
    ("new_main_contact", "de"): ("Sie sind Hauptansprechpartner", "Für {{ partner.name }}."),
    ("old_main_contact", "de"): ("Sie sind nicht mehr Hauptansprechpartner", "Für {{ partner.name }}."),
    ("forgot_username", "de"): ("Ihr Benutzername", "Ihr Benutzername: {{ username }}"),
    ("password_reset", "de"): ("Kennwort zurücksetzen", "Bitte hier: {{ reset_link }} (bis {{ expires_at }})"),
    ("password_reset", "en"): ("Reset your password", "Here: {{ reset_link }} (until {{ expires_at }})"),
}  # fmt: skip


@pytest.fixture
def portal(events_db):  # noqa: F811
    conn, server, partners = events_db
    with db.transaction(conn) as cur:
        cur.execute("INSERT INTO erp.customer_groups VALUES ('WEB', 'DEMO', 'Web customers')")
        cur.execute(
            "INSERT INTO erp.portal_settings VALUES ('WEB', 'portal-team@muster-handels.example.com',"
            " 'portal@muster-handels.example.com')"
        )
        for event in {e for e, _ in TEXTS}:
            cur.execute(
                "INSERT INTO erp.portal_events VALUES ('WEB', %s, true, %s)",
                (event, event == "access_request"),
            )
        for (event, language), (subject, body) in TEXTS.items():
            cur.execute(
                "INSERT INTO erp.portal_texts VALUES ('WEB', %s, %s, %s, %s)",
                (event, language, subject, body),
            )
        customer = remake_partner(cur, "000003", language="nl")  # no Dutch text: German
        cur.execute("UPDATE erp.partners SET customer_group = 'WEB' WHERE id = %s", (customer,))
        cur.execute(
            "INSERT INTO erp.contacts (partner_id, name, email, role, language)"
            " VALUES (%s, 'Jane Hughes', 'jane@customer.example', 'general', 'en')",
            (customer,),
        )
    return conn, server, customer


def _portal_event(conn, name, payload, partner) -> int:
    with db.transaction(conn) as cur:
        return journal.record(cur, f"portal_{name}", payload, company="DEMO", partner_id=partner)


def test_an_access_request_asked_by_a_clerk_goes_to_the_team_and_the_customer(portal):
    conn, server, customer = portal
    _portal_event(conn, "access_request", {"contact_email": "jane@customer.example",
        "contact_name": "Jane Hughes", "initiated_by": "clerk"}, customer)  # fmt: skip
    _portal_event(conn, "access_request", {"contact_email": "jane@customer.example",
        "contact_name": "Jane Hughes", "initiated_by": "customer"}, customer)  # fmt: skip
    assert dagtest.dag("event_mail").test().state == "success"
    received = _dispatch(server, 3)
    to = sorted(m["To"] for m in received)
    assert to == [
        "jane@customer.example",
        "portal-team@muster-handels.example.com",
        "portal-team@muster-handels.example.com",
    ]
    for msg in received:  # the contact reads English; the group's sender address
        assert msg["Subject"].startswith("Access request for ")
        assert msg["From"].addresses[0].addr_spec == "portal@muster-handels.example.com"
        assert "Jane Hughes (jane@customer.example) asked for access." in _text(msg)


def test_each_portal_mail_to_its_contact_in_its_language_or_german(portal):
    conn, server, customer = portal
    _portal_event(conn, "validation_confirmed", {"contact_email": "kees@customer.example",
        "contact_name": "Kees"}, customer)  # fmt: skip
    _portal_event(conn, "new_main_contact", {"new_contact_email": "new@customer.example"}, customer)
    _portal_event(conn, "old_main_contact", {"old_contact_email": "old@customer.example"}, customer)
    _portal_event(conn, "forgot_username", {"contact_email": "kees@customer.example",
        "username": "kees01"}, customer)  # fmt: skip
    assert mailing.process()["queued"] == 4
    received = {m["Subject"]: m for m in _dispatch(server, 4)}
    # Kees has no contact row, the partner reads Dutch, the group has no Dutch text: German
    assert received["Ihr Zugang ist freigeschaltet"]["To"] == "kees@customer.example"
    assert received["Sie sind Hauptansprechpartner"]["To"] == "new@customer.example"
    assert received["Sie sind nicht mehr Hauptansprechpartner"]["To"] == "old@customer.example"
    assert "Ihr Benutzername: kees01" in _text(received["Ihr Benutzername"])


def test_a_portal_mail_switched_off_or_without_settings_is_skipped(portal):
    conn, server, customer = portal
    with db.transaction(conn) as cur:
        cur.execute("UPDATE erp.portal_events SET enabled = false WHERE event = 'forgot_username'")
        other = remake_partner(cur, "000004")
    off = _portal_event(conn, "forgot_username", {"contact_email": "x@customer.example",
        "username": "x"}, customer)  # fmt: skip
    no_group = _portal_event(conn, "forgot_username", {"contact_email": "y@customer.example",
        "username": "y"}, other)  # fmt: skip
    bad = _portal_event(conn, "password_reset", {"contact_email": "y@customer.example"}, customer)
    assert mailing.process() == {"skipped": 2, "failed": 1, "events": 3, "digests": 0}
    outcomes = dict(dagtest.rows(conn, "SELECT id, detail FROM erp.events"))
    assert outcomes[off] == "portal mail forgot_username is off for customer group WEB"
    assert outcomes[no_group] == "partner 000004: its customer group has no portal settings"
    assert (
        outcomes[bad]
        == f"ValueError: event {bad} (portal_password_reset): payload field 'reset_link' is missing"
    )
    assert server.messages == []


def test_the_reset_link_is_in_the_mail_and_in_no_log_and_no_table_but_the_outbox(portal, caplog):
    conn, server, customer = portal
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    event = _portal_event(conn, "password_reset", {"contact_email": "jane@customer.example",
        "reset_link": LINK, "expires_at": expires}, customer)  # fmt: skip
    late = _portal_event(conn, "password_reset", {"contact_email": "jane@customer.example",
        "reset_link": LINK + "-old", "expires_at": "2026-01-01T00:00:00+00:00"}, customer)  # fmt: skip
    caplog.set_level(logging.DEBUG)

    assert dagtest.dag("event_mail").test().state == "success"
    (msg,) = _dispatch(server, 1)
    outcomes = dict(dagtest.rows(conn, "SELECT id, outcome FROM erp.events"))
    assert outcomes == {event: "queued", late: "expired"}

    assert msg["Subject"] == "Reset your password" and msg["To"] == "jane@customer.example"
    assert LINK in _text(msg)
    # every log line but the test SMTP server's own (aiosmtpd's "mail.log" prints the DATA)
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    assert "Zq81-secret" not in logged and len(logged) > 1000
    # every text and JSON column of every erpmail table, and the outbox's bytes apart
    holders = []
    with db.transaction(conn) as cur:
        cur.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema IN ('erp', 'mail')"
            " AND data_type IN ('text', 'jsonb', 'json', 'character varying', 'bytea', 'ARRAY')"
            " AND table_name IN (SELECT table_name FROM information_schema.tables"
            "                     WHERE table_type = 'BASE TABLE')"
        )
        for schema, table, column in cur.fetchall():
            found = sql.SQL("SELECT count(*) FROM {}.{} WHERE position(%s IN {}) > 0").format(
                sql.Identifier(schema),
                sql.Identifier(table),
                sql.Identifier(column)
                if column == "mime"
                else sql.SQL("{}::text").format(sql.Identifier(column)),
            )
            cur.execute(found, (b"Zq81-secret" if column == "mime" else "Zq81-secret",))
            if cur.fetchone()[0]:
                holders.append(f"{schema}.{table}.{column}")
    assert holders in ([], ["mail.outbox.mime"])  # the bytes may be encoded
    ((mime, secret, copy, archived),) = dagtest.rows(
        conn, "SELECT mime, secret, sent_copy, sent_archived_at IS NOT NULL FROM mail.outbox"
    )
    assert secret and copy == "none"
    assert LINK in _text(message_from_bytes(bytes(mime), policy=policy.default))
    # the sent-mail archive made no copy (archived_at set, no mail.messages row)
    assert dagtest.rows(conn, "SELECT count(*) FROM mail.messages WHERE direction = 'out'") == [
        (0,)
    ]
    assert archived
