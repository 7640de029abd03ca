"""What the screens show, read from the database: the letters of a document run, and the
received mail that links to nothing."""

from __future__ import annotations

from dataclasses import dataclass

from erpmail.core import db
from erpmail.documents import summary
from erpmail.inbound import linking

# The DAGs whose runs write letters, and the run kind each writes (erp.runs.kind).
DOCUMENT_DAGS = {
    "dunning_run": "dunning",
    "balance_confirmation": "balance_confirmation",
    "payment_advice": "payment_advice",
    "send_documents": "on_demand",
}
MAX_ROWS = 5000

RUN = """
SELECT id, key_date, dry_run, status, print_batch_path, approval, approval_by, approval_at
  FROM erp.runs WHERE kind = %s AND airflow_run_id = %s"""
PROPOSAL = "SELECT proposal FROM erp.runs WHERE id = %s"
PROPOSED_LETTERS = """
SELECT l.id, p.number, p.name, l.level, l.totals, l.status, l.withheld_reason
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status IN ('archived', 'withheld')
 ORDER BY p.number, l.id LIMIT %s"""
LETTERS = """
SELECT s.letter_id, s.partner_number, s.partner_name, s.level, s.totals, s.status,
       coalesce(s.paper_reason, s.withheld_reason), s.error, s.recipient, s.sent_at, s.mail_status, s.sent_uncertain,
       s.pdf_path IS NOT NULL, m.id
  FROM erp.letter_status s
  LEFT JOIN mail.messages m ON m.outbox_id = s.outbox_id AND m.direction = 'out'
 WHERE s.run_id = %(run)s
   AND (%(status)s::text IS NULL OR s.status = %(status)s)
   AND (%(level)s::int IS NULL OR s.level = %(level)s)
 ORDER BY s.partner_number, s.letter_id
 LIMIT %(limit)s"""
COUNTS = """
SELECT status, count(*) FROM erp.letters WHERE run_id = %s GROUP BY 1 ORDER BY 1"""

LEVELS = "SELECT DISTINCT level FROM erp.letters WHERE run_id = %s AND level IS NOT NULL ORDER BY 1"
LETTER_FILE = """
SELECT l.pdf_path, m.eml_path FROM erp.letters l
  LEFT JOIN mail.messages m ON m.outbox_id = l.outbox_id AND m.direction = 'out'
 WHERE l.run_id = %s AND l.id = %s"""
UNLINKED = """
SELECT m.id, l.name, m.from_address, m.subject, m.archived_at, m.status, m.failure,
       (SELECT count(*) FROM mail.attachments a WHERE a.message_id = m.id)
  FROM mail.messages m JOIN mail.import_locations l ON l.id = m.location_id
 WHERE m.direction = 'in' AND m.status IN ('unlinked', 'failed')
 ORDER BY m.archived_at DESC, m.id DESC
 LIMIT %s"""


OUTBOX_ACCOUNTS = """
SELECT a.id, a.name, a.from_address, a.send_interval_seconds, a.hourly_cap, a.next_send_at,
       count(*) FILTER (WHERE o.status = 'queued'),
       count(*) FILTER (WHERE o.status = 'queued' AND o.next_attempt_at > now()),
       count(*) FILTER (WHERE o.status = 'sending'),
       count(*) FILTER (WHERE o.status = 'failed'),
       count(*) FILTER (WHERE o.status = 'sent' AND o.sent_at >= date_trunc('day', now())),
       count(*) FILTER (WHERE o.status = 'bounced')
  FROM mail.accounts a LEFT JOIN mail.outbox o ON o.account_id = a.id
 GROUP BY a.id ORDER BY a.name"""
OUTBOX_FAILED = """
SELECT o.id, a.name, o.source_type, o.source_id, o.recipients, o.subject, o.attempts,
       o.last_error, o.smtp_code, o.smtp_reply, o.created_at
  FROM mail.outbox o JOIN mail.accounts a ON a.id = o.account_id
 WHERE o.status = 'failed' AND o.mime_purged_at IS NULL
 ORDER BY o.id DESC LIMIT %s"""
