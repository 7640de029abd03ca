"""Lists and reports by mail: a named query of ``sql/reports/`` (title, parameters and
columns declared in its comments), streamed into a PDF table and/or a CSV file and mailed to
a subscription's recipients through the outbox when its schedule is due. Imports ``core``,
``documents`` (PDF, MIME) and ``outbound`` (accounts, the outbox).
"""
