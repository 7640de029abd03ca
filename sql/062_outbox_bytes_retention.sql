-- The outbox keeps a message's bytes only while it may still need them (to send, retry or
-- file the Sent-folder copy); after outbox_keep_days of the sent policy they are cleared. A
-- sent mail's lasting copy is its archived .eml (mail.messages, direction 'out').
ALTER TABLE mail.retention_policies
    ADD COLUMN outbox_keep_days integer NOT NULL DEFAULT 30 CHECK (outbox_keep_days >= 0);
ALTER TABLE mail.outbox ADD COLUMN mime_purged_at timestamptz;
