-- No mail is lost or left behind by the import.

-- A duplicate is a mail whose bytes are stored at the location already. A Message-ID shared
-- with a stored mail (a forwarded copy, a resend, a bounce quoting the id, a generator that
-- reuses ids) makes a new message, marked with the first one it shares the id with. No
-- foreign key: retention deletes in bulk, and the mark stays readable after a purge.
DROP INDEX mail.messages_location_msgid;
DROP INDEX mail.messages_location_sha;
CREATE UNIQUE INDEX messages_location_sha ON mail.messages (location_id, sha256);
ALTER TABLE mail.messages ADD COLUMN shares_message_id_with bigint;

-- A Message-ID may be longer than a btree entry can be (2704 bytes); lookups are equality only.
DROP INDEX mail.messages_msgid_idx;
CREATE INDEX messages_msgid_idx ON mail.messages USING hash (message_id);

-- A mail whose parse, links or attachments failed is kept raw with status 'failed' and the
-- reason; later runs retry it from the archive a few times, a clerk any time.
ALTER TABLE mail.messages DROP CONSTRAINT messages_status_check;
ALTER TABLE mail.messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('linked', 'unlinked', 'malformed', 'failed'));
ALTER TABLE mail.messages ADD COLUMN failure text;
ALTER TABLE mail.messages ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE mail.messages ADD CONSTRAINT messages_failure_check
    CHECK ((status = 'failed') = (failure IS NOT NULL));
CREATE INDEX messages_failed_idx ON mail.messages (location_id, id) WHERE status = 'failed';

-- A backfill skips the UIDs of its folder stored already (a UID within one UIDVALIDITY names
-- one unchanging mail), without fetching them.
CREATE INDEX messages_uid_idx ON mail.messages (location_id, folder, uidvalidity, uid)
    WHERE uid IS NOT NULL;

-- The .eml keys an import chunk is about to write, committed before the files are; the chunk's
-- own transaction removes its entry. An entry left by a killed run names files whose rows never
-- committed: the location's next run removes them (and any temp file beside them).
CREATE TABLE mail.import_pending_files (
    id           bigserial PRIMARY KEY,
    location_id  bigint NOT NULL REFERENCES mail.import_locations (id) ON DELETE CASCADE,
    keys         text[] NOT NULL CHECK (cardinality(keys) > 0),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX import_pending_files_location_idx ON mail.import_pending_files (location_id);
