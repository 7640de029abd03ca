"""Fixtures of the import tests: the document store and the Dovecot mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import mailcorpus


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """The document store under a temp dir (its parent is watched for stray writes)."""
    root = tmp_path / "store" / "archive"
    root.mkdir(parents=True)
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{root}")
    return root


@pytest.fixture
def mailbox(imap_user, monkeypatch):
    """The Dovecot user behind the Airflow connection ``imap_test``."""
    mailcorpus.imap_conn(monkeypatch, "imap_test", imap_user)
    return imap_user


@pytest.fixture
def make_location(seeded_db, imap_user, monkeypatch, store):
    """A ticket location answering from a default account; columns as keywords."""
    mailcorpus.imap_conn(monkeypatch, "imap_tickets", imap_user)
    account = mailcorpus.add_account(seeded_db)

    def make(**columns) -> int:
        values = {
            "ticket_enabled": True,
            "ticket_queue": "support",
            "autoreply_enabled": True,
            "autoreply_account_id": account,
            **columns,
        }
        return mailcorpus.add_location(seeded_db, "support", "imap_tickets", **values)

    return make


@pytest.fixture
def location(make_location) -> int:
    """The autoreply from the templates, in the default language."""
    return make_location()
