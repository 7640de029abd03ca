-- A dunning run may wait for a clerk's approval between rendering and routing (the
-- "Mahnvorschlag"). The decision, who made it and when, is the run's; a letter the clerk
-- left out, or every letter of a rejected run, is 'withheld': never queued, never a previous
-- letter for the next run's levels.
ALTER TABLE erp.runs
    ADD COLUMN approval text CHECK (approval IN ('waiting', 'approved', 'rejected')),
    ADD COLUMN approval_by text,
    ADD COLUMN approval_at timestamptz,
    ADD COLUMN proposal jsonb,  -- what the clerk was shown: per level letters, totals, routes
    ADD CONSTRAINT runs_approval_decided_check
        CHECK ((approval IN ('approved', 'rejected')) = (approval_by IS NOT NULL AND approval_at IS NOT NULL));

ALTER TABLE erp.letters DROP CONSTRAINT letters_status_check;
ALTER TABLE erp.letters ADD CONSTRAINT letters_status_check
    CHECK (status IN ('generated', 'rendered', 'archived', 'released', 'paper', 'sent', 'failed',
                      'withheld'));
ALTER TABLE erp.letters
    ADD COLUMN withheld_reason text CHECK (withheld_reason IN ('rejected', 'excluded')),
    ADD CONSTRAINT letters_withheld_check CHECK ((status = 'withheld') = (withheld_reason IS NOT NULL));

CREATE OR REPLACE VIEW erp.letter_status AS
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
       l.updated_at,
       l.withheld_reason
  FROM erp.letters l
  JOIN erp.runs r ON r.id = l.run_id
  JOIN erp.partners p ON p.id = l.partner_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id;
