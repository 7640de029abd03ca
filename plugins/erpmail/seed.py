"""Deterministic demo and test data: one company, customers and suppliers in de/en/nl,
open items over due dates and currencies, dunning levels 1 to 3 with their texts, and two
executed payment runs over the open items.

The same ``seed`` and ``as_of`` give the same rows, so tests can compute expectations.
"""

from __future__ import annotations

import random
import re
import unicodedata
from datetime import date, timedelta
from decimal import Decimal

import psycopg2.extensions
from psycopg2.extras import execute_values

COMPANY = "DEMO"

INSERT_COMPANY = """
INSERT INTO erp.companies (code, name, street, postcode, city, country, email, phone, iban)
VALUES (%s, %s, %s, %s, %s, 'DE', %s, %s, %s)
ON CONFLICT (code) DO NOTHING"""
INSERT_LEVELS = """
INSERT INTO erp.dunning_levels (company, level, days_overdue, min_amount, fee, send_email)
VALUES %s ON CONFLICT DO NOTHING"""
INSERT_TEXTS = """
INSERT INTO erp.dunning_texts (company, level, language, subject, intro, closing)
VALUES %s ON CONFLICT DO NOTHING"""
INSERT_PARTNERS = """
INSERT INTO erp.partners (company, number, name, is_customer, is_supplier, street, postcode,
    city, country, email, email_blocked, language, customer_group, dunning_block)
VALUES %s RETURNING id, number"""
INSERT_CONTACTS = "INSERT INTO erp.contacts (partner_id, name, email, role) VALUES %s"
INSERT_ITEMS = """
INSERT INTO erp.open_items (partner_id, side, doc_number, doc_type, doc_date, due_date, amount,
    open_amount, currency, dunning_block, disputed) VALUES %s"""
INSERT_PROJECTS = """
INSERT INTO erp.projects (number, subproject, phase, name, partner_id) VALUES %s
ON CONFLICT DO NOTHING"""
INSERT_CASES = "INSERT INTO erp.cases (number, subject, partner_id) VALUES %s"
NEXT_PARTNER_NUMBER = "SELECT count(*) FROM erp.partners WHERE company = %s"
PAYABLES = """
SELECT o.id, o.partner_id, o.doc_number, o.doc_date, o.open_amount, o.currency
  FROM erp.open_items o JOIN erp.partners p ON p.id = o.partner_id
 WHERE p.company = %s AND o.side = 'payable' AND o.open_amount > 0 AND NOT o.disputed
 ORDER BY p.number, o.doc_number"""
REFUNDS = """
SELECT o.id, o.partner_id, o.doc_number, o.doc_date, o.open_amount, o.currency
  FROM erp.open_items o JOIN erp.partners p ON p.id = o.partner_id
 WHERE p.company = %s AND o.side = 'receivable' AND o.doc_type = 'credit_note'
   AND o.open_amount < 0
 ORDER BY p.number, o.doc_number"""
INSERT_PAYMENT_RUN = """
INSERT INTO erp.payment_runs (company, number, payment_date, status) VALUES (%s, %s, %s, %s)
ON CONFLICT (company, number) DO NOTHING RETURNING id"""
INSERT_PAYMENT_LINES = """
INSERT INTO erp.payment_lines (payment_run_id, partner_id, open_item_id, doc_number, doc_date,
    gross_amount, discount, fees, paid_amount, currency) VALUES %s"""

LEVELS = [  # level, days overdue, minimum amount, fee
    (1, 7, Decimal("5.00"), Decimal("0.00")),
    (2, 21, Decimal("5.00"), Decimal("5.00")),
    (3, 35, Decimal("5.00"), Decimal("10.00")),
]

