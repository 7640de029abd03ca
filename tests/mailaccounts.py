"""Sending accounts in tests: a ``mail.accounts`` row and its Airflow connection pointing at a
test SMTP server (``tests/servers``). The fixture is registered in ``tests/conftest.py``."""

from __future__ import annotations

import json

import psycopg2.extensions
import pytest

from erpmail.core import db
from erpmail.outbound import accounts
from erpmail.outbound.smtp import SmtpHook

SENDER = "buchhaltung@muster-handels.example.com"  # the seeded company's accounting address
COMPANY_CONN_ID = "smtp_company"


def smtp_connection(
    monkeypatch: pytest.MonkeyPatch,
    server,
    conn_id: str = "smtp_test",
    *,
    login: str | None = None,
    password: str | None = None,
    conn_type: str = "smtp",
    **extra,
) -> SmtpHook:
    """Point the Airflow connection ``conn_id`` (of ``conn_type``) at ``server``, trusting its
    CA; a hook for it. ``login``/``password`` replace the server's credentials."""
    user, secret = server.credentials if server.users else (None, None)
    extra.setdefault("ca_file", str(server.ca_file))
    conn = {
        "conn_type": conn_type,
        "host": server.host,
        "port": server.port,
        "login": login if login is not None else user,
        "password": password if password is not None else secret,
        "extra": extra,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return SmtpHook(conn_id, account="Buchhaltung")


def add_account(
    conn: psycopg2.extensions.connection,
    name: str = "ar",
    *,
    conn_id: str = "smtp_ar",
    interval: int = 0,
    **kw,
) -> accounts.Account:
    """An account ``<name>@demo.example`` sending every ``interval`` seconds (0: unthrottled)."""
    with db.transaction(conn) as cur:
        return accounts.create_account(
            cur,
            name=name,
            conn_id=conn_id,
            from_address=kw.pop("from_address", f"{name}@demo.example"),
            send_interval_seconds=interval,
            **kw,
        )


def account_on(
    conn: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch, server, name="ar", **kw
) -> accounts.Account:
    """``add_account`` whose connection ``smtp_<name>`` points at ``server`` (``extra``: its
    connection extras)."""
    smtp_connection(monkeypatch, server, f"smtp_{name}", **kw.pop("extra", {}))
    return add_account(conn, name, conn_id=f"smtp_{name}", **kw)


def company_account(cur, conn_id: str = COMPANY_CONN_ID) -> accounts.Account:
    """The seeded company's default account: ``SENDER``, any address of its domain, unthrottled."""
    return accounts.create_account(
        cur,
        name="accounting",
        conn_id=conn_id,
        from_address=SENDER,
        display_name="Muster Handels",
        sender_addresses=["muster-handels.example.com"],
        is_default=True,
        send_interval_seconds=0,
    )


@pytest.fixture
def company_sender(seeded_db, smtp_server, monkeypatch) -> accounts.Account:
    """``company_account`` in ``seeded_db``, sending through ``smtp_server`` over verified
    STARTTLS."""
    smtp_connection(monkeypatch, smtp_server, COMPANY_CONN_ID, security="starttls")
    with db.transaction(seeded_db) as cur:
        return company_account(cur)
