"""erpmail on the real Airflow services, as a team runs it: API server, scheduler, DAG
processor, triggerer and two Celery workers on PostgreSQL and Redis, started from the
settings of ``docker-compose.yaml`` (``tests/e2e/services.py``). Runs go through Airflow's
task supervisor inside Celery's worker processes, never through ``dag.test()``.
"""

from __future__ import annotations

import base64
import email
import html
import json
import os
import secrets
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import httpx
import psycopg2
import pytest

from erpmail import seed
from erpmail.core import archive, db, inventory
from erpmail.inbound.imap import ImapHook
from tests import mailcorpus
from tests.conftest import TEST_DB_URL
from tests.documents.erp_documents import REFERENCES, erp_document
from tests.e2e import services
from tests.inbound import dsns
from tests.mailaccounts import COMPANY_CONN_ID, SENDER, company_account
from tests.mailcorpus import add_location, simple
from tests.servers.smtpd import start_smtpd
from tests.servers.tlsca import openssl_verify, signing_identity

# Enough partners for two render batches (documents.MIN_BATCH_SIZE letters each at least)
# of several render chunks each.
PARTNERS = 350
WORKERS = 2
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("ERPMAIL_SCREENSHOTS", services.ROOT / "var" / "screenshots"))

pytestmark = pytest.mark.timeout(900)


def _admin(sql: str) -> None:
    conn = psycopg2.connect(TEST_DB_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)  # names are generated below, never user input
    finally:
        conn.close()


def _url(database: str) -> str:
    return TEST_DB_URL.rsplit("/", 1)[0] + f"/{database}"


