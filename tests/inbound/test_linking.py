"""Link rules on the seeded database: keywords, tickets, senders, replies, manual links."""

from __future__ import annotations

import pytest

from erpmail.inbound import linking
from erpmail.inbound.linking import Link
from tests import mailcorpus

KEYWORDS = {"relnr": "partner", "Kundennummer": "partner", "project": "project", "vorgang": "case"}


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
