"""Every DAG file imports cleanly, cheaply, and carries what operators need in the UI."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))

# Run in a fresh interpreter, so modules other tests imported do not hide an import.
PROBE = """
import json, runpy, socket, sys
def refuse(*args, **kwargs):
    raise RuntimeError("network or database touched while importing a DAG file")
socket.socket.connect = refuse
socket.create_connection = refuse
before = set(sys.modules)
runpy.run_path(sys.argv[1])
heavy = ("weasyprint", "pypdf", "imapclient", "aiosmtpd", "babel", "erpmail.documents.pdf")
print(json.dumps(sorted(m for m in heavy if m in sys.modules and m not in before)))
"""


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_network_database_or_heavy_modules(path, airflow_db):
    # The scheduler parses these files every few seconds: rendering and mail libraries
    # belong inside tasks, which keeps each parse well under a second.
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_dagbag_has_no_import_errors_and_every_dag_is_documented(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS)
    assert bag.import_errors == {}
    assert len(bag.dags) >= len(DAG_FILES)
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 80, f"{dag_id} has no doc_md"
        assert dag.default_args.get("owner") not in (None, "airflow"), f"{dag_id} has no owner"
        assert dag.default_args.get("retries") is not None, f"{dag_id} sets no retries"
        for param_name, param in dag.params.items():
            assert param.description, f"{dag_id} param {param_name} has no description"


# Params the form must ask for: the run means nothing without them, and no schedule
# triggers these DAGs (a scheduled run passes no conf).
REQUIRED = {
    "payment_advice": {"payment_run": "P20261231-1"},
    "link_mail": {"message": "1", "number": "000001"},
    "send_documents": {"documents": [{"kind": "invoice", "number": "RE-1001"}]},
}


@pytest.fixture(scope="module")
def bag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag(dag_folder=DAGS)
    assert found.import_errors == {}
    return found


def _nullable(param) -> bool:
    kind = param.schema.get("type")
    return kind == "null" or (isinstance(kind, list) and "null" in kind)


def test_every_param_has_a_default_or_is_nullable_and_the_defaults_validate(bag):
    # The trigger form marks a field without a value as required and keeps the Trigger
    # button disabled: an optional field is nullable with default None, not "".
    for dag_id, dag in bag.dags.items():
        required = REQUIRED.get(dag_id, {})
        for name, param in dag.params.items():
            if name in required:
                assert not param.has_value, f"{dag_id}.{name} is required: no default"
                assert dag.schedule is None, f"{dag_id} has required params and a schedule"
            else:
                assert param.value not in (None, "") or _nullable(param), (
                    f"{dag_id}.{name}: default {param.value!r} but not nullable"
                )
        params = copy.deepcopy(dag.params)
        for name, value in required.items():
            params[name] = value
        resolved = params.validate()
        assert set(resolved) == set(dag.params), dag_id


def test_every_param_refuses_a_value_of_the_wrong_kind(bag):
    from airflow.sdk.exceptions import ParamValidationError

    for dag_id, dag in bag.dags.items():
        for name, param in dag.params.items():
            bad = [{"not": "a form value"}]
            if param.schema.get("format") == "date":
                bad.append("2026-02-30")
            if param.schema.get("pattern"):
                bad.append("../\n")
            for value in bad:
                with pytest.raises(ParamValidationError):
                    param.resolve(value=value)
                    pytest.fail(f"{dag_id}.{name} accepted {value!r}")


def test_no_dag_file_has_values_that_change_between_parses(bag):
    # Airflow's own check behind the "runtime varying value" DAG warning: a today() in a
    # default makes a new DAG version every midnight.
    from airflow.utils.dag_version_inflation_checker import check_dag_file_stability

    for path in DAG_FILES:
        result = check_dag_file_stability(str(path))
        assert not result.warnings, result.format_warnings()
    for dag_id in ("dunning_run", "balance_confirmation"):
        assert bag.dags[dag_id].params["key_date"] is None, dag_id