class Deployment:
    """The started services, a REST API v2 client with a token, and the ERP database."""

    def __init__(self, stack: services.Services, token: str, erp_url: str, smtp, imap) -> None:
        self.stack, self.erp_url, self.smtp, self.imap = stack, erp_url, smtp, imap
        self.token = token
        self.api = httpx.Client(
            base_url=stack.site.api_url + "/api/v2",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def rows(self, sql: str, *args) -> list[tuple]:
        with db.transaction(db.connect(self.erp_url)) as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict) -> httpx.Response:
        return self.api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def runs(self, dag_id: str) -> list[dict]:
        found = self.api.get(f"/dags/{dag_id}/dagRuns", params={"limit": 100})
        found.raise_for_status()
        return found.json()["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        found = self.api.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200}
        )
        found.raise_for_status()
        return found.json()["task_instances"]

    def wait(self, what: str, ready, timeout: float = 240, every: float = 2.0, state=None):
        """Poll ``ready()`` until it returns something true; an error naming ``what`` (and
        what ``state()`` says then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.check_running()
            found = ready()
            if found:
                return found
            time.sleep(every)
        logs = "\n\n".join(f"== {p.name}\n{p.tail(15)}" for p in self.stack.processes)
        seen = f"\n{state()}" if state else ""
        raise AssertionError(f"timed out waiting for {what}{seen}\n{logs}")

    def finished_run(self, dag_id: str, run_id: str, timeout: float = 240) -> dict:
        def done():
            run = self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()
            return run if run["state"] in ("success", "failed") else None

        run = self.wait(f"{dag_id} {run_id}", done, timeout)
        if run["state"] != "success":
            failed = [
                (t["task_id"], t["map_index"], t["state"])
                for t in self.task_instances(dag_id, run_id)
                if t["state"] != "success"
            ]
            raise AssertionError(f"{dag_id} {run_id} {run['state']}: {failed}")
        return run


@pytest.fixture(scope="module")
def deployment(tls_ca, dovecot, tmp_path_factory) -> Iterator[Deployment]:
    if not shutil.which("redis-server"):
        pytest.skip("the end-to-end test needs Redis (apt-get install redis-server)")
    tag = uuid.uuid4().hex[:8]
    meta_db, erp_db = f"erpmail_e2e_meta_{tag}", f"erpmail_e2e_erp_{tag}"
    home = tmp_path_factory.mktemp("airflow-e2e")
    smtp = start_smtpd(tls_ca, users={"erpmail": secrets.token_urlsafe(12)}, auth_required=True)
    imap = dovecot.add_user()
    login, password = smtp.credentials
    signer = signing_identity(tls_ca, SENDER)  # the accounting address signs documents
    connections = {
        "AIRFLOW_CONN_PKCS12_E2E": {
            "conn_type": "generic",
            "password": signer.password,
            "extra": {"pkcs12": base64.b64encode(signer.pkcs12).decode()},
        },
        f"AIRFLOW_CONN_{COMPANY_CONN_ID.upper()}": {
            "conn_type": "smtp",
            "host": smtp.host,
            "port": smtp.port,
            "login": login,
            "password": password,
            "extra": {"ca_file": str(smtp.ca_file), "security": "starttls"},
        },
        "AIRFLOW_CONN_IMAP_E2E": {
            "conn_type": "imap",
            "host": imap.host,
            "port": imap.imaps_port,
            "login": imap.name,
            "password": imap.password,
            "extra": {"ca_file": str(imap.ca_file)},
        },
    }
    site = services.Site(
        home=home,
        postgres=TEST_DB_URL,
        databases={"airflow": meta_db, "erpmail": erp_db},
        redis_db=1 + int(tag, 16) % 15,
        secrets={
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW_FERNET_KEY": "",
        },
        extra_env={
            **{name: json.dumps(spec) for name, spec in connections.items()},
            # the test's own document store instead of the compose volume
            "ERPMAIL_ARCHIVE_URL": f"file://{home / 'archive'}",
            # campaigns: the unsubscribe links' key and the address they point at
            "ERPMAIL_UNSUBSCRIBE_SECRET": secrets.token_urlsafe(24),
            "ERPMAIL_PUBLIC_URL": "https://erp.example.com",
            # a Celery queue of this run's own: no other run's workers take its tasks
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"erpmail-e2e-{tag}",
        },
    )
    spec = services.compose()
    stack = services.Services(site, spec)
    _admin(f"CREATE DATABASE {meta_db}")
    _admin(f"CREATE DATABASE {erp_db}")
    try:
        erp_url = _url(erp_db)
        seed.prepare(erp_url, partners=PARTNERS)
        with db.transaction(db.connect(erp_url)) as cur:
            company_account(cur)
        # what airflow-init does: metadata schema, the admin's password, the pools
        stack.run("airflow-apiserver", "db", "migrate")
        env = site.localize(services.service_environment(spec, "airflow-apiserver"))
        admin_password = secrets.token_urlsafe(12)
        passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        passwords.parent.mkdir(parents=True, exist_ok=True)
        passwords.write_text(json.dumps({"admin": admin_password}))
        for name, slots in services.init_pools(spec):
            stack.run("airflow-apiserver", "pools", "set", name, str(slots), "erpmail")
        stack.start("airflow-apiserver", "api-server")
        stack.start("airflow-scheduler", "scheduler")
        stack.start("airflow-dag-processor", "dag-processor")
        stack.start("airflow-triggerer", "triggerer")
        for n in range(1, WORKERS + 1):
            # containers would give each worker its own host name and log-server port
            stack.start(
                "airflow-worker",
                f"worker{n}",
                "--celery-hostname",
                f"e2e-worker{n}@%h",
                AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(services.free_port()),
            )
        token = _wait_for_token(stack, admin_password)
        deployment = Deployment(stack, token, erp_url, smtp, imap)
        deployment.wait(
            "the DAG processor to parse the DAG folder",
            lambda: (
                {d["dag_id"] for d in deployment.api.get("/dags").json().get("dags", [])}
                >= {"dunning_run", "outbox_dispatch", "mailbox_import"}
            ),
            timeout=120,
        )
        yield deployment
    finally:
        stack.stop()
        smtp.stop()
        _admin(f"DROP DATABASE IF EXISTS {meta_db} WITH (FORCE)")
        _admin(f"DROP DATABASE IF EXISTS {erp_db} WITH (FORCE)")


def _wait_for_token(stack: services.Services, password: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stack.check_running()
        try:
            reply = httpx.post(
                stack.site.api_url + "/auth/token",
                json={"username": "admin", "password": password},
                timeout=10,
            )
            if reply.status_code == 201:
                return reply.json()["access_token"]
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError("the API server did not answer in 120 s")


def test_a_route_without_a_token_is_refused(deployment):
    reply = httpx.get(deployment.stack.site.api_url + "/api/v2/dags/dunning_run/dagRuns")
    assert reply.status_code in (401, 403)


def test_bad_conf_is_refused_by_the_param_schema(deployment):
    before = len(deployment.runs("dunning_run"))
    reply = deployment.trigger("dunning_run", {"key_date": "2026-02-30"})
    assert reply.status_code == 400, reply.text
    assert "key_date" in reply.text and "is not a 'date'" in reply.text
    assert len(deployment.runs("dunning_run")) == before


def test_dunning_run_renders_on_two_workers_waits_for_approval_and_sends_each_letter_once(
    deployment,
):
    deployment.set_paused("dunning_run", False)
    triggered = deployment.trigger("dunning_run", {})  # the form's defaults: approval on
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["dag_run_id"]
    deployment.wait(
        "the proposal to wait for a clerk",
        lambda: [
            t
            for t in deployment.task_instances("dunning_run", run_id)
            if t["task_id"] == "approve" and t["state"] == "awaiting_input"
        ],
        timeout=300,
    )
    queued = "SELECT count(*) FROM mail.outbox WHERE key LIKE 'dunning:%%'"
    assert deployment.rows(queued) == [(0,)]  # rendered and archived, nothing released
    left_out = _approve_in_a_browser(deployment, run_id)
    deployment.finished_run("dunning_run", run_id, timeout=300)
    assert deployment.rows(
        "SELECT r.approval, r.approval_by, l.status, l.withheld_reason FROM erp.runs r"
        " JOIN erp.letters l ON l.run_id = r.id JOIN erp.partners p ON p.id = l.partner_id"
        " WHERE r.airflow_run_id = %s AND p.number = %s",
        run_id,
        left_out,
    ) == [("approved", "admin", "withheld", "excluded")]

    renders = [
        t
        for t in deployment.task_instances("dunning_run", run_id)
        if t["task_id"] == "batch.render"
    ]
    assert sorted(t["map_index"] for t in renders) == [0, 1]
    assert all(t["state"] == "success" for t in renders)
    per_batch = dict(
        deployment.rows(
            "SELECT l.batch, count(*) FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
            " WHERE r.airflow_run_id = %s GROUP BY 1",
            run_id,
        )
    )
    assert len(per_batch) == 2 and max(per_batch.values()) > 50  # several chunks in one task
    statuses = Counter(
        dict(
            deployment.rows(
                "SELECT l.status, count(*) FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
                " WHERE r.airflow_run_id = %s GROUP BY 1",
                run_id,
            )
        )
    )
    assert statuses["failed"] == 0 and statuses["generated"] == 0, statuses
    assert statuses["withheld"] == 1
    released = statuses["released"] + statuses["sent"]
    assert released > 100

    # the scheduler runs outbox_dispatch every minute once it is unpaused
    deployment.set_paused("outbox_dispatch", False)
    deployment.wait(
        "every released letter to be sent",
        lambda: (
            not deployment.rows(
                "SELECT 1 FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
                " WHERE r.airflow_run_id = %s AND l.status = 'released'",
                run_id,
            )
        ),
        timeout=240,
        every=5,
    )
    deployment.set_paused("outbox_dispatch", True)
    sent = deployment.rows(
        "SELECT o.message_id FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
        " JOIN mail.outbox o ON o.id = l.outbox_id"
        " WHERE r.airflow_run_id = %s AND l.status = 'sent'",
        run_id,
    )
    assert len(sent) == released
    arrived = Counter(
        email.message_from_bytes(m.data)["Message-ID"] for m in deployment.smtp.messages
    )
    assert arrived == Counter({f"<{mid.strip('<>')}>": 1 for (mid,) in sent})
    # and each one is archived as mail, once, by the dispatcher that sent it
    deployment.wait(
        "every sent letter archived as mail",
        lambda: (
            deployment.rows(
                "SELECT count(*), count(DISTINCT m.outbox_id) FROM mail.messages m"
                " JOIN erp.letters l ON l.outbox_id = m.outbox_id JOIN erp.runs r ON r.id = l.run_id"
                " WHERE r.airflow_run_id = %s AND m.direction = 'out'",
                run_id,
            )
            == [(len(sent), len(sent))]
        ),
        timeout=120,
        every=5,
    )
    scheduled = [r for r in deployment.runs("outbox_dispatch") if r["run_type"] == "scheduled"]
    assert scheduled and all(r["state"] in ("success", "running", "queued") for r in scheduled)


def test_backfill_imports_exactly_the_missing_mail(deployment):
    window = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    env = {
        "AIRFLOW_CONN_IMAP_E2E": deployment.stack.site.extra_env["AIRFLOW_CONN_IMAP_E2E"],
        "ERPMAIL_DB_URL": deployment.erp_url,
        "ERPMAIL_ARCHIVE_URL": deployment.stack.site.extra_env["ERPMAIL_ARCHIVE_URL"],
    }
    conn = db.connect(deployment.erp_url)
    location = add_location(conn, "e2e", "imap_e2e", after_import="none")
    conn.close()
    with mock.patch.dict(os.environ, env):
        from erpmail.inbound import importer

        with ImapHook("imap_e2e").client() as client:
            for n in range(6):  # two in each quarter hour of the window's first 45 minutes
                client.append("INBOX", simple(100 + n), msg_time=window + timedelta(minutes=7 * n))
            client.append("INBOX", simple(200), msg_time=window - timedelta(hours=3))
        importer.import_location(location)
    assert deployment.rows("SELECT count(*) FROM mail.messages WHERE direction = 'in'") == [(7,)]
    # lose three mails of the window and one outside it, as if the database were restored
    lost = deployment.rows(
        "DELETE FROM mail.messages WHERE subject IN ('Mail 101', 'Mail 102', 'Mail 105', "
        "'Mail 200') RETURNING subject, eml_path"
    )

    # as in production the DAG runs on its schedule: the scheduler queues no task of a paused
    # DAG, backfill runs included
    deployment.set_paused("mailbox_import", False)
    start, end = window, window + timedelta(minutes=45)
    deployment.stack.run(
        "airflow-scheduler",
        "backfill",
        "create",
        "--dag-id",
        "mailbox_import",
        "--from-date",
        start.isoformat(),
        "--to-date",
        (end - timedelta(minutes=1)).isoformat(),
    )

    def backfilled() -> list[dict]:
        runs = [r for r in deployment.runs("mailbox_import") if r["run_type"] == "backfill"]
        return runs if len(runs) == 3 and all(r["state"] == "success" for r in runs) else []

    runs = deployment.wait(
        "three backfill runs of mailbox_import",
        backfilled,
        timeout=240,
        state=lambda: [(r["dag_run_id"], r["state"]) for r in deployment.runs("mailbox_import")],
    )
    assert sorted(r["data_interval_start"][:19] for r in runs) == [
        (start + timedelta(minutes=15 * n)).strftime("%Y-%m-%dT%H:%M:%S") for n in range(3)
    ]
    subjects = sorted(
        s for (s,) in deployment.rows("SELECT subject FROM mail.messages WHERE direction = 'in'")
    )
    assert subjects == [f"Mail {n}" for n in range(100, 106)]  # Mail 200 was outside
    # the restore left Mail 200's file without a row: the archive check names it
    with mock.patch.dict(os.environ, env):
        report = inventory.check(db.connect(deployment.erp_url))
        assert report.orphans == [path for subject, path in lost if subject == "Mail 200"]
        archive.delete(report.orphans[0])


def test_every_shape_of_mail_is_imported_once_by_the_workers(deployment):
    env = {
        "AIRFLOW_CONN_IMAP_E2E": deployment.stack.site.extra_env["AIRFLOW_CONN_IMAP_E2E"],
        "ERPMAIL_DB_URL": deployment.erp_url,
        "ERPMAIL_ARCHIVE_URL": deployment.stack.site.extra_env["ERPMAIL_ARCHIVE_URL"],
    }
    mails = [raw for _, raw in mailcorpus.malformed() + mailcorpus.nasty() if raw]
    mails += [simple(300 + n) for n in range(50)]
    conn = db.connect(deployment.erp_url)
    location = add_location(
        conn, "corpus", "imap_e2e", folder="Corpus", store_attachments=True, enabled=False
    )
    conn.close()
    with mock.patch.dict(os.environ, env):
        with ImapHook("imap_e2e").client() as client:
            client.create_folder("Corpus")
            for raw in mails:
                try:
                    client.append("Corpus", raw)
                except Exception:  # what Dovecot refuses outright
                    continue
            client.select_folder("Corpus", readonly=True)
            served = {
                uid: item[b"BODY[]"]
                for uid, item in client.fetch(client.search("ALL"), ["BODY.PEEK[]"]).items()
            }
    assert len(served) >= 150

    def imported() -> dict:
        run_id = deployment.trigger("mailbox_import", {"location": location}).json()["dag_run_id"]
        deployment.finished_run("mailbox_import", run_id)
        ((details,),) = deployment.rows(
            "SELECT details FROM mail.audit_log WHERE action = 'import' AND subject = 'corpus'"
            " ORDER BY id DESC LIMIT 1"
        )
        return details

    first = imported()
    again = imported()

    assert (first["new"], first["duplicates"], first["errors"]) == (len(served), 0, 0)
    stored = deployment.rows(
        "SELECT uid, eml_path FROM mail.messages WHERE location_id = %s", location
    )
    assert sorted(uid for uid, _ in stored) == sorted(served)  # archived + failed, once each
    with mock.patch.dict(os.environ, env):
        assert all(archive.read(path) == served[uid] for uid, path in stored)
        report = inventory.check(db.connect(deployment.erp_url))
    assert report.clean, str(report)
    assert (again["candidates"], again["new"]) == (0, 0)


def test_a_bounce_fails_its_letter_and_the_next_dunning_run_prints_for_that_partner(deployment):
    env = {
        "AIRFLOW_CONN_IMAP_E2E": deployment.stack.site.extra_env["AIRFLOW_CONN_IMAP_E2E"],
        "ERPMAIL_DB_URL": deployment.erp_url,
    }
    # a letter of the first dunning run, sent and accepted by the test server
    ((letter_id, partner_id, message_id, envelope_from, recipient, run_id),) = deployment.rows(
        "SELECT l.id, l.partner_id, o.message_id, o.envelope_from, o.recipients[1], l.run_id"
        " FROM erp.letters l JOIN mail.outbox o ON o.id = l.outbox_id"
        " WHERE o.status = 'sent' ORDER BY l.id LIMIT 1"
    )
    conn = db.connect(deployment.erp_url)
    location = add_location(conn, "bounces", "imap_e2e", folder="Bounces", enabled=False)
    conn.close()
    with mock.patch.dict(os.environ, env), ImapHook("imap_e2e").client() as client:
        client.create_folder("Bounces")
        client.append("Bounces", dsns.rfc3464(dsns.Sent(message_id, envelope_from, recipient)))

    imported = deployment.trigger("mailbox_import", {"location": location}).json()["dag_run_id"]
    deployment.finished_run("mailbox_import", imported)

    ((status, error, mail_status),) = deployment.rows(
        "SELECT status, error, mail_status FROM erp.letter_status WHERE letter_id = %s", letter_id
    )
    assert (status, mail_status) == ("failed", "bounced") and "5.1.1" in error
    assert deployment.rows(
        "SELECT blocked_at IS NOT NULL FROM mail.address_health WHERE address = %s",
        recipient.lower(),
    ) == [(True,)]
    ((key_date,),) = deployment.rows("SELECT key_date FROM erp.runs WHERE id = %s", run_id)

    later = (key_date + timedelta(days=30)).isoformat()
    again = deployment.trigger("dunning_run", {"key_date": later, "approval": False})
    again = again.json()["dag_run_id"]
    deployment.finished_run("dunning_run", again, timeout=300)

    assert deployment.rows(
        "SELECT l.status, l.paper_reason FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
        " WHERE r.airflow_run_id = %s AND l.partner_id = %s",
        again,
        partner_id,
    ) == [("paper", "blocked")]


def test_events_become_mail_through_the_workers_the_bounce_among_them(deployment):
    # the bounce of the test before is an event already; a rule for it, and an ERP event
    ((partner_id,),) = deployment.rows("SELECT id FROM erp.partners ORDER BY id LIMIT 1")
    deployment.rows(
        "INSERT INTO erp.users VALUES ('anna', 'Anna', 'anna@erp.example.com', 'en')"
        " RETURNING login"
    )
    deployment.rows("UPDATE erp.partners SET clerk = 'anna' WHERE id = %s RETURNING id", partner_id)
    deployment.rows(
        "INSERT INTO mail.event_rules (event_type, recipient_kind, recipient, template) VALUES"
        " ('case_assigned', 'clerk', NULL, 'case_assigned'),"
        " ('mail_bounced', 'address', 'ops@erp.example.com', 'mail_bounced') RETURNING id"
    )
    case = {
        "case": "C-77",
        "subject": "Lieferung",
        "due_date": "2026-12-09",
        "link": "https://erp.example.com/c/77",
    }
    ((case_event,),) = deployment.rows(
        "INSERT INTO erp.events (type, company, partner_id, payload)"
        " VALUES ('case_assigned', 'DEMO', %s, %s::jsonb) RETURNING id",
        partner_id,
        json.dumps(case),
    )
    before = len(deployment.smtp.messages)
    deployment.set_paused("event_mail", False)
    deployment.set_paused("outbox_dispatch", False)
    try:
        deployment.wait(
            "the case and the bounce mailed",
            lambda: (
                {
                    m.rcpt_tos[0]: email.message_from_bytes(m.data, policy=policy.default)[
                        "Subject"
                    ]
                    for m in deployment.smtp.messages[before:]
                }
                if len(deployment.smtp.messages) >= before + 2
                else None
            ),
            timeout=240,
            every=5,
        )
    finally:
        deployment.set_paused("event_mail", True)
        deployment.set_paused("outbox_dispatch", True)
    mailed = {
        m.rcpt_tos[0]: email.message_from_bytes(m.data, policy=policy.default)
        for m in deployment.smtp.messages[before:]
    }
    assert mailed["anna@erp.example.com"]["Subject"] == "Case C-77 assigned: Lieferung"
    assert "5.1.1" in mailed["ops@erp.example.com"].get_body(("plain",)).get_content()
    outcomes = dict(deployment.rows("SELECT type, outcome FROM erp.events WHERE type IN"
                                    " ('case_assigned', 'mail_bounced')"))  # fmt: skip
    assert outcomes == {"case_assigned": "queued", "mail_bounced": "queued"}
    assert deployment.rows("SELECT outcome FROM erp.events WHERE id = %s", case_event) == [
        ("queued",)
    ]


def test_a_campaign_goes_out_through_the_workers_and_one_click_unsubscribes(deployment):
    deployment.rows(
        "INSERT INTO erp.partners (company, number, name, email, language, customer_group)"
        " SELECT 'DEMO', 'K' || n, 'Kunde ' || n, 'k' || n || '@campaign.example',"
        " (ARRAY['de', 'en', 'nl'])[n %% 3 + 1], 'E2E' FROM generate_series(1, 30) n"
        " RETURNING id"
    )
    ((campaign,),) = deployment.rows(
        "INSERT INTO mail.campaigns (name, company, account, customer_groups, start_at, status)"
        " VALUES ('e2e', 'DEMO', 'accounting', ARRAY['E2E'], now(), 'scheduled') RETURNING id"
    )
    for language, hello in (("de", "Hallo"), ("en", "Hello"), ("nl", "Hoi")):
        deployment.rows(
            "INSERT INTO mail.campaign_texts VALUES (%s, %s, %s, NULL, %s) RETURNING language",
            campaign,
            language,
            f"{hello} {{{{ partner.name }}}}",
            f"{hello} {{{{ partner.name }}}}",
        )
    deployment.set_paused("campaign_send", False)
    run = deployment.trigger("campaign_send", {"campaign": campaign}).json()["dag_run_id"]
    deployment.finished_run("campaign_send", run)
    deployment.set_paused("campaign_send", True)
    before = len(deployment.smtp.messages)
    deployment.set_paused("outbox_dispatch", False)
    try:
        deployment.wait(
            "the campaign sent",
            lambda: len(deployment.smtp.messages) >= before + 30,
            timeout=240,
            every=5,
        )
    finally:
        deployment.set_paused("outbox_dispatch", True)
    mails = [
        email.message_from_bytes(m.data, policy=policy.default)
        for m in deployment.smtp.messages[before:]
    ]
    assert sorted(m["To"] for m in mails) == sorted(f"k{n}@campaign.example" for n in range(1, 31))
    first = next(m for m in mails if m["To"] == "k1@campaign.example")
    assert first["Subject"] == "Hello Kunde 1"  # language (1 % 3 + 1): en
    url = first["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    assert url.startswith("https://erp.example.com/erpmail/unsubscribe/")
    here = url.replace("https://erp.example.com", deployment.stack.site.api_url)
    reply = httpx.post(here, data={"List-Unsubscribe": "One-Click"}, timeout=30)  # no login
    assert reply.status_code == 200, reply.text
    assert deployment.rows(
        "SELECT source FROM mail.suppressions WHERE address = 'k1@campaign.example'"
    ) == [("one_click",)]


def test_the_clerks_screens_need_airflows_login_and_show_the_letters(deployment):
    base = deployment.stack.site.api_url + "/erpmail"
    auth = {"Authorization": f"Bearer {deployment.token}"}
    plugins = deployment.api.get("/plugins").json()["plugins"]
    (screens,) = [p for p in plugins if p["name"] == "erpmail_screens"]
    assert {v["name"]: v["destination"] for v in screens["external_views"]} == {
        "Letters": "dag_run",
        "Mail": "nav",
        "Outbox": "nav",
    }
    # the first dunning run: its letters, one of them failed by the bounce of the test before
    ((run_id, airflow_run_id),) = deployment.rows(
        "SELECT id, airflow_run_id FROM erp.runs WHERE kind = 'dunning' ORDER BY id LIMIT 1"
    )
    letters = f"{base}/runs/dunning_run/{quote(airflow_run_id, safe='')}/letters"
    for url in (letters, f"{base}/mail/unlinked", f"{letters}?format=json"):
        assert httpx.get(url, timeout=30).status_code in (401, 403), url  # no login, no data
    page = httpx.get(letters, headers=auth, timeout=30)
    data = httpx.get(letters, params={"format": "json"}, headers=auth, timeout=30).json()

    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    counts = dict(
        deployment.rows(
            "SELECT status, count(*) FROM erp.letters WHERE run_id = %s GROUP BY 1", run_id
        )
    )
    assert data["counts"] == counts and counts.get("failed", 0) >= 1
    for status, n in counts.items():
        assert f'data-status="{status}">{status} {n}<' in page.text
    ((letter_id, error),) = deployment.rows(
        "SELECT id, error FROM erp.letters WHERE run_id = %s AND status = 'failed' LIMIT 1", run_id
    )
    assert html.escape(error) in page.text and "(bounced)" in page.text
    failed = httpx.get(letters, params={"status": "failed"}, headers=auth, timeout=30)
    assert failed.text.count("data-letter=") == counts["failed"]
    pdf = httpx.get(f"{letters}/{letter_id}.pdf", headers=auth, timeout=30)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert f'action="letters/{letter_id}/resend"' in page.text
    resend = f"{letters}/{letter_id}/resend"
    assert httpx.post(resend, timeout=30).status_code in (401, 403)
    foreign = {**auth, "Origin": "https://elsewhere.example"}
    assert httpx.post(resend, headers=foreign, timeout=30).status_code == 403
    sent_again = httpx.post(resend, headers=auth, timeout=30)
    assert sent_again.status_code == 303
    assert deployment.rows(
        "SELECT l.status, o.status, o.key LIKE '%%:resend-1' FROM erp.letters l"
        " JOIN mail.outbox o ON o.id = l.outbox_id WHERE l.id = %s",
        letter_id,
    ) == [("released", "queued", True)]
    assert deployment.rows(
        "SELECT actor FROM mail.audit_log WHERE action = 'resend_letter' AND subject = %s",
        f"letter {letter_id}",
    ) == [("admin",)]
    assert httpx.get(f"{base}/outbox", timeout=30).status_code in (401, 403)
    box = httpx.get(f"{base}/outbox", params={"format": "json"}, headers=auth, timeout=30).json()
    ((sent_today,),) = deployment.rows(
        "SELECT count(*) FROM mail.outbox WHERE status = 'sent' AND sent_at >= date_trunc('day', now())"
    )
    assert sum(a["sent_today"] for a in box["accounts"]) == sent_today > 0
    assert sum(a["queued"] for a in box["accounts"]) >= 1  # the letter sent again
    assert httpx.get(f"{base}/outbox", headers=auth, timeout=30).text.count("data-account=") == len(
        box["accounts"]
    )
    mail = httpx.get(f"{base}/mail/unlinked", params={"format": "json"}, headers=auth, timeout=30)
    assert mail.status_code == 200
    unlinked = {
        m
        for (m,) in deployment.rows(
            "SELECT id FROM mail.messages WHERE direction = 'in' AND status IN ('unlinked', 'failed')"
        )
    }
    assert {m["id"] for m in mail.json()} == unlinked
    # read one and file it against a partner by number, as link_mail does, naming the user
    mail_id = min(unlinked)
    ((number,),) = deployment.rows("SELECT number FROM erp.partners ORDER BY id LIMIT 1")
    shown = httpx.get(f"{base}/mail/{mail_id}", params={"q": number}, headers=auth, timeout=30)
    assert shown.status_code == 200 and 'id="link"' in shown.text
    assert f"<td>{number}</td>" in shown.text  # the partner search
    form = f"{base}/mail/{mail_id}/link"
    assert httpx.post(
        form, data={"entity_type": "partner", "number": number}, timeout=30
    ).status_code in (401, 403)
    wrong = httpx.post(
        form, data={"entity_type": "partner", "number": "no-such"}, headers=auth, timeout=30
    )
    assert wrong.status_code == 303 and "error=" in wrong.headers["location"]
    linked = httpx.post(
        form, data={"entity_type": "partner", "number": number}, headers=auth, timeout=30
    )
    assert linked.status_code == 303
    assert deployment.rows(
        "SELECT m.status, k.method FROM mail.messages m JOIN mail.message_links k"
        " ON k.message_id = m.id AND k.entity_type = 'partner' WHERE m.id = %s",
        mail_id,
    ) == [("linked", "manual")]
    assert deployment.rows(
        "SELECT actor FROM mail.audit_log WHERE action = 'link_mail' ORDER BY id DESC LIMIT 1"
    ) == [("admin",)]


@contextmanager
def _browser_page(deployment, viewport: dict):
    """A page of Debian's chromium holding the UI's own session cookie, as after logging in."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("browser tests need Debian's chromium (apt-get install chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            context = browser.new_context(viewport=viewport)
            cookie = {"name": "_token", "value": deployment.token}
            context.add_cookies([{**cookie, "url": deployment.stack.site.api_url}])
            yield context.new_page()
        finally:
            browser.close()


