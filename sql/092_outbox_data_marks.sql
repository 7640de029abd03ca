-- The DATA mark moves out of mail.outbox into a narrow table of its own. As an UPDATE of
-- the outbox row (eleven indexes) the mark took 0.35 ms of the machine's CPU per message,
-- a third of a campaign's sending; as an INSERT here 0.24 ms, most of it the round trip
-- (bench/README.md, "campaign").
-- A mark counts for the claim it was made in: same worker, made after the claim.
-- Marks of finished messages are garbage, removed when a dispatcher run reclaims.
CREATE TABLE mail.outbox_data_marks (
    outbox_id  bigint PRIMARY KEY,
    claimed_by text NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO mail.outbox_data_marks (outbox_id, claimed_by, marked_at)
SELECT id, claimed_by, data_sent_at
  FROM mail.outbox
 WHERE status = 'sending' AND data_sent_at IS NOT NULL AND claimed_by IS NOT NULL;
ALTER TABLE mail.outbox DROP COLUMN data_sent_at;