# "retry now": a message in backoff is due at once; a failed one (refused, never accepted)
# goes back to the queue under its own key and Message-ID
RETRY_NOW = """
UPDATE mail.outbox SET status = 'queued', next_attempt_at = now(), claimed_by = NULL,
       claimed_at = NULL
 WHERE id = %s AND (status = 'failed' AND mime_purged_at IS NULL OR status = 'queued')
RETURNING id"""
AUDIT = "INSERT INTO mail.audit_log (actor, action, subject) VALUES (%s, 'retry_now', %s)"


MAIL = """
SELECT m.id, l.name, m.from_name, m.from_address, m.to_addresses, m.subject, m.sent_date,
       m.archived_at, m.status, m.failure, m.defects, m.body_text, m.body_html
  FROM mail.messages m JOIN mail.import_locations l ON l.id = m.location_id
 WHERE m.id = %s AND m.direction = 'in'"""
MAIL_ATTACHMENTS = """
SELECT filename, content_type, size_bytes FROM mail.attachments WHERE message_id = %s ORDER BY id"""
MAIL_LINKS = """
SELECT entity_type, entity_id, method FROM mail.message_links WHERE message_id = %s ORDER BY 1, 2"""
# what a clerk types: a partner's number or part of its name
FIND_PARTNERS = """
SELECT number, name, email FROM erp.partners
 WHERE number = %(q)s OR name ILIKE %(like)s OR email ILIKE %(like)s
 ORDER BY number LIMIT 20"""


@dataclass(frozen=True)
class Letter:
    """One row of the Letters screen."""

    id: int
    partner: str
    partner_name: str
    level: int | None
    totals: dict
    status: str
    reason: str | None  # the paper or withheld reason, or the server's reply of a failed letter
    recipient: str | None
    sent_at: object
    mail_status: str | None
    sent_uncertain: bool
    has_pdf: bool
    sent_mail_id: int | None


@dataclass(frozen=True)
class RunLetters:
    """The Letters screen of one run: the run, counts per status, the letters shown."""

    run_id: int
    key_date: object
    dry_run: bool
    status: str
    print_batch: str | None
    counts: dict[str, int]
    levels: list[int]
    bounced: int
    letters: list[Letter]
    approval: str | None = None  # waiting, approved, rejected; None: not asked for
    approval_by: str | None = None
    approval_at: object = None


def run_letters(
    dag_id: str, airflow_run_id: str, *, status: str | None = None, level: int | None = None
) -> RunLetters | None:
    """The letters of the document run ``airflow_run_id`` of ``dag_id``; None if it has none."""
    kind = DOCUMENT_DAGS.get(dag_id)
    if kind is None:
        return None
    with db.transaction() as cur:
        cur.execute(RUN, (kind, airflow_run_id))
        run = cur.fetchone()
        if run is None:
            return None
        run_id, key_date, dry_run, run_status, print_batch, *approval = run
        cur.execute(COUNTS, (run_id,))
        counts = dict(cur.fetchall())
        cur.execute(summary.SUMMARY_BOUNCED, (run_id,))
        bounced = cur.fetchone()[0]
        cur.execute(LEVELS, (run_id,))
        levels = [lv for (lv,) in cur.fetchall()]
        cur.execute(LETTERS, {"run": run_id, "status": status, "level": level, "limit": MAX_ROWS})
        letters = [
            Letter(
                id=row[0],
                partner=row[1],
                partner_name=row[2],
                level=row[3],
                totals=row[4] or {},
                status=row[5],
                reason=row[6] or row[7],
                recipient=row[8],
                sent_at=row[9],
                mail_status=row[10],
                sent_uncertain=bool(row[11]),
                has_pdf=row[12],
                sent_mail_id=row[13],
            )
            for row in cur.fetchall()
        ]
    return RunLetters(
        run_id, key_date, dry_run, run_status, print_batch, counts, levels, bounced, letters,
        *approval,
    )  # fmt: skip


