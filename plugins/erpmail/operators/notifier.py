"""A notifier that queues its mail in erpmail's outbox, for ``on_failure_callback`` and the
other callbacks of tasks and DAGs: the dispatcher sends it with every account's throttle,
retries and once-only guarantee, where a direct send would bypass them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from airflow.sdk import BaseNotifier

SUBJECT = (
    "{{ dag.dag_id }}{% if ti is defined and ti %}.{{ ti.task_id }}{% endif %}"
    " failed ({{ run_id }})"
)
BODY = """\
DAG {{ dag.dag_id }}, run {{ run_id }}
{%- if ti is defined and ti %}
Task {{ ti.task_id }}{% if ti.map_index is defined and ti.map_index >= 0 %} [{{ ti.map_index }}]{% endif %}, try {{ ti.try_number }}
{%- endif %}
{%- if exception is defined and exception %}
Error: {{ exception }}
{%- endif %}
{%- if ti is defined and ti and ti.log_url is defined %}
Log: {{ ti.log_url }}
{%- endif %}
"""


class OutboxNotifier(BaseNotifier):
    """Queue a plain-text mail about a task or DAG run in erpmail's outbox.

    One mail per task try (or per DAG run, as a DAG callback): the outbox key is made from
    the run, so a callback run twice queues it once. It goes out with the next
    ``outbox_dispatch`` run; nothing is sent from the callback itself.

    :param to: the address or addresses to notify (templated)
    :param subject: the subject, a Jinja template over the callback's context; default:
        ``<dag>.<task> failed (<run id>)`` (templated)
    :param body: the text, a Jinja template; default: DAG, run, task, try, the error and the
        log's address (templated)
    :param account: the ``mail.accounts`` name to send from; None: the default account
        (templated)
    """

    template_fields: Sequence[str] = ("to", "subject", "body", "account")

    def __init__(
        self,
        *,
        to: str | Iterable[str],
        subject: str = SUBJECT,
        body: str = BODY,
        account: str | None = None,
    ) -> None:
        super().__init__()
        self.to = [to] if isinstance(to, str) else list(to)
        self.subject, self.body, self.account = subject, body, account

    def notify(self, context: Any) -> None:
        ti = context.get("ti")
        dag_run = context.get("dag_run")
        about = [context["dag"].dag_id, getattr(dag_run, "run_id", None) or context.get("run_id")]
        if ti is not None:
            about += [ti.task_id, getattr(ti, "map_index", -1), ti.try_number]
        outbox_id = queue_notice(
            to=self.to,
            subject=" ".join(self.subject.split()),
            text=self.body,
            key="notice:" + ":".join(str(a) for a in about) + ":" + ",".join(sorted(self.to)),
            account=self.account or None,
        )
        self.log.info("queued notice to %s as outbox message %s", ", ".join(self.to), outbox_id)


def queue_notice(
    *, to: list[str], subject: str, text: str, key: str, account: str | None = None
) -> int:
    """Queue a plain-text mail from ``account`` (None: the default account) under the outbox
    ``key``, once, and commit; its outbox id."""
    from erpmail.core import db
    from erpmail.documents import mime
    from erpmail.outbound import accounts, outbox

    with db.transaction() as cur:
        if account:
            sender = accounts.account_by_name(cur, account)
        else:
            sender = next((a for a in accounts.list_accounts(cur) if a.is_default), None)
            if sender is None:
                raise LookupError("no default mail account to send the notice from")
        msg = mime.build_message(
            sender=(sender.display_name, sender.from_address),
            to=to,
            subject=subject,
            text=text,
            message_id=mime.make_message_id(key, sender.from_address.rpartition("@")[2]),
            auto_submitted="auto-generated",
            context=f"notice {key}",
        )
        return outbox.enqueue(
            cur,
            key=key,
            account_id=sender.id,
            recipients=to,
            mime=msg.as_bytes(),
            source_type="alert",
        )
