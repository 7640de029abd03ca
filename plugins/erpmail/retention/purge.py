"""Archive retention: purge archived mail past its policy's period, files and rows together.

Per policy (``erpmail.retention.policies``) mail archived before its cut-off date goes.
Nothing younger than the legal minimum goes (the invoice minimum for mail linked to an open
item) unless the run is forced with a reason, and mail under legal hold never goes.

Crash safety: each batch deletes its rows (attachments and links cascade) and records their
files as one row of ``mail.retention_pending_deletions`` in one transaction; the files are
removed after commit and then that row cleared. A run that died in between leaves pending
rows, and every run sweeps them first. So no row ever names a missing file, and after the
next run no file is left without its row. A file some remaining row still names (a shared
attachment) is never removed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import pendulum
import psycopg2.extensions

from erpmail.core import clock, db, locks
from erpmail.core.progress import Progress
from erpmail.retention import outbox_bytes
from erpmail.retention.deletions import FileRemoval, remove_unshared, settle, sweep_pending
from erpmail.retention.policies import Cutoffs, Policy, cutoffs, policies

log = logging.getLogger(__name__)

TIMEZONE = clock.DEFAULT_TIMEZONE
BATCH_SIZE = 1000
# One retention run at a time (its sweep would otherwise race the other's file removal).
RUN_LOCK_KEY = locks.RETENTION_RUN
RUN_LOCK_WAIT = "60s"  # a killed predecessor's session may take a moment to go away

TAKE_RUN_LOCK = "SET lock_timeout = %s; SELECT pg_advisory_lock(%s); SET lock_timeout = 0"
RELEASE_RUN_LOCK = "SELECT pg_advisory_unlock(%s)"

# {scope} is one of the fixed fragments in _SCOPES, never input.
_SCOPES = {
    "location": "m.location_id = %(location_id)s AND m.direction = 'in'",
    "sent": "m.direction = 'out'",
}
# A mail may go when it is older than the cut-off and, if linked to an open item, older
# than the invoice cut-off too. Both cut-offs already include the legal minimum unless forced.
_ELIGIBLE = """m.archived_at < %(cutoff)s
    AND (m.archived_at < %(invoice_cutoff)s OR NOT EXISTS (
        SELECT 1 FROM mail.message_links l
        WHERE l.message_id = m.id AND l.entity_type = 'open_item'))"""
_ATTACHMENT_BYTES = """coalesce((SELECT sum(a.size_bytes) FROM mail.attachments a
    WHERE a.message_id = m.id AND a.path IS NOT NULL), 0)"""

# One batch: the oldest eligible rows after the last key, locked rows skipped (the import or
# a clerk is using them; the next run takes them). Their files are recorded in the same
# transaction that deletes them; attachments and links go by ON DELETE CASCADE.
_BATCH_TEMPLATE = """
WITH victims AS (
    SELECT m.id, m.archived_at
    FROM mail.messages m
    WHERE {scope} AND NOT m.legal_hold AND {eligible}
      AND (m.archived_at, m.id) > (%(after_at)s, %(after_id)s)
    ORDER BY m.archived_at, m.id
    LIMIT %(batch_size)s
    FOR UPDATE OF m SKIP LOCKED
), attached AS (
    SELECT a.path, a.size_bytes
    FROM mail.attachments a JOIN victims v ON v.id = a.message_id
    WHERE a.path IS NOT NULL
), gone AS (
    DELETE FROM mail.messages m USING victims v WHERE m.id = v.id
    RETURNING m.eml_path, m.size_bytes
), recorded AS (
    INSERT INTO mail.retention_pending_deletions (run_id, keys)
    SELECT %(run_id)s, array_agg(f.key)
    FROM (SELECT eml_path FROM gone UNION ALL SELECT path FROM attached) f (key)
    HAVING count(*) > 0
    RETURNING id, keys
)
SELECT (SELECT count(*) FROM gone),
       (SELECT count(*) FROM attached),
       (SELECT coalesce(sum(size_bytes), 0) FROM gone)
           + (SELECT coalesce(sum(size_bytes), 0) FROM attached),
       last.archived_at, last.id,
       (SELECT id FROM recorded),
       (SELECT keys FROM recorded)
FROM (SELECT archived_at, id FROM victims ORDER BY archived_at DESC, id DESC LIMIT 1) last"""

# The dry run: per month what would go, and what the legal minimum or a hold keeps.
_REPORT_TEMPLATE = """
SELECT to_char(m.archived_at AT TIME ZONE %(tz)s, 'YYYY-MM') AS month,
       count(*) FILTER (WHERE NOT m.legal_hold AND {eligible}) AS mails,
       coalesce(sum(m.size_bytes + {attachment_bytes})
                FILTER (WHERE NOT m.legal_hold AND {eligible}), 0) AS bytes,
       count(*) FILTER (WHERE m.legal_hold) AS on_hold,
       count(*) FILTER (WHERE NOT m.legal_hold AND NOT ({eligible})) AS under_legal_minimum
