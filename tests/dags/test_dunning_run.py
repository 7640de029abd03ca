"""dunning_run end to end with dag.test(): seeded data with hand-built partners for each
rule, real PostgreSQL, the aiosmtpd server behind outbox_dispatch, and a rerun."""

from __future__ import annotations

import email
from datetime import timedelta
from decimal import Decimal
from email import policy

import pendulum
import psycopg2.extensions
import pytest

from erpmail.core import archive, db
from erpmail.retention import policies, purge
from tests.dags import dagtest
from tests.partners import open_item, remake_partner
from tests.pdftext import pdf_text

TODAY = pendulum.today("Europe/Berlin").date()

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


def _item(cur, partner_id: int, doc: str, amount: str, days: int, **kw) -> int:
    return open_item(cur, partner_id, doc, amount, due=TODAY - timedelta(days=days), **kw)


def _hand_built(conn: psycopg2.extensions.connection) -> None:
    """Partners 000001-000010 rebuilt, one rule each; the other seeded partners stay."""
    with db.transaction(conn) as cur:
        p = remake_partner(cur, "000001")  # credit note netting
        _item(cur, p, "X1-INV", "300.00", 10)
        _item(cur, p, "X1-CN", "-100.00", 2)
        p = remake_partner(cur, "000002")  # blocked item
        _item(cur, p, "X2-BLOCKED", "100.00", 10, blocked=True)
        _item(cur, p, "X2-OPEN", "50.00", 10)
        p = remake_partner(cur, "000003")  # under the minimum
        _item(cur, p, "X3-SMALL", "3.00", 30)
        p = remake_partner(cur, "000004")  # level rise
        old = _item(cur, p, "X4-OLD", "400.00", 40)
        _item(cur, p, "X4-NEW", "60.00", 9)
        cur.execute(
            PREVIOUS_LETTER, {"key_date": TODAY - timedelta(days=25), "partner": p, "item": old}
        )
        p = remake_partner(cur, "000005", email=None)  # no e-mail
        _item(cur, p, "X5-INV", "80.00", 10)
        p = remake_partner(cur, "000006", blocked=True)  # blocked e-mail
        _item(cur, p, "X6-INV", "80.00", 10)
        p = remake_partner(cur, "000007")  # dunning contact
        cur.execute(
            "INSERT INTO erp.contacts (partner_id, name, email, role) VALUES (%s, 'Mahnwesen', "
            "'mahnung@kontakt7.example.com', 'dunning')",
            (p,),
        )
        _item(cur, p, "X7-INV", "120.00", 10)
        p = remake_partner(cur, "000008")  # disputed
        _item(cur, p, "X8-DISPUTED", "900.00", 10, disputed=True)
        p = remake_partner(cur, "000009", email="reject@p9.example.com")  # refused by the server
        _item(cur, p, "X9-INV", "70.00", 10)
        p = remake_partner(cur, "000010")  # no netting across currencies
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
def setup(seeded_db, company_sender, smtp_server, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    _hand_built(seeded_db)
    smtp_server.fail(
        "RCPT",
        "550 5.1.1 <reject@p9.example.com>: mailbox unavailable",
        rcpt="reject@p9.example.com",
    )
    return seeded_db, smtp_server


CONF = {
    "key_date": TODAY.isoformat(),
    "company": "DEMO",
    "levels": ["1", "2", "3"],
    "note": "test",
    "approval": False,
}


@pytest.mark.timeout(900)
def test_dunning_run_end_to_end_and_rerun(setup) -> None:
    conn, server = setup
    logical_date = pendulum.now("UTC")
    dr = dagtest.dag("dunning_run").test(
        run_conf=CONF, logical_date=logical_date, run_after=logical_date
    )
    assert dr.state == "success"
    ((run_id, summary),) = dagtest.rows(
        conn, "SELECT id, summary FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    # one render and one route per batch, never per letter (invariant 8)
    batches = dagtest.rows(conn, "SELECT DISTINCT batch FROM erp.letters WHERE run_id = %s", run_id)
    for task_id in ("batch.render", "batch.route"):
        mapped = [ti.map_index for ti in dr.get_task_instances() if ti.task_id == task_id]
        assert sorted(mapped) == list(range(len(batches))), task_id

    letters = {row[1]: row for row in dagtest.rows(conn, LETTERS, run_id)}
    # the hand-built partners: letters, levels, totals, routes and items as computed by hand
    assert not {"000003", "000008"} & set(letters)
    for number, (level, status, reason, totals, items) in EXPECTED.items():
        letter_id, _, got_level, got_status, got_reason, recipient, error, got_totals, fee, *_ = (
            letters[number]
        )
        assert (got_level, got_status, got_reason, got_totals) == (level, status, reason, totals), (
            number
        )
        assert dagtest.rows(conn, ITEM_LEVELS, letter_id) == items, number
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
    outbox = dict(dagtest.rows(conn, "SELECT message_id, key FROM mail.outbox"))
    assert len(received) == sum(1 for row in letters.values() if row[3] == "sent")
    for mail in received:
        message = email.message_from_bytes(mail.data, policy=policy.default)
        letter = by_key[outbox[message["Message-ID"]]]
        assert mail.rcpt_tos == [letter[5]]
        (attachment,) = list(message.iter_attachments())
        pdf = attachment.get_content()
        assert pdf == archive.read(letter[9])
        text = pdf_text(pdf)
        assert f"{run_id}-{letter[1]}" in text
        for doc, _level in EXPECTED.get(letter[1], (0, 0, 0, 0, []))[4]:
            assert doc in text
    assert "X2-BLOCKED" not in pdf_text(archive.read(letters["000002"][9]))
    assert "200,00" in pdf_text(archive.read(letters["000001"][9]))

    # paper letters, and only they, are in the print batch
    batch = pdf_text(archive.read(summary["print_batch"]))
    for number, row in letters.items():
        assert (f"{run_id}-{number}" in batch) == (row[3] == "paper"), number
    assert summary["by_status"]["paper"] == sum(1 for r in letters.values() if r[3] == "paper")

    # rerun the same Airflow run (dag.test clears every task, render and route included)
    before = dagtest.rows(conn, LETTERS, run_id)
    keys = dagtest.rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id")
    dr2 = dagtest.dag("dunning_run").test(
        run_conf=CONF, logical_date=logical_date, run_after=logical_date
    )
    assert (dr2.run_id, dr2.state) == (dr.run_id, "success")
    assert dagtest.rows(conn, "SELECT count(*) FROM erp.runs WHERE kind = 'dunning'") == [
        (2,)
    ]  # + 'earlier'
    assert dagtest.rows(conn, LETTERS, run_id) == before
    assert dagtest.rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id") == keys
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    assert len(server.messages) == len(received)


def test_bad_params_are_refused(setup) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    conn, _ = setup
    dag = dagtest.dag("dunning_run")
    for bad in (
        {"key_date": "02.03.2026"},
        {"key_date": "2026-02-30"},
        {"levels": ["4"]},
        {"levels": []},
        {"company": "demo; drop"},
        {"partner_from": "../x"},
    ):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={**CONF, **bad})
    # from after to: JSON schema cannot compare two fields; the first task refuses it
    dr = dag.test(run_conf={**CONF, "partner_from": "000100", "partner_to": "000050"})
    dagtest.assert_refused_at_start(conn, dr)


def test_the_form_runs_as_it_opens_with_today_as_key_date(setup) -> None:
    conn, _ = setup
    dag = dagtest.dag("dunning_run")
    defaults = dag.params.validate()
    assert (defaults["key_date"], defaults["partner_from"], defaults["note"]) == (None, None, None)
    # the form untouched but for a small partner range and a dry run, to keep this quick
    dr = dag.test(run_conf={"partner_from": "000001", "partner_to": "000004", "dry_run": True})
    assert dr.state == "success"
    ((key_date, note, params, summary),) = dagtest.rows(
        conn,
        "SELECT key_date, note, params, summary FROM erp.runs WHERE airflow_run_id = %s",
        dr.run_id,
    )
    assert (key_date, note) == (pendulum.today("Europe/Berlin").date(), "")
    assert (params["partner_from"], params["partner_to"]) == ("000001", "000004")
    assert summary["key_date"] == key_date.isoformat() and summary["letters"] > 0


def test_each_batch_is_routed_after_its_own_render_and_before_the_print_batch(airflow_db) -> None:
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    dag = dagtest.dag("dunning_run")
    assert sorted(dag.task_ids) == sorted(
        [
            "start",
            "generate",
            "plan",
            "approval_gate",
            "approve",
            "batch.render",
            "batch.route",
            "print_batch",
            "summary",
        ]
    )
    assert isinstance(dag.task_group_dict["batch"], MappedTaskGroup)
    # in the mapped group route[i] waits for render[i] only, not for the other batches (and
    # for start and plan, whose run id and batch number it reads, and approve, which
    # approval_gate skips at once when the form turns approval off)
    assert dag.get_task("batch.route").upstream_task_ids == {
        "batch.render",
        "start",
        "plan",
        "approve",
    }
    assert dag.get_task("batch.route").trigger_rule == "none_failed"
    assert dag.get_task("approve").upstream_task_ids == {"batch.render", "start", "approval_gate"}
    assert dag.get_task("batch.render").upstream_task_ids == {"start", "plan"}
    assert dag.get_task("print_batch").upstream_task_ids == {"batch.route", "start"}
    assert dag.get_task("plan").upstream_task_ids == {"start", "generate"}
    assert dag.get_task("summary").upstream_task_ids == {"start", "print_batch"}


@pytest.mark.timeout(900)
def test_a_real_run_honours_the_archive_flag_and_archives_sent_mail_for_retention(
    setup, tmp_path
) -> None:
    conn, server = setup
    with db.transaction(conn) as cur:
        cur.execute(
            "UPDATE erp.dunning_levels SET archive = false WHERE company = 'DEMO' AND level = 1"
        )
    when = pendulum.now("UTC")
    dr = dagtest.dag("dunning_run").test(run_conf=CONF, logical_date=when, run_after=when)
    assert dr.state == "success"
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    ((run_id, summary),) = dagtest.rows(
        conn, "SELECT id, summary FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    rows = dagtest.rows(
        conn,
        "SELECT p.number, l.level, l.status, l.keep_pdf, l.pdf_path FROM erp.letters l"
        " JOIN erp.partners p ON p.id = l.partner_id WHERE l.run_id = %s",
        run_id,
    )
    letters = {number: (level, status, keep, path) for number, level, status, keep, path in rows}
    # the level says so on the letter, and its PDFs are gone; level 2 keeps its copy
    assert all(not keep and path is None for level, _, keep, path in letters.values() if level == 1)
    assert letters["000004"][0] == 2 and letters["000004"][2:] == (True, letters["000004"][3])
    assert archive.read(letters["000004"][3])
    stored = {p.name for p in (tmp_path / "archive").rglob("*.pdf")}
    for number, (level, *_rest) in letters.items():
        assert any(name.startswith(f"{number}-") for name in stored) == (level != 1), number
    # still sent with the PDF attached, and the paper ones still printed
    by_rcpt = {mail.rcpt_tos[0]: mail for mail in server.messages}
    message = email.message_from_bytes(
        by_rcpt["mahnung@kontakt7.example.com"].data, policy=policy.default
    )
    (attachment,) = list(message.iter_attachments())
    assert f"{run_id}-000007" in pdf_text(attachment.get_content())
    batch = pdf_text(archive.read(summary["print_batch"]))
    assert f"{run_id}-000005" in batch and f"{run_id}-000006" in batch
    # a rerun of the run keeps the print batch whole, though the level-1 PDFs are gone
    rerun = dagtest.dag("dunning_run").test(run_conf=CONF, logical_date=when, run_after=when)
    assert (rerun.run_id, rerun.state) == (dr.run_id, "success")
    assert f"{run_id}-000005" in pdf_text(archive.read(summary["print_batch"]))

    # each sent mail has one home: its .eml in the store, a direction-out row, linked to its
    # letter, partner and the letter's open items (the dispatcher wrote them)
    sent = dagtest.rows(
        conn,
        "SELECT m.id, m.eml_path, o.message_id, l.id, l.partner_id,"
        " (SELECT array_agg(li.open_item_id ORDER BY li.open_item_id) FROM erp.letter_items li"
        "   WHERE li.letter_id = l.id)"
        " FROM mail.messages m JOIN mail.outbox o ON o.id = m.outbox_id"
        " JOIN erp.letters l ON l.outbox_id = o.id WHERE m.direction = 'out' AND l.run_id = %s",
        run_id,
    )
    # (a level that keeps no archived copy gets none of the sent mail either)
    kept_sent = [n for n, (_, status, keep, _) in letters.items() if status == "sent" and keep]
    assert len(sent) == len(kept_sent) > 0
    assert dagtest.rows(
        conn, "SELECT count(*) FROM mail.outbox WHERE sent_archived_at IS NULL"
    ) == [(sum(1 for _, status, *_ in letters.values() if status != "sent" and status != "paper"),)]
    received = {
        email.message_from_bytes(m.data, policy=policy.default)["Message-ID"]: m.data
        for m in server.messages
    }
    for mail_id, path, message_id, letter_id, partner_id, items in sent:
        assert archive.read(path).replace(b"\r\n", b"\n") in received[message_id].replace(
            b"\r\n", b"\n"
        )
        links = dagtest.rows(
            conn,
            "SELECT entity_type, entity_id FROM mail.message_links WHERE message_id = %s"
            " ORDER BY 1, 2",
            mail_id,
        )
        assert links == sorted(
            [("letter", letter_id), ("partner", partner_id)] + [("open_item", i) for i in items]
        )
    # retention: past the general minimum the invoice minimum keeps them; past it they go
    with db.transaction(conn) as cur:
        policies.set_policy(cur, location=None, keep_days=30)
    kept = purge.run(conn, dry_run=False, as_of=TODAY + timedelta(days=3000), actor="test")
    assert dagtest.rows(conn, "SELECT count(*) FROM mail.messages WHERE direction = 'out'") == [
        (len(sent),)
    ], kept
    # and the outbox, past its own 30 days, keeps no bytes of what is sent (archived) or failed
    outbox_rows = dagtest.rows(conn, "SELECT status, length(mime), mime_purged_at FROM mail.outbox")
    assert outbox_rows and all(n == 0 and at for _, n, at in outbox_rows), outbox_rows
    assert kept["outbox_bytes_cleared"] == len(outbox_rows)
    purge.run(conn, dry_run=False, as_of=TODAY + timedelta(days=3700), actor="test")
    assert dagtest.rows(conn, "SELECT count(*) FROM mail.messages WHERE direction = 'out'") == [
        (0,)
    ]
    assert not any(archive.exists(path) for _, path, *_ in sent)
