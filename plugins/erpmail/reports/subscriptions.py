"""Report subscriptions (``mail.report_subscriptions``): the due ones run, their mail with
the PDF and/or CSV queued through the outbox under a key per subscription and due time (a
rerun queues nothing twice), and the next time computed from the cron schedule in the
company's time zone."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from erpmail.core import db
from erpmail.documents import mime, pdf, templates
from erpmail.outbound import accounts, outbox
from erpmail.reports import catalog, output

log = logging.getLogger(__name__)

DUE = """
SELECT id FROM mail.report_subscriptions
 WHERE enabled AND next_run_at <= %s ORDER BY next_run_at, id"""
SUBSCRIPTION = """
SELECT s.id, s.name, s.report, s.params, s.company, s.recipients, s.formats, s.language,
       s.schedule, s.send_empty, s.account, s.next_run_at, c.timezone, c.email
  FROM mail.report_subscriptions s JOIN erp.companies c ON c.code = s.company
 WHERE s.id = %s FOR UPDATE OF s SKIP LOCKED"""
DONE = """
UPDATE mail.report_subscriptions SET last_run_at = %s, next_run_at = %s, last_outcome = %s
 WHERE id = %s"""


@dataclass(frozen=True)
class Subscription:
    """A row of ``mail.report_subscriptions`` with its company's time zone and address."""

    id: int
    name: str
    report: str
    params: dict
    company: str
    recipients: list[str]
    formats: list[str]
    language: str
    schedule: str
    send_empty: bool
    account: str | None
    next_run_at: datetime
    timezone: str
    company_email: str | None


def next_time(schedule: str, after: datetime, timezone: str) -> datetime:
    """The first time after ``after`` the cron ``schedule`` names, on the company's clock."""
    if not croniter.is_valid(schedule):
        raise ValueError(f"schedule {schedule!r} is no cron expression")
    local = after.astimezone(ZoneInfo(timezone))
    return croniter(schedule, local).get_next(datetime).astimezone(UTC)


def run_due(*, now: datetime | None = None) -> dict[str, str]:
    """Run every enabled subscription that is due; the outcome per subscription name."""
    now = now or datetime.now(UTC)
    with db.transaction() as cur:
        cur.execute(DUE, (now,))
        ids = [i for (i,) in cur.fetchall()]
    outcomes = {}
    for subscription_id in ids:
        name, outcome = run_one(subscription_id, now=now)
        if name:
            outcomes[name] = outcome
    return outcomes


def run_one(subscription_id: int, *, now: datetime) -> tuple[str | None, str]:
    """Run one subscription (skipped when another run holds it); its name and outcome. A
    report that fails is recorded as the outcome and scheduled again; the others go on."""
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            cur.execute(SUBSCRIPTION, (subscription_id,))
            row = cur.fetchone()
            if row is None:
                return None, "held by another run"
            sub = Subscription(*row)
            try:
                outcome = _mail(conn, cur, sub, now)
            except (LookupError, ValueError) as exc:
                outcome = f"failed: {exc}"
                log.warning("report subscription %s failed: %s", sub.name, exc)
            cur.execute(DONE, (now, next_time(sub.schedule, now, sub.timezone), outcome, sub.id))
        return sub.name, outcome
    finally:
        conn.close()


def _mail(conn, cur, sub: Subscription, now: datetime) -> str:
    found = catalog.report(sub.report)
    values = catalog.bound(found, sub.name, sub.params, sub.company)
    when = now.astimezone(ZoneInfo(sub.timezone))
    # a connection of its own: the named cursor's transaction ends with the report
    report_conn = db.connect()
    try:
        result = output.run(report_conn, found, values, formats=sub.formats,
                            subtitle=f"{sub.company}, {when:%Y-%m-%d %H:%M}")  # fmt: skip
    finally:
        report_conn.close()
    if not result.rows and not sub.send_empty:
        return "no rows: not sent"
    files = []
    if result.pdf_html is not None and result.rows:
        files.append(mime.Attachment(f"{found.name}.pdf", pdf.render_single(result.pdf_html)))
    if result.csv is not None and result.rows:
        files.append(mime.Attachment(f"{found.name}.csv", result.csv, "text/csv"))
    rendered = templates.default().render_document(
        "report",
        {"title": found.title, "subscription": sub.name, "rows": result.rows, "when": when,
         "formats": sub.formats, "truncated": result.truncated, "pdf_rows": output.PDF_ROWS},
        language=sub.language,
    )  # fmt: skip
    account = _account(cur, sub)
    key = f"report:{sub.id}:{sub.next_run_at.isoformat()}"
    message = mime.build_message(
        sender=(account.display_name, account.from_address),
        to=list(sub.recipients),
        subject=rendered.subject,
        text=rendered.text,
        attachments=files,
        message_id=mime.make_message_id(key, account.from_address.rpartition("@")[2]),
        context=f"report subscription {sub.name}",
    )
    outbox_id = outbox.enqueue(cur, key=key, account_id=account.id, recipients=list(sub.recipients),
                               mime=message.as_bytes(), source_type="notification",
                               source_id=sub.id)  # fmt: skip
    log.info("report %s: %d rows mailed to %s (outbox %s)", sub.name, result.rows,
             ", ".join(sub.recipients), outbox_id)  # fmt: skip
    return f"{result.rows} rows queued (outbox {outbox_id})"


def _account(cur, sub: Subscription) -> Any:
    if sub.account:
        return accounts.account_by_name(cur, sub.account)
    if sub.company_email:
        return accounts.select_account(cur, sub.company_email)
    default = next((a for a in accounts.list_accounts(cur) if a.is_default), None)
    if default is None:
        raise LookupError(f"subscription {sub.name}: no account to send from")
    return default