TEXTS = {
    "de": [
        (
            "Zahlungserinnerung",
            "sicher haben Sie übersehen, dass die folgenden Posten fällig sind.",
            "Sollten Sie die Zahlung bereits veranlasst haben, betrachten Sie dieses Schreiben bitte als gegenstandslos.",
        ),
        (
            "1. Mahnung",
            "leider konnten wir bis heute keinen Zahlungseingang für die folgenden Posten feststellen.",
            "Bitte überweisen Sie den offenen Betrag innerhalb von 10 Tagen.",
        ),
        (
            "Letzte Mahnung",
            "trotz unserer Erinnerungen sind die folgenden Posten weiterhin offen.",
            "Geht die Zahlung nicht binnen 7 Tagen ein, übergeben wir die Forderung einem Inkassobüro.",
        ),
    ],
    "en": [
        (
            "Payment reminder",
            "you may have overlooked that the following items are due.",
            "If you have already paid, please disregard this letter.",
        ),
        (
            "First dunning notice",
            "we have not yet received payment for the following items.",
            "Please pay the open amount within 10 days.",
        ),
        (
            "Final notice",
            "despite our reminders the following items remain unpaid.",
            "If we do not receive payment within 7 days we will pass the claim to a collection agency.",
        ),
    ],
    "nl": [
        (
            "Betalingsherinnering",
            "wellicht is het u ontgaan dat de volgende posten vervallen zijn.",
            "Heeft u al betaald, dan kunt u deze brief als niet verzonden beschouwen.",
        ),
        (
            "Eerste aanmaning",
            "wij hebben nog geen betaling ontvangen voor de volgende posten.",
            "Wij verzoeken u het openstaande bedrag binnen 10 dagen te betalen.",
        ),
        (
            "Laatste aanmaning",
            "ondanks onze herinneringen staan de volgende posten nog open.",
            "Indien wij binnen 7 dagen geen betaling ontvangen, dragen wij de vordering over aan een incassobureau.",
        ),
    ],
}

NAMES = {
    "de": (
        [
            "Müller",
            "Schäfer",
            "Größer",
            "Köhler",
            "Weiß",
            "Bäcker",
            "Schröder",
            "Jürgens",
            "Hoffmann",
            "Wagner",
            "Lößl",
            "Brückner",
        ],
        [
            "Bau GmbH",
            "& Söhne OHG",
            "Elektrotechnik KG",
            "Möbelwerkstätten GmbH",
            "Getränkehandel e.K.",
            "Druckerei AG",
            "Gärtnerei GbR",
        ],
        ["Hauptstraße 1", "Königsallee 12", "Mühlenweg 7", "Schloßstraße 3"],
        [("10115", "Berlin"), ("80331", "München"), ("50667", "Köln"), ("01067", "Dresden")],
        "DE",
        ["buchhaltung", "info", "rechnung"],
    ),
    "en": (
        ["Smith", "Taylor", "Brown", "Wilson", "Clarke", "Hughes", "O'Neill", "Baker"],
        ["Logistics Ltd", "Engineering plc", "& Sons Ltd", "Trading Co."],
        ["1 High Street", "22 Mill Lane", "5 Church Road"],
        [("EC1A 1BB", "London"), ("M1 1AE", "Manchester"), ("LS1 1UR", "Leeds")],
        "GB",
        ["accounts", "finance", "info"],
    ),
    "nl": (
        ["Van der Berg", "De Vries", "Jansen", "Bakker", "Visser", "Van Dijk", "Smit"],
        ["B.V.", "Techniek B.V.", "Installatie V.O.F.", "Handelsonderneming"],
        ["Keizersgracht 12", "Stationsplein 3", "Dorpsstraat 8"],
        [("1015 CJ", "Amsterdam"), ("3511 AX", "Utrecht"), ("2511 BT", "Den Haag")],
        "NL",
        ["administratie", "boekhouding", "info"],
    ),
}
ZERO = Decimal("0.00")
DISCOUNT_DAYS = 14
DISCOUNT_RATE = Decimal("0.02")
FOREIGN_FEE = Decimal("7.50")
CH_CITIES = [("8001", "Zürich"), ("3011", "Bern"), ("4051", "Basel")]
GROUPS = ["retail", "wholesale", "public", "export"]


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text.replace("ß", "ss")).encode("ascii", "ignore")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.decode().lower()).strip("-")


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)) / 100


def seed_company(cur: psycopg2.extensions.cursor, company: str = COMPANY) -> None:
    """The company, its dunning levels and their texts; idempotent."""
    cur.execute(
        INSERT_COMPANY,
        (
            company,
            "Muster Handels GmbH",
            "Friedrichstraße 100",
            "10117",
            "Berlin",
            "buchhaltung@muster-handels.example.com",
            "+49 30 1234567",
            "DE02120300000000202051",
        ),
    )
    execute_values(
        cur, INSERT_LEVELS, [(company, lv, days, mn, fee, True) for lv, days, mn, fee in LEVELS]
    )
    rows = [
        (company, level, lang, *texts[level - 1])
        for lang, texts in TEXTS.items()
        for level in (1, 2, 3)
    ]
    execute_values(cur, INSERT_TEXTS, rows)


