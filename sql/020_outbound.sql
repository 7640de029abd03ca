-- Outbound dispatch: Sent-folder copy retries, and the indexes the dispatcher's queries need.

-- A failed IMAP append of the Sent copy is retried by later runs, up to a limit, then 'failed'.
ALTER TABLE mail.outbox ADD COLUMN sent_copy_attempts integer NOT NULL DEFAULT 0
    CHECK (sent_copy_attempts >= 0);
ALTER TABLE mail.outbox ADD COLUMN sent_copy_error text;

-- Due messages per account (claim), stuck 'sending' rows (reclaim), the hourly cap window,
-- pending Sent copies.
CREATE INDEX outbox_account_due_idx ON mail.outbox (account_id, next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX outbox_sending_idx ON mail.outbox (account_id, claimed_at) WHERE status = 'sending';
CREATE INDEX outbox_account_sent_idx ON mail.outbox (account_id, sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX outbox_sent_copy_idx ON mail.outbox (account_id) WHERE sent_copy = 'pending';
