"""Archived mail for the retention tests: import locations, policies, mails with their
files in the store, the rows and files left, and a purge as the tests run it."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from pathlib import Path

import pendulum

from erpmail.core import archive, inventory
from erpmail.core.db import transaction
from erpmail.retention import policies, purge

AS_OF = date(2026, 3, 15)


def add_location(conn, name: str) -> int:
    with transaction(conn) as cur:
        cur.execute(
            "INSERT INTO mail.import_locations (name, conn_id) VALUES (%s, %s) RETURNING id",
            (name, f"imap_{name}"),
        )
        return cur.fetchone()[0]


def add_policy(conn, location: str | None, keep_days, legal=0, invoice=0) -> None:
    with transaction(conn) as cur:
        policies.set_policy(
            cur,
            location=location,
            keep_days=keep_days,
            legal_min_days=legal,
            invoice_legal_min_days=invoice,
        )


def archived_at(days_before: int, as_of: date = AS_OF) -> datetime:
    """Noon in Berlin, ``days_before`` days before ``as_of``."""
    day = as_of - timedelta(days=days_before)
    return pendulum.datetime(day.year, day.month, day.day, 12, tz=purge.TIMEZONE)


_seq = iter(range(1, 10**9))


def add_mail(
    conn,
    location_id: int | None,
    days_before: int,
    *,
    direction: str = "in",
    hold: bool = False,
    attachments: int = 0,
    invoice_link: bool = False,
    as_of: date = AS_OF,
) -> int:
    """One archived mail with its .eml (and attachment files) in the store; its id."""
    n = next(_seq)
    body = f"Subject: mail {n}\r\n\r\nbody {n}\r\n".encode()
    folder = f"loc{location_id}" if location_id else "sent"
    eml = archive.store(f"mail/{folder}/{n:06d}.eml", body)
    with transaction(conn) as cur:
        cur.execute(
            """INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,
                   size_bytes, legal_hold, archived_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (
                direction,
                location_id,
                f"<m{n}@test>",
                hashlib.sha256(body).hexdigest(),
                eml,
                len(body),
                hold,
                archived_at(days_before, as_of),
            ),
        )
        mid = cur.fetchone()[0]
        for i in range(attachments):
            data = f"%PDF attachment {n}/{i}".encode()
            key = archive.store(f"mail/{folder}/{n:06d}/att{i}.pdf", data)
            cur.execute(
                """INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes,
                       sha256, path) VALUES (%s, %s, 'application/pdf', %s, %s, %s)""",
                (mid, f"att{i}.pdf", len(data), hashlib.sha256(data).hexdigest(), key),
            )
        if invoice_link:
            cur.execute(
                """INSERT INTO mail.message_links (message_id, entity_type, entity_id, method)
                   VALUES (%s, 'open_item', 1, 'manual')""",
                (mid,),
            )
    return mid


def mail_ids(conn) -> set[int]:
    with transaction(conn) as cur:
        cur.execute("SELECT id FROM mail.messages")
        return {r[0] for r in cur.fetchall()}


def audit_rows(conn) -> list[dict]:
    with transaction(conn, dict_rows=True) as cur:
        cur.execute("SELECT actor, action, subject, details FROM mail.audit_log ORDER BY id")
        return cur.fetchall()


def assert_store_matches_rows(conn, store: Path) -> None:
    """The archive check (of ``store``) is clean: every row's files exist, every stored file
    is named by a row, nothing pending."""
    assert archive.local_root() == store
    report = inventory.check(conn)
    assert report.clean and report.journaled == [], str(report)


def purge_now(conn, **kw):
    kw.setdefault("as_of", AS_OF)
    kw.setdefault("dry_run", False)
    kw.setdefault("actor", "tester")
    return purge.run(conn, **kw)


def bulk_mails(conn, location_id: int, n: int, days_before: int, with_files: bool) -> None:
    """``n`` old mails fast; with files, every mail's .eml and every third one's attachment."""
    with transaction(conn) as cur:
        cur.execute(
            """INSERT INTO mail.messages (direction, location_id, message_id, sha256, eml_path,
                   size_bytes, archived_at)
               SELECT 'in', %(loc)s, '<bulk' || g || '@test>', md5(g::text) || md5(g::text),
                      'mail/bulk/' || lpad(g::text, 7, '0') || '.eml', 20,
                      %(at)s - g * interval '1 second'
               FROM generate_series(1, %(n)s) g""",
            {"loc": location_id, "n": n, "at": archived_at(days_before)},
        )
        cur.execute(
            """INSERT INTO mail.attachments (message_id, filename, content_type, size_bytes,
                   sha256, path)
               SELECT id, 'a.pdf', 'application/pdf', 5, sha256, replace(eml_path, '.eml', '.pdf')
               FROM mail.messages WHERE eml_path LIKE 'mail/bulk/%' AND id % 3 = 0"""
        )
        if with_files:
            cur.execute(
                "SELECT eml_path FROM mail.messages WHERE eml_path LIKE 'mail/bulk/%' "
                "UNION ALL SELECT path FROM mail.attachments WHERE path LIKE 'mail/bulk/%'"
            )
            for (key,) in cur.fetchall():
                archive.store(key, b"x" * 20)
