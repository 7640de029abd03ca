"""Storing imported mail: once per location by content hash (a shared Message-ID makes a new
mail), the .eml and attachment files beside their rows, nothing left of an attempt that did
not keep its row."""

from __future__ import annotations

import hashlib
import os
import threading
from email.message import EmailMessage

import pytest

from erpmail.core import archive, inventory
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows, server_state


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
    assert inventory.check().clean


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
    assert inventory.check().clean


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


def _variant(n: int, msgid: str, **headers) -> bytes:
    return mailcorpus.simple(n, **headers).replace(
        f"<simple-{n}@example.org>".encode(), msgid.encode()
    )


def test_same_message_id_other_bytes_is_a_new_mail_and_the_server_waits_for_both(
    db, mailbox, store
):
    location = mailcorpus.add_location(db, "inbox", "imap_test", after_import="delete")
    msgid = "<reused@example.org>"
    original = _variant(1, msgid, subject="Rechnung 4711")
    variants = [
        original,
        _variant(1, msgid, subject="Fwd: Rechnung 4711"),  # a forwarded copy
        _variant(1, msgid, subject="Rechnung 4711", X_Resent="yes"),  # a resend
        _variant(2, msgid, sender="mailer-daemon@example.org", subject="Undelivered"),  # bounce
        *(_variant(10 + n, msgid, subject=f"Newsletter {n}") for n in range(4)),  # reused ids
    ]
    assert len(set(variants)) == 8
    uids = append([*variants, original])  # and one true duplicate
    stops = []

    def stop(point: str) -> None:
        if point == "after_commit":
            stops.append(point)
            raise RuntimeError("stopped between the commit and the server change")

    with pytest.raises(RuntimeError):
        import_location(location, fault=stop)

    # all eight are committed, and the server was not touched before that
    stored = rows(
        db, "SELECT id, sha256, eml_path, shares_message_id_with FROM mail.messages ORDER BY id"
    )
    assert len(stored) == 8 and len(server_state()) == 9
    assert {archive.read(p) for _, _, p, _ in stored} == set(variants)
    first = stored[0][0]
    assert archive.read(stored[0][2]) == original and stored[0][3] is None
    assert [shared for _, _, _, shared in stored[1:]] == [first] * 7

    summary = import_location(location)

    assert (summary.new, summary.duplicates) == (0, 9)
    assert server_state() == {}
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(8,)]
    assert max(uids) == rows(db, "SELECT last_uid FROM mail.import_watermarks")[0][0]


def test_a_long_non_latin_attachment_name_and_message_id_are_archived(db, mailbox, store):
    location = mailcorpus.add_location(db, "inbox", "imap_test", store_attachments=True)
    name = "請求書の明細" * 20 + ".pdf"  # 124 characters, 364 bytes
    msgid = "<" + "\U0001f4e7" * 700 + "@example.org>"  # 2800 bytes: over a btree entry
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "in@example.com", "請求書"
    msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0000"
    msg.set_content("see attachment\n")
    msg.add_attachment(b"%PDF-1.4 x", maintype="application", subtype="pdf", filename=name)
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", utf8=True))
    raw = raw.replace(b"Subject:", b"Message-ID: " + msgid.encode() + b"\r\nSubject:", 1)
    append([raw])

    summary = import_location(location)
    again = import_location(location)

    assert (summary.new, summary.failed, summary.errors, again.candidates) == (1, 0, 0, 0)
    ((message_id, status, eml),) = rows(
        db, "SELECT message_id, status, eml_path FROM mail.messages"
    )
    assert message_id == msgid and status != "failed" and archive.read(eml) == raw
    ((stored_name, path),) = rows(db, "SELECT filename, path FROM mail.attachments")
    assert stored_name.endswith(".pdf") and stored_name.startswith("請求書の明細")
    assert len(stored_name.encode()) <= 200 and archive.read(path) == b"%PDF-1.4 x"
