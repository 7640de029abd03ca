"""Sent mail archived as mail: the exact bytes, the header facts decoded, once."""

from __future__ import annotations

from erpmail.core import archive
from erpmail.core.db import transaction
from erpmail.outbound import dispatch as dispatcher
from erpmail.outbound.sentarchive import archive_sent
from tests.mailaccounts import account_on
from tests.outboxmail import enqueue_many


def test_each_sent_mail_is_archived_once_with_its_decoded_headers(
    db, monkeypatch, smtp_server, tmp_path
):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    account = account_on(db, monkeypatch, smtp_server)
    ids = enqueue_many(
        db,
        account,
        3,
        subject="Zahlungserinnerung – Müller & Söhne",
        header_to=["Kö <k@x.example>"],
    )

    summary = dispatcher.dispatch()

    assert (summary.sent, summary.archived) == (3, 3)
    assert archive_sent(db) == 0  # nothing left, nothing twice
    with transaction(db) as cur:
        cur.execute(
            "SELECT m.outbox_id, m.subject, m.from_name, m.from_address, m.to_addresses,"
            " m.eml_path, o.mime FROM mail.messages m JOIN mail.outbox o ON o.id = m.outbox_id"
            " WHERE m.direction = 'out' ORDER BY m.outbox_id"
        )
        stored = cur.fetchall()
    assert [row[0] for row in stored] == ids
    for _, subject, name, address, to, path, mime in stored:
        assert (subject, name, address, to) == (
            "Zahlungserinnerung – Müller & Söhne",
            "Buchhaltung",
            "ar@demo.example",
            ["k@x.example"],
        )
        assert archive.read(path) == bytes(mime)


def test_a_message_that_keeps_no_copy_is_neither_archived_nor_filed(
    db, monkeypatch, smtp_server, tmp_path
):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    account = account_on(db, monkeypatch, smtp_server)
    kept, unkept = enqueue_many(db, account, 2)
    with transaction(db) as cur:
        cur.execute("UPDATE mail.outbox SET keep_copy = false WHERE id = %s", (unkept,))
        cur.execute(
            "UPDATE mail.accounts SET sent_folder = 'Sent', sent_folder_conn_id = 'imap_nowhere'"
            " WHERE id = %s",
            (account.id,),
        )

    summary = dispatcher.dispatch(account=account.name, budget_seconds=5)
    # the one without a copy is done with its verdict: the archiver never takes it up
    assert (summary.sent, summary.archived) == (2, 1)

    with transaction(db) as cur:
        cur.execute(
            "SELECT o.id, o.sent_copy, o.sent_archived_at IS NOT NULL, m.id IS NOT NULL"
            " FROM mail.outbox o LEFT JOIN mail.messages m ON m.outbox_id = o.id ORDER BY o.id"
        )
        rows = cur.fetchall()
    # the kept one waits for its Sent-folder copy (no IMAP here) and is archived; the other
    # is marked done without a copy anywhere
    assert rows == [(kept, "pending", True, True), (unkept, "none", True, False)]
