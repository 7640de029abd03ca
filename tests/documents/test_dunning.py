"""Dunning selection and levels on hand-built partners, one rule per partner."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import psycopg2.extensions
import pytest

from erpmail import seed
from erpmail.core import db
from erpmail.documents import dunning, runs
from erpmail.documents.dunning import DUNNING, Item, Level, Previous, item_level
from erpmail.documents.routing import route_for
from tests.partners import open_item

KEY = date(2026, 3, 2)
LEVELS = [
    Level(1, 7, Decimal("5.00"), Decimal("0.00"), "EUR"),
    Level(2, 21, Decimal("5.00"), Decimal("5.00"), "EUR"),
    Level(3, 35, Decimal("5.00"), Decimal("10.00"), "EUR"),
]

INSERT_PARTNER = """
INSERT INTO erp.partners (company, number, name, email, email_blocked, language, dunning_block)
VALUES ('DEMO', %s, %s, %s, %s, %s, %s) RETURNING id"""
INSERT_CONTACT = (
    "INSERT INTO erp.contacts (partner_id, name, email, role, language) VALUES (%s, %s, %s, %s, %s)"
)
LETTERS = """
SELECT p.number, l.level, l.totals, l.fee, l.language FROM erp.letters l
  JOIN erp.partners p ON p.id = l.partner_id WHERE l.run_id = %s ORDER BY p.number"""
LETTER_ITEMS = """
SELECT o.doc_number, li.level, li.previous_level, li.raised, li.amount, li.currency
  FROM erp.letter_items li JOIN erp.letters l ON l.id = li.letter_id
  JOIN erp.partners p ON p.id = l.partner_id JOIN erp.open_items o ON o.id = li.open_item_id
 WHERE l.run_id = %s AND p.number = %s ORDER BY o.doc_number"""


def _item(amount: str = "100.00", due: date = KEY - timedelta(days=10)) -> Item:
    return Item(1, 1, "invoice", "RE1", due - timedelta(days=14), due, Decimal(amount), "EUR")


# --- the level rule, pure -----------------------------------------------------------------


def test_first_letter_is_level_one_once_overdue_by_more_than_its_days() -> None:
    assert item_level(_item(due=KEY - timedelta(days=8)), None, KEY, LEVELS) == (1, True)
    assert item_level(_item(due=KEY - timedelta(days=7)), None, KEY, LEVELS) == (None, False)
    # far overdue, never dunned: still level 1, levels are not skipped
    assert item_level(_item(due=KEY - timedelta(days=90)), None, KEY, LEVELS) == (1, True)


def test_level_rises_once_the_previous_letter_is_older_than_the_next_levels_days() -> None:
    item = _item(due=KEY - timedelta(days=60))
    assert item_level(item, Previous(1, KEY - timedelta(days=22)), KEY, LEVELS) == (2, True)
    assert item_level(item, Previous(1, KEY - timedelta(days=21)), KEY, LEVELS) == (1, False)
    assert item_level(item, Previous(2, KEY - timedelta(days=36)), KEY, LEVELS) == (3, True)
    assert item_level(item, Previous(3, KEY - timedelta(days=99)), KEY, LEVELS) == (3, False)


def test_item_under_the_minimum_waits() -> None:
    assert item_level(_item("4.99"), None, KEY, LEVELS) == (None, False)
    assert item_level(_item("5.00"), None, KEY, LEVELS) == (1, True)
    old = _item("4.99", due=KEY - timedelta(days=60))
    assert item_level(old, Previous(1, KEY - timedelta(days=30)), KEY, LEVELS) == (1, False)


def test_levels_not_selected_are_not_reached() -> None:
    item = _item(due=KEY - timedelta(days=60))
    assert item_level(item, None, KEY, LEVELS, selected=[2, 3]) == (None, False)
    assert item_level(item, Previous(1, KEY - timedelta(days=30)), KEY, LEVELS, [1]) == (1, False)


# --- selection on the database ------------------------------------------------------------


def _partner(
    cur,
    number: str,
    *,
    email: str | None = None,
    blocked: bool = False,
    language: str | None = "de",
    dunning_block: bool = False,
) -> int:
    cur.execute(
        INSERT_PARTNER,
        (
            number,
            f"Partner {number}",
            email or f"p{number}@example.com",
            blocked,
            language,
            dunning_block,
        ),
    )
    return cur.fetchone()[0]


def _open(cur, partner_id: int, doc: str, amount: str, *, days: int = 10, **kw) -> int:
    return open_item(cur, partner_id, doc, amount, due=KEY - timedelta(days=days), **kw)


def _run(
    key_date: date = KEY, *, run_id: str | None = None, dry_run: bool = False, **params
) -> int:
    run = runs.create_run(
        kind="dunning",
        airflow_run_id=run_id or f"manual__{key_date}",
        company="DEMO",
        key_date=key_date,
        dry_run=dry_run,
        params=params,
    )
    runs.generate(run, DUNNING)
    return run


def _letters(conn: psycopg2.extensions.connection, run_id: int) -> dict[str, tuple]:
    with db.transaction(conn) as cur:
        cur.execute(LETTERS, (run_id,))
        return {
            number: (level, totals, fee, lang)
            for number, level, totals, fee, lang in cur.fetchall()
        }


def _items(conn, run_id: int, number: str) -> list[tuple]:
    with db.transaction(conn) as cur:
        cur.execute(LETTER_ITEMS, (run_id, number))
        return cur.fetchall()


@pytest.fixture
def book(db: psycopg2.extensions.connection) -> dict[str, int]:
    """One partner per rule; the number says which."""
    with db.cursor() as cur:
        seed.seed_company(cur)
        p = {}
        p["netted"] = _partner(cur, "000001")
        _open(cur, p["netted"], "RE1-1", "100.00")
        _open(cur, p["netted"], "GS1-1", "-30.00", days=1)
        p["net_negative"] = _partner(cur, "000002")
        _open(cur, p["net_negative"], "RE2-1", "50.00")
        _open(cur, p["net_negative"], "GS2-1", "-60.00")
        p["currencies"] = _partner(cur, "000003")
        _open(cur, p["currencies"], "RE3-1", "100.00", currency="CHF")
        _open(cur, p["currencies"], "GS3-1", "-500.00")
        p["blocked_item"] = _partner(cur, "000004")
        _open(cur, p["blocked_item"], "RE4-1", "70.00", blocked=True)
        _open(cur, p["blocked_item"], "RE4-2", "80.00")
        p["partner_block"] = _partner(cur, "000005", dunning_block=True)
        _open(cur, p["partner_block"], "RE5-1", "90.00")
        p["disputed"] = _partner(cur, "000006")
        _open(cur, p["disputed"], "RE6-1", "90.00", disputed=True)
        _open(cur, p["disputed"], "GS6-1", "-20.00", disputed=True)
        _open(cur, p["disputed"], "RE6-2", "40.00")
        p["minimum"] = _partner(cur, "000007")
        _open(cur, p["minimum"], "RE7-1", "4.00")
        p["not_due"] = _partner(cur, "000008")
        _open(cur, p["not_due"], "RE8-1", "500.00", days=7)
        _open(cur, p["not_due"], "RE8-2", "500.00", days=-5)
        p["contact"] = _partner(cur, "000009", language="en")
        cur.execute(
            INSERT_CONTACT,
            (p["contact"], "Credit Control", "dun@contact.example.com", "dunning", "nl"),
        )
        _open(cur, p["contact"], "RE9-1", "200.00", days=40)
        p["no_email"] = _partner(cur, "000010")
        cur.execute("UPDATE erp.partners SET email = NULL WHERE id = %s", (p["no_email"],))
        _open(cur, p["no_email"], "RE10-1", "60.00")
        p["email_blocked"] = _partner(cur, "000011", blocked=True)
        _open(cur, p["email_blocked"], "RE11-1", "60.00")
    db.commit()
    return p


def test_selection_applies_each_rule(db, book) -> None:
    run = _run()
    letters = _letters(db, run)
    assert set(letters) == {"000001", "000003", "000004", "000006", "000009", "000010", "000011"}
    # netting: the credit note reduces the invoice of its currency and is listed without level
    assert letters["000001"][:3] == (1, {"EUR": "70.00"}, Decimal("0.00"))
    assert _items(db, run, "000001") == [
        ("GS1-1", None, None, False, Decimal("-30.00"), "EUR"),
        ("RE1-1", 1, None, True, Decimal("100.00"), "EUR"),
    ]
    # across currencies nothing is netted: the EUR credit note stays off the CHF letter
    assert letters["000003"][1] == {"CHF": "100.00"}
    assert [row[0] for row in _items(db, run, "000003")] == ["RE3-1"]
    # blocked and disputed items (and a disputed credit note) are left out
    assert [row[0] for row in _items(db, run, "000004")] == ["RE4-2"]
    assert letters["000006"][1] == {"EUR": "40.00"}
    assert [row[0] for row in _items(db, run, "000006")] == ["RE6-2"]
    # the dunning contact's language wins over the partner's
    assert letters["000009"][3] == "nl"


def test_partner_range_and_levels_params(db, book) -> None:
    run = _run(partner_from="000003", partner_to="000006", run_id="r1")
    assert set(_letters(db, run)) == {"000003", "000004", "000006"}
    run2 = _run(levels=[2, 3], run_id="r2")
    assert _letters(db, run2) == {}


def test_level_rise_own_levels_per_item_fee_of_highest(db, book) -> None:
    first = _run()
    assert _letters(db, first)["000009"][0] == 1
    with db.cursor() as cur:
        _open(cur, book["contact"], "RE9-2", "50.00", days=-10)  # not yet due at KEY
    db.commit()
    # same key date again: nothing is raised, so nobody gets a second letter
    again = _run(run_id="again")
    assert _letters(db, again) == {}
    later = KEY + timedelta(days=22)
    second = _run(later)
    letters = _letters(db, second)
    assert letters["000009"][:3] == (2, {"EUR": "255.00"}, Decimal("5.00"))
    assert _items(db, second, "000009") == [
        ("RE9-1", 2, 1, True, Decimal("200.00"), "EUR"),
        ("RE9-2", 1, None, True, Decimal("50.00"), "EUR"),
    ]
    # partner 1's item had its letter 22 days ago too: level 2
    assert _letters(db, second)["000001"][0] == 2


def test_dry_runs_and_failed_letters_do_not_count_as_previous(db, book) -> None:
    dry = _run(run_id="dry", dry_run=True)
    assert "000001" in _letters(db, dry)
    real = _run(run_id="real")
    assert _letters(db, real)["000001"][0] == 1
    with db.cursor() as cur:
        cur.execute(
            "UPDATE erp.letters SET status = 'failed', error = 'x' WHERE run_id = %s", (real,)
        )
    db.commit()
    retry = _run(run_id="retry")
    assert _letters(db, retry)["000001"][0] == 1


def test_generate_twice_writes_once(db, book) -> None:
    run = _run()
    assert runs.generate(run, DUNNING) == 7
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM erp.letter_items li JOIN erp.letters l ON l.id = li.letter_id WHERE l.run_id = %s",
            (run,),
        )
        assert cur.fetchone()[0] == 8


def test_routes_no_email_blocked_contact(db, book) -> None:
    run = _run()
    with db.cursor() as cur:
        cur.execute(
            "SELECT p.number, l.id FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id WHERE run_id = %s",
            (run,),
        )
        ids = dict(cur.fetchall())
        assert route_for(cur, DUNNING, ids["000010"]).paper_reason == "no_address"
        assert route_for(cur, DUNNING, ids["000011"]).paper_reason == "blocked"
        assert route_for(cur, DUNNING, ids["000009"]).address == "dun@contact.example.com"
        assert route_for(cur, DUNNING, ids["000001"]).address == "p000001@example.com"
        cur.execute("UPDATE erp.dunning_levels SET send_email = false WHERE level = 1")
        assert route_for(cur, DUNNING, ids["000001"]).paper_reason == "paper_only"


def test_company_without_levels_is_a_clear_error(db) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO erp.companies (code, name) VALUES ('EMPTY', 'Empty')")
    db.commit()
    run = runs.create_run(kind="dunning", airflow_run_id="x", company="EMPTY", key_date=KEY)
    with pytest.raises(ValueError, match="EMPTY.*no dunning levels"):
        runs.generate(run, DUNNING)
    with pytest.raises(ValueError, match="'NOPE' not found"):
        runs.create_run(kind="dunning", airflow_run_id="y", company="NOPE", key_date=KEY)


def test_select_writes_nothing(db, book) -> None:
    with db.cursor() as cur:
        proposals = dunning.select(cur, run_id=0, company="DEMO", key_date=KEY)
        cur.execute("SELECT count(*) FROM erp.letters")
        assert cur.fetchone()[0] == 0
    assert len(proposals) == 7
