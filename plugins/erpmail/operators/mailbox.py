"""Operators for mail coming in (``erpmail.inbound``): the locations to import, the import
of a mailbox location, and linking a stored mail by hand.

Their options are template fields: a DAG that fills them from its params or its data interval
(``"{{ params.location }}"``, ``"{{ data_interval_start }}"``) sets
``render_template_as_native_obj=True``, so an empty field stays None, a number a number and
a time a time; an empty text is read as not given, an ISO 8601 text as a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#e6f3e0"


def _given(value: Any) -> Any:
    """None for an option left empty (None, "" or the text a non-native template renders)."""
    return None if value is None or value in ("", "None") else value


def _time(name: str, value: Any) -> datetime | None:
    """A point in time given as a datetime or as ISO 8601 text; None when not given."""
    value = _given(value)
    if value is None or isinstance(value, datetime):
        return value
    import pendulum

    try:
        return pendulum.parse(str(value))
    except Exception as exc:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 time") from exc


class MailboxLocationsOperator(BaseOperator):
    """The ids of the import locations to run (``mail.import_locations``): the one asked for,
    refused when it does not exist, or every enabled one. Meant as the input of a mapped
    ``ImportMailboxOperator``: ``.partial(...).expand(location=<this task>.output)``.

    :param location: the location id; None: every enabled location (templated)
    """

    template_fields: Sequence[str] = ("location",)
    ui_color = UI_COLOR

    def __init__(self, *, location: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.location = location

    def execute(self, context: Any) -> list[int]:
        from erpmail.core import db
        from erpmail.inbound import locations

        location = _given(self.location)
        with db.transaction() as cur:
            if location is not None:
                return [locations.load_location(cur, int(location)).id]
            return locations.enabled_location_ids(cur)


class ImportMailboxOperator(BaseOperator):
    """Import the mail of one location (or of every enabled one, in turn) over its IMAP
    connection: new mail above the location's watermark, or, with ``since`` and ``until``,
    every mail received in that interval that is not stored yet (a backfill or a rescan).

    Each mail's raw bytes are stored and its row committed before the server is touched
    (flagged as seen, moved or deleted, as the location says); a crash in between only means
    the next run recognises the same mails. A per-location lock keeps two imports of the same
    location apart (the second waits). Mail over the location's size limit stays on the
    server and is recorded. Unlinked and failed mail become ``mail_unlinked`` events (the
    ``event_mail`` DAG sends their digest to the location's notification address). Returns the counts (new, linked, unlinked, malformed, duplicates,
    oversize, failed, ...) for XCom; for every location, a list of them under ``locations``.

    :param location: the location id (``mail.import_locations.id``); None: every enabled
        location (templated)
    :param since: start of the interval to scan, inclusive; a datetime or ISO 8601 text, e.g.
        ``"{{ data_interval_start }}"``; None: new mail above the watermark (templated)
    :param until: end of the interval to scan, exclusive; given together with ``since``
        (templated)
    """

    template_fields: Sequence[str] = ("location", "since", "until")
    ui_color = UI_COLOR

    def __init__(
        self,
        *,
        location: Any = None,
        since: Any = None,
        until: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.location, self.since, self.until = location, since, until

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.core import db
        from erpmail.inbound import importer, locations

        since, until = _time("since", self.since), _time("until", self.until)
        if (since is None) != (until is None):
            raise AirflowFailException("since and until go together (scan_from and scan_to)")
        location = _given(self.location)
        if location is not None:
            ids = [int(location)]
        else:
            with db.transaction() as cur:
                ids = locations.enabled_location_ids(cur)
        counts = []
        for location_id in ids:
            summary = importer.import_location(location_id, since=since, until=until)
            out = summary.as_dict()
            out.pop("new_ids")  # bulk data stays out of XCom
            counts.append(out)
        return counts[0] if location is not None else {"locations": counts}


class LinkMailOperator(BaseOperator):
    """Link a stored mail (or every copy of a Message-ID) by hand to a partner, contact,
    project, case or letter, with method ``manual``; an ``unlinked`` mail becomes ``linked``
    and the action is written to ``mail.audit_log``. Fails when the mail or the entity does
    not exist. Returns the ids of the mails linked.

    :param message: the mail's id (``mail.messages.id``) or its Message-ID (templated)
    :param entity_type: partner, contact, project, case or letter (templated)
    :param number: partner number, project ``12-3-1``, case (ticket) number, contact id or
        letter id (templated)
    """

    template_fields: Sequence[str] = ("message", "entity_type", "number")
    ui_color = UI_COLOR

    def __init__(self, *, message: Any, entity_type: Any, number: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message, self.entity_type, self.number = message, entity_type, number

    def execute(self, context: Any) -> dict[str, Any]:
        from erpmail.core import db
        from erpmail.inbound import linking

        with db.transaction() as cur:
            linked = linking.link_manually(
                cur, str(self.message), str(self.entity_type), str(self.number)
            )
        return {"linked": linked}
