-- Archive retention: files to remove once their rows are gone, the invoice link type,
-- and indexes for the purge's ordered batches and its shared-file check.

-- A purge deletes rows and records their files here in one transaction; the files are
-- removed after commit and their rows cleared. A run that died in between leaves rows here,
-- and the next run removes those files first.
CREATE TABLE mail.retention_pending_files (
    id           bigserial PRIMARY KEY,
    key          text NOT NULL CHECK (key <> ''),
    run_id       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- Mail filed against an open item (invoice or credit note) keeps the invoice legal minimum.
-- The CHECK is rewritten from its current definition, so values added by earlier migrations stay.
DO $$
DECLARE
    con record;
BEGIN
    SELECT conname, pg_get_constraintdef(oid) AS def INTO con
    FROM pg_constraint
    WHERE conrelid = 'mail.message_links'::regclass AND contype = 'c'
      AND pg_get_constraintdef(oid) LIKE '%entity_type%';
    IF con.def IS NULL OR con.def LIKE '%''open_item''%' THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE mail.message_links DROP CONSTRAINT %I', con.conname);
    EXECUTE format('ALTER TABLE mail.message_links ADD CONSTRAINT %I %s', con.conname,
                   replace(con.def, 'ARRAY[', 'ARRAY[''open_item''::text, '));
END
$$;

-- Sent mail is purged oldest first by (archived_at, id); location mail uses messages_archived_idx.
CREATE INDEX messages_out_archived_idx ON mail.messages (archived_at, id) WHERE direction = 'out';
-- A file is removed only when no remaining row names it (attachments may share a stored file).
CREATE INDEX messages_eml_path_idx ON mail.messages (eml_path);
CREATE INDEX attachments_path_idx ON mail.attachments (path) WHERE path IS NOT NULL;

-- The sent-mail policy exists from the start and keeps everything until someone sets keep_days.
INSERT INTO mail.retention_policies (scope) VALUES ('sent') ON CONFLICT DO NOTHING;
