"""erpmail: an ERP's business e-mail as Apache Airflow 3 batch workflows."""
