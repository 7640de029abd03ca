"""The document pipeline on a dunning run: render, archive, route, print batch, summary,
reruns, failures one letter at a time, and the letter following its outbox message."""

from __future__ import annotations

import email
import io
import logging
import re
from datetime import date, timedelta
from decimal import Decimal
from email import policy
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pendulum
import psycopg2.extensions
import pypdf
import pytest

from erpmail import seed
from erpmail.core import archive, db
from erpmail.documents import runs
from erpmail.documents.dunning import DUNNING
from erpmail.documents.statements import BALANCE_CONFIRMATION
from tests.mailaccounts import company_account
from tests.pdftext import pdf_text

KEY = date(2026, 3, 2)


@pytest.fixture
def book(
    db: psycopg2.extensions.connection, tmp_path, monkeypatch
) -> psycopg2.extensions.connection:
    """30 seeded partners as of ten days before KEY, an SMTP account, a temp archive."""
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/archive")
    seed.seed(db, partners=30, seed=1, as_of=KEY - timedelta(days=10))
    with db.cursor() as cur:
        company_account(cur)
    db.commit()
    return db


def _run(airflow_run_id: str = "manual__1", *, dry_run: bool = False) -> int:
    run = runs.create_run(
        kind="dunning", airflow_run_id=airflow_run_id, company="DEMO", key_date=KEY, dry_run=dry_run
    )
    runs.generate(run, DUNNING)
    return run


def _pipeline(run: int) -> tuple[list[int], str | None, dict]:
    batches = runs.plan_batches(run, max_batches=3, min_size=4)
    for batch in batches:
        runs.render_batch(run, batch, DUNNING, workers=1, chunk_size=10)
    for batch in batches:
        runs.route_batch(run, batch, DUNNING)
    printed = runs.print_batch(run, "dunning")
    return batches, printed, runs.summarize(run)


def _rows(conn, sql: str, *args) -> list[tuple]:
    with db.transaction(conn) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


LETTERS = """
SELECT l.id, p.number, l.status, l.paper_reason, l.pdf_path, l.outbox_id, l.recipient, l.error
  FROM erp.letters l JOIN erp.partners p ON p.id = l.partner_id WHERE l.run_id = %s ORDER BY p.number"""
OUTBOX = "SELECT id, key, source_id, recipients, mime FROM mail.outbox ORDER BY id"


def test_run_ends_released_or_paper_with_pdfs_mail_and_print_batch(book) -> None:
    run = _run()
    batches, printed, summary = _pipeline(run)
    assert 1 < len(batches) <= 3
    letters = _rows(book, LETTERS, run)
    assert letters and {row[2] for row in letters} <= {"released", "paper"}
    outbox = {row[2]: row for row in _rows(book, OUTBOX)}
    for letter_id, number, status, reason, pdf_path, outbox_id, recipient, _ in letters:
        assert archive.exists(pdf_path) and pdf_path.endswith(f"{number}-{letter_id}.pdf")
        assert number in pdf_text(archive.read(pdf_path))
        if status == "released":
            _, key, _, recipients, mime = outbox[letter_id]
            assert (outbox_id, key, recipients) == (
                outbox[letter_id][0],
                f"dunning:run-{run}:letter-{letter_id}",
                [recipient],
            )
            message = email.message_from_bytes(bytes(mime), policy=policy.default)
            (attachment,) = list(message.iter_attachments())
            assert attachment.get_content() == archive.read(pdf_path)
        else:
            assert reason in {"no_address", "blocked", "invalid_address", "paper_only"}
            assert outbox_id is None and letter_id not in outbox
    paper = [row for row in letters if row[2] == "paper"]
    assert paper, "the seed has partners without e-mail"
    batch_pdf = pypdf.PdfReader(io.BytesIO(archive.read(printed)))
    assert len(batch_pdf.pages) == sum(
        len(pypdf.PdfReader(io.BytesIO(archive.read(r[4]))).pages) for r in paper
    )
    batch_text = pdf_text(archive.read(printed))
    for row in letters:
        assert (f"{run}-{row[1]}" in batch_text) == (row[2] == "paper")
    assert summary["letters"] == len(letters)
    assert summary["by_status"] == {
        s: sum(1 for r in letters if r[2] == s) for s in {r[2] for r in letters}
    }
    assert summary["print_batch"] == printed
    stored = _rows(
        book,
        "SELECT status, summary->>'letters', print_batch_path FROM erp.runs WHERE id = %s",
        run,
    )
    assert stored == [("done", str(len(letters)), printed)]


