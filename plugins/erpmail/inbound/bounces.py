"""Bounces: delivery status notifications recognised in received mail and recorded against
the message they are for.

Recognised: RFC 3464 reports (``multipart/report; report-type=delivery-status``: Postfix,
Exchange, most servers) and the plain-text forms of Exim, qmail and older Exchange (the
failed address and the remote server's reply in the text). A bounce is matched to our
message by the token of its bounce address (``outbound.envelope``), else by our Message-ID in
the returned headers; one for nothing of ours is filed like any mail. An automatic reply
(RFC 3834 ``Auto-Submitted: auto-replied``, ``X-Autoreply``, out of office) is no bounce.

A hard bounce (5.x.x) turns the message ``bounced`` (its letter ``failed`` with the
diagnostic) and counts against the address, which is blocked after the company's limit
(``erp.companies.block_after_unknown_user`` for 5.1.x, ``block_after_hard_bounces`` else);
routing then puts the next letter to it on paper (reason ``blocked``). A soft bounce
(4.x.x) only counts, and mail from the address later resets that count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser

from erpmail.inbound import linking, parse
from erpmail.outbound.envelope import token_in

HEAD_BYTES = 64 * 1024
MAX_BOUNCE_BYTES = 2 * 1024 * 1024  # larger mail is no bounce worth parsing
MAX_DIAGNOSTIC_CHARS = 500
DEFAULT_LIMITS = (1, 3)  # unknown user, other hard bounces

_LOOKS_LIKE = re.compile(
    rb"(?im)^(content-type:[^\r\n]*report-type=\"?delivery-status"
    rb"|from:[^\r\n]*(mailer-daemon|postmaster|mail delivery)"
    rb"|subject:[^\r\n]*(undeliver|delivery status notification|delivery failure|returned mail"
    rb"|failure notice|mail delivery failed|nicht zustellbar|unzustellbar))"
)
_AUTO_REPLY = re.compile(
    rb"(?im)^(auto-submitted:\s*auto-replied|x-autoreply:|x-autorespond:"
    rb"|subject:[^\r\n]*(out of office|abwesenheit|automatic reply|automatische antwort))"
)
_ADDRESS = re.compile(r"<?([A-Za-z0-9._%+=~!#$&'*/?^`{|}-]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+)>?")
_REPLY = re.compile(r"\b([45][0-9][0-9])[ -]+(?:#?([45]\.[0-9]{1,3}\.[0-9]{1,3})\b)?([^\r\n]*)")
_STATUS = re.compile(r"\b([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
# where the plain-text forms list the failed addresses, and where the returned copy starts
_FAILED_LIST = re.compile(
    r"(?i)(following address(?:es|\(es\))? failed|wasn't able to deliver your message to the"
    r" following addresses|delivery has failed to these recipients|could not be delivered to"
    r"|undeliverable to|delivery to the following recipients? failed)"
)
_RETURNED_COPY = re.compile(
    r"(?im)^(-+ ?(below this line is a copy|original message|this is a copy)|------ this is a"
    r" copy|original message headers:|content-type: message/rfc822)"
)
_TEMPORARY = re.compile(r"(?i)(temporary (?:error|failure|problem)|will be retried|delayed)")
_HOST = re.compile(r"(?i)(?:host|generating server:|remote host)\s+([A-Za-z0-9.-]+\.[A-Za-z]{2,})")

MATCH_BY_TOKEN = """
SELECT id, message_id, recipients, source_type, source_id, status FROM mail.outbox
 WHERE envelope_from LIKE 'bounce+%%' AND substr(envelope_from, 8, 16) = %s"""
MATCH_BY_MESSAGE_ID = """
SELECT id, message_id, recipients, source_type, source_id, status FROM mail.outbox
 WHERE message_id = %s"""
LETTER_PARTNER = "SELECT partner_id FROM erp.letters WHERE id = %s"
INSERT_BOUNCE = """
INSERT INTO mail.bounces (mail_id, outbox_id, recipient, kind, status_code, diagnostic,
    remote_mta, matched_by)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (mail_id, recipient) DO NOTHING
RETURNING id"""
MARK_BOUNCED = """
UPDATE mail.outbox SET status = 'bounced', last_error = %s
 WHERE id = %s AND status = 'sent'
RETURNING source_type, source_id"""
# the finished run's summary counts its bounced letters as they come back
COUNT_IN_RUN_SUMMARY = """
UPDATE erp.runs r SET summary = jsonb_set(r.summary, '{bounced}',
       to_jsonb(coalesce((r.summary->>'bounced')::int, 0) + 1))
  FROM erp.letters l WHERE l.id = %s AND r.id = l.run_id AND r.summary IS NOT NULL"""
LIMITS = """
SELECT c.block_after_unknown_user, c.block_after_hard_bounces
  FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id JOIN erp.companies c ON c.code = r.company
 WHERE l.outbox_id = %s"""
COUNT = """
INSERT INTO mail.address_health AS h (address, hard_bounces, unknown_user, soft_bounces,
    last_bounce_at)
