"""Fixtures of the document tests: seeded books for the pipeline and for the statements."""

from __future__ import annotations

from datetime import timedelta

import psycopg2.extensions
import pytest

from erpmail import seed
from erpmail.core import db
from tests.documents.pipeline import KEY, STATEMENTS_KEY
from tests.mailaccounts import company_account
from tests.partners import statement_partners


@pytest.fixture
def ledger(
    db: psycopg2.extensions.connection, tmp_path, monkeypatch
) -> psycopg2.extensions.connection:
    """30 seeded partners as of ten days before KEY, an SMTP account, a temp archive."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    seed.seed(db, partners=30, seed=1, as_of=KEY - timedelta(days=10))
    with db.cursor() as cur:
        company_account(cur)
    db.commit()
    return db


@pytest.fixture
def statements_db(seeded_db, tmp_path, monkeypatch):
    """Seeded data, partners 000001-000003 rebuilt by hand, a sending account, a temp store."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    with db.transaction(seeded_db) as cur:
        statement_partners(cur, STATEMENTS_KEY)
        company_account(cur)
    return seeded_db