def _partner(rng: random.Random, number: str, company: str) -> tuple:
    lang = rng.choices(["de", "en", "nl", None], weights=[50, 25, 15, 10])[0]
    families, suffixes, streets, cities, country, mailboxes = NAMES[lang or "de"]
    name = f"{rng.choice(families)} {rng.choice(suffixes)}"
    postcode, city = rng.choice(cities)
    if lang == "de" and rng.random() < 0.1:
        (postcode, city), country = rng.choice(CH_CITIES), "CH"
    roll = rng.random()
    is_supplier = roll < 0.25
    is_customer = roll >= 0.15  # 10% are both
    email = (
        None
        if rng.random() < 0.1
        else f"{rng.choice(mailboxes)}@{_slug(name)}-{number}.example.com"
    )
    return (
        company,
        number,
        name,
        is_customer,
        is_supplier,
        rng.choice(streets),
        postcode,
        city,
        country,
        email,
        email is not None and rng.random() < 0.06,
        lang,
        rng.choice(GROUPS),
        rng.random() < 0.03,
    )


def _items(
    rng: random.Random, partner_id: int, number: str, row: tuple, as_of: date
) -> list[tuple]:
    is_customer, is_supplier, country = row[3], row[4], row[8]
    items = []
    sides = (["receivable"] if is_customer else []) + (["payable"] if is_supplier else [])
    for side in sides:
        prefix = "RE" if side == "receivable" else "ER"
        for n in range(rng.randint(0, 6)):
            currency = "CHF" if country == "CH" or rng.random() < 0.05 else "EUR"
            doc_date = as_of - timedelta(days=rng.randint(0, 110))
            due = doc_date + timedelta(days=rng.choice([14, 30]))
            amount = _money(rng, 40, 4800)
            open_amount = amount if rng.random() < 0.85 else (amount / 2).quantize(Decimal("0.01"))
            items.append(
                (
                    partner_id,
                    side,
                    f"{prefix}{number}-{n + 1:03d}",
                    "invoice",
                    doc_date,
                    due,
                    amount,
                    open_amount,
                    currency,
                    rng.random() < 0.02,
                    rng.random() < 0.03,
                )
            )
        if rng.random() < 0.12:
            doc_date = as_of - timedelta(days=rng.randint(0, 60))
            amount = -_money(rng, 20, 600)
            items.append(
                (
                    partner_id,
                    side,
                    f"GS{number}-001",
                    "credit_note",
                    doc_date,
                    doc_date,
                    amount,
                    amount,
                    "EUR",
                    False,
                    False,
                )
            )
    return items


def seed(
    conn: psycopg2.extensions.connection,
    *,
    partners: int,
    seed: int = 1,
    as_of: date | None = None,
    company: str = COMPANY,
) -> dict[str, int]:
    """Insert ``partners`` partners with contacts and open items, then the payment runs
    (``seed_payment_runs``), deterministically; commit.

    Items are dated relative to ``as_of`` (default today). Returns counts per table.
    """
    rng = random.Random(seed)
    as_of = as_of or date.today()
    with conn.cursor() as cur:
        seed_company(cur, company)
        cur.execute(NEXT_PARTNER_NUMBER, (company,))
        start = cur.fetchone()[0]
        rows = [_partner(rng, f"{start + i + 1:06d}", company) for i in range(partners)]
        ids = execute_values(cur, INSERT_PARTNERS, rows, page_size=1000, fetch=True)
        contacts, items = [], []
        for (partner_id, number), row in zip(ids, rows, strict=True):
            if rng.random() < 0.3:
                local = "mahnwesen" if row[11] in ("de", None) else "credit-control"
                domain = f"{_slug(row[2])}-{number}.example.com"
                contacts.append((partner_id, f"Kontakt {number}", f"{local}@{domain}", "dunning"))
            items.extend(_items(rng, partner_id, number, row, as_of))
        execute_values(cur, INSERT_CONTACTS, contacts, page_size=1000)
        execute_values(cur, INSERT_ITEMS, items, page_size=2000)
        projects = [
            (str(10 + p), str(s), str(ph), f"Projekt {10 + p}-{s}-{ph}", ids[p % len(ids)][0])
            for p in range(min(20, len(ids)))
            for s in (1, 2, 3)
            for ph in (1, 2)
        ]
        execute_values(cur, INSERT_PROJECTS, projects, page_size=1000)
        cases = [
            (f"T{start + c + 1:06d}", f"Anfrage {c + 1}", ids[c][0])
            for c in range(min(20, len(ids)))
        ]
        execute_values(cur, INSERT_CASES, cases)
    # last, with its own random stream: the rows above stay as they were before payment runs
    payment_lines = seed_payment_runs(conn, company=company, as_of=as_of, seed=seed)
    return {
        "partners": len(rows),
        "contacts": len(contacts),
        "open_items": len(items),
        "projects": len(projects),
        "cases": len(cases),
        "payment_lines": sum(payment_lines.values()),
    }


