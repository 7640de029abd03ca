"""Airflow operators, task groups and notifiers over the flows, for DAG authors to reuse:
each adapts one reusable step (a document run, an outbox dispatch, a mailbox import, a purge).
Imports ``core`` and the flows; DAG files import only this package.
"""