FROM mail.messages m
WHERE {scope} AND m.archived_at < %(keep_cutoff)s
GROUP BY 1 ORDER BY 1"""


# A purge needs only the totals: the same filters without months and sizes (a third the cost).
_COUNT_TEMPLATE = """
SELECT count(*) FILTER (WHERE NOT m.legal_hold AND {eligible}) AS mails,
       count(*) FILTER (WHERE m.legal_hold) AS on_hold,
       count(*) FILTER (WHERE NOT m.legal_hold AND NOT ({eligible})) AS under_legal_minimum
FROM mail.messages m
WHERE {scope} AND m.archived_at < %(keep_cutoff)s"""


def _build(template: str, scope: str) -> str:
    return (
        template.replace("{eligible}", _ELIGIBLE)
        .replace("{attachment_bytes}", _ATTACHMENT_BYTES)
        .replace("{scope}", _SCOPES[scope])
    )


PURGE_BATCH = {scope: _build(_BATCH_TEMPLATE, scope) for scope in _SCOPES}
REPORT_MONTHS = {scope: _build(_REPORT_TEMPLATE, scope) for scope in _SCOPES}
COUNT_CANDIDATES = {scope: _build(_COUNT_TEMPLATE, scope) for scope in _SCOPES}

INSERT_AUDIT = """
INSERT INTO mail.audit_log (actor, action, subject, details)
VALUES (%s, %s, %s, %s::jsonb) RETURNING id"""
# Counts move with each batch in the batch's own transaction: the audit row is exact at
# every commit, even for a run killed half way.
ADD_TO_AUDIT = """
UPDATE mail.audit_log SET details = details || jsonb_build_object(
    'mails', (details->>'mails')::bigint + %(mails)s,
    'attachments', (details->>'attachments')::bigint + %(attachments)s,
    'bytes_freed', (details->>'bytes_freed')::bigint + %(bytes)s)
WHERE id = %(audit_id)s"""
FINISH_AUDIT = """
UPDATE mail.audit_log SET details = details || %s::jsonb WHERE id = %s"""
# Under the run lock no other run is active: a 'running' purge row is from a dead run.
MARK_INTERRUPTED = """
UPDATE mail.audit_log SET details = details || '{"status": "interrupted"}'::jsonb
WHERE action = 'retention_purge' AND details->>'status' = 'running'
RETURNING id"""


def _start_of(day: date) -> datetime:
    """Midnight at the start of ``day`` in the company time zone: mail archived before goes."""
    return pendulum.datetime(day.year, day.month, day.day, tz=TIMEZONE)


def check_request(*, force: bool, force_reason: str | None) -> str | None:
    """The stripped reason; ValueError when ``force`` is set without one."""
    reason = (force_reason or "").strip() or None
    if force and reason is None:
        raise ValueError(
            "force_reason: required when force is set (why may the legal minimum give way?)"
        )
    return reason


def dry_run_for(run_type: str, requested: bool) -> bool:
    """Whether a DAG run is dry: a scheduled run purges for real, any other run as requested."""
    return False if run_type == "scheduled" else requested


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


@dataclass
class PolicyResult:
    """One policy's part of a run: its cut-offs, and what went (or would go, in a dry run)."""

    policy_id: int
    location: str
    keep_days: int | None
    cutoff: str | None  # ISO date; None when the policy keeps everything
    invoice_cutoff: str | None
    mails: int = 0
    attachments: int = 0
    bytes: int = 0
    on_hold: int = 0
    under_legal_minimum: int = 0
    files: FileRemoval = field(default_factory=FileRemoval)
    months: list[dict[str, Any]] = field(default_factory=list)


def _params(policy: Policy, cut: Cutoffs) -> dict[str, Any]:
    return {
        "location_id": policy.location_id,
        "cutoff": _start_of(cut.general),
        "invoice_cutoff": _start_of(cut.invoice),
        "keep_cutoff": _start_of(cut.keep),
        "tz": TIMEZONE,
    }


def _report_policy(
    cur: psycopg2.extensions.cursor, policy: Policy, cut: Cutoffs, result: PolicyResult
) -> None:
    cur.execute(REPORT_MONTHS[policy.scope], _params(policy, cut))
    for month, mails, size, on_hold, under_min in cur.fetchall():
        result.mails += mails
        result.bytes += int(size)
        result.on_hold += on_hold
        result.under_legal_minimum += under_min
        if mails:
            result.months.append(
                {"location": policy.label, "month": month, "mails": mails, "bytes": int(size)}
            )


