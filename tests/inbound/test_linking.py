"""Link rules on the seeded database: keywords, tickets, senders, replies, manual links."""

from __future__ import annotations

from datetime import date, timedelta
from email.message import EmailMessage

import pytest

from erpmail.inbound import linking
from erpmail.inbound.importer import import_location
from erpmail.inbound.linking import Link
from erpmail.retention import policies, purge
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows

KEYWORDS = {
    "relnr": "partner",
    "Kundennummer": "partner",
    "project": "project",
    "vorgang": "case",
    "rechnung": "open_item",
}


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("relnr 000123", [("partner", ("000123",))]),
        ("RELNR: 000123, bitte", [("partner", ("000123",))]),
        ("Ihre Kundennummer 4711", [("partner", ("4711",))]),
        ("kundennummer#0042x", []),
        ("project 12-3-1", [("project", ("12", "3", "1"))]),
        ("Project 12/3/1 und relnr 7", [("project", ("12", "3", "1")), ("partner", ("7",))]),
        ("project 12,3,1", [("project", ("12", "3", "1"))]),
        ("project 12", [("project", ("12",))]),
        ("subproject 12-3-1", []),
        ("Vorgang T000003", [("case", ("T000003",))]),
        ("nothing here 000123", []),
        ("Rechnung RE-2026-00017.", [("open_item", ("RE-2026-00017",))]),
        ("rechnung: 2026/4711 und relnr 7", [("open_item", ("2026/4711",)), ("partner", ("7",))]),
        ("Rechnung a folgt", []),
        ("Rechnung 88A, bitte", [("open_item", ("88A",))]),
    ],
)
def test_keyword_matches(subject, expected):
    assert linking.keyword_matches(subject, KEYWORDS) == expected


def test_ticket_numbers():
    assert linking.ticket_numbers("AW: [t000003] und T000003, T1234567 xT0000012") == [
        "T000003",
        "T1234567",
    ]


def test_find_links_in_rule_order_with_methods(seeded_db):
    facts = mailcorpus.facts(seeded_db)
    partner_id, number, email = facts.partners[0]
    letter_id, letter_partner, letter_msgid = facts.letters[0]
    contact_id, contact_partner, contact_email = facts.contacts[0]
    with seeded_db.cursor() as cur:
        links = linking.find_links(
            cur,
            subject=f"relnr {number} project 10-1-1 [T000002]",
            from_address=contact_email.upper(),
            in_reply_to=None,
            references=["<unknown@x>", letter_msgid],
            keywords=KEYWORDS,
        )
        cur.execute("SELECT id FROM erp.cases WHERE number = 'T000002'")
        case_id = cur.fetchone()[0]
    assert links[:2] == [
        Link("letter", letter_id, "reply"),
        Link("partner", letter_partner, "reply"),
    ]
    assert Link("partner", partner_id, "keyword") in links
    assert Link("project", facts.projects[("10", "1", "1")], "keyword") in links
    assert Link("case", case_id, "ticket") in links
    assert Link("contact", contact_id, "sender") in links
    assert len({(x.entity_type, x.entity_id) for x in links}) == len(links)


def test_leading_zeros_are_significant(seeded_db):
    with seeded_db.cursor() as cur:
        cur.execute("SELECT number FROM erp.partners ORDER BY id LIMIT 1")
        number = cur.fetchone()[0]
        stripped = number.lstrip("0")
        assert linking.resolve(cur, "partner", (stripped,)) == []
        assert linking.resolve(cur, "partner", (number,)) != []


def _stored_mail(conn, message_id: str = "<m-1@example.org>") -> int:
    location = mailcorpus.add_location(conn, "manual", "imap_x")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,"
            " size_bytes) VALUES ('in', %s, %s, repeat('a', 64), 'x.eml', 1) RETURNING id",
            (location, message_id),
        )
        mail_id = cur.fetchone()[0]
    conn.commit()
    return mail_id


def test_link_manually_by_id_or_message_id(seeded_db):
    mail_id = _stored_mail(seeded_db)
    with seeded_db.cursor() as cur:
        assert linking.link_manually(cur, str(mail_id), "project", "11/2/1") == [mail_id]
        assert linking.link_manually(cur, "m-1@example.org", "case", "t000004") == [mail_id]
        cur.execute(
            "SELECT entity_type, method FROM mail.message_links WHERE message_id = %s ORDER BY 1",
            (mail_id,),
        )
        assert cur.fetchall() == [("case", "manual"), ("project", "manual")]
        cur.execute("SELECT status FROM mail.messages WHERE id = %s", (mail_id,))
        assert cur.fetchone() == ("linked",)
        cur.execute("SELECT count(*) FROM mail.audit_log WHERE action = 'link_mail'")
        assert cur.fetchone() == (2,)


