"""Test messages in the outbox: MIME built like erpmail's, queued in bulk, and read back."""

from __future__ import annotations

from collections import Counter

import psycopg2.extensions

from erpmail.core.db import transaction
from erpmail.documents.mime import Attachment, build_message, make_message_id
from erpmail.outbound import outbox
from erpmail.outbound.accounts import Account


def make_mime(
    key: str, to: list[str], *, subject: str = "Zahlungserinnerung", pdf: bytes = b""
) -> bytes:
    """MIME bytes for a test message with a Message-ID derived from ``key``."""
    attachments = [Attachment(f"{key}.pdf", pdf, "application/pdf")] if pdf else []
    msg = build_message(
        sender=("Buchhaltung", "ar@demo.example"),
        to=to,
        subject=subject,
        text=f"Sehr geehrte Damen und Herren,\n\nNachricht {key}.\n",
        attachments=attachments,
        message_id=make_message_id(key, "demo.example"),
    )
    return msg.as_bytes()


def enqueue_many(
    conn: psycopg2.extensions.connection,
    account: Account,
    n: int,
    *,
    prefix: str = "m",
    to=None,
    header_to=None,
    **kw,
) -> list[int]:
    """Queue ``n`` messages; ``to`` is the envelope, ``header_to`` the To header (else ``to``)."""
    ids = []
    with transaction(conn) as cur:
        for i in range(n):
            key = f"{prefix}{i}"
            rcpts = to or [f"p{i}@customer.example"]
            ids.append(
                outbox.enqueue(
                    cur,
                    key=key,
                    account_id=account.id,
                    recipients=rcpts,
                    mime=make_mime(key, header_to or rcpts, **kw),
                    source_type="manual",
                )
            )
    return ids


def outbox_row(conn: psycopg2.extensions.connection, outbox_id: int) -> dict:
    """The ``mail.outbox`` row as a dict."""
    with transaction(conn, dict_rows=True) as cur:
        cur.execute("SELECT * FROM mail.outbox WHERE id = %s", (outbox_id,))
        return dict(cur.fetchone())


def outbox_recipients(conn: psycopg2.extensions.connection, outbox_id: int) -> dict[str, tuple]:
    """Per recipient address of a message: (status, SMTP code, SMTP reply)."""
    with transaction(conn) as cur:
        cur.execute(
            "SELECT address, status, smtp_code, smtp_reply FROM mail.outbox_recipients"
            " WHERE outbox_id = %s",
            (outbox_id,),
        )
        return {a: (s, c, r) for a, s, c, r in cur.fetchall()}


def outbox_statuses(conn: psycopg2.extensions.connection) -> Counter:
    """How many messages are in each status."""
    with transaction(conn) as cur:
        cur.execute("SELECT status FROM mail.outbox")
        return Counter(r[0] for r in cur.fetchall())
