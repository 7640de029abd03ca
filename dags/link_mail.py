"""
### Link mail by hand

Files one stored mail (or every copy of a Message-ID) against a partner, contact,
project, case, letter or open item, with method `manual`. An `unlinked` mail becomes `linked`; the
action is written to `mail.audit_log`.

- `message`: the mail's id (`mail.messages.id`, as listed in the unlinked-mail alert) or
  its Message-ID.
- `entity_type` and `number`: partner number (leading zeros count), project as
  `12-3-1` / `12/3/1` / `12,3,1`, case (ticket) number, contact id, letter id, or an open
  item's document number (a mail linked to an open item is kept for the invoice legal
  minimum). Digits are ASCII digits: `²` or `٣` are refused by the form.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from erpmail.operators.mailbox import LinkMailOperator
from erpmail.operators.notifier import OutboxNotifier

with DAG(
    dag_id="link_mail",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    doc_md=__doc__,
    tags=["erpmail", "mail", "inbound"],
    default_args={
        "owner": "erpmail",
        "retries": 0,
        "on_failure_callback": OutboxNotifier(),  # to the owner's address, via the outbox
    },
    params={
        "message": Param(
            type="string",
            minLength=1,
            maxLength=1000,
            # an id in ASCII digits, or a Message-ID (with its @)
            pattern=r"^\s*([0-9]+|<?[^<>\s@]+@[^<>\s]+>?)\s*$",
            description="The mail: its id in mail.messages (digits 0-9), or its Message-ID.",
        ),
        "entity_type": Param(
            "partner",
            type="string",
            enum=["partner", "contact", "project", "case", "letter", "open_item"],
            description="What to link the mail to.",
        ),
        "number": Param(
            type="string",
            minLength=1,
            maxLength=100,
            pattern=r"^\s*[A-Za-z0-9][A-Za-z0-9/.,_-]*\s*$",
            description=(
                "Partner number, project 12-3-1, case number, contact id, letter id or the"
                " open item's document number (letters A-Z, digits 0-9, / . , _ -)."
            ),
        ),
    },
) as dag:
    LinkMailOperator(
        task_id="link",
        message="{{ params.message }}",
        entity_type="{{ params.entity_type }}",
        number="{{ params.number }}",
    )
