"""A campaign's recipients, expanded from its segment once and frozen
(``mail.campaign_recipients``): one row per address, in the recipient's language, those that
must not get it ``skipped`` with the reason (blocked, hard bounced, suppressed, opted out,
no address, invalid address, no text in any of the campaign's languages)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from psycopg2.extras import execute_values

from erpmail.campaigns import segments

log = logging.getLogger(__name__)

CAMPAIGN = """
SELECT id, name, company, account, segment, segment_params, customer_groups, languages,
       countries, start_at, status, frozen_at, keep_copies
  FROM mail.campaigns WHERE id = %s"""
LANGUAGES = "SELECT language FROM mail.campaign_texts WHERE campaign_id = %s"
# per member: the address (the contact's, else the partner's), the language, and what
# keeps the address out
MEMBERS = """
SELECT m.partner_id, m.contact_id, lower(trim(coalesce(c.email, p.email, ''))),
       coalesce(c.language, p.language, co.language),
       p.email_blocked, p.marketing_opt_out
  FROM unnest(%s::bigint[], %s::bigint[]) AS m(partner_id, contact_id)
  JOIN erp.partners p ON p.id = m.partner_id
  JOIN erp.companies co ON co.code = p.company
  LEFT JOIN erp.contacts c ON c.id = m.contact_id AND c.partner_id = p.id"""
BOUNCED = """
SELECT address FROM mail.address_health WHERE address = ANY(%s) AND blocked_at IS NOT NULL"""
SUPPRESSED = """
SELECT address FROM mail.suppressions
 WHERE address = ANY(%s) AND (scope = 'marketing' OR company = %s)"""
INSERT = """
INSERT INTO mail.campaign_recipients (campaign_id, partner_id, contact_id, address, language,
    status, reason)
VALUES %s ON CONFLICT (campaign_id, address) DO NOTHING"""
FROZEN = "UPDATE mail.campaigns SET frozen_at = now() WHERE id = %s"


@dataclass(frozen=True)
class Campaign:
    """A row of ``mail.campaigns``."""

    id: int
    name: str
    company: str
    account: str
    segment: str | None
    segment_params: dict
    customer_groups: list[str] | None
    languages: list[str] | None
    countries: list[str] | None
    start_at: datetime | None
    status: str
    frozen_at: datetime | None
    keep_copies: bool = False


def load(cur, campaign_id: int, *, lock: bool = False) -> Campaign:
    """The campaign (``lock``: FOR UPDATE); a LookupError naming the id when missing."""
    cur.execute(CAMPAIGN + (" FOR UPDATE" if lock else ""), (campaign_id,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"campaign {campaign_id} not in mail.campaigns")
    return Campaign(*row)


def freeze(cur, campaign_id: int) -> dict[str, int]:
    """Expand the campaign's segment into its recipients, once (a second call changes
    nothing); the recipients per status or skip reason."""
    campaign = load(cur, campaign_id, lock=True)
    if campaign.frozen_at is None:
        cur.execute(LANGUAGES, (campaign_id,))
        texts = {language for (language,) in cur.fetchall()}
        if not texts:
            raise ValueError(f"campaign {campaign.name}: no text in mail.campaign_texts")
        found = segments.members(cur, campaign)
        cur.execute(MEMBERS, ([p for p, _ in found], [c for _, c in found]))
        members = cur.fetchall()
        addresses = [row[2] for row in members if row[2]]
        cur.execute(BOUNCED, (addresses,))
        bounced = {a for (a,) in cur.fetchall()}
        cur.execute(SUPPRESSED, (addresses, campaign.company))
        suppressed = {a for (a,) in cur.fetchall()}
        rows = [
            (campaign_id, partner, contact, address or f"(none) partner {partner}", language,
             *_verdict(address, language, blocked, opted_out, bounced, suppressed, texts))
            for partner, contact, address, language, blocked, opted_out in members
        ]  # fmt: skip
        execute_values(cur, INSERT, rows, page_size=1000)
        cur.execute(FROZEN, (campaign_id,))
        log.info("campaign %s: %d recipients frozen", campaign.name, len(rows))
    cur.execute(
        "SELECT coalesce(reason, status), count(*) FROM mail.campaign_recipients"
        " WHERE campaign_id = %s GROUP BY 1",
        (campaign_id,),
    )
    return dict(Counter(dict(cur.fetchall())))


def _verdict(address, language, blocked, opted_out, bounced, suppressed, texts):
    if not address:
        return "skipped", "no_address"
    if opted_out:
        return "skipped", "opted_out"
    if blocked:
        return "skipped", "blocked"
    if address in bounced:
        return "skipped", "hard_bounced"
    if address in suppressed:
        return "skipped", "suppressed"
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return "skipped", "invalid_address"
    if language not in texts and "de" not in texts and len(texts) != 1:
        return "skipped", "no_text"
    return "pending", None
