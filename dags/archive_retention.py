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
  batch deletes its rows and records their files in `mail.retention_pending_deletions` in one
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
from airflow.sdk import DAG, Param

from erpmail.operators.notifier import OutboxNotifier
from erpmail.operators.retention import CheckPurgeRequestOperator, PurgeArchiveOperator

with DAG(
    dag_id="archive_retention",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "archive", "retention"],
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=10),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    render_template_as_native_obj=True,  # the params reach the operators as flags and numbers
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
    check = CheckPurgeRequestOperator(
        task_id="check_request",
        retries=0,
        force="{{ params.force }}",
        force_reason="{{ params.force_reason }}",
    )
    purge = PurgeArchiveOperator(
        task_id="purge",
        dry_run="{{ params.dry_run }}",
        location="{{ params.location }}",
        force="{{ params.force }}",
        force_reason="{{ params.force_reason }}",
        batch_size="{{ params.batch_size }}",
    )
    check >> purge
