"""Who gets which mail for an event (``mail.event_rules``) and in which language: a fixed
address, the partner's contact of a role, the partner's clerk, a user group, or an address
(or user login) the payload names."""

from __future__ import annotations

from dataclasses import dataclass

from erpmail.events.journal import Event

DEFAULT_LANGUAGE = "de"

RULES = """
SELECT id, event_type, company, recipient_kind, recipient, template, account, enabled, digest
  FROM mail.event_rules
 WHERE event_type = %s AND (company IS NULL OR company = %s)
 ORDER BY id"""
PARTNER = """
SELECT p.email, p.language, p.clerk, co.language
  FROM erp.partners p JOIN erp.companies co ON co.code = p.company WHERE p.id = %s"""
COMPANY_LANGUAGE = "SELECT language FROM erp.companies WHERE code = %s"
CONTACT = """
SELECT c.email, c.language FROM erp.contacts c
 WHERE c.partner_id = %s AND c.role = %s AND coalesce(c.email, '') <> '' ORDER BY c.id LIMIT 1"""
USER = "SELECT email, language FROM erp.users WHERE login = %s"
GROUP = """
SELECT u.email, u.language FROM erp.user_group_members m JOIN erp.users u ON u.login = m.login
 WHERE m.group_name = %s ORDER BY u.login"""


@dataclass(frozen=True)
class Rule:
    """A row of ``mail.event_rules``."""

    id: int
    event_type: str
    company: str | None
    recipient_kind: str
    recipient: str | None
    template: str
    account: str | None
    enabled: bool
    digest: str


@dataclass(frozen=True)
class Recipient:
    """An address and the language its mail is written in."""

    address: str
    language: str


def rules_for(cur, event: Event) -> list[Rule]:
    """The rules of the event's type, for its company or for every company, on or off."""
    cur.execute(RULES, (event.type, event.company))
    return [Rule(*row) for row in cur.fetchall()]


def recipients(cur, rule: Rule, event: Event) -> list[Recipient]:
    """The rule's recipients for this event (none when, say, the partner has no clerk).

    Language: the recipient's own, else the partner's, else the company's, else German."""
    partner_email = partner_language = clerk = None
    fallback = DEFAULT_LANGUAGE
    if event.partner_id is not None:
        cur.execute(PARTNER, (event.partner_id,))
        row = cur.fetchone()
        if row is None:
            raise ValueError(f"event {event.id}: partner {event.partner_id} not in erp.partners")
        partner_email, partner_language, clerk, company_language = row
        fallback = partner_language or company_language or fallback
    elif event.company:
        cur.execute(COMPANY_LANGUAGE, (event.company,))
        row = cur.fetchone()
        fallback = (row and row[0]) or fallback

    def found(pairs) -> list[Recipient]:
        return [Recipient(a.strip(), lang or fallback) for a, lang in pairs if a and a.strip()]

    kind = rule.recipient_kind
    if kind == "address":
        return found([(rule.recipient, None)])
    if kind == "contact":
        if event.partner_id is None:
            raise ValueError(f"event {event.id} ({event.type}): no partner to find a contact of")
        cur.execute(CONTACT, (event.partner_id, rule.recipient))
        contact = cur.fetchone()
        return found([contact] if contact else [(partner_email, partner_language)])
    if kind == "clerk":
        return _users(cur, [clerk] if clerk else [], found)
    if kind == "group":
        cur.execute(GROUP, (rule.recipient,))
        return found(cur.fetchall())
    # payload: the field holds an address or a user's login, or a list of them
    value = event.payload.get(rule.recipient or "")
    names = value if isinstance(value, list) else [value] if value else []
    addresses = [(n, None) for n in names if isinstance(n, str) and "@" in n]
    return found(addresses) + _users(cur, [n for n in names if n and "@" not in str(n)], found)


def _users(cur, logins, found) -> list[Recipient]:
    out: list[Recipient] = []
    for login in logins:
        cur.execute(USER, (str(login),))
        row = cur.fetchone()
        if row is None:
            raise ValueError(f"user {login!r} not in erp.users")
        out += found([row])
    return out