def _approve_in_a_browser(deployment, run_id: str) -> str:
    """From the run's Letters page to its proposal: check the levels shown, leave the first
    partner out, approve; returns that partner's number."""
    base = deployment.stack.site.api_url + "/erpmail"
    letters = f"{base}/runs/dunning_run/{quote(run_id, safe='')}/letters"
    levels = dict(
        deployment.rows(
            "SELECT l.level, count(*) FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id"
            " WHERE r.airflow_run_id = %s AND l.status = 'archived' GROUP BY 1",
            run_id,
        )
    )
    with _browser_page(deployment, {"width": 1200, "height": 700}) as page:
        page.goto(letters)
        page.get_by_role("link", name="Review the proposal").click()
        page.wait_for_load_state()
        for level, n in levels.items():
            cells = page.locator(f'#levels tr[data-level="{level}"] td')
            assert cells.nth(1).inner_text() == str(n)
        assert page.locator("#levels a", has_text="sample PDF").count() == len(levels)
        page.screenshot(path=str(SCREENSHOTS / "proposal.png"))
        first = page.locator('#letters input[name="exclude"]').first
        left_out = first.get_attribute("value")
        first.check()
        page.get_by_role("button", name="Approve").click()
        page.wait_for_url(f"{letters}?answered=approved")
        assert "approved" in page.locator("#approval").inner_text().lower()
    return left_out


