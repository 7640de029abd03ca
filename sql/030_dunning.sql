-- Dunning history per item, render batches, and the letter following its outbox message.

-- Every item a letter lists, with the level it had on that letter: the next run reads
-- the previous level from here. Credit notes netted on the letter have no level.
CREATE TABLE erp.letter_items (
    letter_id      bigint NOT NULL REFERENCES erp.letters (id) ON DELETE CASCADE,
    open_item_id   bigint NOT NULL REFERENCES erp.open_items (id),
    level          smallint CHECK (level BETWEEN 1 AND 9),
    previous_level smallint CHECK (previous_level BETWEEN 1 AND 9),
    raised         boolean NOT NULL DEFAULT false,
    days_overdue   integer NOT NULL,
    amount         numeric(15, 2) NOT NULL,  -- the open amount at the key date
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    PRIMARY KEY (letter_id, open_item_id),
    CHECK (NOT raised OR level IS NOT NULL)
);
CREATE INDEX letter_items_item_idx ON erp.letter_items (open_item_id);

-- Render/route batches are fixed once at planning, so a cleared mapped task finds its letters again.
ALTER TABLE erp.letters
    ADD COLUMN batch        integer CHECK (batch >= 0),
    ADD COLUMN fee          numeric(15, 2) NOT NULL DEFAULT 0 CHECK (fee >= 0),
    ADD COLUMN fee_currency char(3) CHECK (fee_currency ~ '^[A-Z]{3}$');
CREATE INDEX letters_batch_idx ON erp.letters (run_id, batch);

-- The letter follows its message: the outbox knows nothing of letters, this trigger does.
CREATE FUNCTION erp.letter_follows_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE erp.letters
       SET status = CASE WHEN NEW.status = 'sent' THEN 'sent'
                         WHEN NEW.status IN ('failed', 'cancelled') THEN 'failed'
                         ELSE 'released' END,
           error = CASE WHEN NEW.status = 'failed'
                        THEN coalesce(NEW.last_error, NEW.smtp_reply, 'mail failed')
                        WHEN NEW.status = 'cancelled' THEN 'mail cancelled'
                        END,
           updated_at = now()
     WHERE id = NEW.source_id
       AND outbox_id = NEW.id
       AND status IN ('released', 'sent', 'failed');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_letter_status
    AFTER UPDATE OF status ON mail.outbox
    FOR EACH ROW
    WHEN (NEW.source_type = 'letter' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION erp.letter_follows_outbox();

-- The "Versandstatus": each letter of each run, with where its mail stands.
CREATE VIEW erp.letter_status AS
SELECT r.id AS run_id,
       r.kind,
       r.airflow_run_id,
       r.key_date,
       r.dry_run,
       l.id AS letter_id,
       p.number AS partner_number,
       p.name AS partner_name,
       l.document,
       l.language,
       l.level,
       l.status,
       l.paper_reason,
       l.error,
       l.recipient,
       l.pdf_path,
       l.totals,
       l.fee,
       l.fee_currency,
       o.id AS outbox_id,
       o.key AS outbox_key,
       o.status AS mail_status,
       o.attempts AS mail_attempts,
       o.sent_at,
       o.smtp_code,
       o.smtp_reply,
       o.sent_uncertain,
       l.updated_at
  FROM erp.letters l
  JOIN erp.runs r ON r.id = l.run_id
  JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id;
