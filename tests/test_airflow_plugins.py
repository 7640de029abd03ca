"""Airflow's plugin loading, as the scheduler and the API server run it, on plugins/."""

import json
import os
import subprocess
import sys

from erpmail.core import airflow_home

# A fresh interpreter: what the loader imports is what this process had not imported before.
PROBE = """
import json, sys
before = set(sys.modules)
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
new = sorted(set(sys.modules) - before)
print(json.dumps({"plugins": [p.name for p in plugins], "errors": errors, "new": new}))
"""
PROVIDER_MODULES = {"erpmail", "erpmail.provider", "erpmail.core", "erpmail.core.transport"}
BARE_NAMES = {"smtp", "db", "pdf", "imap", "importer", "runs", "dispatch", "demo"}


def test_plugin_loading_imports_no_erpmail_module_and_no_weasyprint(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(airflow_home.settings(tmp_path))
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert not BARE_NAMES & set(found["new"]), sorted(BARE_NAMES & set(found["new"]))
    # erpmail's provider info (its connection types) is all Airflow may load of the package
    erpmail = {m for m in found["new"] if m.split(".")[0] == "erpmail"}
    assert erpmail <= PROVIDER_MODULES, sorted(erpmail - PROVIDER_MODULES)
    assert not [m for m in found["new"] if m.split(".")[0] == "weasyprint"]