def test_a_clerk_reads_the_letters_and_the_outbox_and_links_a_mail_in_a_browser(deployment):
    base = deployment.stack.site.api_url + "/erpmail"
    ((run_id, airflow_run_id),) = deployment.rows(
        "SELECT id, airflow_run_id FROM erp.runs WHERE kind = 'dunning' ORDER BY id LIMIT 1"
    )
    counts = dict(
        deployment.rows(
            "SELECT status, count(*) FROM erp.letters WHERE run_id = %s GROUP BY 1", run_id
        )
    )
    ((mail_id,),) = deployment.rows(
        "SELECT min(id) FROM mail.messages WHERE direction = 'in' AND status = 'unlinked'"
    )
    ((number,),) = deployment.rows("SELECT number FROM erp.partners ORDER BY id DESC LIMIT 1")
    with _browser_page(deployment, {"width": 1200, "height": 700}) as page:
        page.goto(f"{base}/runs/dunning_run/{quote(airflow_run_id, safe='')}/letters")
        for status, n in counts.items():
            assert page.locator(f'#counts [data-status="{status}"]').inner_text() == f"{status} {n}"
        page.screenshot(path=str(SCREENSHOTS / "letters.png"))
        page.select_option("select[name=status]", "released")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_load_state()
        assert page.locator("#letters tr[data-letter]").count() == counts.get("released", 0)
        page.goto(f"{base}/outbox")
        assert page.locator("#accounts tr[data-account]").count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "outbox.png"))
        page.goto(f"{base}/mail/unlinked")
        page.locator(f'tr[data-mail="{mail_id}"] a').first.click()
        page.wait_for_load_state()
        page.fill("#search input[name=q]", number)
        page.locator("#search button").click()
        page.wait_for_load_state()
        assert page.locator("#partners").inner_text().count(number) >= 1
        page.screenshot(path=str(SCREENSHOTS / "mail.png"))
        page.fill("#link input[name=number]", number)
        page.locator("#link button").click()
        page.wait_for_url(f"{base}/mail/unlinked")
    assert deployment.rows(
        "SELECT m.status FROM mail.messages m JOIN mail.message_links k ON k.message_id = m.id"
        " JOIN erp.partners p ON p.id = k.entity_id AND k.entity_type = 'partner'"
        " WHERE m.id = %s AND p.number = %s",
        mail_id,
        number,
    ) == [("linked",)]


