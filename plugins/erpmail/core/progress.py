"""Progress of long work in the task log: done/total, rate and time left every few seconds."""

from __future__ import annotations

import logging
import time

EVERY_SECONDS = 5.0


def duration(seconds: float) -> str:
    """``seconds`` as a clerk reads it: 45s, 3m07s, 2h05m."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts work done towards ``total`` and logs it on ``log`` at most every ``every``
    seconds (and when forced): ``label: done/total unit (pct), rate/s, about T left``."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "",
        log: logging.Logger | None = None,
        every: float = EVERY_SECONDS,
    ) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.log = log or logging.getLogger(__name__)
        self.done = 0
        self.started = self._last = time.monotonic()

    def add(self, n: int = 1, *, force: bool = False, detail: str = "") -> None:
        """``n`` more done."""
        self.update(self.done + n, force=force, detail=detail)

    def update(self, done: int, *, force: bool = False, detail: str = "") -> None:
        """``done`` done so far; logs when the interval has passed or ``force``."""
        self.done = done
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line(detail))

    def line(self, detail: str = "") -> str:
        """The progress line as logged."""
        took = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / took
        left = (self.total - self.done) / rate if rate and self.total > self.done else 0.0
        share = 100.0 * self.done / self.total if self.total else 100.0
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.label}: {self.done:,}/{self.total:,}{unit} ({share:.0f}%), {rate:.1f}/s, "
            f"about {duration(left)} left" + (f"; {detail}" if detail else "")
        )
