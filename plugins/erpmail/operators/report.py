"""The operator that mails the due report subscriptions (``erpmail.reports.subscriptions``)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#e0f3e8"


class MailReportsOperator(BaseOperator):
    """Run every enabled report subscription whose time has come: its query streamed into a
    PDF table and/or a CSV file, mailed to its recipients through the outbox (once per due
    time), its next time from its cron schedule. A report that fails is recorded on its
    subscription; the others go on. Returns the outcome per subscription."""

    ui_color = UI_COLOR

    def execute(self, context: Any) -> dict[str, str]:
        from erpmail.reports import subscriptions

        return subscriptions.run_due()
