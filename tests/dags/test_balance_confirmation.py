"""balance_confirmation end to end with dag.test(): seeded data with hand-built partners,
real PostgreSQL, aiosmtpd behind outbox_dispatch, a rerun, creditors, bad Params, and a
reply imported from Dovecot by mailbox_import and linked to its partner."""

from __future__ import annotations

import email
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pendulum
import pytest

from erpmail.core import archive
from erpmail.inbound.imap import ImapHook
from tests import mailcorpus
from tests.dags import dagtest
from tests.mailaccounts import SENDER
from tests.partners import hand_balances
from tests.pdftext import pdf_text

REPLY = "saldenbestaetigung@muster-handels.example.com"
TODAY = pendulum.today("Europe/Berlin").date()
CONF = {
    "key_date": TODAY.isoformat(),
    "company": "DEMO",
    "side": "both",
    "partner_from": "000001",
    "partner_to": "000012",
    "reply_address": REPLY,
    "note": "test",
}
LETTERS = """
SELECT p.number, l.id, l.status, l.paper_reason, l.recipient, l.totals, l.pdf_path, o.key,
       p.is_supplier
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s ORDER BY p.number"""


@pytest.fixture
def setup(statement_book, company_sender, smtp_server, airflow_db, tmp_path, monkeypatch):
    """Partners 000001-000003 built by hand (000003 at zero), the company's account sending
    through ``smtp_server``, a temp store."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    return statement_book, smtp_server


def _run(conf: dict, logical_date=None):
    dr = dagtest.dag("balance_confirmation").test(
        run_conf=conf, logical_date=logical_date, run_after=logical_date
    )
    assert dr.state == "success"
    return dr


@pytest.mark.timeout(900)
def test_balance_confirmation_end_to_end_rerun_and_zero_balances(setup) -> None:
    conn, server = setup
    logical_date = pendulum.now("UTC")
    dr = _run(CONF, logical_date)
    ((run_id, summary),) = dagtest.rows(
        conn, "SELECT id, summary FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    assert dagtest.dag("outbox_dispatch").test().state == "success"

    letters = {row[0]: row for row in dagtest.rows(conn, LETTERS, run_id)}
    expected = {
        n: b
        for n, b in hand_balances(conn, "both", TODAY).items()
        if "000001" <= n <= "000012" and any(b.values())
    }
    assert set(letters) == set(expected) and "000003" not in letters
    for number, row in letters.items():
        assert {c: Decimal(v) for c, v in row[5].items()} == expected[number], number
        assert row[2] in ("sent", "paper"), row
    assert letters["000001"][5] == {"CHF": "250.50", "EUR": "450.00"}

    # each mail carries its own letter's PDF with the hand-computed figures
    received = server.messages
    assert len(received) == sum(1 for row in letters.values() if row[2] == "sent")
    outbox = dict(dagtest.rows(conn, "SELECT message_id, key FROM mail.outbox"))
    by_key = {row[7]: row for row in letters.values() if row[7]}
    for mail in received:
        message = email.message_from_bytes(mail.data, policy=policy.default)
        letter = by_key[outbox[message["Message-ID"]]]
        assert mail.rcpt_tos == [letter[4]]
        assert f"relnr {letter[0]}" in message["Subject"]
        assert message["Reply-To"] == REPLY  # the form's reply address, not the sender's
        (attachment,) = list(message.iter_attachments())
        assert attachment.get_content() == archive.read(letter[6])
    text = pdf_text(archive.read(letters["000001"][6]))
    for needle in ("HB1-R1", "HB1-CN", "HB1-P1", "HB1-CHF", "450,00 €", "250,50 CHF", REPLY):
        assert needle in text
    batch = pdf_text(archive.read(summary["print_batch"])) if summary["print_batch"] else ""
    for number, row in letters.items():
        assert (f"{run_id}-{number}" in batch) == (row[2] == "paper"), number

    # rerun the same Airflow run: the same letters and outbox rows, nothing sent twice
    before = dagtest.rows(conn, LETTERS, run_id)
    keys = dagtest.rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id")
    dr2 = _run(CONF, logical_date)
    assert dr2.run_id == dr.run_id
    assert dagtest.rows(conn, LETTERS, run_id) == before
    assert dagtest.rows(conn, "SELECT id, key, message_id FROM mail.outbox ORDER BY id") == keys
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    assert len(server.messages) == len(received)

    # a new run with zero balances included: 000003 now gets one, as a dry run nothing is sent
    dr3 = _run({**CONF, "include_zero": True, "dry_run": True, "partner_to": "000003"})
    ((zero_run,),) = dagtest.rows(
        conn, "SELECT id FROM erp.runs WHERE airflow_run_id = %s", dr3.run_id
    )
    dry = {row[0]: row for row in dagtest.rows(conn, LETTERS, zero_run)}
    assert "000003" in dry and dry["000003"][2] == "rendered" and dry["000003"][7] is None
    text = pdf_text(archive.read(dry["000003"][6]))
    assert "HB3-R1" in text and "HB3-P1" in text and "vereffend" in text


@pytest.mark.timeout(900)
def test_creditor_letters_go_to_suppliers(setup) -> None:
    conn, _ = setup
    dr = _run({**CONF, "side": "creditors", "partner_to": "000030", "dry_run": True})
    ((run_id,),) = dagtest.rows(
        conn, "SELECT id FROM erp.runs WHERE airflow_run_id = %s", dr.run_id
    )
    letters = dagtest.rows(conn, LETTERS, run_id)
    expected = {
        n
        for n, b in hand_balances(conn, "creditors", TODAY).items()
        if n <= "000030" and any(b.values())
    }
    assert {row[0] for row in letters} == expected
    assert all(row[8] for row in letters)  # every one a supplier
    first = next(row for row in letters if row[0] == "000001")
    assert first[5] == {"EUR": "-400.00"}


def test_bad_params_are_refused(setup) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    conn, _ = setup
    dag = dagtest.dag("balance_confirmation")
    for bad in (
        {"key_date": "31.12.2025"},
        {"side": "everyone"},
        {"min_abs_balance": "1e3"},
        {"min_abs_balance": "-5"},
        {"partner_from": "../x"},
        {"company": "demo; drop"},
    ):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={**CONF, **bad})
    dr = dag.test(run_conf={**CONF, "partner_from": "000100", "partner_to": "000050"})
    dagtest.assert_refused_at_start(conn, dr)


@pytest.mark.timeout(900)
def test_reply_imported_from_dovecot_is_linked_to_its_partner(setup, imap_user, monkeypatch):
    conn, server = setup
    dr = _run({**CONF, "partner_to": "000001"})
    assert dagtest.dag("outbox_dispatch").test().state == "success"
    (sent,) = server.messages
    letter = email.message_from_bytes(sent.data, policy=policy.default)
    assert letter["Subject"].endswith("relnr 000001")
    ((partner_id,),) = dagtest.rows(conn, "SELECT id FROM erp.partners WHERE number = '000001'")

    # the partner's accountant answers from an address the ERP does not know, keeping the
    # subject; a second answer quotes nothing but the keyword (no In-Reply-To)
    replies = []
    for n, headers in enumerate(
        ({"In-Reply-To": letter["Message-ID"]}, {}),
    ):
        reply = EmailMessage()
        reply["From"] = "controller@unknown-accountants.example.org"
        reply["To"] = SENDER
        reply["Date"] = formatdate(localtime=True)
        reply["Subject"] = f"AW: {letter['Subject']}" if headers else "Saldo relnr 000001 ok"
        reply["Message-ID"] = make_msgid(f"reply{n}", "unknown-accountants.example.org")
        for name, value in headers.items():
            reply[name] = value
        reply.set_content("Wir bestätigen den Saldo.\n")
        replies.append(reply)
    mailcorpus.imap_conn(monkeypatch, "imap_statements", imap_user)
    with ImapHook("imap_statements").client() as client:
        for reply in replies:
            client.append("INBOX", reply.as_bytes(policy=reply.policy.clone(linesep="\r\n")))
    location = mailcorpus.add_location(
        conn, "accounting inbox", "imap_statements", link_keywords={"relnr": "partner"}
    )
    result = dagtest.dag("mailbox_import").test(run_conf={"location": location})
    assert result.state == "success"

    links = dagtest.rows(
        conn,
        "SELECT m.message_id, ml.entity_type, ml.entity_id, ml.method FROM mail.messages m "
        "JOIN mail.message_links ml ON ml.message_id = m.id WHERE m.direction = 'in' "
        "ORDER BY m.message_id, ml.method",
    )
    # the answer to our mail is linked as a reply (to the letter and its partner); the one
    # with only the subject keyword by the keyword: both to the partner
    answer, keyword_only = (
        {(t, i, m) for mid, t, i, m in links if mid == reply["Message-ID"]} for reply in replies
    )
    assert ("partner", partner_id, "reply") in answer
    assert ("partner", partner_id, "keyword") in keyword_only
    statuses = dagtest.rows(
        conn, "SELECT status, defects FROM mail.messages WHERE direction = 'in'"
    )
    assert statuses == [("linked", []), ("linked", [])]
    assert dr.state == "success"