VALUES (%(address)s, %(hard)s, %(unknown)s, %(soft)s, now())
ON CONFLICT (address) DO UPDATE
   SET hard_bounces = h.hard_bounces + EXCLUDED.hard_bounces,
       unknown_user = h.unknown_user + EXCLUDED.unknown_user,
       soft_bounces = h.soft_bounces + EXCLUDED.soft_bounces,
       last_bounce_at = now()
RETURNING hard_bounces, unknown_user, blocked_at"""
BLOCK = """
UPDATE mail.address_health SET blocked_at = now(), blocked_reason = %s
 WHERE address = %s AND blocked_at IS NULL"""
# a mail from the address is good news: its soft bounces are forgiven
RESET_SOFT = """
UPDATE mail.address_health SET soft_bounces = 0
 WHERE address = ANY(%s) AND soft_bounces > 0"""


@dataclass(frozen=True)
class Failure:
    """One recipient the report says could not be reached (or not yet)."""

    recipient: str
    kind: str  # hard (5.x.x) or soft (4.x.x)
    status: str | None
    diagnostic: str
    remote_mta: str | None


@dataclass(frozen=True)
class Bounce:
    """A delivery status notification: its failures, and what names our message."""

    failures: tuple[Failure, ...]
    original_message_id: str | None
    token: str | None


def is_auto_reply(raw: bytes) -> bool:
    """Whether the mail is an automatic reply (out of office and the like), by its headers."""
    return _AUTO_REPLY.search(_head(raw)) is not None


def detect(raw: bytes) -> Bounce | None:
    """The bounce this mail is, or None (a cheap look at the headers first)."""
    head = _head(raw)
    if len(raw) > MAX_BOUNCE_BYTES or not _LOOKS_LIKE.search(head) or _AUTO_REPLY.search(head):
        return None
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
    except Exception:  # a mail the parser cannot read is no report we can use
        return None
    failures: list[Failure] = []
    original = None
    returned_text = ""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            failures += _report_failures(part)
        elif ctype == "message/rfc822" and original is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                original = _message_id(inner[0].get("Message-ID"))
                returned_text += str(inner[0].get("Return-Path", ""))
        elif ctype in ("text/rfc822-headers", "text/plain") and original is None:
            text = _text(part)
            if ctype == "text/rfc822-headers" or _RETURNED_COPY.search(text):
                headers = _returned_headers(text)
                original = _message_id(headers.get("Message-ID"))
                returned_text += str(headers.get("Return-Path", ""))
    if not failures:
        failures = _plain_failures(msg)
    if not failures:
        return None
    token = token_in(" ".join(str(msg.get(h, "")) for h in ("To", "Delivered-To", "X-Original-To")))
    return Bounce(tuple(failures), original, token or token_in(returned_text))


def record(cur, mail_id: int, bounce: Bounce) -> int:
    """Record the bounce against our message, if it is for one; how many failures were ours."""
    matched_by, row = None, None
    if bounce.token:
        cur.execute(MATCH_BY_TOKEN, (bounce.token,))
        row, matched_by = cur.fetchone(), "verp"
    if row is None and bounce.original_message_id:
        cur.execute(MATCH_BY_MESSAGE_ID, (bounce.original_message_id,))
        row, matched_by = cur.fetchone(), "message_id"
    if row is None:
        return 0
    outbox_id, _, recipients, source_type, source_id, _ = row
    if source_type == "letter":  # the bounce is filed with the letter and its partner
        cur.execute(LETTER_PARTNER, (source_id,))
        partner = cur.fetchone()
        links = [linking.Link("letter", source_id, "reply")]
        links += [linking.Link("partner", partner[0], "reply")] if partner else []
        linking.store_links(cur, mail_id, links)
        cur.execute(linking.MARK_LINKED, (mail_id,))
    ours = {r.lower(): r for r in recipients}
    recorded = 0
    for failure in bounce.failures:
        address = failure.recipient.lower()
        if address not in ours:
            if len(ours) != 1:
                continue
            address = next(iter(ours))  # forwarded on their side: the one address we sent to
        cur.execute(
            INSERT_BOUNCE,
            (
                mail_id,
                outbox_id,
                address,
                failure.kind,
                failure.status,
                failure.diagnostic,
                failure.remote_mta,
                matched_by,
            ),
        )
        if cur.fetchone() is None:
            continue  # this mail was recorded before (a retried import)
        recorded += 1
        _count(cur, outbox_id, address, failure)
    return recorded


def file_received(cur, mails: list[tuple[int, bytes | None, str | None]]) -> int:
    """For newly stored mails ``(row id, raw bytes or None, sender)``: record the bounces among
    them, forgive the others' senders their soft bounces; how many failures were ours."""
    recorded, senders = 0, []
    for mail_id, raw, sender in mails:
        bounce = detect(raw) if raw is not None else None
        if bounce is not None:
            recorded += record(cur, mail_id, bounce)
        elif sender and (raw is None or not is_auto_reply(raw)):
            senders.append(sender)
    forgive(cur, senders)
    return recorded


