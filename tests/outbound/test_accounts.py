"""Accounts against PostgreSQL: sender selection and the throttle kept in the database."""

from __future__ import annotations

import logging

import pytest

from erpmail.core.db import transaction
from erpmail.outbound import outbox
from erpmail.outbound.accounts import account_by_name, create_account, select_account, take_slots
from tests.mailaccounts import add_account
from tests.outboxmail import enqueue_many


@pytest.fixture
def three_accounts(db):
    with transaction(db) as cur:
        default = create_account(
            cur,
            name="company",
            conn_id="smtp_company",
            from_address="info@demo.example",
            is_default=True,
        )
        domain = create_account(
            cur,
            name="sales",
            conn_id="smtp_sales",
            from_address="sales@demo.example",
            sender_addresses=["sales.demo.example"],
        )
        anna = create_account(
            cur,
            name="anna",
            conn_id="smtp_anna",
            from_address="anna@demo.example",
            sender_addresses=["Anna.Berg@Sales.Demo.Example"],
        )
    return default, domain, anna


def test_select_account_exact_then_domain_then_default(db, three_accounts):
    default, domain, anna = three_accounts
    with transaction(db) as cur:
        assert select_account(cur, "anna.berg@sales.demo.example").name == anna.name
        assert select_account(cur, "ANNA@demo.example").name == anna.name
        assert select_account(cur, "bob@sales.demo.example").name == domain.name
        assert select_account(cur, "someone@elsewhere.example").name == default.name
        assert select_account(cur, "info@demo.example") == default


def test_select_account_without_default_names_the_address(db):
    with transaction(db) as cur:
        create_account(cur, name="only", conn_id="c", from_address="only@demo.example")
        with pytest.raises(LookupError, match="x@other.example"):
            select_account(cur, "x@other.example")
        with pytest.raises(ValueError, match="not an e-mail address"):
            select_account(cur, "nobody")


def test_create_account_warns_under_a_minute(db, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="erpmail.outbound.accounts"),
        transaction(db) as cur,
    ):
        fast = create_account(
            cur, name="fast", conn_id="c", from_address="f@demo.example", send_interval_seconds=10
        )
        create_account(
            cur, name="calm", conn_id="c", from_address="c@demo.example", send_interval_seconds=120
        )
    assert ["fast"] == [r.args[0] for r in caplog.records if "spam" in r.getMessage()]
    with transaction(db) as cur:
        assert account_by_name(cur, "fast") == fast
        cur.execute("SELECT send_interval_seconds FROM mail.accounts WHERE name = 'calm'")
        assert cur.fetchone()[0] == 120


def test_create_account_refuses_line_breaks(db):
    with pytest.raises(ValueError, match="from_address"), transaction(db) as cur:
        create_account(cur, name="x", conn_id="c", from_address="a@b.example\r\nBcc: c@d")


def test_interval_grants_one_and_moves_next_send_at(db):
    account = add_account(db, interval=30)
    with transaction(db) as cur:
        first = take_slots(cur, account, 10)
        cur.execute(
            "SELECT extract(epoch FROM next_send_at - clock_timestamp()) FROM mail.accounts"
            " WHERE id = %s",
            (account.id,),
        )
        ahead = cur.fetchone()[0]
    assert first.granted == 1 and 25 < ahead <= 30
    with transaction(db) as cur:
        second = take_slots(cur, account, 10)
    assert second.granted == 0 and 25 < second.wait_seconds <= 30


def test_interval_waits_while_another_worker_sends(db):
    account = add_account(db, interval=5)
    enqueue_many(db, account, 2)
    assert len(outbox.claim(db, account, worker="w1", limit=5).messages) == 1
    with transaction(db) as cur:  # as if the interval had passed while w1 still sends
        cur.execute("UPDATE mail.accounts SET next_send_at = now() - interval '1 s'")
    second = outbox.claim(db, account, worker="w2", limit=5)
    assert second.messages == [] and second.slots.wait_seconds is not None


def test_hourly_cap_counts_sent_and_sending(db):
    account = add_account(db, interval=0, hourly_cap=3)
    ids = enqueue_many(db, account, 5)
    with transaction(db) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'sent', sent_at = now() - interval '10 minutes'"
            " WHERE id = ANY(%s)",
            (ids[:2],),
        )
    claim = outbox.claim(db, account, worker="w", limit=10)
    assert [m.id for m in claim.messages] == [ids[2]]
    blocked = outbox.claim(db, account, worker="w", limit=10)
    assert blocked.messages == [] and 49 * 60 < blocked.slots.wait_seconds <= 50 * 60


def test_unthrottled_account_takes_no_lock(db):
    account = add_account(db, interval=0)
    with transaction(db) as cur:
        assert take_slots(cur, account, 50).granted == 50
        cur.execute(
            "SELECT next_send_at = '-infinity' FROM mail.accounts WHERE id = %s", (account.id,)
        )
        assert cur.fetchone()[0]
