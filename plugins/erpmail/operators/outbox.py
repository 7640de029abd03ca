"""The operator that sends the outbox (``erpmail.outbound.dispatch``): due mail per account
through its SMTP connection, throttled, each message once.

Its options are template fields: a DAG that fills them from its params
(``"{{ params.account }}"``) sets ``render_template_as_native_obj=True``, so an empty field
stays None and a number a number; an empty text is read as not given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#e0ecf3"


def _given(value: Any) -> Any:
    """None for an option left empty (None or "")."""
    return None if value is None or value == "" else value


class DispatchOutboxOperator(BaseOperator):
    """Send the due outbox messages, account by account, until none is due or the time
    budget is used up; record every server reply on the message and its recipients.

    Each message is claimed and committed before any SMTP traffic, so a retry, a second
    worker or a crash never sends it twice; 4xx and dropped connections go back to the queue
    with a backoff, 5xx fail the message. Each account's send interval and hourly cap hold
    across runs and workers. Copies go to an account's Sent folder when it keeps one.
    Run it in the ``smtp`` pool: its slots bound the SMTP sessions per account.

    The task fails when an account could not send at all (TLS, login, connection): that
    account's mail stays queued and the error names it; the other accounts still send.
    Returns the run's counts (sent, deferred, failed, released, ...) for XCom.

    :param account: only this account (``mail.accounts.name``); None: every account (templated)
    :param source_type: only mail of this source type (letter, notification, autoreply,
        alert, manual), sent now even when waiting for a retry (templated)
    :param source_id: only mail of this source id, e.g. a letter id (templated)
    :param budget_seconds: stop claiming after this many seconds; keep it under the
        schedule's interval, so a run ends before the next one (templated)
    :param batch_size: messages claimed at a time per account
    """

    template_fields: Sequence[str] = ("account", "source_type", "source_id", "budget_seconds")
    ui_color = UI_COLOR

    def __init__(
        self,
        *,
        account: Any = None,
        source_type: Any = None,
        source_id: Any = None,
        budget_seconds: Any = 50,
        batch_size: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.account, self.source_type, self.source_id = account, source_type, source_id
        self.budget_seconds, self.batch_size = budget_seconds, batch_size

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from erpmail.outbound import dispatch

        source_id = _given(self.source_id)
        summary = dispatch.dispatch(
            account=_given(self.account),
            source_type=_given(self.source_type),
            source_id=int(source_id) if source_id is not None else None,
            budget_seconds=float(_given(self.budget_seconds) or 50),
            batch_size=self.batch_size,
        )
        if summary.account_errors:
            raise AirflowException(
                "mail account(s) could not send, their mail stays queued: "
                + "; ".join(f"{n}: {e}" for n, e in sorted(summary.account_errors.items()))
            )
        return summary.as_dict()
