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
