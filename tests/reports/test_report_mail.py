"""Reports by mail on PostgreSQL and the test SMTP server: the open-items list as a PDF
whose header repeats on every page and a CSV that parses back to the rows; due times from
the cron schedule; empty and failing reports."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from email import message_from_bytes, policy
from zoneinfo import ZoneInfo

import pypdf
from psycopg2 import sql

from erpmail.core import db
from erpmail.reports import subscriptions
from tests.dags import dagtest
from tests.pdftext import pdf_text

AGING = """
SELECT p.number, o.currency, sum(o.open_amount)
  FROM erp.open_items o JOIN erp.partners p ON p.id = o.partner_id
 WHERE o.side = 'receivable' AND o.open_amount <> 0 GROUP BY 1, 2 ORDER BY 1, 2"""


def _subscribe(conn, name, report, params, **more) -> int:
    columns = {"name": name, "report": report, "params": params, "company": "DEMO",
               "recipients": ["controlling@muster-handels.example.com"],
               "schedule": "0 7 * * 1", **more}  # fmt: skip
    columns["params"] = json.dumps(columns["params"])
    insert = sql.SQL("INSERT INTO mail.report_subscriptions ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    with db.transaction(conn) as cur:
        cur.execute(insert, list(columns.values()))
        return cur.fetchone()[0]


def test_open_items_as_pdf_and_csv_on_schedule(seeded_db, company_sender, smtp_server, airflow_db):
    conn = seeded_db
    _subscribe(conn, "aging", "open_items_aging", {"key_date": "2026-03-02"},
               formats=["pdf", "csv"], language="en")  # fmt: skip
    assert dagtest.dag("report_mail").test().state == "success"
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    smtp_server.wait_for(1)
    (received,) = smtp_server.messages
    msg = message_from_bytes(received.data, policy=policy.default)
    assert msg["Subject"].startswith("Open items by partner (aging) (")
    files = {a.get_filename(): a.get_content() for a in msg.iter_attachments()}
    assert sorted(files) == ["open_items_aging.csv", "open_items_aging.pdf"]

    expected = dagtest.rows(conn, AGING)
    table = list(csv.reader(io.StringIO(files["open_items_aging.csv"])))
    assert table[0][:3] == ["Partner", "Name", "Currency"] and table[0][-1] == "Total"
    assert [(r[0], r[2], Decimal(r[-1])) for r in table[1:]] == expected
    pages = pypdf.PdfReader(io.BytesIO(files["open_items_aging.pdf"])).pages
    assert len(pages) >= 3
    assert all("Over 90 days" in page.extract_text() for page in pages)  # the header repeats
    text = pdf_text(files["open_items_aging.pdf"])
    for number, _, total in expected[:: max(1, len(expected) // 10)]:
        assert number in text and f"{total:.2f}" in text
    assert (
        f"{len(expected)} rows, attached as PDF and CSV" in msg.get_body(("plain",)).get_content()
    )

    ((next_run, outcome),) = dagtest.rows(
        conn, "SELECT next_run_at, last_outcome FROM mail.report_subscriptions"
    )
    berlin = next_run.astimezone(ZoneInfo("Europe/Berlin"))
    assert next_run > datetime.now(UTC) and berlin.strftime("%a %H:%M") == "Mon 07:00"
    assert outcome.startswith(f"{len(expected)} rows queued")
    assert subscriptions.run_due() == {}  # not due again until next Monday 07:00


def test_an_empty_report_is_sent_only_when_asked_and_a_bad_one_fails_alone(
    seeded_db, company_sender
):
    conn = seeded_db
    _subscribe(conn, "quiet", "unlinked_mail_of_the_week", {})
    _subscribe(conn, "told", "unlinked_mail_of_the_week", {}, send_empty=True, language="de")
    _subscribe(conn, "broken", "open_items_aging", {})  # key_date missing
    _subscribe(conn, "typo", "no_such_report", {})
    outcomes = subscriptions.run_due()
    assert outcomes["quiet"] == "no rows: not sent"
    assert outcomes["told"].startswith("0 rows queued")
    assert (
        outcomes["broken"]
        == "failed: subscription broken: report open_items_aging needs 'key_date'"
    )
    assert outcomes["typo"].startswith("failed: report 'no_such_report' not in")
    ((mime,),) = dagtest.rows(conn, "SELECT mime FROM mail.outbox")
    msg = message_from_bytes(bytes(mime), policy=policy.default)
    assert "keine Zeilen" in msg.get_content() and not list(msg.iter_attachments())


def test_the_next_time_is_on_the_companys_clock():
    monday = subscriptions.next_time(
        "0 7 * * 1", datetime(2026, 12, 2, 12, tzinfo=UTC), "Europe/Berlin"
    )
    assert monday == datetime(2026, 12, 7, 6, tzinfo=UTC)  # 07:00 in Berlin, winter time
    assert subscriptions.next_time(
        "30 6 * * *", datetime(2026, 7, 1, 5, tzinfo=UTC), "Europe/Berlin"
    ) == (datetime(2026, 7, 2, 4, 30, tzinfo=UTC))
