"""A mail whose import fails: kept raw with status ``failed``, the server and the watermark
move on past it, later runs retry it from the archive, never from the server."""

from __future__ import annotations

from erpmail.core import archive, inventory
from erpmail.inbound import filing, importer, parse
from erpmail.inbound.importer import import_location
from tests import mailcorpus
from tests.inbound.imapfolder import append, rows, server_state

_original_parse = parse.parse


def _breaks_on_marker(monkeypatch) -> None:
    """Parsing fails for mails with an X-Break header: a fault no real mail produces, since
    the parser reports damage as defects."""

    def parse_or_fail(source):
        if isinstance(source, bytes) and b"X-Break: yes" in source:
            raise RuntimeError("parser bug on purpose")
        return _original_parse(source)

    monkeypatch.setattr(parse, "parse", parse_or_fail)


def test_a_mail_that_fails_is_kept_raw_marked_failed_and_retried_from_the_archive(
    db, mailbox, store, monkeypatch
):
    location = mailcorpus.add_location(
        db, "inbox", "imap_test", store_attachments=True, notify_address="ops@example.com"
    )
    mailcorpus.add_account(db)
    broken = mailcorpus.simple(2, X_Break="yes")
    mails = [mailcorpus.simple(1), broken, mailcorpus.simple(3)]
    uids = append(mails)
    _breaks_on_marker(monkeypatch)

    first = import_location(location)

    assert (first.new, first.failed, first.errors) == (3, 1, 0)
    ((failed_id, status, failure, attempts, eml, subject, msgid),) = rows(
        db,
        "SELECT id, status, failure, attempts, eml_path, subject, message_id"
        " FROM mail.messages WHERE status = 'failed'",
    )
    assert failure == "RuntimeError: parser bug on purpose" and attempts == 1
    assert archive.read(eml) == broken  # the raw bytes, as served
    assert (subject, msgid) == ("Mail 2", "<simple-2@example.org>")
    # the server moved on past it: all three flagged, the watermark at the top
    assert all(b"\\Seen" in flags for _, flags in server_state().values())
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(max(uids),)]
    # an event for the unlinked-mail digest, with its reason
    ((payload,),) = rows(
        db, "SELECT payload FROM erp.events WHERE dedup_key = %s", f"mail_unlinked:{failed_id}"
    )
    assert payload["failure"] == "RuntimeError: parser bug on purpose"
    assert payload["notify_address"] == "ops@example.com"

    second = import_location(location)  # still failing: retried from the archive only

    assert (second.candidates, second.new, second.retried) == (0, 0, 0)
    assert rows(db, "SELECT attempts FROM mail.messages WHERE id = %s", failed_id) == [(2,)]

    monkeypatch.setattr(parse, "parse", _original_parse)
    third = import_location(location)

    assert (third.candidates, third.retried) == (0, 1)
    assert rows(
        db, "SELECT status, failure, attempts, eml_path FROM mail.messages WHERE id = %s", failed_id
    ) == [("unlinked", None, 0, eml)]
    assert rows(db, "SELECT count(*) FROM mail.messages") == [(3,)]
    assert inventory.check().clean


def test_retries_stop_after_the_limit_and_go_on_by_hand(db, mailbox, store, monkeypatch):
    location = mailcorpus.add_location(db, "inbox", "imap_test")
    append([mailcorpus.simple(1, X_Break="yes")])
    _breaks_on_marker(monkeypatch)
    for _ in range(filing.MAX_ATTEMPTS + 2):
        import_location(location)
    ((mail_id, attempts),) = rows(db, "SELECT id, attempts FROM mail.messages")
    assert attempts == filing.MAX_ATTEMPTS

    monkeypatch.setattr(parse, "parse", _original_parse)
    assert importer.retry(location, [mail_id]) == 1

    assert rows(db, "SELECT id, status FROM mail.messages") == [(mail_id, "unlinked")]


def test_a_mail_whose_raw_cannot_be_stored_stays_on_the_server_and_holds_the_watermark(
    db, mailbox, store, monkeypatch
):
    location = mailcorpus.add_location(db, "inbox", "imap_test", autoreply_enabled=False)
    uids = append([mailcorpus.simple(n) for n in range(3)])
    original = archive.store

    def full_disk(key, data):  # a full disk on one file: a fault hard to make for real
        if b"Mail 1\r\n" in data:
            raise OSError(28, "No space left on device")
        return original(key, data)

    monkeypatch.setattr(archive, "store", full_disk)
    monkeypatch.setattr(filing, "PARSE_FROM_STORE_BYTES", 0)  # each mail alone, through filing

    summary = import_location(location)

    assert (summary.new, summary.errors) == (2, 1)
    state = server_state()
    assert b"\\Seen" not in state[uids[1]][1] and b"\\Seen" in state[uids[0]][1]
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(0,)]
    monkeypatch.setattr(archive, "store", original)

    again = import_location(location)

    assert (again.new, again.duplicates) == (1, 2)
    assert rows(db, "SELECT last_uid FROM mail.import_watermarks") == [(max(uids),)]
    assert inventory.check().clean
