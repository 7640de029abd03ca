"""
### Archive retention

Nightly purge of archived mail past its retention period, per policy in
`mail.retention_policies`: one per import location (its incoming mail) and one for sent
mail. `keep_days` empty or 0 keeps everything; a location without a policy keeps its mail.

**Safety**
- Mail under **legal hold** is never deleted.
- Nothing younger than the **legal minimum** goes (`legal_min_days`, default 6 years; mail
  linked to an open item, i.e. an invoice or credit note: `invoice_legal_min_days`, default
  10 years) unless the run is started with **force** and a **force reason**; both are
  recorded in the audit row with the user who triggered it.
- Rows and their `.eml`/attachment files go together, in batches of `batch_size`: each
  batch deletes its rows and records their files in `mail.retention_pending_files` in one
  short transaction, the files are removed after commit. Every run first removes files a
  crashed run left recorded. The mailbox import running meanwhile waits at most one batch.

**Dry run vs. real purge.** A *scheduled* run (`run_type` scheduled) always purges for
real: the scheduler passes no conf, and the `dry_run` toggle is ignored. Any *manual* run
(trigger form, API, `dag.test()`) honours `dry_run`, which defaults to on: it lists what
would go per location and month (count and size) in the task log and returns that report
as the `purge` task's result. To keep the nightly purge from running, pause the DAG.

**Audit.** Each run writes one `mail.audit_log` row per policy (`retention_purge` or
`retention_dry_run`): cut-off dates, counts, bytes freed, status, who forced it and why.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

with DAG(
    dag_id="archive_retention",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "archive", "retention"],
    default_args={"owner": "erpmail", "retries": 1, "retry_delay": timedelta(minutes=10)},
    params={
        "dry_run": Param(
            True,
            type="boolean",
            description="Only report what would be deleted (manual runs; scheduled runs always purge).",
        ),
        "location": Param(
            None,
            type=["null", "string"],
            description="Import location name, or 'sent' for the sent-mail policy; empty: all policies.",
        ),
        "force": Param(
            False,
            type="boolean",
            description="Let the legal minimum give way (never a legal hold). Needs a force reason.",
        ),
        "force_reason": Param(
            None,
            type=["null", "string"],
            description="Why the legal minimum may give way; required with force, recorded in the audit log.",
        ),
        "batch_size": Param(
            1000,
            type="integer",
            minimum=1,
            maximum=10000,
            description="Mails deleted per transaction; the import waits at most one batch.",
        ),
    },
):

    @task(retries=0)
    def check_request() -> None:
        """Refuse force without a reason before anything is touched."""
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.retention import purge

        params = get_current_context()["params"]
        try:
            purge.check_request(force=params["force"], force_reason=params["force_reason"])
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def purge() -> dict:
        """Sweep leftover files, then purge or report; returns the run summary."""
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.retention import purge

        context = get_current_context()
        params, dag_run = context["params"], context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        try:
            return purge.run(
                dry_run=purge.dry_run_for(run_type, params["dry_run"]),
                location=params["location"] or None,
                force=params["force"],
                force_reason=params["force_reason"],
                actor=dag_run.triggering_user_name or f"{run_type} run",
                run_id=dag_run.run_id,
                batch_size=params["batch_size"],
            )
        except ValueError as exc:  # a bad request (unknown location): a retry cannot help
            raise AirflowFailException(str(exc)) from exc

    check_request() >> purge()
