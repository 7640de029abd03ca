"""An Airflow home of erpmail's own, for the demo, the tests and the benchmarks.

Plain settings only (this module imports no Airflow): Airflow reads them at import, so
callers apply them before anything imports ``airflow``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def settings(home: Path | str) -> dict[str, str]:
    """Environment for an Airflow home at ``home``: SQLite metadata, this repository's DAGs."""
    home = Path(home)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
