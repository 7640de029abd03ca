"""Real IMAP and SMTP servers for tests: a test CA, Dovecot, aiosmtpd, and their fixtures."""
