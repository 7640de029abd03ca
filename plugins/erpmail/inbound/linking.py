"""Which partner, contact, project, case, letter or open item a received mail belongs to.

Rules, in order: a reply to a mail erpmail sent (In-Reply-To / References), a keyword from
the location's list followed by a number in the subject (for open items: or in the text), a ticket number in the subject,
the sender's address. A reply to a letter also links the open items the letter listed. A mail
may link to several entities; each link keeps its method.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from psycopg2.extras import execute_values

ENTITY_TYPES = ("partner", "contact", "project", "case", "letter", "open_item")
KEYWORD_TYPES = ("partner", "project", "case", "letter", "open_item")
BODY_SEARCH_CHARS = 20_000  # a reply's own words come first; quoted history may follow
# Ticket numbers as the ERP and erpmail hand them out: T and at least six digits.
TICKET_NUMBER = re.compile(r"(?<![A-Za-z0-9])(T\d{6,})(?![A-Za-z0-9])", re.IGNORECASE)
_PROJECT_NUMBER = r"(\d+)(?:[-/,](\d+))?(?:[-/,](\d+))?(?![\d])"
_PLAIN_NUMBER = r"([A-Za-z]{0,4}\d+)(?![A-Za-z0-9])"
# document numbers as ERPs print them: RE-2026-00017, 2026/4711, INV.88
# (one digit at least; starts and ends with a letter or digit)
_DOCUMENT_NUMBER = (
    r"((?=[A-Za-z0-9/._-]*[0-9])[A-Za-z0-9](?:[A-Za-z0-9/._-]*[A-Za-z0-9])?)(?![A-Za-z0-9])"
)
_SEPARATOR = r"[\s.:#=-]{0,3}"

REPLIED_OUTBOX = """
SELECT o.message_id, o.source_type, o.source_id, l.id, l.partner_id
FROM mail.outbox o
LEFT JOIN erp.letters l
       ON l.outbox_id = o.id OR (o.source_type = 'letter' AND l.id = o.source_id)
