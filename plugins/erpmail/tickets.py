"""Tickets (``erp.cases``) from received mail, the autoresponder, and the unlinked-mail alert.

A location with tickets on opens a case for a new thread and joins replies to theirs (by
References or by the ticket number in the subject). The autoresponder answers a sender at
most once per location and day (``mail.autoreply_log``), never automated mail, and goes out
through the outbox in the import's own transaction, so a rolled-back import sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from erpmail import mime, outbox

log = logging.getLogger(__name__)

AUTOREPLY_DEFAULT_SUBJECT = "[{TICKET}] Re: {SUBJECT}"
AUTOREPLY_DEFAULT_SUBJECT_NO_TICKET = "Re: {SUBJECT}"
NO_REPLY_LOCAL_PARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply")
BULK_PRECEDENCE = ("bulk", "list", "junk", "auto_reply")

NEXT_TICKET_NUMBER = "SELECT 'T' || lpad(nextval('erp.ticket_number_seq')::text, 6, '0')"
INSERT_CASE = """
INSERT INTO erp.cases (number, subject, queue, partner_id, project_id)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (number) DO NOTHING
RETURNING id"""
CASE_NUMBER = "SELECT number FROM erp.cases WHERE id = %s"
CLAIM_AUTOREPLY = """
INSERT INTO mail.autoreply_log (location_id, sender, day) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING sender"""
SET_AUTOREPLY_OUTBOX = """
UPDATE mail.autoreply_log SET outbox_id = %s WHERE location_id = %s AND sender = %s AND day = %s"""
ACCOUNT = "SELECT id, from_address, display_name FROM mail.accounts WHERE id = %s"
DEFAULT_ACCOUNT = "SELECT id, from_address, display_name FROM mail.accounts WHERE is_default"
OWN_ADDRESSES = "SELECT lower(from_address) FROM mail.accounts"


@dataclass(frozen=True)
class Ticket:
    """The case a mail was filed under; ``opened`` when this mail started it."""

    case_id: int
    number: str
    opened: bool


def open_or_join(
    cur,
    *,
    case_ids: Sequence[int],
    subject: str,
    queue: str,
    project_id: int | None,
    partner_id: int | None,
) -> Ticket:
    """Join the first case the mail already links to, or open a new one in the queue."""
    if case_ids:
        cur.execute(CASE_NUMBER, (case_ids[0],))
        return Ticket(case_ids[0], cur.fetchone()[0], False)
    while True:  # a number an operator typed in by hand is skipped, not reused
        cur.execute(NEXT_TICKET_NUMBER)
        number = cur.fetchone()[0]
        cur.execute(
            INSERT_CASE, (number, (subject or "(no subject)")[:500], queue, partner_id, project_id)
        )
        row = cur.fetchone()
        if row:
            return Ticket(row[0], number, True)


def no_reply_reason(
    sender: str | None, headers: Mapping[str, str], own: Sequence[str] = ()
) -> str | None:
    """Why a mail must not be answered automatically, or None when it may be."""
    if not sender or "@" not in sender:
        return "no usable sender address"
    local = sender.rsplit("@", 1)[0].lower()
    if local in NO_REPLY_LOCAL_PARTS or local.startswith(("mailer-daemon", "postmaster")):
        return f"sender {sender} is a mail system address"
    if sender.lower() in own:
        return "sender is one of our own accounts"
    auto = headers.get("auto-submitted", "").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    if headers.get("precedence", "").strip().lower() in BULK_PRECEDENCE:
        return f"Precedence: {headers['precedence'].strip()}"
    for name in ("list-id", "list-unsubscribe"):
        if name in headers:
            return f"mailing list ({name})"
    for name in ("x-autoreply", "x-autorespond"):
        if name in headers:
            return f"automatic reply ({name})"
    if headers.get("x-auto-response-suppress", "").strip().lower() in ("all", "autoreply", "oof"):
        return "X-Auto-Response-Suppress"
    if headers.get("return-path", "").strip() == "<>":
        return "empty Return-Path (a bounce)"
    return None


def fill(template: str, *, ticket: str, subject: str) -> str:
    """The autoreply text with {TICKET}, {SUBJECT} and {BETREFF} filled in; other braces kept."""
    return (
        template.replace("{TICKET}", ticket)
        .replace("{SUBJECT}", subject)
        .replace("{BETREFF}", subject)
    )


def _account(cur, account_id: int | None) -> tuple[int, str, str] | None:
    if account_id is not None:
        cur.execute(ACCOUNT, (account_id,))
    else:
        cur.execute(DEFAULT_ACCOUNT)
    return cur.fetchone()


def autoreply(
    cur,
    *,
    location_id: int,
    account_id: int,
    subject_template: str | None,
    body_template: str,
    sender: str | None,
    headers: Mapping[str, str],
    subject: str,
    message_id: str | None,
    references: Sequence[str],
    ticket: Ticket | None,
    day: date,
) -> int | None:
    """Queue the autoreply for one received mail; the outbox id, or None when not answered."""
    cur.execute(OWN_ADDRESSES)
    own = [row[0] for row in cur.fetchall()]
    reason = no_reply_reason(sender, headers, own)
    if reason:
        log.info("no autoreply to %s: %s", sender, reason)
        return None
    sender = sender.lower()
    cur.execute(CLAIM_AUTOREPLY, (location_id, sender, day))
    if cur.fetchone() is None:
        return None  # answered today already
    account = _account(cur, account_id)
    if account is None:
        raise ValueError(f"location {location_id}: autoreply account {account_id} does not exist")
    acc_id, from_address, display_name = account
    number = ticket.number if ticket else ""
    if subject_template is None:
        subject_template = (
            AUTOREPLY_DEFAULT_SUBJECT if ticket else AUTOREPLY_DEFAULT_SUBJECT_NO_TICKET
        )
    key = f"autoreply:{location_id}:{sender}:{day.isoformat()}"
    domain = from_address.rsplit("@", 1)[1]
    msg = mime.build_message(
        sender=(display_name, from_address) if display_name else from_address,
        to=[sender],
        subject=" ".join(fill(subject_template, ticket=number, subject=subject).split())[:900],
        text=fill(body_template, ticket=number, subject=subject),
        message_id=mime.make_message_id(key, domain),
        auto_submitted="auto-replied",
        in_reply_to=message_id,
        references=[*references, *([message_id] if message_id else [])][-20:],
        context=f"autoreply to {sender}",
    )
    outbox_id = outbox.enqueue(
        cur,
        key=key,
        account_id=acc_id,
        recipients=[sender],
        mime=msg.as_bytes(),
        source_type="autoreply",
        source_id=ticket.case_id if ticket else None,
    )
    cur.execute(SET_AUTOREPLY_OUTBOX, (outbox_id, location_id, sender, day))
    return outbox_id


def notify_unlinked(
    cur,
    *,
    location_id: int,
    location_name: str,
    notify_address: str,
    account_id: int | None,
    mails: Sequence[Mapping[str, object]],
    run_key: str,
) -> int | None:
    """Queue one alert listing unlinked mails (id, date, sender, subject); the outbox id."""
    if not mails:
        return None
    account = _account(cur, account_id)
    if account is None:
        log.warning("location %s: no account to send the unlinked-mail alert from", location_name)
        return None
    acc_id, from_address, display_name = account
    lines = [
        f"{len(mails)} received mail(s) in location {location_name!r} could not be filed "
        "against a partner, project or case. Link them with the DAG link_mail:",
        "",
    ]
    for mail in mails:
        lines.append(
            f"  #{mail['id']}  {mail.get('sent_date') or ''}  {mail.get('from_address') or '?'}"
            f"  {str(mail.get('subject') or '')[:120]}"
        )
    key = f"alert:unlinked:{location_id}:{run_key}"
    msg = mime.build_message(
        sender=(display_name, from_address) if display_name else from_address,
        to=[notify_address],
        subject=f"Unlinked mail in {location_name}: {len(mails)}",
        text="\n".join(lines) + "\n",
        message_id=mime.make_message_id(key, from_address.rsplit("@", 1)[1]),
        auto_submitted="auto-generated",
        context=f"unlinked-mail alert for location {location_name}",
    )
    return outbox.enqueue(
        cur,
        key=key,
        account_id=acc_id,
        recipients=[notify_address],
        mime=msg.as_bytes(),
        source_type="alert",
        source_id=location_id,
    )
