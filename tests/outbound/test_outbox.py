"""The outbox against PostgreSQL: enqueue, claim, the verdicts, the retry policy, reclaiming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from erpmail.core.db import transaction
from erpmail.outbound import outbox, verdicts
from erpmail.outbound.outbox import RetryPolicy
from erpmail.outbound.smtp import Delivery
from tests.mailaccounts import add_account
from tests.outboxmail import enqueue_many, make_mime, outbox_recipients, outbox_row


def test_enqueue_stores_message_and_is_idempotent(db):
    account = add_account(db)
    mime = make_mime("k1", ["a@x.example"])
    with transaction(db) as cur:
        first = outbox.enqueue(
            cur,
            key="k1",
            account_id=account.id,
            recipients=["a@x.example", "Hidden@Y.example", "a@X.example"],
            mime=mime,
            source_type="letter",
            source_id=7,
        )
        again = outbox.enqueue(
            cur,
            key="k1",
            account_id=account.id,
            recipients=["z@z.example"],
            mime=mime,
            source_type="letter",
        )
    assert again == first
    stored = outbox_row(db, first)
    assert stored["message_id"] == "<k1@demo.example>" or stored["message_id"].startswith("<")
    assert stored["status"] == "queued" and stored["envelope_from"] == "ar@demo.example"
    assert stored["recipients"] == ["a@x.example", "Hidden@Y.example"]
    assert bytes(stored["mime"]) == mime
    assert (stored["source_type"], stored["source_id"]) == ("letter", 7)
    assert set(outbox_recipients(db, first)) == {"a@x.example", "Hidden@Y.example"}
    with transaction(db) as cur:
        cur.execute("SELECT count(*) FROM mail.outbox")
        assert cur.fetchone()[0] == 1


@pytest.mark.parametrize(
    ("mime", "rcpts", "error"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", ["a@x.example"], "Message-ID"),
        (b"Message-ID: <a@b>\r\nBcc: c@d.example\r\n\r\nbody\r\n", ["a@x.example"], "Bcc"),
        (b"Message-ID: <a@b>\r\n\r\nbody\r\n", ["not-an-address"], "recipient"),
        (b"Message-ID: <a@b>\r\n\r\nbody\r\n", ["a@x.example\r\nRCPT TO:<e@vil>"], "recipient"),
        (b"Message-ID: <a@b>\r\n\r\nbody\r\n", [], "no recipients"),
    ],
)
def test_enqueue_refuses_bad_input_naming_the_key(db, mime, rcpts, error):
    account = add_account(db)
    with pytest.raises(ValueError, match=error) as e, transaction(db) as cur:
        outbox.enqueue(
            cur,
            key="bad-1",
            account_id=account.id,
            recipients=rcpts,
            mime=mime,
            source_type="manual",
        )
    assert "bad-1" in str(e.value)
    with transaction(db) as cur:
        cur.execute("SELECT count(*) FROM mail.outbox")
        assert cur.fetchone()[0] == 0


def test_enqueue_unknown_account_is_refused(db):
    with pytest.raises(ValueError, match="no mail account"), transaction(db) as cur:
        outbox.enqueue(
            cur,
            key="k",
            account_id=999,
            recipients=["a@x.example"],
            mime=make_mime("k", ["a@x.example"]),
            source_type="manual",
        )


def test_enqueue_many_queues_in_order_and_skips_known_keys(db):
    account = add_account(db)
    with transaction(db) as cur:
        first = outbox.enqueue(cur, key="m1", account_id=account.id, recipients=["a@x.example"],
                               mime=make_mime("m1", ["a@x.example"]), source_type="campaign")  # fmt: skip
    merged = make_mime("m3", ["c@x.example"], subject="Neu für Sie")
    batch = [
        outbox.Queued("m2", account.id, ["b@x.example"], make_mime("m2", ["b@x.example"]),
                      "campaign", 2),
        outbox.Queued("m1", account.id, ["z@x.example"], b"not even MIME", "campaign", 1),
        # a mail merge names Message-ID and subject itself: the bytes are not parsed again
        outbox.Queued("m3", account.id, ["c@x.example", "C@x.example"], merged, "campaign", 3,
                      "<m3@demo.example>", " Neu für Sie"),
        outbox.Queued("m2", account.id, ["b@x.example"], b"", "campaign", 2),
    ]  # fmt: skip
    with transaction(db) as cur:
        ids = outbox.enqueue_many(cur, batch)
    assert ids[1] == first and ids[0] == ids[3] and len(set(ids)) == 3
    third = outbox_row(db, ids[2])
    assert (third["message_id"], third["subject"]) == ("<m3@demo.example>", "Neu für Sie")
    assert bytes(third["mime"]) == merged and third["source_id"] == 3
    assert list(outbox_recipients(db, ids[2])) == ["c@x.example"]
    assert outbox_row(db, ids[0])["subject"] == "Zahlungserinnerung"
    with transaction(db) as cur:
        cur.execute("SELECT count(*) FROM mail.outbox")
        assert cur.fetchone()[0] == 3


def test_enqueue_many_writes_nothing_when_one_message_is_bad(db):
    account = add_account(db)
    good = outbox.Queued("g", account.id, ["a@x.example"], make_mime("g", ["a@x.example"]),
                         "campaign")  # fmt: skip
    bad = outbox.Queued("b", account.id, ["no-address"], make_mime("b", ["a@x.example"]),
                        "campaign")  # fmt: skip
    with pytest.raises(ValueError, match="'b': recipient"), transaction(db) as cur:
        outbox.enqueue_many(cur, [good, bad])
    with transaction(db) as cur:
        cur.execute("SELECT count(*) FROM mail.outbox")
        assert cur.fetchone()[0] == 0


def test_claim_commits_sending_and_skips_claimed(db, db_url):
    account = add_account(db)
    ids = enqueue_many(db, account, 5)
    first = outbox.claim(db, account, worker="w1", limit=3)
    assert [m.id for m in first.messages] == ids[:3]
    # committed: another connection sees them as 'sending' by w1
    other = psycopg2.connect(db_url)
    try:
        with transaction(other) as cur:
            cur.execute(
                "SELECT id, claimed_by FROM mail.outbox WHERE status = 'sending' ORDER BY id"
            )
            assert cur.fetchall() == [(i, "w1") for i in ids[:3]]
        second = outbox.claim(other, account, worker="w2", limit=10)
    finally:
        other.close()
    assert [m.id for m in second.messages] == ids[3:]
    assert outbox.claim(db, account, worker="w3", limit=10).messages == []


def test_claim_skips_rows_locked_by_a_concurrent_claimer(db, db_url):
    account = add_account(db)
    ids = enqueue_many(db, account, 4)
    other = psycopg2.connect(db_url)
    try:
        with other.cursor() as cur:  # an open transaction holding two rows
            cur.execute("SELECT id FROM mail.outbox WHERE id = ANY(%s) FOR UPDATE", (ids[:2],))
            claimed = outbox.claim(db, account, worker="w1", limit=10)
        other.rollback()
    finally:
        other.close()
    assert [m.id for m in claimed.messages] == ids[2:]


def _claim_one(db, account):
    (message,) = outbox.claim(db, account, worker="w", limit=1).messages
    return message


def _claimed_to_two(db):
    """A message to a@ and b@x.example, queued and claimed: (account, its id, the claim)."""
    account = add_account(db)
    (oid,) = enqueue_many(db, account, 1, to=["a@x.example", "b@x.example"])
    return account, oid, _claim_one(db, account)


def test_record_sent_stores_reply_queue_id_and_recipients(db):
    account, oid, message = _claimed_to_two(db)
    delivery = Delivery(
        "sent",
        250,
        "2.0.0 Ok: queued as 4Xyz12",
        "DATA",
        {"a@x.example": (250, "OK"), "b@x.example": (550, "5.1.1 no such user")},
        "4Xyz12",
    )
    assert verdicts.record(db, message, delivery, account=account, policy=RetryPolicy()) == "sent"
    stored = outbox_row(db, oid)
    assert (stored["status"], stored["smtp_code"], stored["queue_id"]) == ("sent", 250, "4Xyz12")
    assert stored["smtp_reply"] == "2.0.0 Ok: queued as 4Xyz12" and stored["sent_at"]
    assert stored["claimed_at"] is None and stored["sent_copy"] == "none"
    assert outbox_recipients(db, oid) == {
        "a@x.example": ("accepted", 250, "OK"),
        "b@x.example": ("refused", 550, "5.1.1 no such user"),
    }


def test_record_partial_deferral_retries_only_pending_recipients(db):
    account, oid, message = _claimed_to_two(db)
    delivery = Delivery(
        "sent",
        250,
        "OK",
        "DATA",
        {"a@x.example": (250, "OK"), "b@x.example": (452, "4.2.2 mailbox full")},
    )
    assert verdicts.record(db, message, delivery, account=account, policy=RetryPolicy()) == "queued"
    stored = outbox_row(db, oid)
    assert stored["status"] == "queued" and stored["attempts"] == 1
    assert "mailbox full" in stored["last_error"]
    with transaction(db) as cur:
        cur.execute("UPDATE mail.outbox SET next_attempt_at = now()")
    retry = _claim_one(db, account)
    assert retry.recipients == ["b@x.example"]


def test_record_deferred_backs_off_then_fails_when_exhausted(db):
    account = add_account(db)
    (oid,) = enqueue_many(db, account, 1)
    policy = RetryPolicy(base_seconds=60, cap_seconds=300, max_attempts=3)
    deferral = Delivery("deferred", 451, "4.3.0 try later", "MAIL")
    for attempt in (1, 2):
        message = _claim_one(db, account)
        assert verdicts.record(db, message, deferral, account=account, policy=policy) == "queued"
        stored = outbox_row(db, oid)
        assert stored["attempts"] == attempt and stored["smtp_reply"] == "4.3.0 try later"
        with transaction(db) as cur:
            cur.execute(
                "SELECT extract(epoch FROM next_attempt_at - now()) FROM mail.outbox WHERE id = %s",
                (oid,),
            )
            assert cur.fetchone()[0] > policy.delay(attempt) - 5
            cur.execute("UPDATE mail.outbox SET next_attempt_at = now()")
    message = _claim_one(db, account)
    assert verdicts.record(db, message, deferral, account=account, policy=policy) == "failed"
    stored = outbox_row(db, oid)
    assert stored["status"] == "failed" and stored["attempts"] == 3
    assert "gave up after 3" in stored["last_error"] and stored["smtp_code"] == 451


def test_record_failed_keeps_reply(db):
    account = add_account(db)
    (oid,) = enqueue_many(db, account, 1)
    message = _claim_one(db, account)
    delivery = Delivery(
        "failed", 554, "5.7.1 rejected as spam", "DATA", {message.recipients[0]: (250, "OK")}
    )
    assert verdicts.record(db, message, delivery, account=account, policy=RetryPolicy()) == "failed"
    stored = outbox_row(db, oid)
    assert (stored["status"], stored["smtp_code"], stored["smtp_reply"]) == (
        "failed",
        554,
        "5.7.1 rejected as spam",
    )
    assert list(outbox_recipients(db, oid).values()) == [("refused", 554, "5.7.1 rejected as spam")]


def test_record_dropped_after_dot_flags_uncertain(db):
    account = add_account(db)
    a, b = enqueue_many(db, account, 2)
    for message, after_dot in zip(
        outbox.claim(db, account, worker="w", limit=2).messages, (False, True), strict=True
    ):
        verdicts.record_dropped(
            db, message, "lost", after_dot=after_dot, account=account, policy=RetryPolicy()
        )
    assert (
        outbox_row(db, a)["status"],
        outbox_row(db, a)["sent_uncertain"],
        outbox_row(db, a)["attempts"],
    ) == (
        "queued",
        False,
        1,
    )
    assert (outbox_row(db, b)["status"], outbox_row(db, b)["sent_uncertain"]) == ("queued", True)


def test_reclaim_stuck_flags_only_what_may_have_been_delivered(db):
    account = add_account(db)
    in_data, before_data, fresh = enqueue_many(db, account, 3)
    claimed = {m.id: m for m in outbox.claim(db, account, worker="dead", limit=3).messages}
    verdicts.mark_data_sent(db, claimed[in_data])  # its text and final dot were on their way
    with transaction(db) as cur:
        cur.execute(
            # seconds, not minutes: older than PostgreSQL's start, every claim counts as sent
            "UPDATE mail.outbox SET claimed_at = claimed_at - interval '5 seconds' WHERE id <> %s",
            (fresh,),
        )
    assert sorted(outbox.reclaim_stuck(db, timeout_seconds=3)) == sorted([in_data, before_data])
    maybe, never = outbox_row(db, in_data), outbox_row(db, before_data)
    assert (maybe["status"], maybe["sent_uncertain"], maybe["claimed_by"]) == ("queued", True, None)
    assert "dead" in maybe["last_error"] and "may have been delivered" in maybe["last_error"]
    assert (never["status"], never["sent_uncertain"]) == ("queued", False)
    assert "never reached the end of DATA" in never["last_error"]
    assert outbox_row(db, fresh)["status"] == "sending"
    with transaction(db) as cur:
        cur.execute("SELECT outbox_id FROM mail.outbox_data_marks")
        assert cur.fetchall() == []  # spent once its claim is reclaimed


def test_a_mark_counts_only_for_the_claim_it_was_made_in(db):
    account = add_account(db)
    (oid,) = enqueue_many(db, account, 1)
    (first,) = outbox.claim(db, account, worker="w", limit=1).messages
    verdicts.mark_data_sent(db, first)
    deferred = Delivery(
        "deferred", 451, "4.3.0 try later", "DATA", {first.recipients[0]: (250, "OK")}
    )
    verdicts.record(db, first, deferred, account=account, policy=RetryPolicy(base_seconds=0))
    # the same worker claims it again and dies before DATA: the first attempt's mark is old
    outbox.claim(db, account, worker="w", limit=1)
    assert outbox.reclaim_stuck(db, timeout_seconds=0) == [oid]
    stored = outbox_row(db, oid)
    assert (stored["status"], stored["sent_uncertain"]) == ("queued", False)
    assert "never reached the end of DATA" in stored["last_error"]


def test_release_returns_messages_untouched(db):
    account = add_account(db)
    ids = enqueue_many(db, account, 2)
    outbox.claim(db, account, worker="w", limit=2)
    assert outbox.release(db, ids, "account stopped") == 2
    stored = outbox_row(db, ids[0])
    assert (stored["status"], stored["attempts"], stored["sent_uncertain"]) == ("queued", 0, False)
    assert stored["last_error"] == "account stopped"


def test_retry_policy_backoff_is_capped():
    policy = RetryPolicy(
        base_seconds=30, cap_seconds=600, max_attempts=5, max_age=timedelta(days=1)
    )
    assert [policy.delay(n) for n in (1, 2, 3, 5, 9)] == [30, 60, 120, 480, 600]
    now = datetime.now(UTC)
    assert not policy.exhausted(4, now - timedelta(hours=1), now)
    assert policy.exhausted(5, now, now)
    assert policy.exhausted(1, now - timedelta(days=2), now)


def test_a_late_verdict_never_overwrites_the_new_owner(db):
    account = add_account(db)
    (oid,) = enqueue_many(db, account, 1)
    (stale,) = outbox.claim(db, account, worker="slow", limit=1).messages
    verdicts.mark_data_sent(db, stale)
    assert outbox.reclaim_stuck(db, timeout_seconds=0) == [oid]
    (fresh,) = outbox.claim(db, account, worker="w2", limit=1).messages
    late = Delivery("failed", 550, "5.0.0 late", "DATA", {stale.recipients[0]: (250, "OK")})
    verdicts.record(db, stale, late, account=account, policy=RetryPolicy())
    assert outbox.release(db, [oid], "stale release", worker="slow") == 0
    stored = outbox_row(db, oid)
    assert (stored["status"], stored["claimed_by"]) == ("sending", "w2")
    assert list(outbox_recipients(db, oid).values()) == [("pending", None, None)]
    ok = Delivery("sent", 250, "OK", "DATA", {fresh.recipients[0]: (250, "OK")})
    assert verdicts.record(db, fresh, ok, account=account, policy=RetryPolicy()) == "sent"
    stored = outbox_row(db, oid)
    assert stored["status"] == "sent" and stored["sent_uncertain"]
