"""Import locations: one mailbox folder each, as configured in ``mail.import_locations``."""

from __future__ import annotations

from dataclasses import dataclass

LOCATION_COLUMNS = """id, name, conn_id, folder, after_import, move_to, archive_folder,
    archive_subfolder, store_attachments, link_keywords, max_message_bytes, ticket_enabled,
    ticket_project_id, ticket_queue, autoreply_enabled, autoreply_account_id,
    autoreply_subject, autoreply_body, notify_address, enabled, language"""
LOCATION_BY_ID = f"SELECT {LOCATION_COLUMNS} FROM mail.import_locations WHERE id = %s"  # noqa: S608
ENABLED_LOCATIONS = "SELECT id FROM mail.import_locations WHERE enabled ORDER BY id"


@dataclass(frozen=True)
class Location:
    """One mailbox folder to import, as configured in ``mail.import_locations``."""

    id: int
    name: str
    conn_id: str
    folder: str
    after_import: str
    move_to: str | None
    archive_folder: str
    archive_subfolder: str
    store_attachments: bool
    link_keywords: dict
    max_message_bytes: int
    ticket_enabled: bool
    ticket_project_id: int | None
    ticket_queue: str
    autoreply_enabled: bool
    autoreply_account_id: int | None
    autoreply_subject: str | None
    autoreply_body: str | None
    notify_address: str | None
    enabled: bool
    language: str | None = None  # autoreply and alert language; None: the default (de)


def load_location(cur, location_id: int) -> Location:
    """The location row; a clear error when it does not exist."""
    cur.execute(LOCATION_BY_ID, (location_id,))
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"import location {location_id} does not exist")
    values = list(row)
    values[9] = values[9] or {}
    return Location(*values)


def enabled_location_ids(cur) -> list[int]:
    """Ids of the locations the scheduled import runs for."""
    cur.execute(ENABLED_LOCATIONS)
    return [row[0] for row in cur.fetchall()]
