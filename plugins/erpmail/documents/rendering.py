"""Rendering a batch of a run's letters: each letter's HTML from its template, one PDF per
letter (``erpmail.documents.pdf``), each PDF archived; a letter that fails fails alone."""

from __future__ import annotations

import logging
from typing import Any

from psycopg2.extras import execute_values

from erpmail.core import archive, db
from erpmail.documents.runs import SET_FAILED, DocumentKind, Run, load_run, run_folder

log = logging.getLogger(__name__)

TO_RENDER = """
SELECT l.id, p.number FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id
 WHERE l.run_id = %s AND l.batch = %s AND l.status = 'generated'
 ORDER BY p.number, l.id"""
SET_RENDERED = """
UPDATE erp.letters l SET status = v.status, pdf_path = v.pdf_path, language = v.language,
       language_fallback = v.language_fallback, updated_at = now()
  FROM (VALUES %s) AS v (id, status, pdf_path, language, language_fallback)
 WHERE l.id = v.id AND l.status = 'generated'"""


def archive_key(run: Run, document: str, partner_number: str, letter_id: int) -> str:
    """Where a letter's PDF is stored; a dry run's PDFs go under ``review/``."""
    folder = run_folder(run, document)
    name = f"{archive.safe_part(partner_number)}-{letter_id}.pdf"
    return f"review/{folder}/{name}" if run.dry_run else f"{folder}/{name}"


def rendered_letter(engine: Any, context: Any, document: str) -> Any:
    """``engine.render_letter(context)`` (a context that is an exception raises it); a
    TemplateError naming the template when ``document`` has no letter.html in its language."""
    from erpmail.documents import templates

    if isinstance(context, Exception):
        raise context
    rendered = engine.render_letter(context)
    if not rendered.letter_html:
        raise templates.TemplateError(
            f"document {document!r} has no letter.html in {rendered.language!r}",
            template=f"{document}/{rendered.language}/letter.html",
            language=rendered.language,
        )
    return rendered


def render_batch(
    run_id: int,
    batch: int,
    kind: DocumentKind,
) -> dict[str, int]:
    """Render the batch's ``generated`` letters in one pass and store each PDF.

    A letter becomes ``archived`` with its ``pdf_path`` (dry run: ``rendered``, PDF under
    ``review/``), or ``failed`` with the reason; the others go on. Returns counts by status.
    """
    from erpmail.documents import pdf, templates

    conn = db.connect()
    try:
        with db.transaction(conn) as cur:
            run = load_run(cur, run_id)
            cur.execute(TO_RENDER, (run_id, batch))
            todo = cur.fetchall()
            contexts = kind.contexts(cur, run, [letter_id for letter_id, _ in todo]) if todo else {}
        engine = templates.default()
        sources, meta, failed = [], {}, {}
        for letter_id, number in todo:
            try:
                context = contexts.get(letter_id) or LookupError("letter has no context")
                rendered = rendered_letter(engine, context, kind.document)
            except Exception as exc:  # one letter's template fails that letter alone
                failed[letter_id] = f"letter {letter_id} (partner {number}): {exc}"
                continue
            sources.append(pdf.LetterSource(str(letter_id), rendered.letter_html))
            meta[letter_id] = (number, rendered.language, rendered.fallback_from)
        # one letter after the other in this process: the run's parallelism is its mapped
        # render tasks over the worker slots (workers and chunk_size no longer change anything)
        results = pdf.render_batch(sources) if sources else []
        status = "rendered" if run.dry_run else "archived"
        done = []
        for result in results:
            letter_id = int(result.key)
            number, language, fallback = meta[letter_id]
            if not result.ok:
                failed[letter_id] = f"letter {letter_id} (partner {number}): {result.error}"
                continue
            key = archive_key(run, kind.document, number, letter_id)
            try:
                archive.store(key, result.pdf)
            except Exception as exc:
                failed[letter_id] = f"letter {letter_id} (partner {number}): archive: {exc}"
                continue
            done.append((letter_id, status, key, language, fallback))
        with db.transaction(conn) as cur:
            if done:
                execute_values(cur, SET_RENDERED, done, page_size=1000)
            for letter_id, error in failed.items():
                cur.execute(SET_FAILED, (error, letter_id))
    finally:
        conn.close()
    for error in failed.values():
        log.warning("failed: %s", error)
    log.info("run %s batch %s: %d %s, %d failed", run_id, batch, len(done), status, len(failed))
    return {status: len(done), "failed": len(failed)}
