"""The events themselves (``erp.events``): written by the ERP, by erpmail's triggers or by
``record``; claimed once by the one ``event_mail`` run that locks them; finished with an
outcome. A secret in a payload (a password-reset link) is removed once its mail is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

# Payload fields that must not outlive the mail they are sent in.
SECRET_FIELDS = ("reset_link", "token")
REMOVED = "[removed after sending]"

INSERT = """
INSERT INTO erp.events (type, payload, company, partner_id, dedup_key)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id"""
# Oldest first; the lock keeps a second run (or a concurrent one) off the same events.
CLAIM = """
SELECT e.id, e.type, e.payload, e.company, e.partner_id, e.created_at
  FROM erp.events e
 WHERE e.processed_at IS NULL
 ORDER BY e.id LIMIT %s
   FOR UPDATE SKIP LOCKED"""
FINISH = """
UPDATE erp.events SET processed_at = now(), outcome = %s, detail = %s,
       payload = CASE WHEN %s THEN payload || %s ELSE payload END
 WHERE id = %s AND processed_at IS NULL"""


@dataclass(frozen=True)
class Event:
    """One claimed event."""

    id: int
    type: str
    payload: dict[str, Any]
    company: str | None
    partner_id: int | None
    created_at: datetime

    def field(self, name: str) -> Any:
        """A payload field the mail needs; ValueError naming the event and field if missing."""
        value = self.payload.get(name)
        if value in (None, ""):
            raise ValueError(f"event {self.id} ({self.type}): payload field {name!r} is missing")
        return value


def record(
    cur,
    event_type: str,
    payload: dict[str, Any],
    *,
    company: str | None = None,
    partner_id: int | None = None,
    dedup_key: str | None = None,
) -> int | None:
    """Write an event in the caller's transaction; its id (None: its ``dedup_key`` exists)."""
    cur.execute(INSERT, (event_type, Json(payload), company, partner_id, dedup_key))
    row = cur.fetchone()
    return row[0] if row else None


def claim(cur, limit: int) -> list[Event]:
    """Lock up to ``limit`` unprocessed events, oldest first, for the caller's transaction."""
    cur.execute(CLAIM, (limit,))
    return [Event(*row) for row in cur.fetchall()]


def finish(cur, event: Event, outcome: str, detail: str | None = None) -> None:
    """Mark the event with its outcome; its secret fields are removed from the payload."""
    secrets = {name: REMOVED for name in SECRET_FIELDS if name in event.payload}
    cur.execute(FINISH, (outcome, detail, bool(secrets), Json(secrets), event.id))
