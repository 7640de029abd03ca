"""Business dates: today in the company's time zone (pendulum), never the machine's."""

from __future__ import annotations

from datetime import date

import pendulum

DEFAULT_TIMEZONE = "Europe/Berlin"


def today(timezone: str = DEFAULT_TIMEZONE) -> date:
    """Today's date in ``timezone`` (default the company default, Europe/Berlin)."""
    return pendulum.now(timezone).date()
