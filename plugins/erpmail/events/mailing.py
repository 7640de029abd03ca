"""Turning events into mail: each claimed event's rules, recipients and template, its mail
queued in the outbox in the same transaction as the event's outcome (never twice, never
lost); digests gathered per rule and recipient and queued when due.

Templates: ``include/templates/events/<rule's template>/<language>/`` (``subject.txt``,
``body.txt``), rendered with ``events`` (one, or a digest's), ``event`` (the first) and
``digest``. An event's ``payload.attachments`` (``[{"name": ..., "key": <document store
key>}]``) are attached; ``payload.expires_at`` in the past sends nothing (``expired``).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2

from erpmail.core import archive, clock, db
from erpmail.documents import mime, templates
from erpmail.events import journal, portal
from erpmail.events.journal import Event
from erpmail.events.rules import Recipient, Rule, recipients, rules_for
from erpmail.outbound import accounts, outbox

CHUNK = 100  # events per transaction, each in its own savepoint

log = logging.getLogger(__name__)

PARTNER = "SELECT number, name FROM erp.partners WHERE id = %s"
COMPANY_EMAIL = "SELECT email FROM erp.companies WHERE code = %s"
DELIVERY = """
INSERT INTO mail.event_deliveries (event_id, rule_id, recipient, language, due_at, outbox_id,
    sent_in_digest)
VALUES (%s, %s, %s, %s, %s, %s, false)
ON CONFLICT DO NOTHING"""
DUE = """
SELECT event_id, rule_id, recipient, language FROM mail.event_deliveries
 WHERE outbox_id IS NULL AND NOT sent_in_digest AND due_at <= %s
 ORDER BY rule_id, recipient, event_id
   FOR UPDATE SKIP LOCKED"""
EVENTS = """
SELECT id, type, payload, company, partner_id, created_at FROM erp.events
 WHERE id = ANY(%s) ORDER BY id"""
RULE = """
SELECT id, event_type, company, recipient_kind, recipient, template, account, enabled, digest
  FROM mail.event_rules WHERE id = %s"""
DIGESTED = """
UPDATE mail.event_deliveries SET outbox_id = %s, sent_in_digest = true
 WHERE rule_id = %s AND recipient = %s AND event_id = ANY(%s)"""


def process(*, limit: int = 5000, now: datetime | None = None) -> dict[str, int]:
    """Handle up to ``limit`` pending events, then queue the digests that are due; the
    events per outcome and the digests queued. An event that fails fails alone."""
    now = now or datetime.now(UTC)
    counts: Counter[str] = Counter(events=0)
    conn = db.connect()
    try:
        while counts["events"] < limit:
            with db.transaction(conn) as cur:
                claimed = journal.claim(cur, min(CHUNK, limit - counts["events"]))
                for event in claimed:
                    outcome, detail = _handle_alone(cur, event, now)
                    journal.finish(cur, event, outcome, detail)
                    counts[outcome] += 1
                    counts["events"] += 1
            if not claimed:
                break
        with db.transaction(conn) as cur:
            counts["digests"] = send_due_digests(cur, now)
    finally:
        conn.close()
    log.info("event mail: %s", dict(counts) or "nothing to do")
    return dict(counts)


def _handle_alone(cur, event: Event, now: datetime) -> tuple[str, str | None]:
    cur.execute("SAVEPOINT event")
    try:
        outcome = handle(cur, event, now)
        cur.execute("RELEASE SAVEPOINT event")
        return outcome
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise  # the connection is gone: the run fails and the next one takes the events
    except Exception as exc:  # this event fails alone; the message names no payload value
        cur.execute("ROLLBACK TO SAVEPOINT event")
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("event %s (%s) failed: %s", event.id, event.type, detail)
        return "failed", detail


def handle(cur, event: Event, now: datetime) -> tuple[str, str | None]:
    """Queue one event's mail (or its digest entries); the outcome and what it did."""
    if expired(event, now):
        return "expired", f"expired at {event.payload['expires_at']}"
    if event.type.startswith("portal_"):
        return portal.handle(cur, event)
    rules = rules_for(cur, event)
    if not rules:
        return "skipped", f"no rule for {event.type}"
    active = [rule for rule in rules if rule.enabled]
    if not active:
        return "skipped", f"the rules for {event.type} are off"
    sent, waiting = [], []
    for rule in active:
        for recipient in recipients(cur, rule, event):
            if rule.digest == "immediate":
                key = f"event:{event.id}:rule-{rule.id}:{recipient.address.lower()}"
                outbox_id = queue(cur, rule, recipient, [event], key)
                cur.execute(DELIVERY, (event.id, rule.id, recipient.address, recipient.language,
                                       now, outbox_id))  # fmt: skip
                sent.append(recipient.address)
            else:
                due = digest_due(rule.digest, now)
                cur.execute(DELIVERY, (event.id, rule.id, recipient.address, recipient.language,
                                       due, None))  # fmt: skip
                waiting.append(f"{recipient.address} ({rule.digest})")
    if not sent and not waiting:
        return "skipped", "no recipient"
    detail = "; ".join(
        part
        for part in (", ".join(sent), "digest: " + ", ".join(waiting) if waiting else "")
        if part
    )
    return ("queued" if sent else "digest"), detail


