"""Mails to the support location (tickets and autoreply on; the ``make_location`` fixture)
and what the import made of them: the autoreplies in the outbox, the case of a mail."""

from __future__ import annotations

from datetime import date
from email.message import EmailMessage

from erpmail.inbound.imap import ImapHook

DAY = date(2024, 3, 1)  # the business day the tests import on


def mail(n: int, sender: str, subject: str = "", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, "support@erp.example.com"
    msg["Subject"] = subject or f"Frage {n}"
    msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0000"
    msg["Message-ID"] = f"<t-{n}@example.org>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hallo\n")
    return msg.as_bytes()


def append(*mails: bytes) -> None:
    with ImapHook("imap_tickets").client() as client:
        for raw in mails:
            client.append("INBOX", raw)


def outbox(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT recipients, source_id, mime FROM mail.outbox"
            " WHERE source_type = 'autoreply' ORDER BY id"
        )
        out = cur.fetchall()
    conn.commit()
    return out


def case_of(conn, message_id: str) -> tuple[int, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.id, c.number FROM mail.messages m"
            " JOIN mail.message_links l ON l.message_id = m.id AND l.entity_type = 'case'"
            " JOIN erp.cases c ON c.id = l.entity_id WHERE m.message_id = %s",
            (message_id,),
        )
        row = cur.fetchone()
    conn.commit()
    return row
