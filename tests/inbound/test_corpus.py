"""Over the whole corpus (over 150 mails of every shape), on each import path: every mail the
server took is archived byte for byte or kept raw as failed, exactly once; a second run
fetches nothing and imports nothing; the archive check is clean."""

from __future__ import annotations

import pytest

from erpmail.core import archive, inventory
from erpmail.inbound.imap import ImapHook
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import rows, server_state


def _append_all(mails: list[bytes]) -> dict[int, bytes]:
    """Append what Dovecot takes; the server's bytes by UID (it rewrites NUL and bare LF)."""
    with ImapHook("imap_test").client() as client:
        for raw in mails:
            try:
                client.append("INBOX", raw)
            except Exception:  # e.g. a mail Dovecot refuses outright
                continue
    return {uid: raw for uid, (raw, _) in server_state().items()}


def _assert_every_mail_kept_once(db, served: dict[int, bytes], location: int) -> None:
    stored = rows(
        db, "SELECT uid, status, eml_path FROM mail.messages WHERE location_id = %s", location
    )
    by_uid = {uid: (status, path) for uid, status, path in stored}
    assert len(stored) == len(by_uid) == len(served), "appended = archived + failed"
    assert sorted(by_uid) == sorted(served)
    for uid, raw in served.items():
        assert archive.read(by_uid[uid][1]) == raw, f"UID {uid} stored as served"
    report = inventory.check()
    assert report.clean and report.journaled == [], str(report)


@pytest.mark.parametrize("path", ["together", "one by one"])
def test_every_shape_archived_once_then_nothing_fetched(
    seeded_db, mailbox, store, make_location, path
):
    facts = mailcorpus.facts(seeded_db)
    mails = mailcorpus.every_shape(facts)
    assert len(mails) >= 150
    if path == "together":
        location = mailcorpus.add_location(
            seeded_db,
            "inbox",
            "imap_test",
            link_keywords=mailcorpus.KEYWORDS,
            store_attachments=True,
            after_import="none",
        )
    else:  # a ticket location files every mail alone, with its case and autoreply
        location = make_location(store_attachments=True, after_import="none")
    served = _append_all(mails)
    assert len(served) >= 150

    first = import_location(location, fetch_chunk=40)

    assert (first.errors, first.duplicates) == (0, 0)
    assert first.new == len(served)
    _assert_every_mail_kept_once(seeded_db, served, location)
    failed = rows(seeded_db, "SELECT count(*) FROM mail.messages WHERE status = 'failed'")
    assert failed == [(first.failed,)]

    again = import_location(location, fetch_chunk=40)

    assert (again.candidates, again.new, again.duplicates, again.retried) == (0, 0, 0, 0)
    _assert_every_mail_kept_once(seeded_db, served, location)
