"""Shared fixtures: a fresh PostgreSQL database per test, and Airflow on a temp home.

Airflow reads its configuration at import, so the environment is set here, before any
test module imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from erpmail.core import airflow_home

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="erpmail-airflow-")
os.environ.update(airflow_home.settings(_AIRFLOW_HOME), AIRFLOW__CORE__UNIT_TEST_MODE="True")
# Code under test must never reach a developer's own configured database.
for _var in ("AIRFLOW_CONN_ERP_DB", "ERPMAIL_DB_URL"):
    os.environ.pop(_var, None)

pytest_plugins = [
    "tests.servers.fixtures",
    "tests.mailaccounts",
    "tests.partners",
    "tests.airflowapi",
]

TEST_DB_URL = os.environ.get("ERPMAIL_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(TEST_DB_URL)
    conn.autocommit = True
    return conn


def _url_for(dbname: str) -> str:
    return urlsplit(TEST_DB_URL)._replace(path=f"/{dbname}").geturl()


def _create_database(name: str, template: str | None = None) -> None:
    # identifiers cannot be bound parameters; names here are generated, never user input
    conn = _admin()
    try:
        with conn.cursor() as cur:
            suffix = f" TEMPLATE {template}" if template else ""
            cur.execute(f"CREATE DATABASE {name}{suffix}")
    finally:
        conn.close()


def _drop_database(name: str) -> None:
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        conn.close()


def _template(name: str, seed_partners: int | None) -> Iterator[str]:
    from erpmail import seed

    _create_database(name)
    seed.prepare(_url_for(name), partners=seed_partners or 0)
    try:
        yield name
    finally:
        _drop_database(name)


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """A database with every migration applied, cloned by each test."""
    yield from _template(f"erpmail_tpl_{os.getpid()}", None)


@pytest.fixture(scope="session")
def seeded_template() -> Iterator[str]:
    """A migrated database holding ``erpmail seed --partners 200 --seed 1``."""
    yield from _template(f"erpmail_seeded_{os.getpid()}", 200)


def _fresh_db(template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"erpmail_t_{uuid.uuid4().hex[:12]}"
    _create_database(name, template)
    url = _url_for(name)
    monkeypatch.setenv("ERPMAIL_DB_URL", url)
    try:
        yield url
    finally:
        _drop_database(name)


@pytest.fixture
def db_url(migrated_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, migrated, empty database for this test; also set as ``ERPMAIL_DB_URL``."""
    yield from _fresh_db(migrated_template, monkeypatch)


@pytest.fixture
def seeded_db_url(seeded_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new database with the 200 seeded partners; also set as ``ERPMAIL_DB_URL``."""
    yield from _fresh_db(seeded_template, monkeypatch)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection to ``db_url``."""
    conn = psycopg2.connect(db_url)
    yield conn
    conn.close()


@pytest.fixture
def seeded_db(seeded_db_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection to ``seeded_db_url``."""
    conn = psycopg2.connect(seeded_db_url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's SQLite metadata under the temp ``AIRFLOW_HOME``, migrated once per session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    from airflow import settings

    settings.configure_orm()
    return _AIRFLOW_HOME
