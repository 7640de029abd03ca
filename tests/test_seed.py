from collections import Counter

from erpmail import seed


def _rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_same_seed_gives_same_rows(db, seeded_db):
    seed.seed(db, partners=200, seed=1, as_of=None)
    query = """SELECT p.number, p.name, p.email, p.language, count(i.id), sum(i.open_amount)
               FROM erp.partners p LEFT JOIN erp.open_items i ON i.partner_id = p.id
               GROUP BY 1, 2, 3, 4 ORDER BY 1"""
    assert _rows(db, query) == _rows(seeded_db, query)


def test_seed_covers_what_the_flows_need(seeded_db):
    partners = _rows(
        seeded_db, "SELECT number, name, email, email_blocked, language FROM erp.partners"
    )
    assert len(partners) == 200
    assert all(len(number) == 6 and number.startswith("0") for number, *_ in partners)
    langs = Counter(p[4] for p in partners)
    assert {"de", "en", "nl", None} <= set(langs)
    assert any(p[2] is None for p in partners), "some partners have no e-mail"
    assert any(p[3] for p in partners), "some e-mail addresses are blocked"
    assert any(ch in p[1] for p in partners for ch in "äöüß"), "umlauts in names"
    currencies = {r[0] for r in _rows(seeded_db, "SELECT DISTINCT currency FROM erp.open_items")}
    assert currencies == {"EUR", "CHF"}
    types = {r[0] for r in _rows(seeded_db, "SELECT DISTINCT doc_type FROM erp.open_items")}
    assert types == {"invoice", "credit_note"}
    both = _rows(seeded_db, "SELECT count(*) FROM erp.partners WHERE is_customer AND is_supplier")
    assert both[0][0] > 0
    texts = _rows(seeded_db, "SELECT level, language FROM erp.dunning_texts")
    assert {(lv, lang) for lv in (1, 2, 3) for lang in ("de", "en", "nl")} == set(texts)


def test_seed_appends_new_numbers(db):
    seed.seed(db, partners=5, seed=1)
    seed.seed(db, partners=5, seed=2)
    numbers = [r[0] for r in _rows(db, "SELECT number FROM erp.partners ORDER BY number")]
    assert numbers == [f"{n:06d}" for n in range(1, 11)]


def test_seed_has_two_executed_payment_runs_and_adds_them_once(db):
    from datetime import date

    as_of = date(2026, 3, 2)
    counts = seed.seed(db, partners=40, seed=1, as_of=as_of)
    runs = _rows(
        db,
        "SELECT r.number, r.payment_date, r.status, count(pl.id), "
        "count(*) FILTER (WHERE pl.paid_amount = pl.gross_amount - pl.discount - pl.fees) "
        "FROM erp.payment_runs r JOIN erp.payment_lines pl ON pl.payment_run_id = r.id "
        "GROUP BY 1, 2, 3 ORDER BY 1",
    )
    assert [r[:3] for r in runs] == [
        (number, as_of, "executed") for number in seed.payment_run_numbers(as_of)
    ]
    assert all(r[3] > 0 and r[3] == r[4] for r in runs)
    assert counts["payment_lines"] == sum(r[3] for r in runs)
    # suppliers' invoices and customers' credit notes, each paid by exactly one run
    lines = _rows(
        db,
        "SELECT o.side, o.doc_type, count(*), count(DISTINCT o.id) FROM erp.payment_lines pl "
        "JOIN erp.open_items o ON o.id = pl.open_item_id GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert {(side, doc_type) for side, doc_type, *_ in lines} <= {
        ("payable", "invoice"),
        ("payable", "credit_note"),
        ("receivable", "credit_note"),
    }
    assert all(n == distinct for *_, n, distinct in lines)
    assert seed.seed_payment_runs(db, as_of=as_of) == dict.fromkeys(
        seed.payment_run_numbers(as_of), 0
    )
