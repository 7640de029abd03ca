"""Which partner, contact, project, case or letter a received mail belongs to.

Rules, in order: a reply to a mail erpmail sent (In-Reply-To / References), a keyword from
the location's list followed by a number in the subject, a ticket number in the subject,
the sender's address. A mail may link to several entities; each link keeps its method.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from psycopg2.extras import execute_values

ENTITY_TYPES = ("partner", "contact", "project", "case", "letter")
KEYWORD_TYPES = ("partner", "project", "case", "letter")
# Ticket numbers as the ERP and erpmail hand them out: T and at least six digits.
TICKET_NUMBER = re.compile(r"(?<![A-Za-z0-9])(T\d{6,})(?![A-Za-z0-9])", re.IGNORECASE)
_PROJECT_NUMBER = r"(\d+)(?:[-/,](\d+))?(?:[-/,](\d+))?(?![\d])"
_PLAIN_NUMBER = r"([A-Za-z]{0,4}\d+)(?![A-Za-z0-9])"
_SEPARATOR = r"[\s.:#=-]{0,3}"

REPLIED_OUTBOX = """
SELECT o.source_type, o.source_id, l.id, l.partner_id
FROM mail.outbox o
LEFT JOIN erp.letters l
       ON l.outbox_id = o.id OR (o.source_type = 'letter' AND l.id = o.source_id)
WHERE o.message_id = ANY(%s)"""
REPLIED_CASES = """
SELECT DISTINCT ml.entity_id
FROM mail.messages m
JOIN mail.message_links ml ON ml.message_id = m.id AND ml.entity_type = 'case'
WHERE m.message_id = ANY(%s)"""
PARTNER_BY_NUMBER = "SELECT id FROM erp.partners WHERE number = %s ORDER BY id"
CASE_BY_NUMBER = "SELECT id FROM erp.cases WHERE upper(number) = upper(%s)"
LETTER_BY_ID = "SELECT id, partner_id FROM erp.letters WHERE id = %s"
PROJECT_EXACT = """
SELECT id FROM erp.projects WHERE number = %s AND subproject = %s AND phase = %s"""
PROJECT_PREFIX = """
SELECT id FROM erp.projects
WHERE number = %(number)s
  AND (%(subproject)s IS NULL OR subproject = %(subproject)s)
