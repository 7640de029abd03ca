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
