"""Thin Airflow adapters over the erpmail modules: task wiring shared by several DAGs."""
