-- When the dispatcher was about to send a message's text and final dot in its current claim:
-- a run that dies leaves only such a message possibly delivered; the others are requeued
-- without the sent_uncertain flag.
ALTER TABLE mail.outbox ADD COLUMN data_sent_at timestamptz;
