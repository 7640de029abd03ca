"""The IMAP folder and the rows the import tests look at: mails appended through the
connection ``imap_test`` (the ``mailbox`` fixture), the folder read back, rows queried."""

from __future__ import annotations

from datetime import datetime

from erpmail.inbound.imap import ImapHook


def append(mails: list[bytes], folder: str = "INBOX", when: datetime | None = None) -> list[int]:
    """Append ``mails`` to ``folder`` (made when missing); their UIDs."""
    with ImapHook("imap_test").client() as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        uids = []
        for raw in mails:
            reply = client.append(folder, raw, msg_time=when)
            uids.append(int(reply.split(b"APPENDUID ")[1].split()[1].rstrip(b"]")))
        return uids


def server_state(folder: str = "INBOX") -> dict[int, tuple[bytes, tuple]]:
    """UID -> (raw bytes, flags) of every mail in ``folder``."""
    with ImapHook("imap_test").client() as client:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        return {u: (d[b"BODY[]"], d[b"FLAGS"]) for u, d in data.items()}


def rows(conn, sql: str, *args) -> list[tuple]:
    """All rows of ``sql``, the transaction ended."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        out = cur.fetchall()
    conn.commit()
    return out
