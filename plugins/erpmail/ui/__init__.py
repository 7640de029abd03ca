"""The clerk's screens, served by Airflow's API server (see ``plugins/erpmail_ui.py``)."""
