"""Every PostgreSQL advisory lock erpmail takes, in one place so that no two share a key.

Single-key locks use the numbers below; two-key locks use a class number below and an id
(e.g. the location id); per-company locks hash a text key of the flow and the company.
"""

from __future__ import annotations

MIGRATIONS = 7311001  # one migrator at a time, across processes
# Archive files are named by content: a mail imported again after its row was purged gets the
# file name the purge is about to remove. Writers hold this lock shared for the transaction
# that stores files and rows; retention holds it exclusively while it removes unnamed files.
ARCHIVE_FILES = 7311002
RETENTION_RUN = 7311060  # one purge at a time
IMPORT_LOCATION = 7311006  # with the location id: one import of a location at a time

MIGRATION_LOCK = f"SELECT pg_advisory_xact_lock({MIGRATIONS})"
ARCHIVE_FILES_SHARED = f"SELECT pg_advisory_xact_lock_shared({ARCHIVE_FILES})"
ARCHIVE_FILES_EXCLUSIVE = f"SELECT pg_advisory_xact_lock({ARCHIVE_FILES})"
# per company, for the transaction: one dunning run or payment advice of a company at a time
DUNNING_COMPANY = "SELECT pg_advisory_xact_lock(hashtext('erpmail.documents.dunning:' || %s))"
PAYMENT_ADVICE_COMPANY = "SELECT pg_advisory_xact_lock(hashtext('erpmail.payment_advice:' || %s))"
