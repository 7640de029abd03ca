"""Mail going out: sending accounts and their throttle, the outbox (queue, claim, verdicts),
the dispatcher, Sent-folder copies, and the SMTP hook over smtplib with verified TLS.
Imports ``core`` and, for the copy in the Sent folder, the IMAP hook of ``inbound``.
"""
