"""A run killed between writing files and committing their rows: the next run removes the
files, imports the mails once, and the archive check is clean."""

from __future__ import annotations

import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from erpmail.core import archive, inventory
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows

ROOT = Path(__file__).resolve().parents[2]
KILL_SCRIPT = """
import os, sys
sys.path[:0] = [{plugins!r}, {root!r}]
from erpmail.inbound import importer
importer.import_location({location}, fetch_chunk=4, fault=lambda p: p == {point!r} and os._exit(137))
"""


def _with_attachment(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"p{n}@example.org", "in@example.com", f"Beleg {n}"
    msg["Date"], msg["Message-ID"] = "Fri, 01 Mar 2024 10:00:00 +0000", f"<att-{n}@example.org>"
    msg.set_content("see attachment\n")
    msg.add_attachment(
        f"%PDF-1.4 {n}".encode(), maintype="application", subtype="pdf", filename=f"beleg-{n}.pdf"
    )
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _kill(location: int, point: str) -> None:
    script = KILL_SCRIPT.format(
        plugins=str(ROOT / "plugins"), root=str(ROOT), location=location, point=point
    )
    killed = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), check=False)
    assert killed.returncode == 137


def _files(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def test_killed_between_file_write_and_commit_leaves_nothing_after_the_next_run(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test", store_attachments=True)
    mails = [_with_attachment(n) for n in range(6)] + [mailcorpus.simple(n) for n in range(4)]
    append(mails)

    _kill(location, "before_commit")

    # files of the first chunk are on disk, no row names them; the journal does
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(0,)]
    left = _files(store)
    assert len(left) == 8  # 4 .eml and their 4 attachments
    report = inventory.check()
    assert report.orphans == [] and sorted(report.journaled) == left

    summary = import_location(location, fetch_chunk=4)

    assert (summary.swept, summary.new) == (8, 10)
    report = inventory.check()
    assert report.clean and report.journaled == [] and report.files == report.named == 16
    stored = rows(db, "SELECT eml_path FROM mail.messages")
    assert sorted(archive.read(p) for (p,) in stored) == sorted(mails)
    assert rows(db, "SELECT count(*) FROM mail.import_pending_files") == [(0,)]


def test_a_single_mail_killed_before_its_commit_is_swept_too(db, mailbox, make_location, store):
    location = make_location(store_attachments=True)  # tickets: every mail stored alone
    append([_with_attachment(1), _with_attachment(2)])

    _kill(location, "before_commit")

    assert len(_files(store)) == 4 and inventory.check().orphans == []

    summary = import_location(location)

    assert (summary.swept, summary.new) == (4, 2)
    assert inventory.check().clean and len(_files(store)) == 4
