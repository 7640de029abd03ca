"""
### Campaign send

Marketing mail to many (`mail.campaigns`): triggered with a campaign id, and every
15 minutes for the scheduled campaigns that are due. The segment (a named query in
`sql/segments/`, or a filter on customer group, language, country) is expanded into
`mail.campaign_recipients` once and frozen; blocked, hard-bounced, suppressed and opted-out
addresses are skipped with the reason. Each recipient's mail, in its language and with a
one-click unsubscribe (`List-Unsubscribe`, RFC 8058), is queued through the outbox under a
key per campaign and address (a rerun queues nothing twice) and sent with the account's
throttle by `outbox_dispatch`.

**Pause / resume**: `erpmail campaign pause|resume|cancel ID`; a paused campaign stops at
the next batch, a resumed one goes on with the next run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.campaign import SendCampaignOperator
from erpmail.operators.notifier import OutboxNotifier

with DAG(
    dag_id="campaign_send",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["erpmail", "mail", "campaigns"],
    default_args={
        "owner": "erpmail",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    render_template_as_native_obj=True,
    params={
        "campaign": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Campaign",
            description="The campaign id (mail.campaigns.id); empty: every scheduled campaign "
            "that is due, and every one still sending.",
        ),
        "batch_size": Param(
            500,
            type="integer",
            minimum=1,
            maximum=10000,
            title="Batch size",
            description="Recipients queued per transaction.",
        ),
    },
):
    SendCampaignOperator(
        task_id="send", campaign="{{ params.campaign }}", batch_size="{{ params.batch_size }}"
    )
