"""The operator that turns pending events into mail (``erpmail.events.mailing``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#f3ece0"


class SendEventMailOperator(BaseOperator):
    """Claim the pending events (``erp.events``; a concurrent run skips the ones this run
    holds), queue each one's mail in the outbox in the same transaction as its outcome, then
    queue the digests that are due. An event that fails fails alone with its reason; an
    event type with no rule is ``skipped``. Returns the counts per outcome for XCom.

    :param limit: at most this many events per run (templated)
    """

    template_fields: Sequence[str] = ("limit",)
    ui_color = UI_COLOR

    def __init__(self, *, limit: Any = 5000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit

    def execute(self, context: Any) -> dict[str, int]:
        from erpmail.events import mailing

        return mailing.process(limit=int(self.limit))