WHERE o.message_id = ANY(%s)"""
REPLIED_CASES = """
SELECT DISTINCT m.message_id, ml.entity_id
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
SELECT lower(email), 0, 'partner', id, NULL::bigint FROM erp.partners
WHERE lower(email) = ANY(%(addrs)s)
UNION ALL
SELECT lower(email), 1, 'contact', id, partner_id FROM erp.contacts
WHERE lower(email) = ANY(%(addrs)s)"""
PARTNERS_BY_NUMBERS = "SELECT number, id FROM erp.partners WHERE number = ANY(%s) ORDER BY id"
CASES_BY_NUMBERS = "SELECT upper(number), id FROM erp.cases WHERE upper(number) = ANY(%s)"
LETTERS_BY_IDS = "SELECT id, partner_id FROM erp.letters WHERE id = ANY(%s)"
OPEN_ITEMS_BY_NUMBERS = """
SELECT upper(doc_number), id FROM erp.open_items WHERE upper(doc_number) = ANY(%s) ORDER BY id"""
LETTER_OPEN_ITEMS = """
SELECT letter_id, open_item_id FROM erp.letter_items WHERE letter_id = ANY(%s)
 ORDER BY letter_id, open_item_id"""
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
        number = {"project": _PROJECT_NUMBER, "open_item": _DOCUMENT_NUMBER}.get(
            entity_type, _PLAIN_NUMBER
        )
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
        if not (parts[0].isascii() and parts[0].isdigit()):
            return []
        cur.execute(LETTER_BY_ID, (int(parts[0]),))
        row = cur.fetchone()
        return [("letter", row[0]), ("partner", row[1])] if row else []
    if entity_type == "open_item":
        return _resolve_many(cur, {("open_item", parts)})[("open_item", parts)]
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


@dataclass(frozen=True)
class LinkQuery:
    """What the rules look at in one mail."""

    subject: str
    from_address: str | None
    in_reply_to: str | None
    references: Sequence[str]
    body: str = ""  # the text part: searched for open items' document numbers only


def find_links(
    cur,
    *,
    subject: str,
    from_address: str | None,
    in_reply_to: str | None,
    references: Iterable[str],
    keywords: Mapping[str, str],
    body: str | None = None,
) -> list[Link]:
    """Every link the rules find for one mail, first rule first, without repeats."""
    query = LinkQuery(subject, from_address, in_reply_to, list(references), body or "")
    return find_links_many(cur, [query], keywords)[0]


def find_links_many(
    cur, mails: Sequence[LinkQuery], keywords: Mapping[str, str]
) -> list[list[Link]]:
    """:func:`find_links` for many mails, with a handful of queries for all of them."""
    threads = [
        list(dict.fromkeys([*([m.in_reply_to] if m.in_reply_to else []), *m.references]))
        for m in mails
    ]
    replied: dict[str, list[tuple[str, int]]] = {}
    all_ids = sorted({i for thread in threads for i in thread})
    if all_ids:
        cur.execute(REPLIED_OUTBOX, (all_ids,))
        for message_id, source_type, source_id, letter_id, partner_id in cur.fetchall():
            found = replied.setdefault(message_id, [])
            if letter_id is not None:
                found.append(("letter", letter_id))
                if partner_id is not None:
                    found.append(("partner", partner_id))
            elif source_type == "autoreply" and source_id is not None:
                found.append(("case", source_id))
        cur.execute(REPLIED_CASES, (all_ids,))
        cases: dict[str, list[int]] = {}
        for message_id, case_id in cur.fetchall():
            cases.setdefault(message_id, []).append(case_id)
        listed = letter_open_items(
            cur, [i for found in replied.values() for t, i in found if t == "letter"]
        )
        for found in replied.values():
            found.extend(
                ("open_item", item)
                for t, letter_id in list(found)
                if t == "letter"
                for item in listed.get(letter_id, ())
            )
    # an invoice's number is often in the text only ("Ihre Rechnung RE-17 vom ..."); the other
    # kinds stay with the subject, where a number means what it says
    invoices = {k: t for k, t in keywords.items() if t == "open_item"}
    matches = [
        keyword_matches(m.subject, keywords)
        + (keyword_matches(m.body[:BODY_SEARCH_CHARS], invoices) if m.body and invoices else [])
        for m in mails
    ]
    tickets = [ticket_numbers(m.subject) for m in mails]
    numbers = _resolve_many(
        cur,
        {key for found in matches for key in found}
        | {("case", (number,)) for found in tickets for number in found},
    )
    senders: dict[str, list[tuple[int, str, int, int | None]]] = {}
    addrs = sorted({m.from_address.lower() for m in mails if m.from_address})
    if addrs:
        cur.execute(SENDER_MATCHES, {"addrs": addrs})
        for addr, order, entity_type, entity_id, partner_id in cur.fetchall():
            senders.setdefault(addr, []).append((order, entity_type, entity_id, partner_id))
    out = []
    for mail, thread, found, ticket_list in zip(mails, threads, matches, tickets, strict=True):
        links: dict[tuple[str, int], Link] = {}
        add = _adder(links)
        for message_id in thread:
            for entity_type, entity_id in replied.get(message_id, ()):
                add(entity_type, entity_id, "reply")
        for message_id in thread:
            for case_id in cases.get(message_id, ()):
                add("case", case_id, "reply")
        for key in found:
            for entity_type, entity_id in numbers[key]:
                add(entity_type, entity_id, "keyword")
        for number in ticket_list:
            for _, case_id in numbers[("case", (number,))]:
                add("case", case_id, "ticket")
        if mail.from_address:
            for _, entity_type, entity_id, partner_id in sorted(
                senders.get(mail.from_address.lower(), ()), key=lambda row: row[0]
            ):
                add(entity_type, entity_id, "sender")
                add("partner", partner_id, "sender")
        out.append(list(links.values()))
    return out


def _adder(links: dict[tuple[str, int], Link]):
    def add(entity_type: str, entity_id: int | None, method: str) -> None:
        if entity_id is not None:  # the first rule that finds an entity names the method
            links.setdefault((entity_type, entity_id), Link(entity_type, entity_id, method))

    return add


def _resolve_many(
    cur, wanted: set[tuple[str, tuple[str, ...]]]
) -> dict[tuple[str, tuple[str, ...]], list[tuple[str, int]]]:
    """:func:`resolve` for many numbers: one query per entity type (projects one by one)."""
    out: dict[tuple[str, tuple[str, ...]], list[tuple[str, int]]] = {k: [] for k in wanted}
    by_type: dict[str, list[str]] = {}
    for entity_type, parts in wanted:
        if entity_type in ("partner", "case", "letter", "open_item"):
            by_type.setdefault(entity_type, []).append(parts[0])
        else:
            out[(entity_type, parts)] = resolve(cur, entity_type, parts)
    if by_type.get("partner"):
        cur.execute(PARTNERS_BY_NUMBERS, (sorted(set(by_type["partner"])),))
        for number, entity_id in cur.fetchall():
            out[("partner", (number,))].append(("partner", entity_id))
    if by_type.get("case"):
        upper = {n: n.upper() for n in by_type["case"]}
        cur.execute(CASES_BY_NUMBERS, (sorted(set(upper.values())),))
        found: dict[str, list[int]] = {}
        for number, entity_id in cur.fetchall():
            found.setdefault(number, []).append(entity_id)
        for number, key in upper.items():
            out[("case", (number,))] = [("case", i) for i in found.get(key, ())]
    if by_type.get("letter"):
        typed = {n: int(n) for n in by_type["letter"] if n.isascii() and n.isdigit()}
        if typed:
            cur.execute(LETTERS_BY_IDS, (sorted(set(typed.values())),))
            letters = {row[0]: row[1] for row in cur.fetchall()}
            for number, letter_id in typed.items():
                if letter_id in letters:
                    found_letter = [("letter", letter_id), ("partner", letters[letter_id])]
                    out[("letter", (number,))] = found_letter
    if by_type.get("open_item"):
        upper = {n: n.upper() for n in by_type["open_item"]}
        cur.execute(OPEN_ITEMS_BY_NUMBERS, (sorted(set(upper.values())),))
        items: dict[str, list[int]] = {}
        for number, entity_id in cur.fetchall():
            items.setdefault(number, []).append(entity_id)
        for number, key in upper.items():
            out[("open_item", (number,))] = [("open_item", i) for i in items.get(key, ())]
    return out


def letter_open_items(cur, letter_ids: Iterable[int]) -> dict[int, list[int]]:
    """The open items each letter listed (erp.letter_items), by letter id."""
    ids = sorted(set(letter_ids))
    found: dict[int, list[int]] = {}
    if ids:
        cur.execute(LETTER_OPEN_ITEMS, (ids,))
        for letter_id, item_id in cur.fetchall():
            found.setdefault(letter_id, []).append(item_id)
    return found


def store_links(cur, message_row_id: int, links: Iterable[Link]) -> int:
    """Insert the links of one stored mail (existing ones kept); returns how many were given."""
    return store_links_many(cur, [(message_row_id, links)])


def store_links_many(cur, mails: Iterable[tuple[int, Iterable[Link]]]) -> int:
    """Insert the links of many stored mails in one statement; returns how many were given."""
    rows = [
        (mail_id, link.entity_type, link.entity_id, link.method)
        for mail_id, links in mails
        for link in links
    ]
    if rows:
        execute_values(cur, INSERT_LINKS, rows, page_size=1000)
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
    if text.isascii() and text.isdigit():  # "²".isdigit() is true, and int() refuses it
        cur.execute(MESSAGES_BY_ID, (int(text),))
    else:
        cur.execute(MESSAGES_BY_MESSAGE_ID, (text if text.startswith("<") else f"<{text}>",))
    mails = [row[0] for row in cur.fetchall()]
    if not mails:
        raise ValueError(f"message {message!r}: no stored mail with this id or Message-ID")
    if entity_type == "contact":
        if not (number.strip().isascii() and number.strip().isdigit()):
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