LIMIT 2"""
CONTACT_BY_ID = "SELECT id, partner_id FROM erp.contacts WHERE id = %s"
SENDER_MATCHES = """
SELECT 'partner', id, NULL::bigint FROM erp.partners WHERE lower(email) = lower(%(addr)s)
UNION ALL
SELECT 'contact', id, partner_id FROM erp.contacts WHERE lower(email) = lower(%(addr)s)"""
INSERT_LINKS = """
INSERT INTO mail.message_links (message_id, entity_type, entity_id, method) VALUES %s
ON CONFLICT DO NOTHING"""
MESSAGES_BY_ID = "SELECT id, status FROM mail.messages WHERE id = %s"
MESSAGES_BY_MESSAGE_ID = "SELECT id, status FROM mail.messages WHERE message_id = %s ORDER BY id"
MARK_LINKED = "UPDATE mail.messages SET status = 'linked' WHERE id = %s AND status = 'unlinked'"
AUDIT = """
INSERT INTO mail.audit_log (actor, action, subject, details)
VALUES (%s, 'link_mail', %s, %s::jsonb)"""


@dataclass(frozen=True)
class Link:
    """One entity a mail belongs to, and the rule that found it."""

    entity_type: str
    entity_id: int
    method: str


def keyword_matches(subject: str, keywords: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """``(entity type, number parts)`` for each keyword + number in the subject, in order.

    Case-insensitive; leading zeros are kept; a project number may be ``12-3-1``, ``12/3/1``
    or ``12,3,1`` (project, subproject, phase).
    """
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for keyword, entity_type in keywords.items():
        if entity_type not in KEYWORD_TYPES or not keyword.strip():
            continue
        number = _PROJECT_NUMBER if entity_type == "project" else _PLAIN_NUMBER
        pattern = rf"(?<![^\W_]){re.escape(keyword.strip())}{_SEPARATOR}{number}"
        for match in re.finditer(pattern, subject, re.IGNORECASE):
            parts = tuple(p for p in match.groups() if p is not None)
            found.append((match.start(), entity_type, parts))
    return [(entity_type, parts) for _, entity_type, parts in sorted(found)]


def ticket_numbers(subject: str) -> list[str]:
    """Ticket numbers (``T`` and six or more digits) in a subject, upper-cased, in order."""
    return list(dict.fromkeys(m.upper() for m in TICKET_NUMBER.findall(subject)))


def resolve(cur, entity_type: str, parts: tuple[str, ...]) -> list[tuple[str, int]]:
    """The entities a keyword number names: ``(type, id)``, a letter also naming its partner."""
    if entity_type == "partner":
        cur.execute(PARTNER_BY_NUMBER, (parts[0],))
        return [("partner", row[0]) for row in cur.fetchall()]
    if entity_type == "case":
        cur.execute(CASE_BY_NUMBER, (parts[0],))
        return [("case", row[0]) for row in cur.fetchall()]
    if entity_type == "letter":
        if not parts[0].isdigit():
            return []
        cur.execute(LETTER_BY_ID, (int(parts[0]),))
        row = cur.fetchone()
        return [("letter", row[0]), ("partner", row[1])] if row else []
    if entity_type == "project":
        number, sub, phase = (*parts, "", "")[:3]
        cur.execute(PROJECT_EXACT, (number, sub, phase))
        row = cur.fetchone()
        if row:
            return [("project", row[0])]
        if len(parts) < 3:  # "project 12" or "12-3": only when exactly one project fits
            cur.execute(PROJECT_PREFIX, {"number": number, "subproject": sub or None})
            rows = cur.fetchall()
            if len(rows) == 1:
                return [("project", rows[0][0])]
        return []
    return []


def find_links(
    cur,
    *,
    subject: str,
    from_address: str | None,
    in_reply_to: str | None,
    references: Iterable[str],
    keywords: Mapping[str, str],
) -> list[Link]:
    """Every link the rules find for one mail, first rule first, without repeats."""
    links: dict[tuple[str, int], Link] = {}

    def add(entity_type: str, entity_id: int | None, method: str) -> None:
        if entity_id is not None:
            links.setdefault((entity_type, entity_id), Link(entity_type, entity_id, method))

    thread = list(dict.fromkeys([*([in_reply_to] if in_reply_to else []), *references]))
    if thread:
        cur.execute(REPLIED_OUTBOX, (thread,))
        for source_type, source_id, letter_id, partner_id in cur.fetchall():
            if letter_id is not None:
                add("letter", letter_id, "reply")
                add("partner", partner_id, "reply")
            elif source_type == "autoreply" and source_id is not None:
                add("case", source_id, "reply")
        cur.execute(REPLIED_CASES, (thread,))
        for (case_id,) in cur.fetchall():
            add("case", case_id, "reply")
    for entity_type, parts in keyword_matches(subject, keywords):
        for found_type, entity_id in resolve(cur, entity_type, parts):
            add(found_type, entity_id, "keyword")
    for number in ticket_numbers(subject):
        for _, case_id in resolve(cur, "case", (number,)):
            add("case", case_id, "ticket")
    if from_address:
        cur.execute(SENDER_MATCHES, {"addr": from_address})
        for entity_type, entity_id, partner_id in cur.fetchall():
            add(entity_type, entity_id, "sender")
            add("partner", partner_id, "sender")
    return list(links.values())


def store_links(cur, message_row_id: int, links: Iterable[Link]) -> int:
    """Insert the links of one stored mail (existing ones kept); returns how many were given."""
    rows = [(message_row_id, link.entity_type, link.entity_id, link.method) for link in links]
    if rows:
        execute_values(cur, INSERT_LINKS, rows)
    return len(rows)


def parse_number(entity_type: str, number: str) -> tuple[str, ...]:
    """The parts of a number as typed by a person (``12-3-1`` for a project)."""
    number = number.strip()
    if entity_type == "project":
        match = re.fullmatch(_PROJECT_NUMBER, number)
        if not match:
            raise ValueError(f"project number {number!r}: expected e.g. 12, 12-3 or 12-3-1")
        return tuple(p for p in match.groups() if p is not None)
    if not number:
        raise ValueError(f"{entity_type} number is empty")
    return (number,)


def link_manually(
    cur, message: str, entity_type: str, number: str, actor: str = "link_mail"
) -> list[int]:
    """Link stored mail (row id, or Message-ID) to one entity by hand; returns the mail ids."""
    if entity_type not in ENTITY_TYPES:
        raise ValueError(f"entity type {entity_type!r}: expected one of {', '.join(ENTITY_TYPES)}")
    text = message.strip()
    if text.isdigit():
        cur.execute(MESSAGES_BY_ID, (int(text),))
    else:
        cur.execute(MESSAGES_BY_MESSAGE_ID, (text if text.startswith("<") else f"<{text}>",))
    mails = [row[0] for row in cur.fetchall()]
    if not mails:
        raise ValueError(f"message {message!r}: no stored mail with this id or Message-ID")
    if entity_type == "contact":
        if not number.strip().isdigit():
            raise ValueError(f"contact number {number!r}: expected the contact's id")
        cur.execute(CONTACT_BY_ID, (int(number),))
        row = cur.fetchone()
        targets = [("contact", row[0])] if row else []
    else:
        targets = resolve(cur, entity_type, parse_number(entity_type, number))
    targets = [t for t in targets if t[0] == entity_type]
    if not targets:
        raise ValueError(f"{entity_type} number {number!r}: no such {entity_type}")
    if len(targets) > 1:
        raise ValueError(f"{entity_type} number {number!r}: matches {len(targets)}; be precise")
    _, entity_id = targets[0]
    for mail_id in mails:
        store_links(cur, mail_id, [Link(entity_type, entity_id, "manual")])
        cur.execute(MARK_LINKED, (mail_id,))
    details = {"mails": mails, "entity_type": entity_type, "entity_id": entity_id, "number": number}
    cur.execute(AUDIT, (actor, message, json.dumps(details)))
    return mails