def test_rerun_of_every_step_changes_nothing(book) -> None:
    run = _run()
    _pipeline(run)
    before_letters = _rows(book, LETTERS, run)
    before_outbox = [(r[0], r[1]) for r in _rows(book, OUTBOX)]
    # the DAG rerun: same Airflow run id resumes the same run
    assert _run() == run
    _pipeline(run)
    assert _rows(book, LETTERS, run) == before_letters
    assert [(r[0], r[1]) for r in _rows(book, OUTBOX)] == before_outbox
    # a route step cleared after its letters were reset still finds the same outbox rows
    with db.transaction(book) as cur:
        cur.execute(
            "UPDATE erp.letters SET status = 'archived', outbox_id = NULL WHERE run_id = %s AND status = 'released'",
            (run,),
        )
    _pipeline(run)
    assert [(r[0], r[1]) for r in _rows(book, OUTBOX)] == before_outbox
    assert _rows(book, LETTERS, run) == before_letters


def test_dry_run_renders_for_review_and_queues_nothing(book) -> None:
    run = _run(dry_run=True)
    _, printed, summary = _pipeline(run)
    letters = _rows(book, LETTERS, run)
    assert {row[2] for row in letters} == {"rendered"}
    assert all(row[4].startswith("review/") and archive.exists(row[4]) for row in letters)
    assert printed.startswith("review/") and len(
        pypdf.PdfReader(io.BytesIO(archive.read(printed))).pages
    ) >= len(letters)
    assert _rows(book, OUTBOX) == []
    assert summary["dry_run"] and summary["by_status"] == {"rendered": len(letters)}


def test_a_failing_letter_fails_alone_with_its_reason(book) -> None:
    with db.transaction(book) as cur:
        cur.execute("DELETE FROM erp.dunning_texts WHERE language IN ('nl', 'de') AND level = 1")
    run = _run()
    _, _, summary = _pipeline(run)
    letters = _rows(book, LETTERS, run)
    failed = [row for row in letters if row[2] == "failed"]
    assert failed and len(failed) < len(letters)
    assert all("no dunning text for level 1" in row[7] and row[1] in row[7] for row in failed)
    assert {f["partner"] for f in summary["failures"]} == {row[1] for row in failed}


def test_route_without_an_account_fails_each_letter_and_goes_on(book) -> None:
    with db.transaction(book) as cur:
        cur.execute("DELETE FROM mail.accounts")
    run = _run()
    _pipeline(run)
    letters = _rows(book, LETTERS, run)
    mailable = [row for row in letters if row[2] == "failed"]
    assert mailable and all("no mail account may send as" in row[7] for row in mailable)
    assert any(row[2] == "paper" for row in letters)


def test_letter_follows_its_outbox_message(book) -> None:
    run = _run()
    _pipeline(run)
    released = [row for row in _rows(book, LETTERS, run) if row[2] == "released"]
    first, second = released[0], released[1]
    with db.transaction(book) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'sent', sent_at = now(), smtp_reply = '250 ok' WHERE id = %s",
            (first[5],),
        )
        cur.execute(
            "UPDATE mail.outbox SET status = 'failed', last_error = '550 mailbox unavailable' WHERE id = %s",
            (second[5],),
        )
    view = dict(
        (r[0], r[1:])
        for r in _rows(
            book,
            "SELECT letter_id, status, error, mail_status FROM erp.letter_status WHERE run_id = %s",
            run,
        )
    )
    assert view[first[0]] == ("sent", None, "sent")
    assert view[second[0]] == ("failed", "550 mailbox unavailable", "failed")


def test_plan_batches_is_fixed_once(book) -> None:
    run = _run()
    first = runs.plan_batches(run, max_batches=2, min_size=1)
    assert first == [0, 1]
    assert runs.plan_batches(run, max_batches=5, min_size=1) == [0, 1]
    empty = runs.create_run(
        kind="dunning", airflow_run_id="empty", company="DEMO", key_date=KEY - timedelta(days=400)
    )
    runs.generate(empty, DUNNING)
    assert runs.plan_batches(empty) == [0]


def test_kinds_are_found_by_name() -> None:
    from erpmail.documents.statements import BALANCE_CONFIRMATION, PAYMENT_ADVICE

    assert runs.kind_named("dunning") is DUNNING
    assert runs.kind_named("balance_confirmation") is BALANCE_CONFIRMATION
    assert runs.kind_named("payment_advice") is PAYMENT_ADVICE
    assert all(runs.kind_named(name).kind == name for name in runs.KINDS)
    with pytest.raises(LookupError, match="'invoice' is not one of"):
        runs.kind_named("invoice")


FORM = {"company": "DEMO", "key_date": KEY.isoformat(), "levels": ["2", 1, "1"], "note": "n"}


