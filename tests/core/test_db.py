import psycopg2
import pytest

from erpmail.core import db as database


def test_migrate_twice_applies_nothing_the_second_time(db):
    assert db_versions(db) == [p.stem.split("_", 1)[0] for p in database.migration_files()]
    assert database.migrate(db) == []
    assert db_versions(db) == [p.stem.split("_", 1)[0] for p in database.migration_files()]


def test_migrate_on_an_empty_database_records_every_file(db_url, migrated_template):
    import tests.conftest as c

    name = "erpmail_empty_" + db_url.rsplit("_", 1)[-1]
    c._create_database(name)
    try:
        conn = psycopg2.connect(c._url_for(name))
        applied = database.migrate(conn)
        assert applied == [p.name for p in database.migration_files()]
        assert database.migrate(conn) == []
        conn.close()
    finally:
        c._drop_database(name)


def test_unknown_status_is_refused_by_postgres(db):
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.accounts (name, conn_id, from_address) VALUES ('a', 'smtp_a', 'a@example.com') RETURNING id"
        )
        account = cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.CheckViolation, match="outbox_status_check"):
            cur.execute(
                "INSERT INTO mail.outbox (key, message_id, account_id, source_type, envelope_from,"
                " recipients, mime, status) VALUES ('k', '<m@x>', %s, 'manual', 'a@example.com',"
                " '{b@example.com}', 'x', 'bogus')",
                (account,),
            )
    db.rollback()


@pytest.mark.parametrize(
    "column,value,constraint",
    [
        ("currency", "eur", "open_items_currency_check"),
        ("doc_type", "bill", "open_items_check"),
        ("open_amount", 200, "open_items_check1"),
    ],
)
def test_open_item_constraints(db, column, value, constraint):
    row = {"currency": "EUR", "doc_type": "invoice", "open_amount": 100, column: value}
    with db.cursor() as cur:
        cur.execute("INSERT INTO erp.companies (code, name) VALUES ('C', 'C GmbH')")
        cur.execute(
            "INSERT INTO erp.partners (company, number, name) VALUES ('C', '0001', 'P') RETURNING id"
        )
        partner = cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.CheckViolation, match=constraint):
            cur.execute(
                "INSERT INTO erp.open_items (partner_id, doc_number, doc_type, doc_date, due_date,"
                " amount, open_amount, currency) VALUES (%s, 'R1', %s, '2026-01-01', '2026-01-15',"
                " 100, %s, %s)",
                (partner, row["doc_type"], row["open_amount"], row["currency"]),
            )
    db.rollback()


def test_transaction_rolls_back_on_error(db_url):
    with database.transaction() as cur:
        cur.execute("INSERT INTO erp.companies (code, name) VALUES ('A', 'A')")
    with pytest.raises(psycopg2.errors.UniqueViolation), database.transaction() as cur:
        cur.execute("INSERT INTO erp.companies (code, name) VALUES ('B', 'B')")
        cur.execute("INSERT INTO erp.companies (code, name) VALUES ('A', 'again')")
    with database.transaction(dict_rows=True) as cur:
        cur.execute("SELECT code, name FROM erp.companies ORDER BY code")
        assert cur.fetchall() == [{"code": "A", "name": "A"}]


def test_database_url_prefers_airflow_connection_over_env(monkeypatch):
    monkeypatch.setenv("ERPMAIL_DB_URL", "postgresql://env@h/db")
    assert database.database_url() == "postgresql://env@h/db"
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DB", "postgres://conn@h:5432/erp")
    assert database.database_url() == "postgresql://conn@h:5432/erp"


def db_versions(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM public.erpmail_migrations ORDER BY version")
        return [r[0] for r in cur.fetchall()]


def test_database_url_from_a_json_airflow_connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ERP_DB",
        '{"conn_type": "postgres", "host": "db.example.com", "port": 5433, "login": "erp",'
        ' "password": "s3cret", "schema": "erp"}',
    )
    assert database.database_url() == "postgresql://erp:s3cret@db.example.com:5433/erp"


def test_no_embedded_server_on_a_celery_worker(monkeypatch):
    for var in ("ERPMAIL_DB_URL", "AIRFLOW_CONN_ERP_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    started = []
    monkeypatch.setattr(database, "embedded_url", lambda: started.append(1) or "postgresql://x")
    with pytest.raises(RuntimeError, match="AIRFLOW_CONN_ERP_DB") as refused:
        database.database_url()
    assert "CeleryExecutor" in str(refused.value) and not started
