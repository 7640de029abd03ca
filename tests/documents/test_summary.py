"""The end of a run: the print batch (a dry run's for review) and the summary a clerk reads."""

from __future__ import annotations

import io
import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pypdf

from erpmail.core import archive, db
from erpmail.documents.summary import summarize, summary_text
from tests.documents.pipeline import LETTERS, OUTBOX, dunning_run, rows, run_steps


def test_dry_run_renders_for_review_and_queues_nothing(ledger) -> None:
    run = dunning_run(dry_run=True)
    _, printed, summary = run_steps(run)
    letters = rows(ledger, LETTERS, run)
    assert {row[2] for row in letters} == {"rendered"}
    assert all(row[4].startswith("review/") and archive.exists(row[4]) for row in letters)
    assert printed.startswith("review/") and len(
        pypdf.PdfReader(io.BytesIO(archive.read(printed))).pages
    ) >= len(letters)
    assert rows(ledger, OUTBOX) == []
    assert summary["dry_run"] and summary["by_status"] == {"rendered": len(letters)}


def _german(amount: str) -> str:
    return f"{Decimal(amount):,.2f}".replace(",", " ").replace(".", ",").replace(" ", ".") + " €"


def _file_behind(url: str) -> bytes:
    parts = urlsplit(url)
    assert parts.scheme == "file"
    return Path(unquote(parts.path)).read_bytes()


def test_summary_reads_in_the_company_language_with_amounts_and_links(ledger) -> None:
    run = dunning_run()
    _, printed, summary = run_steps(run)
    assert summary["language"] == "de" and summary["totals"]
    # Babel puts a no-break space before the symbol, as in the letters
    german = summary_text(summary).replace("\xa0", " ")
    assert german.startswith(f"Mahnlauf {run} (manual__1), Firma DEMO, Stichtag 02.03.2026")
    assert f"Briefe: {summary['letters']} (" in german
    assert "Papier:" in german and "ohne E-Mail-Adresse" in german
    for status, amounts in summary["totals"].items():
        if "EUR" in amounts:
            assert _german(amounts["EUR"]) in german, (status, amounts)
    assert re.search(r"\d\.\d{3},\d{2} €", german), "a total of a thousand euros or more"
    batch_url = re.search(r"^Druckstapel: (\S+)$", german, re.MULTILINE).group(1)
    assert _file_behind(batch_url) == archive.read(printed)
    sample_url = re.search(r"^Beispiel-PDF: (\S+)$", german, re.MULTILINE).group(1)
    assert _file_behind(sample_url) == archive.read(summary["sample_pdf"])
    assert not {"Letters", "Level", "Total", "key", "Print", "Sample"} & set(
        re.findall(r"[A-Za-z]+", german)
    )

    with db.transaction(ledger) as cur:
        cur.execute("UPDATE erp.companies SET language = 'en' WHERE code = 'DEMO'")
    english_summary = summarize(run)
    english = summary_text(english_summary).replace("\xa0", " ")
    assert {k: v for k, v in english_summary.items() if k != "language"} == {
        k: v for k, v in summary.items() if k != "language"
    }  # the stored keys and values stay; only the language differs
    assert english.startswith(f"Dunning run {run} (manual__1), company DEMO, key date 2 Mar 2026")
    assert "no e-mail address" in english and "Briefe" not in english
    for amounts in english_summary["totals"].values():
        if "EUR" in amounts:
            assert f"€{Decimal(amounts['EUR']):,.2f}" in english
    assert f"Print batch: {batch_url}" in english