def _where(conn: psycopg2.extensions.connection) -> tuple[str, ...]:
    params = conn.get_dsn_parameters()
    return tuple(params.get(k, "") for k in ("host", "port", "dbname"))


def _purge_policy(
    conn: psycopg2.extensions.connection,
    policy: Policy,
    cut: Cutoffs,
    result: PolicyResult,
    *,
    run_id: str,
    audit_id: int,
    batch_size: int,
    total: int,
) -> None:
    """Delete the policy's eligible mail in ordered batches; ``total`` is the expected count."""
    params = _params(policy, cut)
    progress = Progress(f"purge {policy.label}", total, unit="mails", log=log)
    params.update(run_id=run_id, batch_size=batch_size, after_at="-infinity", after_id=0)
    # One batch's files are removed (in a thread, with its own connection to ask which keys
    # no row names any more) while the next batch runs in the database; a pending row is
    # cleared in the first transaction after its removal finished.
    in_flight: list[tuple[int, Future]] = []
    files_conn = db.connect()
    try:
        if _where(files_conn) != _where(conn):  # the shared-file check must ask the same database
            raise ValueError(f"conn {_where(conn)} is not erpmail's database {_where(files_conn)}")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="retention-files") as files:
            while True:
                with db.transaction(conn) as cur:
                    while len(in_flight) > 1 or (in_flight and in_flight[0][1].done()):
                        settle(cur, *in_flight.pop(0), result.files)
                    cur.execute(PURGE_BATCH[policy.scope], params)
                    row = cur.fetchone()
                    if row is None:  # nothing left after the last key
                        break
                    mails, attachments, size, last_at, last_id, pending_id, keys = row
                    cur.execute(
                        ADD_TO_AUDIT,
                        {
                            "mails": mails,
                            "attachments": attachments,
                            "bytes": size,
                            "audit_id": audit_id,
                        },
                    )
                # committed: the rows are gone and their files recorded; now the files may go
                if pending_id:
                    removal = files.submit(remove_unshared, files_conn, keys)
                    in_flight.append((pending_id, removal))
                params.update(after_at=last_at, after_id=last_id)
                result.mails += mails
                result.attachments += attachments
                result.bytes += int(size)
                progress.add(mails)
            with db.transaction(conn) as cur:
                for pending_id, removal in in_flight:
                    settle(cur, pending_id, removal, result.files)
    finally:
        files_conn.close()
    if total:
        progress.update(progress.done, force=True)


