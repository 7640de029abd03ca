"""The mailbox import against Dovecot and PostgreSQL: stored once, linked, nothing lost."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import pytest

from erpmail.core import archive
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location, import_message
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows, server_state


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


def _import_in_child(location: int, out: str) -> None:
    """Run the import as an executor runs a task: in a process of its own (daemonic, like a
    Celery prefork child, which may not start children). Writes what it saw to ``out``."""
    import psutil

    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    records = logging.handlers.BufferingHandler(100_000)
    logger = logging.getLogger("erpmail.inbound")  # the import and its modules
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
