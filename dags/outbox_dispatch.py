"""
### Outbox dispatch

Every minute: sends the due messages in `mail.outbox` through each account's SMTP
connection (Airflow Connection named by `mail.accounts.conn_id`) and records the server's
reply on every message and recipient.

- **Never twice.** Messages are claimed (`sending`) and committed before any SMTP traffic;
  concurrent runs or workers skip each other's messages. A message a crashed worker left in
  `sending` is taken back after a timeout and flagged `sent_uncertain`.
- **Retries.** 4xx replies and dropped connections go back to the queue with an exponential
  backoff; 5xx replies fail the message at once with the reply stored.
- **Throttle.** Each account's send interval ("one mail every x seconds") and hourly cap
  hold across runs and workers. **An interval under 60 seconds risks the account being
  treated as a spammer by the provider**; the run logs a warning for such accounts.
  Set the interval to 0 only for a relay you run yourself.
- **Time budget.** A run stops claiming after `budget_seconds` (default 50 s), so it ends
  before the next one is due; what is left waits for the next run.
- **Sent folder.** For accounts with a Sent folder, a copy is appended over IMAP after the
  server accepted the mail; failures are retried by later runs and never resend the mail.
- **Send now.** Trigger with `account` to dispatch one account, or `source_type` and
  `source_id` (e.g. a letter id) to send that source's mail now, even if it is waiting for
  a retry. The throttle still applies.

The task fails when an account could not send at all (TLS, login, connection): its mail
stays queued and the log names the account.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.notifier import OutboxNotifier
from erpmail.operators.outbox import DispatchOutboxOperator

with DAG(
    dag_id="outbox_dispatch",
    schedule="* * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "mail", "outbound"],
    # no task retries: the next run, a minute later, is the retry
    default_args={
        "owner": "erpmail",
        "retries": 0,
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    # the params reach the operator as they are: None stays None, a number a number
    render_template_as_native_obj=True,
    params={
        "account": Param(
            None,
            type=["null", "string"],
            description="Dispatch only this account (mail.accounts.name); empty: all accounts.",
        ),
        "source_type": Param(
            None,
            type=["null", "string"],
            enum=[None, "letter", "notification", "autoreply", "alert", "manual"],
            description="Send only mail of this source type now (with source_id: one source).",
        ),
        "source_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Send only mail of this source id now, e.g. a letter id.",
        ),
        "budget_seconds": Param(
            50,
            type="integer",
            minimum=5,
            maximum=3000,
            description="Stop claiming after this many seconds (keep under the schedule's minute).",
        ),
    },
) as dag:
    DispatchOutboxOperator(
        task_id="dispatch",
        pool="smtp",
        execution_timeout=timedelta(minutes=55),
        account="{{ params.account }}",
        source_type="{{ params.source_type }}",
        source_id="{{ params.source_id }}",
        budget_seconds="{{ params.budget_seconds }}",
    )
