-- Pending deletions are recorded per purge batch, as one array of archive keys: a batch of
-- 1,000 mails writes and clears one row instead of 1,000-2,000 (the per-key table of 060
-- cost as much as the deletes themselves). Leftovers of the old table move over.
CREATE TABLE mail.retention_pending_deletions (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL,
    keys         text[] NOT NULL CHECK (cardinality(keys) > 0),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO mail.retention_pending_deletions (run_id, keys, recorded_at)
SELECT run_id, array_agg(key ORDER BY id), min(recorded_at)
FROM mail.retention_pending_files GROUP BY run_id;

DROP TABLE mail.retention_pending_files;