def forgive(cur, senders: list[str]) -> None:
    """Mail from these addresses arrived: their soft bounces no longer count."""
    senders = sorted({s.lower() for s in senders if s})
    if senders:
        cur.execute(RESET_SOFT, (senders,))


def _count(cur, outbox_id: int, address: str, failure: Failure) -> None:
    hard = failure.kind == "hard"
    unknown = hard and (failure.status or "").startswith("5.1.")
    if hard:
        reason = f"bounced: {failure.status or ''} {failure.diagnostic}".strip()
        cur.execute(MARK_BOUNCED, (parse.clean_text(reason, MAX_DIAGNOSTIC_CHARS), outbox_id))
        turned = cur.fetchone()
        if turned is not None and turned[0] == "letter":
            cur.execute(COUNT_IN_RUN_SUMMARY, (turned[1],))
    cur.execute(
        COUNT,
        {"address": address, "hard": int(hard), "unknown": int(unknown), "soft": int(not hard)},
    )
    hard_bounces, unknown_users, blocked_at = cur.fetchone()
    if blocked_at is not None or not hard:
        return
    cur.execute(LIMITS, (outbox_id,))
    limits = cur.fetchone() or DEFAULT_LIMITS
    if unknown_users >= limits[0] or hard_bounces >= limits[1]:
        cur.execute(
            BLOCK,
            (
                parse.clean_text(
                    f"{hard_bounces} hard bounce(s), the last {failure.status or ''}: "
                    f"{failure.diagnostic}",
                    MAX_DIAGNOSTIC_CHARS,
                ),
                address,
            ),
        )


def _head(raw: bytes) -> bytes:
    head = raw[:HEAD_BYTES]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return head if end < 0 else head[:end]


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return str(part.get_payload() or "")


def _message_id(value) -> str | None:
    return parse.normalize_message_id(str(value)) if value else None


def _returned_headers(text: str) -> Message:
    match = _RETURNED_COPY.search(text)
    start = text.find("\n", match.start()) + 1 if match else 0
    return HeaderParser().parsestr(text[start:].lstrip("\r\n"), headersonly=True)


def _report_failures(part: Message) -> list[Failure]:
    blocks = part.get_payload()
    if not isinstance(blocks, list):  # not split into field groups: parse them here
        text = str(blocks or "")
        blocks = [HeaderParser().parsestr(b) for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    remote_default = None
    failures = []
    for block in blocks:
        if block.get("Reporting-MTA") and not block.get("Final-Recipient"):
            remote_default = _after_type(block.get("Reporting-MTA"))
            continue
        recipient = _after_type(block.get("Final-Recipient") or block.get("Original-Recipient"))
        action = str(block.get("Action", "")).strip().lower()
        if not recipient or action not in ("failed", "delayed"):
            continue
        status = _STATUS.search(str(block.get("Status", "")))
        diagnostic = _after_type(block.get("Diagnostic-Code")) or ""
        code = status.group(1) if status else None
        kind = _kind(code, diagnostic, action == "delayed")
        failures.append(
            Failure(
                _ADDRESS.search(recipient).group(1) if _ADDRESS.search(recipient) else recipient,
                kind,
                code,
                parse.clean_text(" ".join(diagnostic.split()), MAX_DIAGNOSTIC_CHARS),
                _after_type(block.get("Remote-MTA")) or remote_default,
            )
        )
    return failures


def _plain_failures(msg: Message) -> list[Failure]:
    text = ""
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            text = _text(part)
            break
    listed = _FAILED_LIST.search(text)
    if not listed:
        return []
    copy = _RETURNED_COPY.search(text, listed.end())
    section = text[listed.end() : copy.start() if copy else len(text)]
    temporary = _TEMPORARY.search(text[: copy.start() if copy else len(text)]) is not None
    host = _HOST.search(section)
    failures: list[Failure] = []
    seen: set[str] = set()
    for found in _ADDRESS.finditer(section):
        address = found.group(1)
        if address.lower() in seen:
            continue
        reply = _REPLY.search(section, found.end())
        if reply is None:
            continue
        seen.add(address.lower())
        code = reply.group(2)
        diagnostic = " ".join(f"{reply.group(1)} {code or ''} {reply.group(3)}".split())
        diagnostic = diagnostic.rstrip("'\"")
        failures.append(
            Failure(
                address,
                _kind(code or reply.group(1), diagnostic, temporary),
                code,
                parse.clean_text(diagnostic, MAX_DIAGNOSTIC_CHARS),
                host.group(1) if host else None,
            )
        )
    return failures


def _kind(code: str | None, diagnostic: str, delayed: bool) -> str:
    if code:
        return "soft" if code.startswith("4") else "hard"
    reply = _REPLY.search(diagnostic)
    if reply:
        return "soft" if reply.group(1).startswith("4") else "hard"
    return "soft" if delayed else "hard"


def _after_type(value) -> str | None:
    """``rfc822; a@b`` -> ``a@b``; ``dns; mx.example`` -> ``mx.example``."""
    if not value:
        return None
    text = " ".join(str(value).split())
    return text.split(";", 1)[1].strip() if ";" in text else text
