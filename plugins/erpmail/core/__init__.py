"""What every flow stands on: the database (connection, transactions, migrations, advisory
locks), the document store, progress logging, business dates and shared transport settings.
Imports nothing of erpmail outside ``core``.
"""
