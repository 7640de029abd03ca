"""Mail coming in: the IMAP hook, the import of a location (locations, fetch, parse with its
speed modules headers and boundary, store, importer), linking, tickets and the autoreply.
Imports ``core`` and the public names of ``documents`` (templates) and ``outbound`` (queueing).
"""
