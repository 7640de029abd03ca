"""Filing one received mail: stored raw, parsed, linked, its case and autoreply; or, when
that fails, kept raw with status ``failed`` and retried later from the archive.

The import files most mails a chunk at a time (``store.store_chunk``); a mail goes through
here alone when a ticket or an autoreply may depend on the mail before it, when it is large,
when its chunk failed, and when it is retried. The caller owns the transaction and the
savepoint around each mail.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import date, datetime

from erpmail.campaigns import unsubscribe
from erpmail.core import archive, clock, db, locks
from erpmail.inbound import autoreply, bounces, linking, parse, pending, store, tickets
from erpmail.inbound.locations import Location
from erpmail.inbound.store import Stored

log = logging.getLogger(__name__)

# Mails up to this size are parsed from the fetched bytes and stored a chunk at a time;
# larger ones alone, the fetched copy dropped and the stored file parsed, to bound memory.
PARSE_FROM_STORE_BYTES = 4 * 1024 * 1024
# A mail kept raw as failed is retried by the next runs until it has failed this often; by
# hand (``retry`` with its id) any time.
MAX_ATTEMPTS = 3
RETRY_BATCH = 100

RETRYABLE = """
SELECT id, eml_path, sha256, uid, uidvalidity FROM mail.messages
WHERE location_id = %s AND status = 'failed' AND attempts < %s ORDER BY id LIMIT %s"""
FAILED_BY_ID = """
SELECT id, eml_path, sha256, uid, uidvalidity FROM mail.messages
WHERE location_id = %s AND status = 'failed' AND id = ANY(%s) ORDER BY id"""
DROP_FAILED = "DELETE FROM mail.messages WHERE id = %s AND status = 'failed'"
FAILED_AGAIN = "UPDATE mail.messages SET attempts = attempts + 1, failure = %s WHERE id = %s"


def import_message(
    cur,
    location: Location,
    raw: bytes,
    *,
    uid: int | None = None,
    uidvalidity: int | None = None,
    received: datetime | None = None,
    day: date | None = None,
) -> Stored:
    """Store one raw mail for a location in the caller's transaction (idempotent)."""
    sha = hashlib.sha256(raw).hexdigest()
    attempt = store.Attempt(None)
    cur.execute("SAVEPOINT import_message")
    try:
        stored = file_one(
            cur,
            location,
            [raw],
            sha,
            store.eml_key(location, sha, received),
            uid,
            uidvalidity,
            day or clock.today(),
            attempt,
        )
    except BaseException:
        cur.execute("ROLLBACK TO SAVEPOINT import_message")
        store.forget(cur, attempt.keys)
        raise
    cur.execute("RELEASE SAVEPOINT import_message")
    return stored


def file_one(
    cur,
    location: Location,
    box: list[bytes],
    sha: str,
    key: str,
    uid: int | None,
    uidvalidity: int | None,
    day: date,
    attempt: store.Attempt,
    retry_of: int | None = None,
) -> Stored:
    # The raw bytes come in a box so that, for a large mail, the only reference can be
    # dropped once the .eml is stored and the parse reads the file instead. ``retry_of``: the
    # row of a failed import of this mail, whose .eml is stored already and whose id it keeps.
    raw = box.pop()
    size = len(raw)
    big = size > PARSE_FROM_STORE_BYTES
    if retry_of is None:
        found = store.existing(cur, location, sha)
        if found is not None:
            return Stored(found, False, "duplicate")
        attempt.will_write([key])
        cur.execute(locks.ARCHIVE_FILES_SHARED)
        archive.store(key, raw)
    if big:
        del raw
        raw = None  # far larger than any bounce
        with archive.path_of(key).open("rb") as stream:
            parsed = parse.parse(stream)
    else:
        parsed = parse.parse(raw)
    stored = _file(cur, location, parsed, key, sha, size, uid, uidvalidity, day, attempt, retry_of)
    if stored.new:
        bounces.file_received(cur, [(stored.message_row_id, raw, parsed.from_address)])
        unsubscribe.by_mail(cur, parsed.to_addresses + parsed.cc_addresses)
    else:
        store.forget(cur, attempt.keys)
    return stored


