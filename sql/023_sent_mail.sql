-- Sent mail has one home: its .eml in the document store with a mail.messages row (direction
-- 'out'), written after the dispatcher records it sent; retention purges it like received
-- mail. sent_archived_at says the copy was made (or, for a letter whose dunning level keeps no
-- archived copy, deliberately not made), so a purged copy is never made again.
CREATE UNIQUE INDEX messages_outbox_idx ON mail.messages (outbox_id) WHERE outbox_id IS NOT NULL;
ALTER TABLE mail.outbox ADD COLUMN sent_archived_at timestamptz;
CREATE INDEX outbox_unarchived_idx ON mail.outbox (id)
    WHERE status = 'sent' AND sent_archived_at IS NULL;
-- the links of a sent mail say what it was sent for
ALTER TABLE mail.message_links DROP CONSTRAINT message_links_method_check;
ALTER TABLE mail.message_links ADD CONSTRAINT message_links_method_check
    CHECK (method IN ('reply', 'keyword', 'ticket', 'sender', 'manual', 'sent'));
