"""Queueing a frozen campaign through the outbox in batches: each recipient's mail in its
language, personalised with the partner's fields (autoescaped HTML, a missing field fails
that recipient alone), with its one-click unsubscribe, under a key per campaign and address
so a rerun queues nothing twice. The outbox sends it with the account's throttle. A campaign
set to ``paused`` or ``cancelled`` stops at the next batch; ``resume`` goes on."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import jinja2
import psycopg2

from erpmail.campaigns import recipients, unsubscribe
from erpmail.core import db
from erpmail.core.progress import Progress
from erpmail.documents import mime, templates
from erpmail.outbound import accounts, outbox

BATCH = 500

log = logging.getLogger(__name__)

TEXTS = "SELECT language, subject, html, text FROM mail.campaign_texts WHERE campaign_id = %s"
PENDING = """
SELECT r.id, r.address, r.language, p.number, p.name, p.street, p.postcode, p.city,
       p.country, c.name
  FROM mail.campaign_recipients r
  JOIN erp.partners p ON p.id = r.partner_id
  LEFT JOIN erp.contacts c ON c.id = r.contact_id
 WHERE r.campaign_id = %s AND r.status = 'pending'
 ORDER BY r.id LIMIT %s
   FOR UPDATE OF r SKIP LOCKED"""
COUNT_PENDING = (
    "SELECT count(*) FROM mail.campaign_recipients WHERE campaign_id = %s AND status = 'pending'"
)
SET_QUEUED = "UPDATE mail.campaign_recipients SET status = 'queued', outbox_id = %s WHERE id = %s"
SET_FAILED = "UPDATE mail.campaign_recipients SET status = 'failed', reason = %s WHERE id = %s"
SET_STATUS = "UPDATE mail.campaigns SET status = %s WHERE id = %s AND status = ANY(%s)"
STATUS = "SELECT status FROM mail.campaigns WHERE id = %s"
SUMMARY = """
SELECT r.status, coalesce(r.reason, ''), coalesce(o.status, ''), count(*)
  FROM mail.campaign_recipients r LEFT JOIN mail.outbox o ON o.id = r.outbox_id
 WHERE r.campaign_id = %s GROUP BY 1, 2, 3"""


def send(campaign_id: int, *, batch: int = BATCH, budget_seconds: float | None = None) -> dict:
    """Freeze the recipients (once), then queue the pending ones batch by batch until done,
    paused or out of time; the campaign's summary. ``done`` once nothing is pending."""
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            campaign = recipients.load(cur, campaign_id, lock=True)
            if campaign.status in ("paused", "cancelled", "done", "draft"):
                log.info("campaign %s is %s: nothing queued", campaign.name, campaign.status)
                return summary(cur, campaign_id)
            recipients.freeze(cur, campaign_id)
            cur.execute(SET_STATUS, ("sending", campaign_id, ["scheduled", "sending"]))
            cur.execute(TEXTS, (campaign_id,))
            texts = {lang: (subject, html, text) for lang, subject, html, text in cur.fetchall()}
            account = accounts.account_by_name(cur, campaign.account)
            cur.execute(COUNT_PENDING, (campaign_id,))
            (pending,) = cur.fetchone()
        progress = Progress(f"campaign {campaign.name}: queued", pending, unit="mails", log=log)
        compiled = _compile(texts)
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        counts: Counter[str] = Counter()
        while deadline is None or time.monotonic() < deadline:
            with db.transaction(conn) as cur:
                cur.execute(STATUS, (campaign_id,))
                if cur.fetchone()[0] != "sending":  # paused or cancelled meanwhile
                    break
                cur.execute(PENDING, (campaign_id, batch))
                todo = cur.fetchall()
                for row in todo:
                    counts[_queue_one(cur, campaign, account, compiled, row)] += 1
                progress.add(len(todo))
                if not todo:
                    cur.execute(SET_STATUS, ("done", campaign_id, ["sending"]))
                    break
        progress.update(progress.done, force=True)
        with db.transaction(conn) as cur:
            found = summary(cur, campaign_id)
        log.info("campaign %s: %s", campaign.name, found)
        return found
    finally:
        conn.close()


def _compile(texts: dict[str, tuple[str, str | None, str]]) -> dict[str, tuple]:
    env = templates.default().env
    html_env = env.overlay(autoescape=True)
    return {
        lang: (env.from_string(subject), html_env.from_string(html) if html else None,
               env.from_string(text))
        for lang, (subject, html, text) in texts.items()
    }  # fmt: skip


def _queue_one(cur, campaign: Any, account: Any, compiled: dict, row: tuple) -> str:
    recipient_id, address, language, number, name, street, postcode, city, country, contact = row
    subject_t, html_t, text_t = (
        compiled.get(language) or compiled.get("de") or next(iter(compiled.values()))
    )
    variables = {
        "partner": {"number": number, "name": name, "street": street, "postcode": postcode,
                    "city": city, "country": country},
        "contact": {"name": contact} if contact else None,
        "language": language,
    }  # fmt: skip
    cur.execute("SAVEPOINT recipient")
    try:
        key = f"campaign:{campaign.id}:{address}"
        domain = account.from_address.rpartition("@")[2]
        message = mime.build_message(
            sender=(account.display_name, account.from_address),
            to=[address],
            subject=" ".join(subject_t.render(variables).split()),
            text=text_t.render(variables),
            html=html_t.render(variables) if html_t else None,
            message_id=mime.make_message_id(key, domain),
            auto_submitted=None,
            context=f"campaign {campaign.name} recipient {recipient_id}",
        )
        for header, value in unsubscribe.headers(recipient_id, domain).items():
            message[header] = value
        message["Precedence"] = "bulk"
        outbox_id = outbox.enqueue(cur, key=key, account_id=account.id, recipients=[address],
                                   mime=message.as_bytes(), source_type="campaign",
                                   source_id=recipient_id)  # fmt: skip
        cur.execute(SET_QUEUED, (outbox_id, recipient_id))
        cur.execute("RELEASE SAVEPOINT recipient")
        return "queued"
    except (psycopg2.OperationalError, psycopg2.InterfaceError, LookupError):
        raise  # the connection, or the installation's unsubscribe settings: not this recipient
    except (jinja2.TemplateError, ValueError) as exc:  # this recipient fails alone
        cur.execute("ROLLBACK TO SAVEPOINT recipient")
        cur.execute(SET_FAILED, (f"{type(exc).__name__}: {exc}", recipient_id))
        return "failed"


def set_status(campaign_id: int, status: str) -> bool:
    """Pause (from scheduled or sending), resume (paused -> sending) or cancel a campaign;
    False when it is not in a state to do so."""
    allowed = {
        "paused": ["scheduled", "sending"],
        "sending": ["paused"],
        "cancelled": ["draft", "scheduled", "sending", "paused"],
        "scheduled": ["draft"],
    }[status]
    with db.transaction() as cur:
        cur.execute(SET_STATUS + " RETURNING id", (status, campaign_id, allowed))
        return cur.fetchone() is not None


def summary(cur, campaign_id: int) -> dict[str, int]:
    """The recipients per status: queued by the outbox's status, skipped by reason."""
    cur.execute(SUMMARY, (campaign_id,))
    out: Counter[str] = Counter()
    for status, reason, mail_status, n in cur.fetchall():
        out[
            f"{status}:{reason}" if reason else f"{status}:{mail_status}" if mail_status else status
        ] += n
    return dict(sorted(out.items()))
