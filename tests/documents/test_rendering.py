"""Rendering a batch: a failing letter fails alone, and the log shows erpmail's progress,
not the PDF libraries' chatter."""

from __future__ import annotations

import logging

from erpmail.core import db
from erpmail.documents import rendering, runs
from erpmail.documents.dunning import DUNNING
from tests.documents.pipeline import LETTERS, dunning_run, rows, run_steps


def test_a_failing_letter_fails_alone_with_its_reason(ledger) -> None:
    with db.transaction(ledger) as cur:
        cur.execute("DELETE FROM erp.dunning_texts WHERE language IN ('nl', 'de') AND level = 1")
    run = dunning_run()
    _, _, summary = run_steps(run)
    letters = rows(ledger, LETTERS, run)
    failed = [row for row in letters if row[2] == "failed"]
    assert failed and len(failed) < len(letters)
    assert all("no dunning text for level 1" in row[7] and row[1] in row[7] for row in failed)
    assert {f["partner"] for f in summary["failures"]} == {row[1] for row in failed}


def test_rendering_logs_no_library_chatter_but_erpmail_progress(ledger, caplog) -> None:
    from erpmail.operators.document_run import library_chatter_silenced

    run = dunning_run()
    first, second, *_ = runs.plan_batches(run, max_batches=3, min_size=4)
    caplog.set_level(logging.INFO)
    rendering.render_batch(run, first, DUNNING)
    chatter = [r for r in caplog.records if r.name.startswith(("weasyprint", "fontTools"))]
    assert chatter, "WeasyPrint logs its steps at INFO when left alone"
    caplog.clear()
    level = logging.getLogger("weasyprint").level
    with library_chatter_silenced():
        done = rendering.render_batch(run, second, DUNNING)
    assert done["archived"] > 0
    libraries = [
        r
        for r in caplog.records
        if r.name.startswith(("weasyprint", "fontTools")) and r.levelno < logging.WARNING
    ]
    assert libraries == []
    own = [r.getMessage() for r in caplog.records if r.name.startswith("erpmail")]
    assert any(f"run {run} batch {second}: {done['archived']} archived" in m for m in own), own
    assert logging.getLogger("weasyprint").level == level  # restored after the block