def test_start_run_checks_the_form_and_resumes(book) -> None:
    run = runs.start_run(DUNNING, "manual__form", {**FORM, "partner_from": "000002"})
    assert runs.start_run(DUNNING, "manual__form", FORM) == run  # a rerun resumes
    stored = _rows(book, "SELECT key_date, dry_run, params, note FROM erp.runs WHERE id = %s", run)
    assert stored == [
        (KEY, False, {"levels": [1, 2], "partner_from": "000002", "partner_to": None}, "n")
    ]
    for bad, message in (
        ({"partner_from": "000009", "partner_to": "000002"}, "partner_from '000009' is after"),
        ({"key_date": "02.03.2026"}, "param 'key_date': '02.03.2026' is not a date"),
        ({"company": "NOPE"}, "company 'NOPE' not found"),
    ):
        with pytest.raises(ValueError, match=message):
            runs.start_run(DUNNING, "manual__bad", {**FORM, **bad})
    assert _rows(book, "SELECT count(*) FROM erp.runs WHERE airflow_run_id = 'manual__bad'") == [
        (0,)
    ]


# The form as the trigger form submits it untouched: every optional field None.
DEFAULT_FORM = {
    "company": "DEMO",
    "key_date": None,
    "levels": ["1", "2", "3"],
    "partner_from": None,
    "partner_to": None,
    "dry_run": False,
    "note": None,
}


def test_an_empty_key_date_is_today_on_the_company_clock_and_kept_on_rerun(book) -> None:
    run = runs.start_run(DUNNING, "manual__defaults", DEFAULT_FORM)
    stored = _rows(book, "SELECT key_date, params, note FROM erp.runs WHERE id = %s", run)
    assert stored == [
        (
            pendulum.today("Europe/Berlin").date(),
            {"levels": [1, 2, 3], "partner_from": None, "partner_to": None},
            "",
        )
    ]
    # a rerun the next day resumes the run with the date it was started with
    with db.transaction(book) as cur:
        cur.execute("UPDATE erp.runs SET key_date = %s WHERE id = %s", (KEY, run))
    assert runs.start_run(DUNNING, "manual__defaults", DEFAULT_FORM) == run
    assert _rows(book, "SELECT key_date FROM erp.runs WHERE id = %s", run) == [(KEY,)]
    # 25 hours apart: these two zones never share a date, so UTC or Berlin cannot pass both
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        with db.transaction(book) as cur:
            cur.execute("UPDATE erp.companies SET timezone = %s WHERE code = 'DEMO'", (zone,))
        run = runs.start_run(DUNNING, f"manual__{zone}", DEFAULT_FORM)
        today = pendulum.today(zone).date()
        assert _rows(book, "SELECT key_date FROM erp.runs WHERE id = %s", run) == [(today,)]
        with db.transaction(book) as cur:
            request = BALANCE_CONFIRMATION.prepare(
                cur, {**DEFAULT_FORM, "side": "both", "reply_address": None}
            )
        assert request.key_date == date(today.year - 1, 12, 31)
        assert request.params["reply_address"] is None


def _german(amount: str) -> str:
    return f"{Decimal(amount):,.2f}".replace(",", " ").replace(".", ",").replace(" ", ".") + " €"


def _file_behind(url: str) -> bytes:
    parts = urlsplit(url)
    assert parts.scheme == "file"
    return Path(unquote(parts.path)).read_bytes()


def test_summary_reads_in_the_company_language_with_amounts_and_links(book) -> None:
    run = _run()
    _, printed, summary = _pipeline(run)
    assert summary["language"] == "de" and summary["totals"]
    # Babel puts a no-break space before the symbol, as in the letters
    german = runs.summary_text(summary).replace("\xa0", " ")
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

    with db.transaction(book) as cur:
        cur.execute("UPDATE erp.companies SET language = 'en' WHERE code = 'DEMO'")
    english_summary = runs.summarize(run)
    english = runs.summary_text(english_summary).replace("\xa0", " ")
    assert {k: v for k, v in english_summary.items() if k != "language"} == {
        k: v for k, v in summary.items() if k != "language"
    }  # the stored keys and values stay; only the language differs
    assert english.startswith(f"Dunning run {run} (manual__1), company DEMO, key date 2 Mar 2026")
    assert "no e-mail address" in english and "Briefe" not in english
    for amounts in english_summary["totals"].values():
        if "EUR" in amounts:
            assert f"€{Decimal(amounts['EUR']):,.2f}" in english
    assert f"Print batch: {batch_url}" in english


def test_rendering_logs_no_library_chatter_but_erpmail_progress(book, caplog) -> None:
    from erpmail.operators.document_run import library_chatter_silenced

    run = _run()
    first, second, *_ = runs.plan_batches(run, max_batches=3, min_size=4)
    caplog.set_level(logging.INFO)
    runs.render_batch(run, first, DUNNING, workers=1, chunk_size=10)
    chatter = [r for r in caplog.records if r.name.startswith(("weasyprint", "fontTools"))]
    assert chatter, "WeasyPrint logs its steps at INFO when left alone"
    caplog.clear()
    level = logging.getLogger("weasyprint").level
    with library_chatter_silenced():
        done = runs.render_batch(run, second, DUNNING, workers=1, chunk_size=10)
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
