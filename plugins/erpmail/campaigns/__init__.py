"""Marketing campaigns: a segment frozen into recipients once, each queued through the outbox
with its one-click unsubscribe, and the suppressions that keep an address out of every later
campaign. Imports ``core``, ``documents`` (templates, MIME) and ``outbound`` (accounts, the
outbox).
"""
