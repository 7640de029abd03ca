"""Benchmark: a whole dunning run (dag.test: generate, render, archive, route to the queued
outbox, print batch, summary) on N seeded partners, against naive per-letter rendering
(one WeasyPrint ``write_pdf()`` per letter) of the SAME letters on the same cores, same run.

dag.test() runs the tasks one after the other in this process, so both sides use one core:
the pipeline's multi-core figure is bench/pdf.py's "mapped" (mapped render tasks on the
worker slots). The naive side renders only; the pipeline also generates, archives and routes.
Prints letters/s for both, the ratio, the run's task instances and the peak memory.
Targets: ratio >= 5, <= 50 task instances, peak memory < 2 GB.

    .venv/bin/python bench/dunning.py [--partners 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import scratch

scratch.airflow_home()  # before anything imports airflow
os.environ["ERPMAIL_ARCHIVE_URL"] = f"file://{tempfile.mkdtemp(prefix='erpmail-bench-archive-')}"

from erpmail.core import db  # noqa: E402
from erpmail.outbound import accounts  # noqa: E402

RUN_LETTERS = """
SELECT id FROM erp.letters WHERE run_id = %s AND pdf_path IS NOT NULL ORDER BY id"""


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--partners", type=int, default=10_000)
    args = parser.parse_args()

    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True
    )
    started = time.monotonic()
    with scratch.scratch_database(seed_partners=args.partners) as url:
        os.environ["ERPMAIL_DB_URL"] = url
        conn = db.connect(url)
        with db.transaction(conn) as cur:
            accounts.create_account(
                cur,
                name="bench",
                conn_id="bench_smtp",
                from_address="buchhaltung@muster-handels.example.com",
                is_default=True,
                send_interval_seconds=0,
            )
        print(
            f"migrated and seeded {args.partners} partners in {time.monotonic() - started:.1f} s",
            flush=True,
        )

        from airflow import settings
        from airflow.dag_processing.dagbag import DagBag

        settings.configure_orm()
        dag = DagBag(dag_folder=scratch.ROOT / "dags").get_dag("dunning_run")
        started = time.monotonic()
        dr = dag.test(run_conf={"company": "DEMO", "approval": False})
        pipeline_s = time.monotonic() - started
        tis = dr.get_task_instances()
        with db.transaction(conn) as cur:
            cur.execute("SELECT id, summary FROM erp.runs WHERE airflow_run_id = %s", (dr.run_id,))
            run_id, summary = cur.fetchone()
            cur.execute("SELECT count(*) FROM mail.outbox")
            queued = cur.fetchone()[0]
        letters = summary["letters"]
        per_task: dict[str, float] = {}
        for ti in tis:
            if ti.start_date and ti.end_date:
                seconds = (ti.end_date - ti.start_date).total_seconds()
                per_task[ti.task_id] = per_task.get(ti.task_id, 0.0) + seconds
        print("task seconds: " + ", ".join(f"{t} {s:.1f}" for t, s in per_task.items()))
        print(
            f"run {dr.state}: {letters} letters {summary['by_status']}, {queued} queued", flush=True
        )

        # the baseline: the letters the run rendered, one write_pdf() each, in this process
        from erpmail.documents import pdf, runs, templates
        from erpmail.documents.dunning import DUNNING

        with db.transaction(conn) as cur:
            cur.execute(RUN_LETTERS, (run_id,))
            ids = [row[0] for row in cur.fetchall()]
            run = runs.load_run(cur, run_id)
            contexts = DUNNING.contexts(cur, run, ids)
        html = [templates.default().render_letter(contexts[i]).letter_html for i in ids]
        started = time.monotonic()
        for page in html:
            pdf.render_single(page)
        naive_s = time.monotonic() - started
        conn.close()

    pipeline_rate = letters / pipeline_s
    naive_rate = len(html) / naive_s
    own, child = _peak_mb()
    print(
        f"pipeline: {letters} letters in {pipeline_s:.1f} s = {pipeline_rate:.1f} letters/s "
        f"(generate, render, archive, route to the queued outbox, print batch, summary)"
    )
    print(
        f"naive:    {len(html)} letters in {naive_s:.1f} s = {naive_rate:.1f} letters/s "
        f"(the same letters, one write_pdf() each, rendering only, one process like dag.test)"
    )
    print(f"ratio:    {pipeline_rate / naive_rate:.1f}x (target >= 5)")
    print(f"task instances: {len(tis)} (target <= 50)")
    print(
        f"peak memory: {own:.0f} MB this process, {child:.0f} MB largest child (target < 2048 MB)"
    )
    return 0 if dr.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