def run(
    conn: psycopg2.extensions.connection | None = None,
    *,
    dry_run: bool = True,
    location: str | None = None,
    force: bool = False,
    force_reason: str | None = None,
    actor: str = "unknown",
    run_id: str | None = None,
    as_of: date | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Sweep leftover files, then purge every policy or just ``location``; a dry run only
    reports, and changes nothing (no sweep, no audit row, no outbox bytes cleared).

    A real run writes one audit row per policy. Returns a JSON-ready summary: per policy its cut-offs and
    counts, and for a dry run the months that would go. ValueError for a bad request.
    """
    reason = check_request(force=force, force_reason=force_reason)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    as_of = as_of or clock.today(TIMEZONE)
    run_id = run_id or f"retention-{uuid.uuid4().hex[:12]}"
    own = conn is None
    conn = conn or db.connect()
    started = time.monotonic()
    outbox_cleared = 0
    try:
        with db.transaction(conn) as cur:
            chosen = policies(cur, location)
        with db.transaction(conn) as cur:
            cur.execute(TAKE_RUN_LOCK, (RUN_LOCK_WAIT, RUN_LOCK_KEY))
        try:
            swept = FileRemoval()
            if not dry_run:  # a dry run changes nothing: the leftovers wait for a real run
                with db.transaction(conn) as cur:
                    cur.execute(MARK_INTERRUPTED)
                    for (audit_id,) in cur.fetchall():
                        log.warning("retention: run of audit row %s was interrupted", audit_id)
                swept = sweep_pending(conn)
            results = [
                _run_policy(
                    conn,
                    p,
                    as_of=as_of,
                    dry_run=dry_run,
                    force=force,
                    reason=reason,
                    actor=actor,
                    run_id=run_id,
                    batch_size=batch_size,
                )
                for p in chosen
            ]
            if location is None:  # the outbox's bytes go with the whole run, not one location
                outbox_cleared = outbox_bytes.clear(conn, as_of, dry_run=dry_run)
        finally:
            with db.transaction(conn) as cur:
                cur.execute(RELEASE_RUN_LOCK, (RUN_LOCK_KEY,))
    finally:
        if own:
            conn.close()
    summary = {
        "run_id": run_id,
        "dry_run": dry_run,
        "as_of": as_of.isoformat(),
        "forced": force,
        "force_reason": reason,
        "actor": actor,
        "swept": asdict(swept),
        "policies": [asdict(r) for r in results],
        "months": [m for r in results for m in r.months],
        "outbox_bytes_cleared": outbox_cleared,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("%s", format_summary(summary))
    failed = sum(r.files.failed for r in results) + swept.failed
    if failed:
        raise RuntimeError(f"retention: {failed} files could not be removed; they stay pending")
    return summary


def _run_policy(
    conn: psycopg2.extensions.connection,
    policy: Policy,
    *,
    as_of: date,
    dry_run: bool,
    force: bool,
    reason: str | None,
    actor: str,
    run_id: str,
    batch_size: int,
) -> PolicyResult:
    cut = None if policy.keeps_forever else cutoffs(policy, as_of, force=force)
    result = PolicyResult(
        policy_id=policy.id,
        location=policy.label,
        keep_days=policy.keep_days,
        cutoff=cut.general.isoformat() if cut else None,
        invoice_cutoff=cut.invoice.isoformat() if cut else None,
    )
    details: dict[str, Any] = {
        "run_id": run_id,
        "policy_id": policy.id,
        "scope": policy.scope,
        "location": policy.label,
        "keep_days": policy.keep_days,
        "legal_min_days": policy.legal_min_days,
        "invoice_legal_min_days": policy.invoice_legal_min_days,
        "as_of": as_of.isoformat(),
        "cutoff_date": result.cutoff,
        "invoice_cutoff_date": result.invoice_cutoff,
        "dry_run": dry_run,
        "forced": force,
        "forced_by": actor if force else None,
        "force_reason": reason if force else None,
        "status": "running",
        "mails": 0,
        "attachments": 0,
        "bytes_freed": 0,
    }
    action = "retention_purge"
    subject = f"retention policy {policy.id} ({policy.label})"
    started = time.monotonic()
    with db.transaction(conn) as cur:
        if cut is not None and dry_run:
            _report_policy(cur, policy, cut, result)
        elif cut is not None:  # what will go, and what the legal minimum and holds keep
            cur.execute(COUNT_CANDIDATES[policy.scope], _params(policy, cut))
            result.mails, result.on_hold, result.under_legal_minimum = cur.fetchone()
    if dry_run:  # reported in the task log and the run's summary, written nowhere
        return result
    with db.transaction(conn) as cur:
        cur.execute(INSERT_AUDIT, (actor, action, subject, _json(details)))
        audit_id = cur.fetchone()[0]
    if cut is not None:
        expected, result.mails = result.mails, 0
        _purge_policy(
            conn,
            policy,
            cut,
            result,
            run_id=run_id,
            audit_id=audit_id,
            batch_size=batch_size,
            total=expected,
        )
    final = {
        "status": "done",
        "on_hold": result.on_hold,
        "under_legal_minimum": result.under_legal_minimum,
        "files": asdict(result.files),
        "seconds": round(time.monotonic() - started, 3),
    }
    with db.transaction(conn) as cur:
        cur.execute(FINISH_AUDIT, (_json(final), audit_id))
    return result


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def format_summary(summary: dict[str, Any]) -> str:
    """A clerk-readable summary: one line per policy, and for a dry run the months table."""
    verb = "would delete" if summary["dry_run"] else "deleted"
    lines = [
        f"Archive retention {'(dry run) ' if summary['dry_run'] else ''}as of {summary['as_of']}"
        + (
            f", forced by {summary['actor']}: {summary['force_reason']}"
            if summary["forced"]
            else ""
        )
    ]
    for p in summary["policies"]:
        if p["cutoff"] is None:
            lines.append(f"  {p['location']}: keeps everything (no keep_days)")
            continue
        lines.append(
            f"  {p['location']}: {verb} {p['mails']:,} mails ({_size(p['bytes'])}) archived before "
            f"{p['cutoff']} (linked to invoices: before {p['invoice_cutoff']}); kept: "
            f"{p['on_hold']:,} on legal hold, {p['under_legal_minimum']:,} under the legal minimum"
        )
    if summary["dry_run"]:
        lines.append(format_months(summary["months"]))
    return "\n".join(lines)


def format_months(months: list[dict[str, Any]]) -> str:
    """The dry run's table: location, month, mails and size, with a total line."""
    if not months:
        return "  nothing would be deleted"
    width = max(len("location"), *(len(m["location"]) for m in months))
    head = f"  {'location':<{width}}  month    {'mails':>10}  {'size':>12}"
    rows = [
        f"  {m['location']:<{width}}  {m['month']}  {m['mails']:>10,}  {_size(m['bytes']):>12}"
        for m in months
    ]
    total = f"  {'total':<{width}}  {'':7}  {sum(m['mails'] for m in months):>10,}  " + (
        f"{_size(sum(m['bytes'] for m in months)):>12}"
    )
    rule = "  " + "-" * (len(head) - 2)
    return "\n".join([head, rule, *rows, rule, total])
