"""The customer portal's mails, configured per customer group (``erp.portal_settings``,
``erp.portal_events``, ``erp.portal_texts``): who gets each one, from which address, in which
language, with the group's own subject and body (Jinja, sandboxed: the texts are data).

Events ``portal_<event>`` with the customer as the event's partner. Payload: ``contact_email``
(and ``contact_name``) of the customer's contact the mail is for; ``old_contact_email`` /
``new_contact_email`` for a change of main contact; ``initiated_by`` (``customer`` or not)
for an access request; ``username``; ``reset_link`` and ``expires_at`` for a password reset.
The reset link goes into the mail and nowhere else: no archived copy, and the event keeps
no trace of it.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from erpmail.documents import mime
from erpmail.events.journal import Event
from erpmail.events.rules import DEFAULT_LANGUAGE
from erpmail.outbound import accounts, outbox

EVENTS = (
    "access_request",
    "validation_confirmed",
    "new_main_contact",
    "old_main_contact",
    "forgot_username",
    "password_reset",
)
SECRET_EVENTS = ("password_reset",)

SETTINGS = """
SELECT p.number, p.name, p.language, g.code, s.access_requests_to, s.mail_from,
       pe.enabled, pe.notify_customer
  FROM erp.partners p
  LEFT JOIN erp.customer_groups g ON g.code = p.customer_group
  LEFT JOIN erp.portal_settings s ON s.customer_group = g.code
  LEFT JOIN erp.portal_events pe ON pe.customer_group = g.code AND pe.event = %s
 WHERE p.id = %s"""
CONTACT_LANGUAGE = """
SELECT c.language FROM erp.contacts c
 WHERE c.partner_id = %s AND lower(c.email) = lower(%s) AND c.language IS NOT NULL
 ORDER BY c.id LIMIT 1"""
TEXTS = """
SELECT language, subject, body FROM erp.portal_texts
 WHERE customer_group = %s AND event = %s AND language = ANY(%s)"""
SECRET = "UPDATE mail.outbox SET secret = true WHERE id = %s"

_texts = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


def handle(cur, event: Event) -> tuple[str, str | None]:
    """Queue the portal mail of ``event`` per its customer group; the outcome and detail."""
    name = event.type.removeprefix("portal_")
    if name not in EVENTS:
        raise ValueError(
            f"event {event.id}: {event.type!r} is no portal event ({', '.join(EVENTS)})"
        )
    if event.partner_id is None:
        raise ValueError(f"event {event.id} ({event.type}): no partner (the customer)")
    cur.execute(SETTINGS, (name, event.partner_id))
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"event {event.id}: partner {event.partner_id} not in erp.partners")
    number, partner_name, partner_language, group, requests_to, mail_from, on, notify = row
    if group is None or mail_from is None:
        return "skipped", f"partner {number}: its customer group has no portal settings"
    if not on:
        return "skipped", f"portal mail {name} is off for customer group {group}"
    to = _recipients(event, name, requests_to, notify)
    language = _language(cur, event, partner_language)
    subject, body = _text(cur, event, group, name, language)
    variables = {
        **event.payload,
        "partner": {"number": number, "name": partner_name},
        "customer_group": group,
        "event": name,
    }
    account = accounts.select_account(cur, mail_from)
    queued = []
    for address in to:
        key = f"portal:{event.id}:{address.lower()}"
        message = mime.build_message(
            sender=(account.display_name, mail_from),
            to=[address],
            subject=" ".join(_render(event, "subject", subject, variables).split()),
            text=_render(event, "body", body, variables),
            message_id=mime.make_message_id(key, mail_from.rpartition("@")[2]),
            auto_submitted="auto-generated",
            context=f"event {event.id} ({event.type})",
        )
        outbox_id = outbox.enqueue(
            cur,
            key=key,
            account_id=account.id,
            recipients=[address],
            mime=message.as_bytes(),
            source_type="notification",
            source_id=event.id,
        )
        if name in SECRET_EVENTS:
            cur.execute(SECRET, (outbox_id,))
        queued.append(address)
    return "queued", f"{name} ({language}) to {', '.join(queued)}"


def _recipients(event: Event, name: str, requests_to: str | None, notify: bool) -> list[str]:
    if name == "access_request":
        if not requests_to:
            raise ValueError(
                f"event {event.id}: the customer group has no 'send access requests to'"
            )
        to = [requests_to]
        if notify and event.payload.get("initiated_by") != "customer":
            to.append(event.field("contact_email"))
        return to
    field = {"new_main_contact": "new_contact_email", "old_main_contact": "old_contact_email"}
    address = event.field(field.get(name, "contact_email"))
    if name == "password_reset":
        event.field("reset_link")
        event.field("expires_at")
    return [address]


def _language(cur, event: Event, partner_language: str | None) -> str:
    """The contact's language, else the partner's, else German."""
    contact = event.payload.get("contact_email") or event.payload.get("new_contact_email")
    if contact:
        cur.execute(CONTACT_LANGUAGE, (event.partner_id, contact))
        row = cur.fetchone()
        if row:
            return row[0]
    return partner_language or DEFAULT_LANGUAGE


def _text(cur, event: Event, group: str, name: str, language: str) -> tuple[str, str]:
    cur.execute(TEXTS, (group, name, [language, DEFAULT_LANGUAGE]))
    texts = {lang: (subject, body) for lang, subject, body in cur.fetchall()}
    found = texts.get(language) or texts.get(DEFAULT_LANGUAGE)
    if found is None:
        raise ValueError(
            f"event {event.id}: customer group {group} has no text for {name} in {language} "
            f"nor in {DEFAULT_LANGUAGE} (erp.portal_texts)"
        )
    return found


def _render(event: Event, part: str, source: str, variables: dict[str, Any]) -> str:
    try:
        return _texts.from_string(source).render(variables)
    except TemplateError as exc:  # names the variable, never its value
        raise ValueError(
            f"event {event.id} ({event.type}): the portal text's {part}: {exc}"
        ) from None