def run_proposal(dag_id: str, airflow_run_id: str) -> dict | None:
    """The proposal of a run that waits (or waited) for approval: what ``approve`` fixed per
    level, the decision, and each proposed letter with where it would go; None if none."""
    found = run_letters(dag_id, airflow_run_id, status="-")  # the run alone, no letters
    if found is None or found.approval is None:
        return None
    with db.transaction() as cur:
        cur.execute(PROPOSAL, (found.run_id,))
        (proposal,) = cur.fetchone()
        cur.execute(PROPOSED_LETTERS, (found.run_id, MAX_ROWS))
        routes = (proposal or {}).get("routes", {})
        keys = ("id", "partner", "partner_name", "level", "totals", "status", "withheld")
        letters = [
            {**dict(zip(keys, row, strict=True)), "route": routes.get(str(row[0]), "")}
            for row in cur.fetchall()
        ]
    return {"run": found, "proposal": proposal or {}, "letters": letters}


def run_of(dag_id: str, airflow_run_id: str) -> tuple[int, str | None] | None:
    """The ``erp.runs`` id and print batch of a document DAG's run, or None."""
    kind = DOCUMENT_DAGS.get(dag_id)
    if kind is None:
        return None
    with db.transaction() as cur:
        cur.execute(RUN, (kind, airflow_run_id))
        row = cur.fetchone()
    return (row[0], row[4]) if row else None


def letter_files(run_id: int, letter_id: int) -> tuple[str | None, str | None] | None:
    """The archive keys of a letter's PDF and of its sent .eml; None if not of this run."""
    with db.transaction() as cur:
        cur.execute(LETTER_FILE, (run_id, letter_id))
        return cur.fetchone()


def unlinked_mail(limit: int = 500) -> list[tuple]:
    """Received mail that links to nothing, or was kept raw as failed, newest first."""
    with db.transaction() as cur:
        cur.execute(UNLINKED, (limit,))
        return cur.fetchall()


def outbox_accounts() -> list[tuple]:
    """Per account: name, address, throttle, next send, and its messages per state."""
    with db.transaction() as cur:
        cur.execute(OUTBOX_ACCOUNTS)
        return cur.fetchall()


def outbox_failed(limit: int = 500) -> list[tuple]:
    """Failed messages that can still be retried, newest first, with the server's reply."""
    with db.transaction() as cur:
        cur.execute(OUTBOX_FAILED, (limit,))
        return cur.fetchall()


def retry_now(outbox_id: int, *, user: str) -> bool:
    """Make a queued or failed message due now; False if it is neither (or its bytes are gone)."""
    with db.transaction() as cur:
        cur.execute(RETRY_NOW, (outbox_id,))
        done = cur.fetchone() is not None
        if done:
            cur.execute(AUDIT, (user, f"outbox {outbox_id}"))
    return done


def mail(mail_id: int) -> dict | None:
    """One received mail as the screen shows it: headers, bodies, attachments, links."""
    with db.transaction() as cur:
        cur.execute(MAIL, (mail_id,))
        row = cur.fetchone()
        if row is None:
            return None
        keys = ("id", "location", "from_name", "from_address", "to", "subject", "sent_date",
                "received", "status", "failure", "defects", "text", "html")  # fmt: skip
        found = dict(zip(keys, row, strict=True))
        cur.execute(MAIL_ATTACHMENTS, (mail_id,))
        found["attachments"] = cur.fetchall()
        cur.execute(MAIL_LINKS, (mail_id,))
        found["links"] = cur.fetchall()
    return found


def find_partners(query: str) -> list[tuple]:
    """Partners whose number is ``query`` or whose name or address contains it."""
    text = query.strip()
    if not text:
        return []
    like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with db.transaction() as cur:
        cur.execute(FIND_PARTNERS, {"q": text, "like": like})
        return cur.fetchall()


def link(mail_id: int, entity_type: str, number: str, *, user: str) -> None:
    """File a mail against one entity by its number, as ``link_mail`` does, naming the user."""
    with db.transaction() as cur:
        linking.link_manually(cur, str(mail_id), entity_type, number, actor=user)
