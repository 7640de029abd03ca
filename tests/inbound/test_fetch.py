"""The IMAP side of the import against Dovecot: the watermark, UIDVALIDITY, backfill
intervals, the size limit, and the server changed only after the commit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erpmail.core import inventory
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location, import_message
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows, server_state

ROOT = Path(__file__).resolve().parents[2]


CRASH_SCRIPT = """
import os, sys
sys.path[:0] = [{plugins!r}, {root!r}]
from erpmail.inbound import importer
importer.import_location({location}, fetch_chunk=5, fault=lambda point: point == "after_commit" and os._exit(137))
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
    assert inventory.check().clean


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
