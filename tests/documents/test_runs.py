"""The document pipeline on a dunning run, all steps, and its run rows: kinds by name, the
form checked and resumed, the key date on the company's clock, batches planned once, reruns."""

from __future__ import annotations

import email
import io
import math
from datetime import date, timedelta
from email import policy

import pendulum
import pypdf
import pytest

from erpmail.core import archive, db
from erpmail.documents import runs
from erpmail.documents.balance_confirmation import BALANCE_CONFIRMATION
from erpmail.documents.dunning import DUNNING
from tests.documents.pipeline import KEY, LETTERS, OUTBOX, dunning_run, rows, run_steps
from tests.pdftext import pdf_text


def test_run_ends_released_or_paper_with_pdfs_mail_and_print_batch(ledger) -> None:
    run = dunning_run()
    batches, printed, summary = run_steps(run)
    assert 1 < len(batches) <= 3
    letters = rows(ledger, LETTERS, run)
    assert letters and {row[2] for row in letters} <= {"released", "paper"}
    outbox = {row[2]: row for row in rows(ledger, OUTBOX)}
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
    stored = rows(
        ledger,
        "SELECT status, summary->>'letters', print_batch_path FROM erp.runs WHERE id = %s",
        run,
    )
    assert stored == [("done", str(len(letters)), printed)]


def test_rerun_of_every_step_changes_nothing(ledger) -> None:
    run = dunning_run()
    run_steps(run)
    before_letters = rows(ledger, LETTERS, run)
    before_outbox = [(r[0], r[1]) for r in rows(ledger, OUTBOX)]
    # the DAG rerun: same Airflow run id resumes the same run
    assert dunning_run() == run
    run_steps(run)
    assert rows(ledger, LETTERS, run) == before_letters
    assert [(r[0], r[1]) for r in rows(ledger, OUTBOX)] == before_outbox
    # a route step cleared after its letters were reset still finds the same outbox rows
    with db.transaction(ledger) as cur:
        cur.execute(
            "UPDATE erp.letters SET status = 'archived', outbox_id = NULL WHERE run_id = %s AND status = 'released'",
            (run,),
        )
    run_steps(run)
    assert [(r[0], r[1]) for r in rows(ledger, OUTBOX)] == before_outbox
    assert rows(ledger, LETTERS, run) == before_letters


def test_plan_batches_is_fixed_once(ledger) -> None:
    run = dunning_run()
    first = runs.plan_batches(run, max_batches=2, min_size=1)
    assert first == [0, 1]
    assert runs.plan_batches(run, max_batches=5, min_size=1) == [0, 1]
    empty = runs.create_run(
        kind="dunning", airflow_run_id="empty", company="DEMO", key_date=KEY - timedelta(days=400)
    )
    runs.generate(empty, DUNNING)
    assert runs.plan_batches(empty) == [0]


def test_plan_batches_sizes_them_by_the_count_it_is_given(ledger) -> None:
    run = dunning_run()
    letters = rows(ledger, "SELECT count(*) FROM erp.letters WHERE run_id = %s", run)[0][0]
    assert letters > 2
    # told there are twice as many letters, the batches are twice as big: half as many
    assert runs.plan_batches(run, 2 * letters, max_batches=letters, min_size=1) == list(
        range(math.ceil(letters / 2))
    )


def test_kinds_are_found_by_name() -> None:
    from erpmail.documents.payment_advice import PAYMENT_ADVICE

    assert runs.kind_named("dunning") is DUNNING
    assert runs.kind_named("balance_confirmation") is BALANCE_CONFIRMATION
    assert runs.kind_named("payment_advice") is PAYMENT_ADVICE
    assert all(runs.kind_named(name).kind == name for name in runs.KINDS)
    with pytest.raises(LookupError, match="'invoice' is not one of"):
        runs.kind_named("invoice")


FORM = {"company": "DEMO", "key_date": KEY.isoformat(), "levels": ["2", 1, "1"], "note": "n"}


def test_the_user_who_triggers_a_run_is_kept_for_signing(ledger) -> None:
    run = runs.start_run(DUNNING, "manual__anna", FORM, user="anna")
    kept = rows(ledger, "SELECT params->>'user' FROM erp.runs WHERE id = %s", run)
    assert kept == [("anna",)]
    scheduled = runs.start_run(DUNNING, "scheduled__x", FORM, user=None)
    assert rows(ledger, "SELECT params ? 'user' FROM erp.runs WHERE id = %s", scheduled) == [
        (False,)
    ]


def test_start_run_checks_the_form_and_resumes(ledger) -> None:
    run = runs.start_run(DUNNING, "manual__form", {**FORM, "partner_from": "000002"})
    assert runs.start_run(DUNNING, "manual__form", FORM) == run  # a rerun resumes
    stored = rows(ledger, "SELECT key_date, dry_run, params, note FROM erp.runs WHERE id = %s", run)
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
    assert rows(ledger, "SELECT count(*) FROM erp.runs WHERE airflow_run_id = 'manual__bad'") == [
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


def test_an_empty_key_date_is_today_on_the_company_clock_and_kept_on_rerun(ledger) -> None:
    run = runs.start_run(DUNNING, "manual__defaults", DEFAULT_FORM)
    stored = rows(ledger, "SELECT key_date, params, note FROM erp.runs WHERE id = %s", run)
    assert stored == [
        (
            pendulum.today("Europe/Berlin").date(),
            {"levels": [1, 2, 3], "partner_from": None, "partner_to": None},
            "",
        )
    ]
    # a rerun the next day resumes the run with the date it was started with
    with db.transaction(ledger) as cur:
        cur.execute("UPDATE erp.runs SET key_date = %s WHERE id = %s", (KEY, run))
    assert runs.start_run(DUNNING, "manual__defaults", DEFAULT_FORM) == run
    assert rows(ledger, "SELECT key_date FROM erp.runs WHERE id = %s", run) == [(KEY,)]
    # 25 hours apart: these two zones never share a date, so UTC or Berlin cannot pass both
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        with db.transaction(ledger) as cur:
            cur.execute("UPDATE erp.companies SET timezone = %s WHERE code = 'DEMO'", (zone,))
        run = runs.start_run(DUNNING, f"manual__{zone}", DEFAULT_FORM)
        today = pendulum.today(zone).date()
        assert rows(ledger, "SELECT key_date FROM erp.runs WHERE id = %s", run) == [(today,)]
        with db.transaction(ledger) as cur:
            request = BALANCE_CONFIRMATION.prepare(
                cur, {**DEFAULT_FORM, "side": "both", "reply_address": None}
            )
        assert request.key_date == date(today.year - 1, 12, 31)
        assert request.params["reply_address"] is None
