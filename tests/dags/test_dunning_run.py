"""dunning_run end to end with dag.test(): seeded data with hand-built partners for each
rule, real PostgreSQL, the aiosmtpd server behind outbox_dispatch, and a rerun."""

from __future__ import annotations

import email
import io
import json
from datetime import timedelta
from decimal import Decimal
from email import policy

import pendulum
import psycopg2.extensions
import pypdf
import pytest

from erpmail import accounts, archive, db
from tests.test_statements import CLEAR_PARTNER

SENDER = "buchhaltung@muster-handels.example.com"
TODAY = pendulum.today("Europe/Berlin").date()

PARTNER = """
UPDATE erp.partners SET is_customer = true, dunning_block = false, email = %s,
       email_blocked = %s, language = 'de', country = 'DE'
 WHERE company = 'DEMO' AND number = %s RETURNING id"""
ITEM = """
INSERT INTO erp.open_items (partner_id, doc_number, doc_type, doc_date, due_date, amount,
    open_amount, currency, dunning_block, disputed)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""
PREVIOUS_LETTER = """
WITH r AS (INSERT INTO erp.runs (kind, airflow_run_id, company, key_date, status)
           VALUES ('dunning', 'earlier', 'DEMO', %(key_date)s, 'done') RETURNING id),
     l AS (INSERT INTO erp.letters (run_id, partner_id, document, language, level, status, paper_reason)
           SELECT r.id, %(partner)s, 'dunning', 'de', 1, 'paper', 'no_address' FROM r RETURNING id)
INSERT INTO erp.letter_items (letter_id, open_item_id, level, raised, days_overdue, amount, currency)
SELECT l.id, %(item)s, 1, true, 15, 400.00, 'EUR' FROM l"""
LETTERS = """
SELECT l.id, p.number, l.level, l.status, l.paper_reason, l.recipient, l.error, l.totals,
       l.fee, l.pdf_path, o.key
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""
ITEM_LEVELS = """
SELECT o.doc_number, li.level FROM erp.letter_items li JOIN erp.open_items o ON o.id = li.open_item_id
 WHERE li.letter_id = %s ORDER BY o.doc_number"""


def _item(
    cur,
    partner_id: int,
    doc: str,
    amount: str,
    days: int,
    *,
    currency: str = "EUR",
    blocked: bool = False,
    disputed: bool = False,
) -> int:
    value = Decimal(amount)
    due = TODAY - timedelta(days=days)
    cur.execute(
        ITEM,
        (
            partner_id,
            doc,
            "credit_note" if value < 0 else "invoice",
            due - timedelta(days=14),
            due,
            value,
            value,
            currency,
            blocked,
            disputed,
        ),
    )
    return cur.fetchone()[0]


def _partner(cur, number: str, *, email: str | None = "default", blocked: bool = False) -> int:
    address = f"p{number}@erpmail-test.example.com" if email == "default" else email
    cur.execute(PARTNER, (address, blocked, number))
    partner_id = cur.fetchone()[0]
    cur.execute(CLEAR_PARTNER, {"id": partner_id})
    return partner_id


