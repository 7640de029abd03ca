"""
### Event mail

Every minute (and whenever triggered): the mail that events send, not a batch run. The ERP
writes `erp.events` (type, payload as JSON, company, partner); erpmail writes its own
(`letter_failed`, `mail_bounced`, `mail_unlinked`, `balance_reply_received`) where the fact
happens. Each pending event is claimed (`FOR UPDATE SKIP LOCKED`: a second run takes others),
its mail queued in the outbox in the same transaction as its outcome (`queued`, `digest`,
`skipped`, `expired`, `failed` with the reason), so nothing is sent twice or lost.

- **Rules** (`mail.event_rules`): event type -> recipients (an address, the partner's contact
  of a role, the partner's clerk, a user group, an address or login in the payload),
  template (`include/templates/events/<template>/<de|en|nl>/`), sender account, on/off,
  digest (`immediate`, or one mail per recipient per `hourly` or `daily` with all its
  events). A type without a rule, or with its rules off, is `skipped`.
- **Customer portal** (`portal_*` events): per customer group (`erp.portal_settings`,
  `erp.portal_events`, `erp.portal_texts`).

The outbox sends the mail with every account's throttle (`outbox_dispatch`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.event_mail import SendEventMailOperator
from erpmail.operators.notifier import OutboxNotifier

with DAG(
    dag_id="event_mail",
    schedule="* * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "mail", "events"],
    # no task retries: the next run, a minute later, takes what is left
    default_args={"owner": "erpmail", "retries": 0, "on_failure_callback": OutboxNotifier()},
    render_template_as_native_obj=True,
    params={
        "limit": Param(
            5000,
            type="integer",
            minimum=1,
            maximum=100000,
            title="Events per run",
            description="At most this many events per run; the rest wait for the next.",
        ),
    },
):
    SendEventMailOperator(task_id="send", limit="{{ params.limit }}")
