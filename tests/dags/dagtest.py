"""DAGs of the DAG folder run with ``dag.test()``, and the rows their runs left."""

from __future__ import annotations

import psycopg2.extensions

from erpmail.core import db

RUN_ROWS = "SELECT count(*) FROM erp.runs WHERE airflow_run_id = %s"


def dag(dag_id: str):
    """The DAG ``dag_id`` parsed from the DAG folder (needs the ``airflow_db`` fixture)."""
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag().get_dag(dag_id)
    assert found is not None, f"{dag_id} not in the DAG folder"
    # dag.test() round-trips the DAG in memory, so a deadline is never stored with the id
    # the end of the run looks it up by (Airflow 3.3): the scheduler of tests/e2e runs it
    found.deadline = None
    return found


def rows(conn: psycopg2.extensions.connection, sql: str, *args) -> list[tuple]:
    """All rows of one query, in a transaction of its own."""
    with db.transaction(conn) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def assert_refused_at_start(conn: psycopg2.extensions.connection, dr) -> None:
    """The document run ``dr`` failed in its first task, ``start``, generated nothing and left
    no ``erp.runs`` row."""
    assert dr.state == "failed"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states["start"] == "failed" and states["generate"] != "success"
    assert rows(conn, RUN_ROWS, dr.run_id) == [(0,)]