def payment_run_numbers(as_of: date) -> list[str]:
    """The numbers of the two payment runs seeded as of ``as_of``."""
    return [f"P{as_of:%Y%m%d}-1", f"P{as_of:%Y%m%d}-2"]


def seed_payment_runs(
    conn: psycopg2.extensions.connection,
    *,
    company: str = COMPANY,
    as_of: date | None = None,
    seed: int = 1,
) -> dict[str, int]:
    """Two executed payment runs over the company's open items, deterministically; commit.

    ``P<as_of>-1`` pays suppliers' open invoices (2% discount when issued within 14 days of
    the payment, a bank fee on non-EUR payments) and refunds customers' open credit notes;
    ``P<as_of>-2`` pays some other open invoices, partly of the same suppliers. Returns the
    number of lines per run number; a second call adds nothing.
    """
    rng = random.Random(seed)
    as_of = as_of or date.today()
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.execute(PAYABLES, (company,))
        payables = cur.fetchall()
        cur.execute(REFUNDS, (company,))
        refunds = cur.fetchall()
        first: list[tuple] = []
        second: list[tuple] = []
        fee_charged: set[tuple[int, int, str]] = set()  # one bank fee per payment
        for item_id, partner_id, number, doc_date, open_amount, currency in payables:
            roll = rng.random()
            if roll < 0.35:
                continue  # not due for payment yet
            run_index = 0 if roll < 0.85 else 1
            discount = ZERO
            if (as_of - doc_date).days <= DISCOUNT_DAYS:
                discount = (open_amount * DISCOUNT_RATE).quantize(Decimal("0.01"))
            fees = ZERO
            if currency != "EUR" and (run_index, partner_id, currency) not in fee_charged:
                fee_charged.add((run_index, partner_id, currency))
                fees = FOREIGN_FEE
            paid = open_amount - discount - fees
            line = (partner_id, item_id, number, doc_date, open_amount, discount, fees, paid)
            (first, second)[run_index].append((*line, currency))
        for item_id, partner_id, number, doc_date, open_amount, currency in refunds:
            if rng.random() < 0.5:
                refund = -open_amount
                first.append(
                    (partner_id, item_id, number, doc_date, refund, ZERO, ZERO, refund, currency)
                )
        for run_number, lines in zip(payment_run_numbers(as_of), (first, second), strict=True):
            cur.execute(INSERT_PAYMENT_RUN, (company, run_number, as_of, "executed"))
            row = cur.fetchone()
            if row is None:
                counts[run_number] = 0
                continue
            execute_values(
                cur, INSERT_PAYMENT_LINES, [(row[0], *line) for line in lines], page_size=1000
            )
            counts[run_number] = len(lines)
    conn.commit()
    return counts


def prepare(url: str, *, partners: int = 0) -> dict[str, int]:
    """Migrate the database at ``url`` and, with ``partners``, seed that many (seed 1);
    returns the seed's counts (empty without partners)."""
    from erpmail.core import db

    conn = db.connect(url)
    try:
        db.migrate(conn)
        return seed(conn, partners=partners, seed=1) if partners else {}
    finally:
        conn.close()