@pytest.mark.parametrize(
    ("message", "entity_type", "number", "error"),
    [
        ("999999", "partner", "000001", "no stored mail"),
        ("MAIL", "customer", "000001", "entity type 'customer'"),
        ("MAIL", "partner", "nope", "no such partner"),
        ("MAIL", "project", "12-x", "expected e.g. 12"),
    ],
)
def test_link_manually_refuses_with_the_field_named(seeded_db, message, entity_type, number, error):
    mail_id = _stored_mail(seeded_db)
    with seeded_db.cursor() as cur, pytest.raises(ValueError, match=error):
        linking.link_manually(cur, message.replace("MAIL", str(mail_id)), entity_type, number)


def _mail(
    subject: str, sender: str, in_reply_to: str | None = None, text: str = "Bitte prüfen."
) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "fibu@erp.example.com", subject
    msg["Date"] = "Tue, 01 Dec 2026 09:00:00 +0100"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(text)
    return msg.as_bytes()


def test_the_import_links_open_items_and_retention_keeps_them_for_the_invoice_minimum(
    seeded_db, mailbox, store
):
    facts = mailcorpus.facts(seeded_db)
    letter_id, partner_id, letter_msgid = facts.letters[0]
    with seeded_db.cursor() as cur:
        cur.execute(
            "SELECT id, doc_number FROM erp.open_items WHERE partner_id = %s ORDER BY id LIMIT 2",
            (partner_id,),
        )
        items = cur.fetchall()
        cur.execute(
            "INSERT INTO erp.letter_items (letter_id, open_item_id, level, raised, days_overdue,"
            " amount, currency) VALUES (%s, %s, 1, true, 10, 1.00, 'EUR')",
            (letter_id, items[0][0]),
        )
    seeded_db.commit()
    location = mailcorpus.add_location(
        seeded_db,
        "fibu",
        "imap_test",
        link_keywords={**mailcorpus.KEYWORDS, "rechnung": "open_item"},
    )
    uids = append(
        [
            _mail("Re: Zahlungserinnerung", "kunde@nowhere.example", letter_msgid),
            _mail(f"Frage zu Rechnung {items[1][1].lower()}", "kunde@nowhere.example"),
            _mail("Newsletter", "news@nowhere.example", text="Rechnung folgt, Kundennummer 1"),
            _mail("Frage", "kunde@nowhere.example", text=f"zu Ihrer Rechnung {items[1][1]} ..."),
        ]
    )
    assert import_location(location).new == 4
    links = {uid: {(t, i, m) for t, i, m in rows(seeded_db, LINKS_OF_UID, uid)} for uid in uids}
    assert ("open_item", items[0][0], "reply") in links[uids[0]]
    assert ("letter", letter_id, "reply") in links[uids[0]]
    assert ("open_item", items[1][0], "keyword") in links[uids[1]]
    assert not links[uids[2]]  # "Rechnung folgt": no number; partner keywords: subject only
    assert ("open_item", items[1][0], "keyword") in links[uids[3]]

    # retention: past the general minimum only the mail about no invoice may go
    with seeded_db.cursor() as cur:
        policies.set_policy(cur, location="fibu", keep_days=30)
    seeded_db.commit()
    purge.run(seeded_db, dry_run=False, as_of=date.today() + timedelta(days=3000), actor="test")
    kept = sorted(u for (u,) in rows(seeded_db, "SELECT uid FROM mail.messages"))
    assert kept == [uids[0], uids[1], uids[3]]
    purge.run(seeded_db, dry_run=False, as_of=date.today() + timedelta(days=3700), actor="test")
    assert rows(seeded_db, "SELECT count(*) FROM mail.messages") == [(0,)]


LINKS_OF_UID = """
SELECT l.entity_type, l.entity_id, l.method FROM mail.message_links l
  JOIN mail.messages m ON m.id = l.message_id WHERE m.uid = %s"""


def test_link_manually_takes_ascii_digits_only(seeded_db):
    mail_id = _stored_mail(seeded_db)
    with seeded_db.cursor() as cur:
        with pytest.raises(ValueError, match="contact number '\u00b2'"):
            linking.link_manually(cur, str(mail_id), "contact", "\u00b2")
        with pytest.raises(ValueError, match="no stored mail"):
            linking.link_manually(cur, "\u00b2", "partner", "000001")
        cur.execute("SELECT doc_number, id FROM erp.open_items ORDER BY id LIMIT 1")
        doc_number, item_id = cur.fetchone()
        assert linking.link_manually(cur, str(mail_id), "open_item", doc_number) == [mail_id]
        cur.execute(
            "SELECT entity_type, entity_id, method FROM mail.message_links WHERE message_id = %s",
            (mail_id,),
        )
        assert cur.fetchall() == [("open_item", item_id, "manual")]
