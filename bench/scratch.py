"""Scratch databases and a throwaway Airflow home for the benchmarks.

A benchmark works in its own PostgreSQL database, created on the server the tests use
(``ERPMAIL_TEST_DB_URL``), migrated, and dropped at the end whatever happened. Importing this
module puts ``plugins/`` and the repository root on ``sys.path``, so a benchmark run as
``.venv/bin/python bench/<name>.py`` imports ``erpmail`` and ``tests`` after it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "plugins"), str(ROOT)) if p not in sys.path]

ADMIN_URL = os.environ.get("ERPMAIL_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str) -> str:
    """The URL of database ``name`` on the benchmark server."""
    return urlsplit(ADMIN_URL)._replace(path=f"/{name}").geturl()


def _admin(sql: str) -> None:
    conn = psycopg2.connect(ADMIN_URL)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def scratch_database(
    prefix: str = "erpmail_bench", *, seed_partners: int = 0, clone_of: str | None = None
) -> Iterator[str]:
    """A new database's URL, dropped on exit: migrated (and seeded with ``seed_partners``
    partners, seed 1), or with ``clone_of`` (a URL from here) a copy of that database."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    # identifiers cannot be bound parameters: both names are generated here, never input
    template = f" TEMPLATE {urlsplit(clone_of).path.lstrip('/')}" if clone_of else ""
    _admin(f"CREATE DATABASE {name}{template}")
    url = database_url(name)
    try:
        if not clone_of:
            from erpmail import seed

            seed.prepare(url, partners=seed_partners)
        yield url
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def airflow_home() -> str:
    """Point Airflow at a new temp home (SQLite metadata, this repository's DAGs); call before
    anything imports airflow, which reads its configuration at import. Returns the home."""
    from erpmail.core import airflow_home as settings_of

    home = tempfile.mkdtemp(prefix="erpmail-bench-airflow-")
    os.environ.update(settings_of.settings(home), AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING")
    return home
