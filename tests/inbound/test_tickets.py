"""Tickets through the import: a new thread opens a case, replies join theirs."""

from __future__ import annotations

from email import message_from_bytes, policy

from erpmail.inbound.importer import import_location
from tests.inbound.supportdesk import DAY, append, case_of, mail, outbox


def test_replies_join_their_ticket(seeded_db, location):
    append(mail(1, "kunde@example.org", "Erste Frage"))
    import_location(location, day=DAY)
    case_id, number = case_of(seeded_db, "<t-1@example.org>")
    autoreply_id = message_from_bytes(bytes(outbox(seeded_db)[0][2]), policy=policy.default)[
        "Message-ID"
    ]

    append(
        mail(2, "kunde@example.org", "Re: Eingang", references=autoreply_id),
        mail(3, "other@example.org", f"AW: [{number.lower()}] Nachtrag"),
        mail(4, "third@example.org", "Nachfrage", in_reply_to="<t-1@example.org>"),
        mail(5, "fourth@example.org", "Ganz neu"),
    )
    import_location(location, day=DAY)

    assert case_of(seeded_db, "<t-2@example.org>") == (case_id, number)
    assert case_of(seeded_db, "<t-3@example.org>") == (case_id, number)
    assert case_of(seeded_db, "<t-4@example.org>") == (case_id, number)
    new_case, new_number = case_of(seeded_db, "<t-5@example.org>")
    assert new_case != case_id and new_number != number
    with seeded_db.cursor() as cur:
        cur.execute("SELECT queue, status FROM erp.cases WHERE id = %s", (new_case,))
        assert cur.fetchone() == ("support", "open")
