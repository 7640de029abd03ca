"""One-click unsubscribe (RFC 8058) and its ``mailto:`` twin: a signed token per campaign
and recipient in both, and the suppression it writes (``mail.suppressions``), scope all
marketing. Transactional mail (letters, notices) never carries these headers and is never
held back by a suppression.

The key is ``ERPMAIL_UNSUBSCRIBE_SECRET``; the link's base ``ERPMAIL_PUBLIC_URL`` (where
the Airflow API server, and so ``/erpmail``, is reached from outside).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

SECRET_ENV = "ERPMAIL_UNSUBSCRIBE_SECRET"
PUBLIC_URL_ENV = "ERPMAIL_PUBLIC_URL"
MAILTO_LOCAL = "unsubscribe"
TOKEN = re.compile(r"^([0-9]{1,18})-([0-9a-f]{32})$")

SUPPRESS = """
INSERT INTO mail.suppressions (address, scope, company, source, campaign_id)
SELECT r.address, 'marketing', '', %s, r.campaign_id
  FROM mail.campaign_recipients r WHERE r.id = %s
ON CONFLICT DO NOTHING"""
RECIPIENT = "SELECT address FROM mail.campaign_recipients WHERE id = %s"


class BadToken(ValueError):
    """A token that is malformed or not signed with our key."""


def _key() -> bytes:
    secret = os.environ.get(SECRET_ENV, "")
    if len(secret) < 16:
        raise LookupError(f"{SECRET_ENV} is not set (16 characters at least): no unsubscribe links")
    return secret.encode()


def token(recipient_id: int) -> str:
    """The recipient's token: its id and a MAC over it, in lower-case hex (mail systems may
    fold the case of an address's local part)."""
    return f"{recipient_id}-{_mac(recipient_id)}"


def _mac(recipient_id: int) -> str:
    body = f"unsubscribe:{recipient_id}".encode()
    return hmac.new(_key(), body, hashlib.sha256).hexdigest()[:32]


def recipient_of(value: str) -> int:
    """The recipient id a token names; BadToken when it is not ours."""
    found = TOKEN.match((value or "").strip().lower())
    if not found:
        raise BadToken("malformed unsubscribe token")
    recipient_id = int(found.group(1))
    if not hmac.compare_digest(found.group(2), _mac(recipient_id)):
        raise BadToken("unsubscribe token not signed by this installation")
    return recipient_id


def headers(domain: str) -> dict[str, str]:
    """``List-Unsubscribe`` (HTTPS one-click and mailto) and ``List-Unsubscribe-Post``, with
    ``{token}`` where the recipient's :func:`token` goes."""
    base = os.environ.get(PUBLIC_URL_ENV, "").rstrip("/")
    if not base.startswith("https://"):
        raise LookupError(f"{PUBLIC_URL_ENV} is not an https:// URL: no one-click unsubscribe")
    return {
        "List-Unsubscribe": f"<{base}/erpmail/unsubscribe/{{token}}>, "
        f"<mailto:{MAILTO_LOCAL}+{{token}}@{domain}?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def suppress(cur, recipient_id: int, source: str) -> str | None:
    """Suppress the recipient's address for all marketing; the address (None: no such
    recipient). Again is no change."""
    cur.execute(SUPPRESS, (source, recipient_id))
    cur.execute(RECIPIENT, (recipient_id,))
    row = cur.fetchone()
    return row[0] if row else None


def mailto_token(addresses: list[str]) -> str | None:
    """The token of an ``unsubscribe+<token>@...`` address among ``addresses``, if any."""
    for address in addresses:
        local = (address or "").strip().lower().partition("@")[0]
        if local.startswith(MAILTO_LOCAL + "+"):
            return (address or "").strip().partition("@")[0].split("+", 1)[1]
    return None


def by_mail(cur, addresses: list[str]) -> str | None:
    """Execute the ``mailto:`` unsubscribe a received mail was sent to (the import calls
    this for every new mail); the address suppressed, None when it is no such mail or its
    token is not ours."""
    value = mailto_token(addresses)
    if value is None:
        return None
    try:
        return suppress(cur, recipient_of(value), "mailto")
    except (BadToken, LookupError):
        return None
