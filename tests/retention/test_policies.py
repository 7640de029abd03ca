"""Retention policies: read, set and replaced; their cut-offs and legal minimums, and what
a purge keeps because of them (no policy, keep_days 0, the minimums, sent mail only)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from erpmail.core.db import transaction
from erpmail.retention import policies
from tests.retention.mailstore import (
    AS_OF,
    add_location,
    add_mail,
    add_policy,
    assert_store_matches_rows,
    audit_rows,
    mail_ids,
    purge_now,
)


def test_policies_are_read_set_and_replaced(db):
    loc = add_location(db, "sales")
    add_location(db, "support")
    with transaction(db) as cur:
        first = policies.set_policy(cur, location="sales", keep_days=30)
        assert policies.set_policy(cur, location="sales", keep_days=60) == first  # replaced
        sent = policies.set_policy(cur, location=None, keep_days=None, legal_min_days=10)
        found = policies.policies(cur)
        assert [(p.label, p.location_id, p.keep_days, p.keeps_forever) for p in found] == [
            ("sales", loc, 60, False),
            ("sent", None, None, True),
        ]
        assert (found[0].legal_min_days, found[0].invoice_legal_min_days) == (
            policies.LEGAL_MIN_DAYS,
            policies.INVOICE_LEGAL_MIN_DAYS,
        )
        assert [p.id for p in policies.policies(cur, "sent")] == [sent]
        with pytest.raises(ValueError, match="'support': has no retention policy"):
            policies.policies(cur, "support")
        with pytest.raises(ValueError, match="'nowhere': no such import location"):
            policies.set_policy(cur, location="nowhere", keep_days=1)


def test_cutoffs_keep_the_legal_minimums_unless_forced():
    policy = policies.Policy(1, "location", 1, "sales", 30, 365, 3650)
    cut = policies.cutoffs(policy, AS_OF)
    assert (cut.keep, cut.general, cut.invoice) == (
        AS_OF - timedelta(days=30),
        AS_OF - timedelta(days=365),
        AS_OF - timedelta(days=3650),
    )
    forced = policies.cutoffs(policy, AS_OF, force=True)
    assert forced.general == forced.invoice == AS_OF - timedelta(days=30)
    assert (forced.legal, forced.invoice_legal) == (cut.legal, cut.invoice_legal)


@pytest.mark.parametrize("keep_days", [0, None])
def test_zero_or_empty_keep_days_keeps_everything(db, store, keep_days):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=keep_days)
    add_policy(db, None, keep_days=keep_days)
    ids = {add_mail(db, loc, 5000), add_mail(db, None, 5000, direction="out"), add_mail(db, loc, 1)}

    summary = purge_now(db, force=True, force_reason="even forced, 0 means forever")

    assert mail_ids(db) == ids
    assert_store_matches_rows(db, store)
    assert all(p["cutoff"] is None and p["mails"] == 0 for p in summary["policies"])
    assert {r["details"]["cutoff_date"] for r in audit_rows(db)} == {None}


def test_mail_without_a_policy_is_kept(db, store):
    loc = add_location(db, "sales")
    old = add_mail(db, loc, 9000)
    purge_now(db)
    assert mail_ids(db) == {old}


def test_legal_minimum_holds_without_force_and_gives_way_with_it(db, store):
    loc = add_location(db, "sales")
    add_policy(db, "sales", keep_days=30, legal=365, invoice=3650)
    young = add_mail(db, loc, 100)  # past keep_days, under the legal minimum
    old = add_mail(db, loc, 400)  # past both
    invoice_mail = add_mail(db, loc, 2000, invoice_link=True)  # under the invoice minimum
    plain_mail = add_mail(db, loc, 2000)

    summary = purge_now(db)
    assert mail_ids(db) == {young, invoice_mail}
    [sales] = summary["policies"][:1]
    assert sales["cutoff"] == (AS_OF - timedelta(days=365)).isoformat()
    assert sales["under_legal_minimum"] == 2
    assert plain_mail not in mail_ids(db) and old not in mail_ids(db)

    with pytest.raises(ValueError, match="force_reason"):
        purge_now(db, force=True, force_reason="  ")
    assert mail_ids(db) == {young, invoice_mail}

    purge_now(db, force=True, force_reason="customer asked for erasure, ticket 4711", actor="anna")
    assert mail_ids(db) == set()
    assert_store_matches_rows(db, store)
    forced = [r for r in audit_rows(db) if r["details"]["forced"]]
    [row] = [r for r in forced if r["details"]["location"] == "sales"]
    assert row["details"]["forced_by"] == "anna" and row["actor"] == "anna"
    assert row["details"]["force_reason"] == "customer asked for erasure, ticket 4711"
    assert row["details"]["mails"] == 2
    assert row["details"]["cutoff_date"] == (AS_OF - timedelta(days=30)).isoformat()


def test_sent_policy_covers_outgoing_mail_only(db, store):
    loc = add_location(db, "sales")
    add_policy(db, None, keep_days=10)
    incoming = add_mail(db, loc, 100)
    sent = add_mail(db, None, 100, direction="out")
    purge_now(db, location="sent")
    assert mail_ids(db) == {incoming}
    assert sent not in mail_ids(db)


def test_unknown_location_is_named(db, store):
    with pytest.raises(ValueError, match="'nowhere': no such import location"):
        purge_now(db, location="nowhere")
    add_location(db, "sales")
    with pytest.raises(ValueError, match="'sales': has no retention policy"):
        purge_now(db, location="sales")