def _hand_built(conn: psycopg2.extensions.connection) -> None:
    """Partners 000001-000010 rebuilt, one rule each; the other seeded partners stay."""
    with db.transaction(conn) as cur:
        p = _partner(cur, "000001")  # credit note netting
        _item(cur, p, "X1-INV", "300.00", 10)
        _item(cur, p, "X1-CN", "-100.00", 2)
        p = _partner(cur, "000002")  # blocked item
        _item(cur, p, "X2-BLOCKED", "100.00", 10, blocked=True)
        _item(cur, p, "X2-OPEN", "50.00", 10)
        p = _partner(cur, "000003")  # under the minimum
        _item(cur, p, "X3-SMALL", "3.00", 30)
        p = _partner(cur, "000004")  # level rise
        old = _item(cur, p, "X4-OLD", "400.00", 40)
        _item(cur, p, "X4-NEW", "60.00", 9)
        cur.execute(
            PREVIOUS_LETTER, {"key_date": TODAY - timedelta(days=25), "partner": p, "item": old}
        )
        p = _partner(cur, "000005", email=None)  # no e-mail
        _item(cur, p, "X5-INV", "80.00", 10)
        p = _partner(cur, "000006", blocked=True)  # blocked e-mail
        _item(cur, p, "X6-INV", "80.00", 10)
        p = _partner(cur, "000007")  # dunning contact
        cur.execute(
            "INSERT INTO erp.contacts (partner_id, name, email, role) VALUES (%s, 'Mahnwesen', "
            "'mahnung@kontakt7.example.com', 'dunning')",
            (p,),
        )
        _item(cur, p, "X7-INV", "120.00", 10)
        p = _partner(cur, "000008")  # disputed
        _item(cur, p, "X8-DISPUTED", "900.00", 10, disputed=True)
        p = _partner(cur, "000009", email="reject@p9.example.com")  # refused by the server
        _item(cur, p, "X9-INV", "70.00", 10)
        p = _partner(cur, "000010")  # no netting across currencies
        _item(cur, p, "X10-CHF", "120.00", 10, currency="CHF")
        _item(cur, p, "X10-CN", "-500.00", 2)


# number -> (level, status, paper reason, totals, listed documents with their levels)
EXPECTED = {
    "000001": (1, "sent", None, {"EUR": "200.00"}, [("X1-CN", None), ("X1-INV", 1)]),
    "000002": (1, "sent", None, {"EUR": "50.00"}, [("X2-OPEN", 1)]),
    "000004": (2, "sent", None, {"EUR": "465.00"}, [("X4-NEW", 1), ("X4-OLD", 2)]),
    "000005": (1, "paper", "no_address", {"EUR": "80.00"}, [("X5-INV", 1)]),
    "000006": (1, "paper", "blocked", {"EUR": "80.00"}, [("X6-INV", 1)]),
    "000007": (1, "sent", None, {"EUR": "120.00"}, [("X7-INV", 1)]),
    "000009": (1, "failed", None, {"EUR": "70.00"}, [("X9-INV", 1)]),
    "000010": (1, "sent", None, {"CHF": "120.00"}, [("X10-CHF", 1)]),
}


@pytest.fixture
def setup(seeded_db, smtp_server, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    user, password = smtp_server.credentials
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DUNNING_TEST",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": smtp_server.host,
                "port": smtp_server.port,
                "login": user,
                "password": password,
                "extra": {"security": "starttls", "ca_file": str(smtp_server.ca_file)},
            }
        ),
    )
    _hand_built(seeded_db)
    with db.transaction(seeded_db) as cur:
        accounts.create_account(
            cur,
            name="dunning",
            conn_id="smtp_dunning_test",
            from_address=SENDER,
            display_name="Muster Handels",
            sender_addresses=["muster-handels.example.com"],
            is_default=True,
            send_interval_seconds=0,
        )
    smtp_server.fail(
        "RCPT",
        "550 5.1.1 <reject@p9.example.com>: mailbox unavailable",
        rcpt="reject@p9.example.com",
    )
    return seeded_db, smtp_server


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag().get_dag(dag_id)
    assert dag is not None, f"{dag_id} not in the DAG folder"
    return dag


def _rows(conn, sql: str, *args) -> list[tuple]:
    with db.transaction(conn) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


CONF = {"key_date": TODAY.isoformat(), "company": "DEMO", "levels": ["1", "2", "3"], "note": "test"}