def expired(event: Event, now: datetime) -> bool:
    """Whether the payload's ``expires_at`` (ISO 8601) has passed; a bad value is an error."""
    value = event.payload.get("expires_at")
    if not value:
        return False
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f"event {event.id}: payload field 'expires_at' is no ISO date-time"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) <= now


def digest_due(digest: str, now: datetime) -> datetime:
    """When a digest gathering events now goes out: the next full hour, or midnight (UTC)."""
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if digest == "hourly":
        return hour + timedelta(hours=1)
    return hour.replace(hour=0) + timedelta(days=1)


def send_due_digests(cur, now: datetime) -> int:
    """Queue one mail per rule and recipient with every event gathered for it that is due."""
    cur.execute(DUE, (now,))
    groups: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    for event_id, rule_id, recipient, language in cur.fetchall():
        groups[(rule_id, recipient, language)].append(event_id)
    for (rule_id, address, language), event_ids in groups.items():
        cur.execute(RULE, (rule_id,))
        rule = Rule(*cur.fetchone())
        cur.execute(EVENTS, (event_ids,))
        events = [Event(*row) for row in cur.fetchall()]
        key = f"digest:rule-{rule_id}:{address.lower()}:{event_ids[0]}-{event_ids[-1]}:{len(event_ids)}"
        outbox_id = queue(cur, rule, Recipient(address, language), events, key)
        cur.execute(DIGESTED, (outbox_id, rule_id, address, event_ids))
        log.info("digest of %d events to %s queued (outbox %s)", len(events), address, outbox_id)
    return len(groups)


def queue(cur, rule: Rule, recipient: Recipient, events: list[Event], key: str) -> int:
    """Render the rule's template for ``events`` in the recipient's language and queue it
    under ``key``; the outbox id."""
    first = events[0]
    variables = {
        "events": [_view(cur, event) for event in events],
        "digest": rule.digest != "immediate",
    }
    variables["event"] = variables["events"][0]
    rendered = templates.default().render_document(
        f"events/{rule.template}", variables, language=recipient.language
    )
    account = sender_account(cur, rule.account, first.company)
    message = mime.build_message(
        sender=(account.display_name, account.from_address),
        to=[recipient.address],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        attachments=attachments(first) if len(events) == 1 else (),
        message_id=mime.make_message_id(key, account.from_address.rpartition("@")[2]),
        auto_submitted="auto-generated",
        context=f"event {first.id} ({first.type})",
    )
    return outbox.enqueue(
        cur,
        key=key,
        account_id=account.id,
        recipients=[recipient.address],
        mime=message.as_bytes(),
        source_type="notification",
        source_id=first.id,
    )


def sender_account(cur, name: str | None, company: str | None) -> accounts.Account:
    """The rule's account; else the one that may send as the company's address; else the
    default account."""
    if name:
        return accounts.account_by_name(cur, name)
    if company:
        cur.execute(COMPANY_EMAIL, (company,))
        row = cur.fetchone()
        if row and row[0]:
            return accounts.select_account(cur, row[0])
    default = next((a for a in accounts.list_accounts(cur) if a.is_default), None)
    if default is None:
        raise LookupError("no mail account to send event mail from (no default account)")
    return default


def attachments(event: Event) -> list[mime.Attachment]:
    """The files the payload names, read from the document store."""
    found = []
    for i, item in enumerate(event.payload.get("attachments") or []):
        if not isinstance(item, dict) or not item.get("key"):
            raise ValueError(f"event {event.id}: payload field 'attachments[{i}]' has no key")
        name = item.get("name") or str(item["key"]).rsplit("/", 1)[-1]
        try:
            data = archive.read(item["key"])
        except FileNotFoundError:
            raise ValueError(
                f"event {event.id}: attachment {item['key']!r} is not in the document store"
            ) from None
        found.append(mime.Attachment(name, data, item.get("type") or "application/octet-stream"))
    return found


def _view(cur, event: Event) -> dict[str, Any]:
    partner = None
    if event.partner_id is not None:
        cur.execute(PARTNER, (event.partner_id,))
        row = cur.fetchone()
        partner = {"number": row[0], "name": row[1]} if row else None
    return {
        "id": event.id,
        "type": event.type,
        "created_at": event.created_at,
        "payload": {k: _when(v) if k.endswith("_at") else v for k, v in event.payload.items()},
        "partner": partner,
    }


def _when(value: Any) -> Any:
    """A payload time (ISO 8601 text) as a datetime on the company's clock, for ``|date``."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return value
    zone = ZoneInfo(clock.DEFAULT_TIMEZONE)
    return parsed.astimezone(zone) if parsed.tzinfo else parsed
