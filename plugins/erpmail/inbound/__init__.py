"""Mail coming in: the IMAP hook over imapclient, the import of a location (fetch, parse,
store, link, server actions), tickets and the autoreply.
Imports ``core`` and the public names of ``documents`` (templates) and ``outbound`` (queueing).
"""