def _file(
    cur,
    location: Location,
    parsed: parse.ParsedMail,
    key: str,
    sha: str,
    size: int,
    uid: int | None,
    uidvalidity: int | None,
    day: date,
    attempt: store.Attempt,
    retry_of: int | None,
) -> Stored:
    links = linking.find_links(
        cur,
        subject=parsed.subject,
        from_address=parsed.from_address,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        keywords=location.link_keywords,
        body=parsed.body_text,
    )
    # a mail in a ticket location always ends up with its case
    linked = links or (location.ticket_enabled and not parsed.malformed)
    status = "malformed" if parsed.malformed else ("linked" if linked else "unlinked")
    defect_count = len(parsed.defects[: store.MAX_DEFECTS])
    mail_id = store.insert_message(
        cur,
        location,
        parsed,
        key=key,
        sha=sha,
        size=size,
        uid=uid,
        uidvalidity=uidvalidity,
        status=status,
        row_id=retry_of,
    )
    if mail_id is None:  # the same bytes were stored meanwhile
        return Stored(store.existing(cur, location, sha), False, "duplicate")
    store.mark_shared(cur, [mail_id])
    store.store_attachments(cur, location, parsed, mail_id, key, attempt)
    ticket = None
    if location.ticket_enabled and not parsed.malformed:
        ticket = tickets.open_or_join(
            cur,
            case_ids=[link.entity_id for link in links if link.entity_type == "case"],
            subject=parsed.subject,
            queue=location.ticket_queue,
            project_id=location.ticket_project_id,
            partner_id=next((x.entity_id for x in links if x.entity_type == "partner"), None),
        )
        if ticket.opened:
            links.append(linking.Link("case", ticket.case_id, "ticket"))
    linking.store_links(cur, mail_id, links)
    if len(parsed.defects[: store.MAX_DEFECTS]) != defect_count:  # the attachments had more
        status = "malformed"
        store.set_malformed(cur, mail_id, parsed)
    if location.autoreply_enabled and not parsed.malformed:
        autoreply.autoreply(
            cur,
            location_id=location.id,
            account_id=location.autoreply_account_id,
            language=location.language,
            subject_template=location.autoreply_subject,
            body_template=location.autoreply_body,
            sender=parsed.from_address,
            headers=parsed.headers,
            subject=parsed.subject,
            message_id=parsed.message_id,
            references=parsed.references,
            ticket=ticket,
            day=day,
        )
    return Stored(mail_id, True, status)


def retry_failed(
    conn,
    location: Location,
    day: date,
    *,
    ids: Sequence[int] | None = None,
    journal: pending.Journal | None = None,
) -> int:
    """Import again, from their stored .eml, the location's mails kept as failed: ``ids``, or
    those tried fewer than ``MAX_ATTEMPTS`` times; how many went in now. The caller holds the
    location's lock."""
    own = journal is None
    journal = journal or pending.Journal(location.id)
    done = 0
    try:
        with db.transaction(conn) as cur:
            if ids is None:
                cur.execute(RETRYABLE, (location.id, MAX_ATTEMPTS, RETRY_BATCH))
            else:
                cur.execute(FAILED_BY_ID, (location.id, list(ids)))
            keys: list[str] = []
            entries: list[int] = []
            for mail_id, key, sha, uid, uidvalidity in cur.fetchall():
                attempt = store.Attempt(journal)
                attempt.will_write([key])  # its attachments go beside it
                cur.execute("SAVEPOINT retry")
                try:
                    raw = archive.read(key)
                    cur.execute(DROP_FAILED, (mail_id,))
                    stored = file_one(
                        cur, location, [raw], sha, key, uid, uidvalidity, day, attempt, mail_id
                    )
                except Exception as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT retry")
                    store.forget(cur, [k for k in attempt.keys if k != key])
                    cur.execute(FAILED_AGAIN, (store.failure_reason(exc), mail_id))
                    log.warning("%s: failed mail #%s failed again", location.name, mail_id)
                else:
                    cur.execute("RELEASE SAVEPOINT retry")
                    keys.extend(attempt.keys)
                    done += 1
                    log.info(
                        "%s: failed mail #%s imported: %s", location.name, mail_id, stored.status
                    )
                entries.extend(attempt.entries)
            archive.sync(keys)
            pending.clear(cur, entries)
    finally:
        if own:
            journal.close()
    return done


def keep_failed(
    cur,
    location: Location,
    uid: int,
    uidvalidity: int,
    attempt: store.Attempt,
    exc: Exception,
    sha: str,
    key: str,
    size: int,
    head: bytes,
) -> Stored | None:
    """After a mail's import failed and was rolled back: keep its stored raw .eml with a row
    ``failed`` (None when not even the raw could be stored: it stays on the server)."""
    store.forget(cur, [k for k in attempt.keys if k != key])  # the attempt's attachments
    reason = store.failure_reason(exc)
    if key in attempt.keys and archive.exists(key):
        try:
            mail_id = store.insert_failed(
                cur,
                location,
                key=key,
                sha=sha,
                size=size,
                uid=uid,
                uidvalidity=uidvalidity,
                head=head,
                reason=reason,
            )
        except Exception:
            cur.execute("ROLLBACK TO SAVEPOINT mail")
            log.exception("%s: UID %s: could not record the failed import", location.name, uid)
        else:
            log.error(
                "%s: UID %s could not be imported (%s); kept raw as failed mail #%s",
                location.name,
                uid,
                reason,
                mail_id,
                exc_info=exc,
            )
            if mail_id is not None:
                return Stored(mail_id, True, "failed")
            return Stored(store.existing(cur, location, sha), False, "duplicate")
    store.forget(cur, [key])
    log.error(
        "%s: UID %s could not be stored (%s); left on the server",
        location.name,
        uid,
        reason,
        exc_info=exc,
    )
    return None
