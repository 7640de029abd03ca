-- Copies of sent mail (the sent-mail archive, the account's Sent folder) are kept per outbox
-- message unless it says otherwise. A campaign's mail keeps none by default: its record is
-- the campaign (texts, frozen recipients, each one's outbox status), not thousands of
-- copies of one text; keep_copies archives them like other sent mail.
ALTER TABLE mail.outbox ADD COLUMN keep_copy boolean NOT NULL DEFAULT true;
ALTER TABLE mail.campaigns ADD COLUMN keep_copies boolean NOT NULL DEFAULT false;
