"""The end of a run: the print batch of its paper letters, and the summary a clerk reads."""

from __future__ import annotations

import io
import logging
from collections import Counter, defaultdict
from datetime import UTC, date
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg2.extras import Json

from erpmail.core import archive, db
from erpmail.core.progress import Progress
from erpmail.documents.runs import load_company, load_run, run_folder

SUMMARY_TEMPLATES = "run_summary"  # include/templates/run_summary/<lang>/body.txt

log = logging.getLogger(__name__)

PRINT_LETTERS = """
SELECT l.pdf_path FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status = %s AND l.pdf_path IS NOT NULL
 ORDER BY p.number, l.id"""
DROPPED_PAPER = """
SELECT count(*) FROM erp.letters WHERE run_id = %s AND status = 'paper' AND pdf_path IS NULL
   AND NOT keep_pdf"""
SET_PRINT_BATCH = "UPDATE erp.runs SET print_batch_path = %s, status = %s WHERE id = %s"
SUMMARY_COUNTS = """
SELECT l.status, l.level, l.paper_reason, count(*) FROM erp.letters l WHERE l.run_id = %s
 GROUP BY 1, 2, 3"""
SUMMARY_TOTALS = """
SELECT l.status, t.key, sum(t.value::numeric)
  FROM erp.letters l, jsonb_each_text(l.totals) t
 WHERE l.run_id = %s GROUP BY 1, 2 ORDER BY 1, 2"""
SUMMARY_FAILURES = """
SELECT l.id, p.number, l.error FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.status = 'failed' ORDER BY p.number LIMIT 200"""
SUMMARY_BOUNCED = """
SELECT count(*) FROM erp.letters l JOIN mail.outbox o ON o.id = l.outbox_id
 WHERE l.run_id = %s AND o.status = 'bounced'"""
SUMMARY_APPROVAL = """
SELECT r.approval, r.approval_by, r.approval_at,
       (SELECT count(*) FROM erp.letters l WHERE l.run_id = r.id AND l.withheld_reason = 'excluded')
  FROM erp.runs r WHERE r.id = %s"""
SUMMARY_SAMPLE = """
SELECT l.pdf_path FROM erp.letters l WHERE l.run_id = %s AND l.pdf_path IS NOT NULL
 ORDER BY l.id LIMIT 1"""
# PDFs of letters whose level keeps no archived copy, once mailed (the outbox holds the
# bytes), put on paper (the print batch holds it) or failed; a dry run keeps its review PDFs.
UNKEPT_PDFS = """
SELECT l.id, l.pdf_path FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id
 WHERE l.run_id = %s AND NOT r.dry_run AND NOT l.keep_pdf AND l.pdf_path IS NOT NULL
   AND l.status IN ('released', 'sent', 'paper', 'failed', 'withheld')"""
FORGET_PDFS = "UPDATE erp.letters SET pdf_path = NULL, updated_at = now() WHERE id = ANY(%s)"
FINISH_RUN = """
UPDATE erp.runs SET summary = %s, status = 'done', finished_at = coalesce(finished_at, now())
 WHERE id = %s"""


def print_batch(run_id: int, document: str) -> str | None:
    """Merge the run's paper letters (dry run: every rendered letter, for review) into one
    PDF by partner number, store it, and name it on the run; None when there are none."""
    import pypdf

    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        cur.execute(DROPPED_PAPER, (run_id,))
        if run.print_batch_path and cur.fetchone()[0]:
            # a rerun: the batch holds letters whose PDF is gone since; rebuilding would lose them
            log.info("run %s: print batch %s kept as it is", run_id, run.print_batch_path)
            return run.print_batch_path
        cur.execute(PRINT_LETTERS, (run_id, "rendered" if run.dry_run else "paper"))
        paths = [row[0] for row in cur.fetchall()]
        key = None
        if paths:
            writer = pypdf.PdfWriter()
            progress = Progress(f"run {run_id}: print batch", len(paths), unit="letters", log=log)
            for path in paths:
                writer.append(io.BytesIO(archive.read(path)))
                progress.add()
            out = io.BytesIO()
            writer.write(out)
            name = "review-batch" if run.dry_run else "print-batch"
            folder = run_folder(run, document)
            key = archive.store(
                f"{'review/' if run.dry_run else ''}{folder}/{name}-{run.id}.pdf", out.getvalue()
            )
            log.info("run %s: %d letters in %s", run_id, len(paths), key)
        cur.execute(SET_PRINT_BATCH, (key, "rendered" if run.dry_run else "routed", run_id))
    return key


