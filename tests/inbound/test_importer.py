"""The mailbox import against Dovecot and PostgreSQL: stored once, linked, nothing lost."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from erpmail.core import archive
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location, import_message
from tests import mailcorpus

ROOT = Path(__file__).resolve().parents[2]


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


def append(mails: list[bytes], folder: str = "INBOX", when: datetime | None = None) -> list[int]:
    with ImapHook("imap_test").client() as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        uids = []
        for raw in mails:
            reply = client.append(folder, raw, msg_time=when)
            uids.append(int(reply.split(b"APPENDUID ")[1].split()[1].rstrip(b"]")))
        return uids


def server_state(folder: str = "INBOX") -> dict[int, tuple[bytes, tuple]]:
    with ImapHook("imap_test").client() as client:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        return {u: (d[b"BODY[]"], d[b"FLAGS"]) for u, d in data.items()}


def rows(conn, sql: str, *args) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        out = cur.fetchall()
    conn.commit()
    return out


def test_sixty_varied_mails_stored_once_identical_and_linked(seeded_db, mailbox, store):
    facts = mailcorpus.facts(seeded_db)
    corpus = mailcorpus.varied(facts)
    location = mailcorpus.add_location(
        seeded_db, "inbox", "imap_test", link_keywords=mailcorpus.KEYWORDS, store_attachments=True
    )
    uids = append([e.raw for e in corpus])

    summary = import_location(location)

    assert (summary.new, summary.duplicates, summary.failed, summary.malformed) == (60, 0, 0, 0)
    stored = {
        uid: (mid, path, status)
        for mid, uid, path, status in rows(
            seeded_db, "SELECT id, uid, eml_path, status FROM mail.messages ORDER BY uid"
        )
    }
    assert sorted(stored) == uids
    for uid, exp in zip(uids, corpus, strict=True):
        mail_id, path, status = stored[uid]
        assert archive.read(path) == exp.raw, exp.note
        links = rows(
            seeded_db,
            "SELECT entity_type, entity_id FROM mail.message_links WHERE message_id = %s",
            mail_id,
        )
        assert set(links) == exp.links, exp.note
        assert status == ("linked" if exp.links else "unlinked"), exp.note
        for name, content in exp.attachments.items():
            (att_path, sha) = rows(
                seeded_db,
                "SELECT path, sha256 FROM mail.attachments WHERE message_id = %s AND filename = %s",
                mail_id,
                name,
            )[0]
            assert archive.read(att_path) == content, (exp.note, name)
            assert sha == hashlib.sha256(content).hexdigest()
    methods = {m for (m,) in rows(seeded_db, "SELECT DISTINCT method FROM mail.message_links")}
    assert methods == {"reply", "keyword", "ticket", "sender"}
    # stored, so flagged seen on the server and the watermark is at the last UID
    assert all(b"\\Seen" in flags for _, flags in server_state().values())
    assert rows(seeded_db, "SELECT last_uid FROM mail.import_watermarks") == [(max(uids),)]

    again = import_location(location)
    assert (again.candidates, again.new) == (0, 0)
    assert rows(seeded_db, "SELECT count(*) FROM mail.messages") == [(60,)]


CRASH_SCRIPT = """
import os, sys
sys.path[:0] = [{plugins!r}, {root!r}]
from erpmail.inbound import importer
importer.import_location({location}, fetch_chunk=5, fault=lambda point: os._exit(137))
"""


def test_killed_between_commit_and_server_change_loses_and_doubles_nothing(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test")
    uids = append([mailcorpus.simple(n) for n in range(12)])
    script = CRASH_SCRIPT.format(plugins=str(ROOT / "plugins"), root=str(ROOT), location=location)

    crashed = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), check=False)

    assert crashed.returncode == 137
    # nothing of the dead run lives on: its advisory lock went with its session
    for _ in range(100):
        held = rows(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        if held == [(0,)]:
            break
        time.sleep(0.1)
    assert held == [(0,)], "the killed run's session still holds its lock"
    # the first batch is committed, but the server and the watermark were not touched
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(5,)]
    assert all(b"\\Seen" not in flags for _, flags in server_state().values())
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(0,)]

    summary = import_location(location, fetch_chunk=5)

    assert (summary.new, summary.duplicates) == (7, 5)
    assert rows(db, "SELECT count(*), count(DISTINCT message_id) FROM mail.messages") == [(12, 12)]
    assert all(b"\\Seen" in flags for _, flags in server_state().values())
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(max(uids),)]


def _import_in_child(location: int, out: str) -> None:
    """Run the import as an executor runs a task: in a process of its own (daemonic, like a
    Celery prefork child, which may not start children). Writes what it saw to ``out``."""
    import psutil

    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    records = logging.handlers.BufferingHandler(100_000)
    logger = logging.getLogger("erpmail.inbound.importer")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    summary = import_location(location)
    Path(out).write_text(
        json.dumps(
            {
                "daemon": multiprocessing.current_process().daemon,
                "forks": len(forks),
                "children": [c.pid for c in psutil.Process().children(recursive=True)],
                "warnings": [
                    r.getMessage() for r in records.buffer if r.levelno >= logging.WARNING
                ],
                "logged_summary": any(r.getMessage() == str(summary) for r in records.buffer),
                "summary": summary.as_dict(),
            },
            default=str,
        )
    )


@pytest.mark.parametrize("daemon", [True, False], ids=["daemonic", "plain"])
def test_import_in_a_task_process_forks_nothing_and_stores_everything(
    db, mailbox, store, tmp_path, daemon
):
    location = mailcorpus.add_location(db, "inbox", "imap_test")
    mails = [mailcorpus.simple(n) for n in range(350)]  # more than a parse pool ever waited for
    uids = append(mails)
    out = tmp_path / "child.json"

    # spawn: a fresh interpreter; it finds the database, store and mailbox in the environment
    child = multiprocessing.get_context("spawn").Process(
        target=_import_in_child, args=(location, str(out)), daemon=daemon
    )
    child.start()
    child.join(300)
    if child.is_alive():
        child.kill()
        child.join()

    assert child.exitcode == 0
    seen = json.loads(out.read_text())
    assert seen["daemon"] == daemon and seen["logged_summary"]  # the log was caught
    assert seen["forks"] == 0, "the import forked"  # a daemonic process refuses before forking
    assert seen["children"] == []
    assert seen["warnings"] == []  # e.g. no "no worker processes" fallback
    summary = seen["summary"]
    assert (summary["new"], summary["duplicates"], summary["failed"]) == (350, 0, 0)
    stored = rows(db, "SELECT uid, eml_path FROM mail.messages ORDER BY uid")
    assert [u for u, _ in stored] == uids
    assert sorted(archive.read(p) for _, p in stored) == sorted(mails)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*.eml"))
    assert files == sorted(p for _, p in stored)
    state = server_state()
    assert sorted(state) == uids and all(b"\\Seen" in flags for _, flags in state.values())
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(max(uids),)]


def test_two_runs_at_once_store_each_mail_once(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test")
    append(
        [mailcorpus.simple(n) for n in range(40)]
        + [mailcorpus.simple(99).replace(b"Message-ID", b"X-No-Id")]
    )
    results = []

    def run() -> None:
        results.append(import_location(location, fetch_chunk=7))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(s.new for s in results) == 41
    assert rows(db, "SELECT count(*), count(DISTINCT sha256) FROM mail.messages") == [(41, 41)]


def test_second_run_skips_while_the_lock_is_held(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test")
    append([mailcorpus.simple(1)])
    holder = db.cursor()
    holder.execute("SELECT pg_advisory_lock(7311006, %s)", (location,))
    try:
        skipped = import_location(location, wait=False)
    finally:
        holder.execute("SELECT pg_advisory_unlock(7311006, %s)", (location,))
        db.commit()
    assert not skipped.locked and skipped.new == 0
    assert import_location(location, wait=False).new == 1


def test_uidvalidity_reset_rescans_without_doubles(db, mailbox, store):
    location = mailcorpus.add_location(db, "archive box", "imap_test", folder="Import")
    mails = [mailcorpus.simple(n) for n in range(8)] + [
        mailcorpus.simple(100 + n).replace(b"Message-ID", b"X-No-Id") for n in range(2)
    ]
    append(mails, "Import")
    assert import_location(location).new == 10
    with ImapHook("imap_test").client() as client:
        before = client.select_folder("Import")[b"UIDVALIDITY"]
        client.unselect_folder()
        client.delete_folder("Import")
    append(mails, "Import")

    summary = import_location(location)

    with ImapHook("imap_test").client() as client:
        assert client.select_folder("Import")[b"UIDVALIDITY"] != before
    assert summary.uidvalidity_reset
    assert (summary.new, summary.duplicates) == (0, 10)
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(10,)]


def test_malformed_set_completes_archived_raw_and_flagged(db, mailbox, store):
    location = mailcorpus.add_location(
        db, "inbox", "imap_test", store_attachments=True, after_import="none"
    )
    bad = mailcorpus.malformed()
    assert len(bad) >= 30
    refused = []
    with ImapHook("imap_test").client() as client:
        for name, raw in bad:
            try:
                client.append("INBOX", raw)
            except Exception:  # Dovecot refuses e.g. a zero-byte message
                refused.append((name, raw))
    served = {raw for raw, _ in server_state().values()}

    summary = import_location(location)
    loc = None
    with db.cursor() as cur:
        from erpmail.inbound.importer import load_location

        loc = load_location(cur, location)
        for _, raw in refused:  # what the server would not take goes in through the same door
            import_message(cur, loc, raw)
    db.commit()

    assert summary.failed == 0
    assert summary.malformed == len(bad) - len(refused)
    stored = rows(db, "SELECT eml_path, status, defects FROM mail.messages")
    assert len(stored) == len(bad)
    assert [s for s in stored if s[1] != "malformed" or not s[2]] == []
    assert {archive.read(p) for p, _, _ in stored} == served | {raw for _, raw in refused}
    # nothing outside the store: every file under the temp parent is inside the archive root
    for path in store.parent.rglob("*"):
        assert path == store or store in path.parents
    names = {n for (n,) in rows(db, "SELECT filename FROM mail.attachments")}
    assert "passwd" in names and "boot.ini" in names
    for (path,) in rows(db, "SELECT path FROM mail.attachments WHERE path IS NOT NULL"):
        assert store in Path(archive.path_of(path).path).resolve().parents


def test_fifty_megabyte_mail_within_four_times_its_size(db, mailbox, store):
    location = mailcorpus.add_location(
        db, "inbox", "imap_test", store_attachments=True, max_message_bytes=60 * 1024 * 1024
    )
    payload = os.urandom(37 * 1024 * 1024)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "big@example.org", "in@example.com", "Big"
    msg["Date"], msg["Message-ID"] = "Fri, 01 Mar 2024 10:00:00 +0000", "<big@example.org>"
    msg.set_content("see attachment\n")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="x.bin")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    del msg
    append([raw])
    size, digest, expected_sha = len(raw), hashlib.sha256(raw).hexdigest(), None
    expected_sha = hashlib.sha256(payload).hexdigest()
    del raw, payload
    assert size > 50 * 1000 * 1000

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        summary = import_location(location)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert summary.new == 1
    print(f"50 MB mail: peak memory growth {(peak - base) / size:.2f}x its size")
    assert peak - base < 4 * size, f"peak growth {(peak - base) / size:.2f}x the mail"
    (path, sha) = rows(db, "SELECT eml_path, sha256 FROM mail.messages")[0]
    assert sha == digest and hashlib.sha256(archive.read(path)).hexdigest() == digest
    assert rows(db, "SELECT filename, size_bytes, sha256 FROM mail.attachments") == [
        ("x.bin", 37 * 1024 * 1024, expected_sha)
    ]


def test_oversize_mail_skipped_recorded_and_left_on_the_server(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test", max_message_bytes=3000)
    big = mailcorpus.simple(2).replace(b"Body 2", b"x" * 5000)
    small_uid, big_uid = append([mailcorpus.simple(1), big])

    summary = import_location(location)
    again = import_location(location)

    assert (summary.new, summary.oversize, again.candidates) == (1, 1, 0)
    assert rows(db, "SELECT uid FROM mail.messages") == [(small_uid,)]
    assert rows(db, "SELECT uid, size_bytes FROM mail.import_skipped") == [(big_uid, len(big))]
    state = server_state()
    assert state[big_uid][0] == big and b"\\Seen" not in state[big_uid][1]


def test_backfill_over_two_past_days_imports_only_the_missing(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test", after_import="none")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    mails = {n: mailcorpus.simple(n) for n in range(10)}
    days = {n: today - timedelta(days=2 - n // 4) + timedelta(hours=3 + n) for n in mails}
    # 0-3 two days ago, 4-7 yesterday, 8-9 today; 0, 4, 5 were stored by an earlier run
    for n, raw in mails.items():
        append([raw], when=days[n])
    with db.cursor() as cur:
        from erpmail.inbound.importer import load_location

        loc = load_location(cur, location)
        for n in (0, 4, 5):
            import_message(cur, loc, mails[n])
    db.commit()

    summary = import_location(location, since=today - timedelta(days=2), until=today)

    assert (summary.mode, summary.new, summary.duplicates) == ("backfill", 5, 3)
    subjects = {s for (s,) in rows(db, "SELECT subject FROM mail.messages")}
    assert subjects == {f"Mail {n}" for n in range(8)}
    assert rows(db, "SELECT count(*) FROM mail.import_watermarks WHERE last_uid > 0") == [(0,)]


@pytest.mark.parametrize("action", ["move", "delete"])
def test_move_or_delete_only_after_storing(db, mailbox, store, action):
    location = mailcorpus.add_location(
        db, "inbox", "imap_test", after_import=action, move_to="Done" if action == "move" else None
    )
    mails = [mailcorpus.simple(n) for n in range(3)]
    append(mails)

    assert import_location(location).new == 3

    assert server_state() == {}
    if action == "move":
        assert sorted(raw for raw, _ in server_state("Done").values()) == sorted(mails)
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(3,)]


def test_unlinked_mail_raises_one_alert_per_run(seeded_db, mailbox, store):
    mailcorpus.add_account(seeded_db)
    location = mailcorpus.add_location(
        seeded_db, "inbox", "imap_test", notify_address="ops@erp.example.com"
    )
    append([mailcorpus.simple(n) for n in range(3)])

    summary = import_location(location, run_key="run-1")

    assert summary.unlinked == 3 and summary.alert_outbox_id
    ((recipients, subject, mime),) = rows(
        seeded_db, "SELECT recipients, subject, mime FROM mail.outbox WHERE source_type = 'alert'"
    )
    assert recipients == ["ops@erp.example.com"]
    assert subject == "3 nicht zugeordnete E-Mails in inbox"  # notification/de
    alert = message_from_bytes(bytes(mime), policy=policy.default)
    text = alert.get_body(("plain",)).get_content()
    html = alert.get_body(("html",)).get_content()
    ids = [i for (i,) in rows(seeded_db, "SELECT id FROM mail.messages ORDER BY id")]
    assert all(f"#{i}  " in text and f"<td>{i}</td>" in html for i in ids)
    assert all(f"person{n}@example.org" in text + html for n in range(3))


def test_chunk_that_fails_together_is_stored_one_by_one(db, mailbox, store, monkeypatch):
    from erpmail.inbound import linking

    location = mailcorpus.add_location(db, "inbox", "imap_test", store_attachments=True)
    mails = [mailcorpus.simple(n) for n in range(6)]
    uids = append(mails)
    calls = []
    original = linking.store_links_many

    def broken(cur, rows):  # the chunk's statement fails once: a fault hard to make for real
        rows = list(rows)
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("statement failed")
        return original(cur, rows)

    monkeypatch.setattr(linking, "store_links_many", broken)

    summary = import_location(location)

    assert calls[0] == 6 and (summary.new, summary.failed) == (6, 0)
    stored = rows(db, "SELECT uid, eml_path FROM mail.messages ORDER BY uid")
    assert [u for u, _ in stored] == uids
    assert sorted(archive.read(p) for _, p in stored) == sorted(mails)
    # no file of the rolled-back attempt is left besides the stored ones
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert files == sorted(p for _, p in stored)
    assert all(b"\\Seen" in flags for _, flags in server_state().values())


def test_new_mail_already_stored_is_a_duplicate_and_keeps_its_files(db, mailbox, store):
    location = mailcorpus.add_location(
        db, "inbox", "imap_test", store_attachments=True, after_import="none"
    )
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "in@example.com", "Beleg"
    msg["Date"], msg["Message-ID"] = "Fri, 01 Mar 2024 10:00:00 +0000", "<dup@example.org>"
    msg.set_content("see attachment\n")
    msg.add_attachment(b"%PDF-1.4 x", maintype="application", subtype="pdf", filename="b.pdf")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    append([raw, raw])  # the same mail twice in one chunk, then again in a later run

    first = import_location(location)
    with db.cursor() as cur:
        cur.execute("UPDATE mail.import_watermarks SET last_uid = 0")
    db.commit()
    second = import_location(location)

    assert (first.new, first.duplicates, second.new, second.duplicates) == (1, 1, 0, 2)
    ((eml, att),) = rows(
        db,
        "SELECT m.eml_path, a.path FROM mail.messages m JOIN mail.attachments a"
        " ON a.message_id = m.id",
    )
    assert archive.read(eml) == raw and archive.read(att) == b"%PDF-1.4 x"


def test_attachments_not_stored_are_still_measured_and_hashed(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test")  # store_attachments off
    content = os.urandom(5000)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "in@example.com", "Beleg"
    msg["Date"], msg["Message-ID"] = "Fri, 01 Mar 2024 10:00:00 +0000", "<att@example.org>"
    msg.set_content("see attachment\n")
    msg.add_attachment(content, maintype="application", subtype="pdf", filename="b.pdf")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    append([raw, mailcorpus.simple(1)])

    summary = import_location(location)

    assert (summary.new, summary.malformed) == (2, 0)
    assert rows(db, "SELECT filename, size_bytes, sha256, path FROM mail.attachments") == [
        ("b.pdf", len(content), hashlib.sha256(content).hexdigest(), None)
    ]
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert files == sorted(p for (p,) in rows(db, "SELECT eml_path FROM mail.messages"))
