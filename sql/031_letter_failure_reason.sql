-- A failed letter names what the server said: the outbox's error, its reply, and the reply
-- to each refused recipient (a refusal at RCPT is stored per recipient).
CREATE FUNCTION erp.outbox_failure_reason(outbox_id bigint) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(concat_ws('; ',
               o.last_error,
               nullif(concat_ws(' ', o.smtp_code, o.smtp_reply), ''),
               (SELECT string_agg(concat_ws(' ', r.address, r.smtp_code, r.smtp_reply), ', ')
                  FROM mail.outbox_recipients r
                 WHERE r.outbox_id = o.id AND r.status = 'refused')), ''),
           'mail ' || o.status)
      FROM mail.outbox o WHERE o.id = outbox_id
$$;

CREATE OR REPLACE FUNCTION erp.letter_follows_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE erp.letters
       SET status = CASE WHEN NEW.status = 'sent' THEN 'sent'
                         WHEN NEW.status IN ('failed', 'cancelled') THEN 'failed'
                         ELSE 'released' END,
           error = CASE WHEN NEW.status IN ('failed', 'cancelled')
                        THEN erp.outbox_failure_reason(NEW.id) END,
           updated_at = now()
     WHERE id = NEW.source_id
       AND outbox_id = NEW.id
       AND status IN ('released', 'sent', 'failed');
    RETURN NULL;
END $$;
