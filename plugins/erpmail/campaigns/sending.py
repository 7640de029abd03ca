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

from erpmail.campaigns import recipients, unsubscribe
from erpmail.core import db
from erpmail.core.progress import Progress
from erpmail.documents import mailmerge, mime, templates
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
SET_QUEUED = """
UPDATE mail.campaign_recipients r SET status = 'queued', outbox_id = v.outbox_id
  FROM unnest(%s::bigint[], %s::bigint[]) AS v(outbox_id, id) WHERE r.id = v.id"""
SET_FAILED = """
UPDATE mail.campaign_recipients r SET status = 'failed', reason = v.reason
  FROM unnest(%s::text[], %s::bigint[]) AS v(reason, id) WHERE r.id = v.id"""
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
                if not todo:
                    cur.execute(SET_STATUS, ("done", campaign_id, ["sending"]))
                    break
                counts.update(_queue_batch(cur, campaign, account, compiled, todo))
                progress.add(len(todo))
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


def _queue_batch(cur, campaign: Any, account: Any, compiled: dict, todo: list[tuple]) -> Counter:
    """Queue a batch's recipients in one go (a mail merge per language); a recipient whose
    text cannot be rendered or whose message cannot be built fails alone, with the reason."""
    domain = account.from_address.rpartition("@")[2]
    list_headers = unsubscribe.headers(domain)
    merges: dict[tuple[bool, int], mailmerge.MergeTemplate] = {}  # one Date per batch
    queued: list[outbox.Queued] = []
    failed: list[tuple[str, int]] = []
    for row in todo:
        recipient_id, address = row[:2]
        try:
            subject, text, html = _render(compiled, row)
            token = unsubscribe.token(recipient_id)
            shape = (html is not None, len(token))  # what a merge template fixes
            merge = merges.get(shape)
            if merge is None:
                merge = merges[shape] = mailmerge.MergeTemplate(
                    sender=(account.display_name, account.from_address),
                    html=html is not None,
                    fixed={"List-Unsubscribe-Post": list_headers["List-Unsubscribe-Post"],
                           "Precedence": "bulk"},
                    tokened={"List-Unsubscribe": list_headers["List-Unsubscribe"]},
                    token_length=len(token),
                )  # fmt: skip
            key = f"campaign:{campaign.id}:{address}"
            merged = merge.merge(
                to=address, subject=" ".join(subject.split()), text=text, html=html,
                message_id=mime.make_message_id(key, domain), token=token,
                context=f"campaign {campaign.name} recipient {recipient_id}",
            )  # fmt: skip
        except (jinja2.TemplateError, ValueError) as exc:  # this recipient fails alone
            failed.append((f"{type(exc).__name__}: {exc}", recipient_id))
            continue
        queued.append(
            outbox.Queued(
                key,
                account.id,
                [address],
                merged.mime,
                "campaign",
                recipient_id,
                merged.message_id,
                merged.subject,
                campaign.keep_copies,
            )
        )
    ids = outbox.enqueue_many(cur, queued)
    cur.execute(SET_QUEUED, (ids, [q.source_id for q in queued]))
    if failed:
        cur.execute(SET_FAILED, ([r for r, _ in failed], [i for _, i in failed]))
    return Counter(queued=len(queued), failed=len(failed))


def _render(compiled: dict, row: tuple) -> tuple[str, str, str | None]:
    """The recipient's subject, text and HTML in its language (else German, else the one)."""
    _id, _address, language, number, name, street, postcode, city, country, contact = row
    subject_t, html_t, text_t = (
        compiled.get(language) or compiled.get("de") or next(iter(compiled.values()))
    )
    variables = {
        "partner": {"number": number, "name": name, "street": street, "postcode": postcode,
                    "city": city, "country": country},
        "contact": {"name": contact} if contact else None,
        "language": language,
    }  # fmt: skip
    html = html_t.render(variables) if html_t else None
    return subject_t.render(variables), text_t.render(variables), html


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