@pytest.mark.timeout(900)
def test_dunning_run_end_to_end_and_rerun(setup) -> None:
    conn, server = setup
    logical_date = pendulum.now("UTC")
    dr = _dag("dunning_run").test(run_conf=CONF, logical_date=logical_date, run_after=logical_date)
    assert dr.state == "success"
    ((run_id, summary),) = _rows(
        conn, "SELECT id, summary FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    assert _dag("outbox_dispatch").test().state == "success"

    letters = {row[1]: row for row in _rows(conn, LETTERS, run_id)}
    # the hand-built partners: letters, levels, totals, routes and items as computed by hand
    assert not {"000003", "000008"} & set(letters)
    for number, (level, status, reason, totals, items) in EXPECTED.items():
        letter_id, _, got_level, got_status, got_reason, recipient, error, got_totals, fee, *_ = (
            letters[number]
        )
        assert (got_level, got_status, got_reason, got_totals) == (level, status, reason, totals), (
            number
        )
        assert _rows(conn, ITEM_LEVELS, letter_id) == items, number
        assert fee == (Decimal("5.00") if level == 2 else Decimal("0.00"))
    assert letters["000007"][5] == "mahnung@kontakt7.example.com"
    assert "550" in letters["000009"][6] and "mailbox unavailable" in letters["000009"][6]
    # every letter ends sent, paper or failed, a failure with its reason
    assert {row[3] for row in letters.values()} <= {"sent", "paper", "failed"}
    assert all(row[6] for row in letters.values() if row[3] == "failed")
    assert all(row[4] for row in letters.values() if row[3] == "paper")

    # each mail carries its own letter's PDF: the one archived, with its partner's number
    received = server.messages
    by_key = {row[10]: row for row in letters.values() if row[10]}
    outbox = dict(_rows(conn, "SELECT message_id, key FROM mail.outbox"))
    assert len(received) == sum(1 for row in letters.values() if row[3] == "sent")
    for mail in received:
        message = email.message_from_bytes(mail.data, policy=policy.default)
        letter = by_key[outbox[message["Message-ID"]]]
        assert mail.rcpt_tos == [letter[5]]
        (attachment,) = list(message.iter_attachments())
        pdf = attachment.get_content()
        assert pdf == archive.read(letter[9])
        text = _text(pdf)
        assert f"{run_id}-{letter[1]}" in text
        for doc, _level in EXPECTED.get(letter[1], (0, 0, 0, 0, []))[4]:
            assert doc in text
    assert "X2-BLOCKED" not in _text(archive.read(letters["000002"][9]))
    assert "200,00" in _text(archive.read(letters["000001"][9]))

    # paper letters, and only they, are in the print batch
    batch = _text(archive.read(summary["print_batch"]))
    for number, row in letters.items():
        assert (f"{run_id}-{number}" in batch) == (row[3] == "paper"), number
    assert summary["by_status"]["paper"] == sum(1 for r in letters.values() if r[3] == "paper")

    # rerun the same Airflow run (dag.test clears every task, render and route included)
    before = _rows(conn, LETTERS, run_id)
    keys = _rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id")
    dr2 = _dag("dunning_run").test(run_conf=CONF, logical_date=logical_date, run_after=logical_date)
    assert (dr2.run_id, dr2.state) == (dr.run_id, "success")
    assert _rows(conn, "SELECT count(*) FROM erp.runs WHERE kind = 'dunning'") == [
        (2,)
    ]  # + 'earlier'
    assert _rows(conn, LETTERS, run_id) == before
    assert _rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id") == keys
    assert _dag("outbox_dispatch").test().state == "success"
    assert len(server.messages) == len(received)


def test_bad_params_are_refused(setup) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    conn, _ = setup
    dag = _dag("dunning_run")
    for bad in (
        {"key_date": "02.03.2026"},
        {"levels": ["4"]},
        {"levels": []},
        {"company": "demo; drop"},
        {"partner_from": "../x"},
    ):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={**CONF, **bad})
    # from after to: JSON schema cannot compare two fields; the first task refuses it
    dr = dag.test(run_conf={**CONF, "partner_from": "000100", "partner_to": "000050"})
    assert dr.state == "failed"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states["start"] == "failed" and states["generate"] != "success"
    assert _rows(conn, "SELECT count(*) FROM erp.runs WHERE airflow_run_id = %s", dr.run_id) == [
        (0,)
    ]
