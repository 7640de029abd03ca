"""The mail the import sends by itself: the autoreply to a sender. (Unlinked and failed mail
become ``mail_unlinked`` events, sent as a digest by ``event_mail``.)

The autoresponder answers a sender at most once per location and day
(``mail.autoreply_log``), never automated mail, and goes out through the outbox in the
import's own transaction, so a rolled-back import sends nothing. It is rendered from
``include/templates/autoreply/`` in the location's language and sent as text and HTML, from
the location's account or the default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date

from erpmail.documents import mime, templates
from erpmail.inbound.tickets import Ticket
from erpmail.outbound import accounts, outbox

log = logging.getLogger(__name__)

NO_REPLY_LOCAL_PARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply")
BULK_PRECEDENCE = ("bulk", "list", "junk", "auto_reply")

CLAIM_AUTOREPLY = """
INSERT INTO mail.autoreply_log (location_id, sender, day) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING sender"""
SET_AUTOREPLY_OUTBOX = """
UPDATE mail.autoreply_log SET outbox_id = %s WHERE location_id = %s AND sender = %s AND day = %s"""


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
    """An admin's override text with {TICKET}, {SUBJECT} and {BETREFF} filled in; other braces
    kept."""
    return (
        template.replace("{TICKET}", ticket)
        .replace("{SUBJECT}", subject)
        .replace("{BETREFF}", subject)
    )


def _sender(cur, account_id: int | None) -> accounts.Account | None:
    """The account to send from: ``account_id``, else the default account (None if none)."""
    if account_id is not None:
        try:
            return accounts.get_account(cur, account_id)
        except KeyError:
            return None
    return next((a for a in accounts.list_accounts(cur) if a.is_default), None)


def _own_addresses(cur) -> list[str]:
    own: list[str] = []
    for account in accounts.list_accounts(cur):
        own.append(account.from_address.lower())
        own.extend(a.lower() for a in account.sender_addresses if "@" in a)
    return own


def _from(account: accounts.Account) -> str | tuple[str, str]:
    return (
        (account.display_name, account.from_address)
        if account.display_name
        else account.from_address
    )


def _domain(account: accounts.Account) -> str:
    return account.from_address.rsplit("@", 1)[1]


def autoreply(
    cur,
    *,
    location_id: int,
    account_id: int,
    sender: str | None,
    headers: Mapping[str, str],
    subject: str,
    message_id: str | None,
    references: Sequence[str],
    ticket: Ticket | None,
    day: date,
    language: str | None = None,
    subject_template: str | None = None,
    body_template: str | None = None,
) -> int | None:
    """Queue the autoreply for one received mail; the outbox id, or None when not answered.

    The text and HTML come from the ``autoreply`` templates in ``language`` (None or missing:
    the default language) with ``TICKET`` (empty without a ticket), ``SUBJECT`` and
    ``BETREFF``. A location's ``autoreply_subject``/``autoreply_body`` (``subject_template``,
    ``body_template``), when set, are the admin's override and are filled with ``fill``; an
    overriding body is sent as plain text alone, since the template's HTML would say otherwise.
    """
    reason = no_reply_reason(sender, headers, _own_addresses(cur))
    if reason:
        log.info("no autoreply to %s: %s", sender, reason)
        return None
    sender = sender.lower()
    cur.execute(CLAIM_AUTOREPLY, (location_id, sender, day))
    if cur.fetchone() is None:
        return None  # answered today already
    account = _sender(cur, account_id)
    if account is None:
        raise ValueError(f"location {location_id}: autoreply account {account_id} does not exist")
    number = ticket.number if ticket else ""
    subject = " ".join(subject.split())  # a folded or multi-line subject stays one line
    rendered = templates.default().render_document(
        "autoreply",
        {"TICKET": number, "SUBJECT": subject, "BETREFF": subject},
        language=language,
        sender=account.from_address,
    )
    title = rendered.subject
    if subject_template:
        title = fill(subject_template, ticket=number, subject=subject)
    text, html, images = rendered.text, rendered.html, _images(rendered)
    if body_template:
        text, html, images = fill(body_template, ticket=number, subject=subject), None, ()
    key = f"autoreply:{location_id}:{sender}:{day.isoformat()}"
    msg = mime.build_message(
        sender=_from(account),
        to=[sender],
        subject=" ".join(title.split())[:900],
        text=text,
        html=html,
        inline_images=images,
        message_id=mime.make_message_id(key, _domain(account)),
        auto_submitted="auto-replied",
        in_reply_to=message_id,
        references=[*references, *([message_id] if message_id else [])][-20:],
        context=f"autoreply to {sender}",
    )
    outbox_id = outbox.enqueue(
        cur,
        key=key,
        account_id=account.id,
        recipients=[sender],
        mime=msg.as_bytes(),
        source_type="autoreply",
        source_id=ticket.case_id if ticket else None,
    )
    cur.execute(SET_AUTOREPLY_OUTBOX, (outbox_id, location_id, sender, day))
    return outbox_id


def _images(rendered: templates.Rendered) -> tuple[templates.InlineImage, ...]:
    return rendered.signature.images if rendered.signature and rendered.html else ()
