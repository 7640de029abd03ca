"""
### Mailbox import

Every 15 minutes: imports the new mail of every enabled location in
`mail.import_locations` (one mapped task per location), over verified IMAPS or STARTTLS
(Airflow Connection named by `conn_id`).

- **Nothing lost.** The raw `.eml` is stored unchanged and the row committed before the
  server is touched (flag as seen, move or delete, per location); a crash in between
  only means the next run recognises the same mails.
- **Nothing doubled.** Each mail is stored once per location, by Message-ID or, without
  one, by the SHA-256 of its bytes; a per-location lock keeps concurrent runs apart; a
  changed UIDVALIDITY rescans the folder without doubles.
- **Filed.** Each mail is linked to partners, contacts, projects, cases or letters (reply
  to our letters, keyword + number in the subject, ticket number, sender address). Mail
  that links to nothing is `unlinked`, a `mail_unlinked` event (`event_mail` sends the
  hourly digest to the location's notification address), and can be linked on the Mail
  screen or with the DAG `link_mail`.
- **Too big.** Mail over the location's size limit stays on the server and is recorded in
  `mail.import_skipped`.
- **Backfill.** `airflow backfill create --dag-id mailbox_import --from-date ... --to-date ...`
  scans each run's data interval (IMAP SINCE/BEFORE) and imports only what is missing.
  A manual run with `scan_from` / `scan_to` does the same for any interval.
- **Late or failed.** A run not finished 30 minutes after it was queued, and a task that
  fails, mail the DAG owner (`erp.users` login or `erp.user_groups` name `erpmail`) through
  the outbox.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, Param
from airflow.timetables.interval import CronDataIntervalTimetable

from erpmail.operators.mailbox import ImportMailboxOperator, MailboxLocationsOperator
from erpmail.operators.notifier import OutboxNotifier

# A rescan asked for in the form, else a backfill run's data interval, else nothing: new mail
# above the watermark.
SCAN_FROM = (
    "{{ params.scan_from or (data_interval_start if dag_run.run_type == 'backfill' else None) }}"
)
SCAN_TO = "{{ params.scan_to or (data_interval_end if dag_run.run_type == 'backfill' else None) }}"

LATE_IMPORT = {
    "owner": "erpmail",
    "subject": "mailbox_import {{ dag_run.dag_run_id }} not finished 30 minutes after it was due",
    "body": "The mailbox import run {{ dag_run.dag_run_id }} (queued {{ dag_run.queued_at }}) "
    "had not finished at {{ deadline.deadline_time }}. Mail waits on the server until it runs.",
}

with DAG(
    dag_id="mailbox_import",
    # data intervals (not trigger times): a backfill run knows which 15 minutes to scan
    schedule=CronDataIntervalTimetable("*/15 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "mail", "inbound"],
    # one retry a little later; the next scheduled run retries anyway
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    # a run not finished 30 minutes after it was due: mail to the owner, through the outbox
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=30),
        callback=AsyncCallback(OutboxNotifier, kwargs=LATE_IMPORT),
    ),
    # the params and the interval reach the operators as they are: None stays None
    render_template_as_native_obj=True,
    params={
        "location": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Import only this location (mail.import_locations.id); empty: all enabled.",
        ),
        "scan_from": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="Rescan mail received from this time (with scan_to), importing what is missing.",
        ),
        "scan_to": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="End (exclusive) of the rescan interval started by scan_from.",
        ),
    },
) as dag:
    locations = MailboxLocationsOperator(task_id="locations", location="{{ params.location }}")
    ImportMailboxOperator.partial(
        task_id="import_mail",
        execution_timeout=timedelta(minutes=60),
        max_active_tis_per_dagrun=4,
        since=SCAN_FROM,
        until=SCAN_TO,
    ).expand(location=locations.output)