def test_the_trigger_form_submits_with_its_defaults_in_a_browser(deployment):
    # paused: the run the form creates stays queued and sends nothing
    deployment.set_paused("dunning_run", True)
    before = {r["dag_run_id"] for r in deployment.runs("dunning_run")}
    with _browser_page(deployment, {"width": 1400, "height": 1000}) as page:
        page.goto(deployment.stack.site.api_url + "/dags/dunning_run")
        page.get_by_test_id("trigger-dag-button").first.click()
        submit = page.get_by_test_id("trigger-dag-submit")
        submit.wait_for(state="visible", timeout=30_000)
        page.wait_for_timeout(1000)  # the form validates as it opens
        unpause = page.get_by_label("Unpause dunning_run on trigger")
        if unpause.count() and unpause.is_checked():
            # the run stays queued: this test is about the form (a styled checkbox: its
            # label takes the click)
            page.get_by_text("Unpause dunning_run on trigger").click()
            assert not unpause.is_checked()
        page.screenshot(path=str(SCREENSHOTS / "dunning_run-trigger-form.png"), full_page=True)
        assert submit.is_enabled(), "the trigger form cannot be submitted with its defaults"
        submit.click()
        created = deployment.wait(
            "the run the form triggered",
            lambda: [r for r in deployment.runs("dunning_run") if r["dag_run_id"] not in before],
            timeout=30,
            every=1,
        )
    conf = created[0]["conf"]
    assert conf.get("company") == "DEMO" and conf.get("dry_run") is False
    assert conf.get("partner_from") in (None, "") and conf.get("key_date") in (None, "")


