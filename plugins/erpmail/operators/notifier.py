"""A notifier that queues its mail in erpmail's outbox, for ``on_failure_callback`` and the
other callbacks of tasks and DAGs: the dispatcher sends it with every account's throttle,
retries and once-only guarantee, where a direct send would bypass them.
"""

from __future__ import annotations

import asyncio
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


OWNER_USER = "SELECT email FROM erp.users WHERE login = %s"
OWNER_GROUP = """
SELECT u.email FROM erp.user_group_members m JOIN erp.users u ON u.login = m.login
 WHERE m.group_name = %s ORDER BY u.login"""


class OutboxNotifier(BaseNotifier):
    """Queue a plain-text mail about a task or DAG run in erpmail's outbox.

    One mail per task try (or per DAG run, as a DAG callback; or per missed deadline, as a
    ``DeadlineAlert``'s ``AsyncCallback``): the outbox key is made from the run, so a callback
    run twice queues it once. It goes out with the next ``outbox_dispatch`` run; nothing is
    sent from the callback itself.

    :param to: the address or addresses to notify; None: the DAG owner's (templated)
    :param owner: whose address, when ``to`` is None: an address, an ``erp.users`` login or an
        ``erp.user_groups`` name (comma separated for several); None: the DAG's owner
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
        to: str | Iterable[str] | None = None,
        owner: str | None = None,
        subject: str = SUBJECT,
        body: str = BODY,
        account: str | None = None,
        context: Any = None,
    ) -> None:
        super().__init__(context=context)
        self.to = [to] if isinstance(to, str) else list(to or [])
        self.owner = owner
        self.subject, self.body, self.account = subject, body, account

    def notify(self, context: Any) -> None:
        ti = context.get("ti")
        dag, dag_run = context.get("dag"), context.get("dag_run")
        if isinstance(dag_run, dict):  # a deadline's context: the run as the API shows it
            about = [dag_run.get("dag_id"), dag_run.get("dag_run_id"), "deadline"]
        else:
            about = [dag.dag_id, getattr(dag_run, "run_id", None) or context.get("run_id")]
        if ti is not None:
            about += [ti.task_id, getattr(ti, "map_index", -1), ti.try_number]
        owner = self.owner or (dag.owner if dag is not None else None)
        outbox_id, to = queue_notice(
            to=self.to,
            owner=owner,
            subject=" ".join(self.subject.split()),
            text=self.body,
            key="notice:" + ":".join(str(a) for a in about),
            account=self.account or None,
        )
        self.log.info("queued notice to %s as outbox message %s", ", ".join(to), outbox_id)

    async def async_notify(self, context: Any) -> None:
        """As ``notify``, off the triggerer's event loop (a deadline's callback)."""
        await asyncio.to_thread(self.notify, context)


def owner_addresses(cur, owner: str) -> list[str]:
    """The addresses of a DAG owner: addresses as given, a user's, a group's members'."""
    found: list[str] = []
    for name in (part.strip() for part in owner.split(",")):
        if "@" in name:
            found.append(name)
            continue
        cur.execute(OWNER_USER, (name,))
        row = cur.fetchone()
        cur.execute(OWNER_GROUP, (name,))
        found += [row[0]] if row else [email for (email,) in cur.fetchall()]
    if not found:
        raise LookupError(f"owner {owner!r}: no address, erp.users login or erp.user_groups name")
    return list(dict.fromkeys(found))


def queue_notice(
    *,
    to: list[str],
    subject: str,
    text: str,
    key: str,
    account: str | None = None,
    owner: str | None = None,
) -> tuple[int, list[str]]:
    """Queue a plain-text mail to ``to`` (empty: the ``owner``'s addresses) from ``account``
    (None: the default account) under the outbox ``key``, once, and commit; its outbox id
    and the addresses."""
    from erpmail.core import db
    from erpmail.documents import mime
    from erpmail.outbound import accounts, outbox

    with db.transaction() as cur:
        if not to:
            if not owner:
                raise LookupError(f"notice {key}: no address and no owner to send it to")
            to = owner_addresses(cur, owner)
        key = f"{key}:{','.join(sorted(to))}"
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
        outbox_id = outbox.enqueue(
            cur,
            key=key,
            account_id=sender.id,
            recipients=to,
            mime=msg.as_bytes(),
            source_type="alert",
        )
    return outbox_id, to
