"""Routing a batch of a run's rendered letters: by mail (an outbox message with the archived
PDF, queued in the same transaction as the letter's status) or on paper with the reason."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
from email_validator import EmailNotValidError, validate_email

from erpmail.core import archive, db
from erpmail.core.progress import Progress
from erpmail.documents.runs import SET_FAILED, DocumentKind, Run, load_run

if TYPE_CHECKING:  # signing pulls in cryptography: imported where a letter is built
    from erpmail.documents.signing import Signatures

# Letters per routing transaction (each letter in its own savepoint).
ROUTE_CHUNK = 100

log = logging.getLogger(__name__)

TO_ROUTE = """
SELECT l.id, l.pdf_path, p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.batch = %s AND l.status = 'archived'
 ORDER BY p.number, l.id"""
SET_PAPER = """
UPDATE erp.letters SET status = 'paper', paper_reason = %s, recipient = %s, updated_at = now()
 WHERE id = %s AND status = 'archived'"""
SET_RELEASED = """
UPDATE erp.letters SET status = 'released', outbox_id = %s, recipient = %s, updated_at = now()
 WHERE id = %s AND status = 'archived'"""
# A letter whose message already went (dispatcher quicker than us) takes the message's state.
FOLLOW_OUTBOX = """
UPDATE erp.letters l SET status = CASE o.status WHEN 'sent' THEN 'sent' ELSE 'failed' END,
       error = CASE WHEN o.status <> 'sent' THEN erp.outbox_failure_reason(o.id) END
  FROM mail.outbox o
 WHERE o.id = l.outbox_id AND l.id = %s AND o.status IN ('sent', 'bounced', 'failed', 'cancelled')"""
# The addresses a letter may go to: a recipient fixed when the letter was generated (a
# document on demand: the address the ERP named, or its document's contact), else the contact
# of the kind's role, then the partner. An address blocked after its hard bounces
# (mail.address_health) counts as blocked too.
ADDRESSES = """
SELECT p.email,
       p.email_blocked OR EXISTS (
           SELECT 1 FROM mail.address_health h
            WHERE h.address = lower(trim(coalesce(l.recipient, c.email, p.email)))
              AND h.blocked_at IS NOT NULL),
       coalesce(l.recipient, c.email)
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN LATERAL (
       SELECT c.email FROM erp.contacts c
        WHERE c.partner_id = p.id AND c.role = %(role)s AND coalesce(c.email, '') <> ''
        ORDER BY c.id LIMIT 1) c ON true
 WHERE l.id = %(letter_id)s"""


@dataclass(frozen=True)
class Route:
    """Where a letter goes: an address, or paper with the reason (erp.letters.paper_reason)."""

    address: str | None
    paper_reason: str | None = None


def choose_route(
    *,
    sends_email: bool,
    partner_email: str | None,
    email_blocked: bool,
    contact_email: str | None = None,
) -> Route:
    """Mail to the contact's address, else the partner's; paper when the level is paper only,
    the partner's e-mail is blocked (that holds for its contacts too), there is no address,
    or the address is not valid (syntax only, no DNS)."""
    if not sends_email:
        return Route(None, "paper_only")
    if email_blocked:
        return Route(None, "blocked")
    address = (contact_email or partner_email or "").strip()
    if not address:
        return Route(None, "no_address")
    try:
        normalized = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return Route(address, "invalid_address")
    return Route(normalized)


def route_for(cur: psycopg2.extensions.cursor, kind: DocumentKind, letter_id: int) -> Route:
    """``choose_route`` for a stored letter."""
    cur.execute(ADDRESSES, {"role": kind.contact_role, "letter_id": letter_id})
    partner_email, blocked, contact_email = cur.fetchone()
    return choose_route(
        sends_email=kind.sends_email(cur, letter_id),
        partner_email=partner_email,
        email_blocked=blocked,
        contact_email=contact_email,
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _letter_message(
    cur: psycopg2.extensions.cursor,
    run: Run,
    letter_id: int,
    number: str,
    pdf_path: str,
    address: str,
    context: Any,
    senders: dict[str, Any],
    signatures: Signatures | None = None,
) -> tuple[str, int, bytes]:
    """The letter's mail: (outbox key, account id, MIME bytes) with the archived PDF attached,
    signed where ``mail.signing_rules`` or the run's user say so (``signing.Signatures``, one
    per batch; None: a new one). A refused signature raises: nothing is queued for it."""
    from erpmail.documents import mime, signing, templates
    from erpmail.outbound import accounts

    if isinstance(context, Exception):
        raise context
    rendered = templates.default().render_letter(context)
    sender = context.sender or context.company.email
    if sender not in senders:
        senders[sender] = accounts.select_account(cur, sender)
    account = senders[sender]
    key = f"{run.kind}:run-{run.id}:letter-{letter_id}"
    message = mime.build_message(
        sender=(context.sender_name or account.display_name, sender),
        to=[address],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        # a kind may attach files of its own (documents on demand: one per document)
        attachments=context.extra.get("attachments")
        or [
            mime.Attachment(
                # named from the subject; build_message makes it a safe file name
                filename=f"{rendered.subject}.pdf",
                data=archive.read(pdf_path),
            )
        ],
        inline_images=rendered.signature.images if rendered.signature else (),
        message_id=mime.make_message_id(key, _domain(account.from_address)),
        reply_to=context.extra.get("reply_address") or None,
        context=f"letter {letter_id} partner {number}",
    )
    if signatures is None:
        signatures = signing.Signatures()
    data = signatures.message_bytes(
        cur, message, document=run.kind, account=account.name, user=(run.params or {}).get("user")
    )
    return key, account.id, data


def route_batch(
    run_id: int, batch: int, kind: DocumentKind, *, chunk_size: int = ROUTE_CHUNK
) -> dict[str, int]:
    """Route the batch's ``archived`` letters: an outbox message with the PDF (``released``),
    queued in the same transaction as the status change, or ``paper`` with the reason.

    The outbox key is derived from run and letter, so a rerun queues nothing new. A letter
    whose message cannot be built is ``failed`` alone (its savepoint rolled back). A dry run
    routes nothing.
    """
    from erpmail.documents import signing
    from erpmail.outbound import outbox

    counts: Counter[str] = Counter()
    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            run = load_run(cur, run_id)
            if run.dry_run:
                log.info("run %s is a dry run: nothing routed", run_id)
                return {}
            cur.execute(TO_ROUTE, (run_id, batch))
            todo = cur.fetchall()
        progress = Progress(
            f"run {run_id} batch {batch}: routed", len(todo), unit="letters", log=log
        )
        senders: dict[str, Any] = {}
        signatures = signing.Signatures()  # each signer's PKCS#12 read once per batch
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            # one commit per chunk: each letter and its outbox row still commit together
            with db.transaction(conn) as cur:
                contexts = kind.contexts(cur, run, [letter_id for letter_id, *_ in chunk])
                for letter_id, pdf_path, number in chunk:
                    cur.execute("SAVEPOINT letter")
                    try:
                        route = route_for(cur, kind, letter_id)
                        if route.paper_reason:
                            cur.execute(SET_PAPER, (route.paper_reason, route.address, letter_id))
                            counts[f"paper_{route.paper_reason}"] += 1
                        else:
                            context = contexts.get(letter_id) or LookupError("no letter context")
                            key, account_id, message = _letter_message(
                                cur,
                                run,
                                letter_id,
                                number,
                                pdf_path,
                                route.address,
                                context,
                                senders,
                                signatures,
                            )
                            outbox_id = outbox.enqueue(
                                cur,
                                key=key,
                                account_id=account_id,
                                recipients=[route.address],
                                mime=message,
                                source_type="letter",
                                source_id=letter_id,
                            )
                            cur.execute(SET_RELEASED, (outbox_id, route.address, letter_id))
                            cur.execute(FOLLOW_OUTBOX, (letter_id,))
                            counts["released"] += 1
                        cur.execute("RELEASE SAVEPOINT letter")
                    except (psycopg2.OperationalError, psycopg2.InterfaceError):
                        raise  # the connection is gone: the task fails and its retry resumes
                    except Exception as exc:  # this letter fails alone
                        error = (
                            f"letter {letter_id} (partner {number}): {type(exc).__name__}: {exc}"
                        )
                        log.warning("failed: %s", error)
                        cur.execute("ROLLBACK TO SAVEPOINT letter")
                        cur.execute(SET_FAILED, (error, letter_id))
                        counts["failed"] += 1
                    progress.add()
    finally:
        conn.close()
    log.info("run %s batch %s routed: %s", run_id, batch, dict(counts) or "nothing to route")
    return dict(counts)