def test_documents_on_demand_go_out_signed_from_a_rest_trigger_through_the_workers(
    deployment, tls_ca, tmp_path
):
    with db.transaction(db.connect(deployment.erp_url)) as cur:
        # partners of their own: the seeded ones carry the earlier tests' letters
        cur.execute(
            "INSERT INTO erp.partners (company, number, name, email, language) VALUES"
            " ('DEMO', 'OD1', 'Kunde OD1', 'od1@example.com', 'de'),"
            " ('DEMO', 'OD2', 'Customer OD2', 'p000002@example.com', 'en') RETURNING id"
        )
        (first,), (second,) = cur.fetchall()
        cur.execute(
            "INSERT INTO erp.contacts (partner_id, name, email, role)"
            " VALUES (%s, 'Buchhaltung', 'ap@p000001.example.com', 'accounting')",
            (first,),
        )
        erp_document(cur, "invoice", "RE-1001", first)
        erp_document(cur, "offer", "AN-2001", first)
        erp_document(cur, "order_confirmation", "AB-3001", second)
        cur.execute(
            "INSERT INTO erp.users (login, name, email, language) VALUES ('signer', 'Signer', %s, 'de')",
            (SENDER,),
        )
        cur.execute(
            "INSERT INTO mail.signers (login, may_sign, conn_id) VALUES ('signer', true, 'pkcs12_e2e')"
        )
        cur.execute(
            "INSERT INTO mail.signing_rules (document, signer) VALUES ('on_demand', 'signer')"
        )
    references = [*REFERENCES, {"kind": "invoice", "number": "RE-404"}]
    deployment.set_paused("send_documents", False)
    run = deployment.trigger("send_documents", {"company": "DEMO", "documents": references})
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]
    deployment.finished_run("send_documents", run_id)
    deployment.set_paused("send_documents", True)
    before = len(deployment.smtp.messages)
    to = {"ap@p000001.example.com", "p000002@example.com"}
    deployment.set_paused("outbox_dispatch", False)
    try:
        deployment.wait(
            "the two partners' mails",
            lambda: {m["To"] for m in _received(deployment, before)} >= to,
            timeout=240,
            every=5,
        )
    finally:
        deployment.set_paused("outbox_dispatch", True)
    # earlier tests' mail may go out in the same dispatch: these two addresses get one each
    ours = [(m, raw) for m, raw in _received(deployment, before, raw=True) if m["To"] in to]
    mails = {m["To"]: (m, raw) for m, raw in ours}
    assert len(ours) == len(mails) == 2
    for address, names in (
        ("ap@p000001.example.com", {"Rechnung RE-1001.pdf", "Angebot AN-2001.pdf"}),
        ("p000002@example.com", {"Order confirmation AB-3001.pdf"}),
    ):
        message, raw = mails[address]
        assert message.get_content_type() == "multipart/signed"
        code, content, _ = openssl_verify(tls_ca, raw, tmp_path)
        assert code == 0, address  # verifies against the test CA, signed in a worker
        signed = email.message_from_bytes(content, policy=policy.default)
        assert {p.get_filename() for p in signed.iter_attachments()} == names
    assert deployment.rows(
        "SELECT number, status, error LIKE '%%RE-404%%' FROM erp.run_document_status"
        " WHERE airflow_run_id = %s ORDER BY position",
        run_id,
    ) == [
        ("RE-1001", "sent", None),
        ("AB-3001", "sent", None),
        ("AN-2001", "sent", None),
        ("RE-404", "failed", True),
    ]


def _received(deployment, since: int, raw: bool = False) -> list:
    found = [
        (email.message_from_bytes(m.data, policy=policy.default), m.data)
        for m in deployment.smtp.messages[since:]
    ]
    return found if raw else [m for m, _ in found]
