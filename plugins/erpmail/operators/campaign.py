"""The operator that sends campaigns (``erpmail.campaigns.sending``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#efe0f3"
DUE = """
SELECT id FROM mail.campaigns
 WHERE status = 'sending' OR (status = 'scheduled' AND start_at <= now()) ORDER BY id"""


class SendCampaignOperator(BaseOperator):
    """Freeze a campaign's recipients (once) and queue their mail through the outbox in
    batches, each recipient once; a paused or cancelled campaign stops at the next batch.
    Returns the summary per campaign (recipients per status and reason).

    :param campaign: the campaign id; None: every scheduled campaign that is due and every
        one still sending (templated)
    :param batch_size: recipients per transaction (templated)
    """

    template_fields: Sequence[str] = ("campaign", "batch_size")
    ui_color = UI_COLOR

    def __init__(self, *, campaign: Any = None, batch_size: Any = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.campaign, self.batch_size = campaign, batch_size

    def execute(self, context: Any) -> dict[str, dict[str, int]]:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.campaigns import sending
        from erpmail.core import db

        if self.campaign not in (None, ""):
            ids = [int(self.campaign)]
        else:
            with db.transaction() as cur:
                cur.execute(DUE)
                ids = [i for (i,) in cur.fetchall()]
        try:
            return {str(i): sending.send(i, batch=int(self.batch_size)) for i in ids}
        except (LookupError, ValueError) as exc:  # a campaign that cannot go: no retry helps
            raise AirflowFailException(str(exc)) from exc