def drop_unkept_pdfs(run_id: int) -> int:
    """Delete the PDFs of the run's letters that keep no archived copy, after they went out;
    return how many."""
    with db.transaction() as cur:
        cur.execute(UNKEPT_PDFS, (run_id,))
        unkept = cur.fetchall()
        cur.execute(FORGET_PDFS, ([letter_id for letter_id, _ in unkept],))
    # rows first: a crash now leaves files without a row, never a row naming a missing file
    archive.delete_many(path for _, path in unkept)
    if unkept:
        log.info("run %s: %d PDFs not archived (their level keeps no copy)", run_id, len(unkept))
    return len(unkept)


def summarize(run_id: int) -> dict[str, Any]:
    """Letters per status and level, totals, paper reasons, failures and paths: stored on
    the run (which is then ``done``) and logged as a readable text."""
    with db.transaction() as cur:
        run = load_run(cur, run_id, lock=True)
        _, language, _ = load_company(cur, run.company)
        cur.execute(SUMMARY_COUNTS, (run_id,))
        by_status: Counter[str] = Counter()
        by_level: dict[str, Counter[str]] = defaultdict(Counter)
        reasons: Counter[str] = Counter()
        for status, level, reason, n in cur.fetchall():
            by_status[status] += n
            by_level[str(level) if level is not None else "-"][status] += n
            if reason:
                reasons[reason] += n
        cur.execute(SUMMARY_TOTALS, (run_id,))
        totals: dict[str, dict[str, str]] = defaultdict(dict)
        for status, currency, amount in cur.fetchall():
            totals[status][currency] = str(Decimal(amount).quantize(Decimal("0.01")))
        cur.execute(SUMMARY_FAILURES, (run_id,))
        failures = [{"letter_id": i, "partner": n, "error": e} for i, n, e in cur.fetchall()]
        cur.execute(SUMMARY_BOUNCED, (run_id,))
        bounced = cur.fetchone()[0]
        cur.execute(SUMMARY_SAMPLE, (run_id,))
        sample = cur.fetchone()
        cur.execute(SUMMARY_APPROVAL, (run_id,))
        approval, approval_by, approval_at, excluded = cur.fetchone()
        summary = {
            "run_id": run_id,
            "kind": run.kind,
            "airflow_run_id": run.airflow_run_id,
            "company": run.company,
            "key_date": run.key_date.isoformat(),
            "dry_run": run.dry_run,
            "note": run.note,
            "letters": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "by_level": {lv: dict(sorted(c.items())) for lv, c in sorted(by_level.items())},
            "paper_reasons": dict(sorted(reasons.items())),
            "totals": dict(totals),
            "failures": failures,
            "bounced": bounced,  # kept up to date by the import as bounces come back
            "approval": approval
            and {
                "state": approval,
                "by": approval_by,
                "at": approval_at.astimezone(UTC).isoformat() if approval_at else None,
                "excluded": excluded,
            },
            "print_batch": run.print_batch_path,
            "sample_pdf": sample[0] if sample else None,
            "archive_root": str(archive.root()),
            "language": language,
        }
        cur.execute(FINISH_RUN, (Json(summary), run_id))
    log.info("%s", summary_text(summary))
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as a clerk reads it: in the company's language (``run_summary/<lang>/``
    templates, amounts and dates as in the letters), the print batch and a sample PDF as
    URLs that open them."""
    from erpmail.documents import templates

    engine = templates.default()
    language, _ = engine.language_for(SUMMARY_TEMPLATES, summary.get("language"))
    variables = {
        "summary": summary,
        "key_date": date.fromisoformat(summary["key_date"]),
        "levels": {lv: c for lv, c in summary["by_level"].items() if lv != "-"},
        "print_batch_url": archive_url(summary.get("print_batch")),
        "sample_pdf_url": archive_url(summary.get("sample_pdf")),
    }
    return engine.render(f"{SUMMARY_TEMPLATES}/{language}/body.txt", language, variables).strip()


def archive_url(key: str | None) -> str | None:
    """A URL a user opens a stored file with: ``file://`` for the local store, else the
    store's own (fsspec) URL, without connection ids; None for no key."""
    if not key:
        return None
    target = archive.path_of(key)
    if archive.local_root() is not None:
        return Path(target.path).resolve().as_uri()
    return target.as_uri()
