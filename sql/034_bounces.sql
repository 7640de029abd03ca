-- Bounces: a per-message envelope sender (VERP) where the account has a bounce domain, the
-- delivery status notifications the import recognises, and per-address counts that block an
-- address after enough hard bounces.

-- 'bounce+<token>@<bounce_domain>'; the token is the first 16 hex digits of the SHA-256 of
-- the message's Message-ID. NULL: the envelope sender is the account's address (the default).
ALTER TABLE mail.accounts ADD COLUMN bounce_domain text
    CHECK (bounce_domain IS NULL OR bounce_domain ~ '^[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$');
CREATE INDEX outbox_bounce_token_idx ON mail.outbox (substr(envelope_from, 8, 16))
    WHERE envelope_from LIKE 'bounce+%';

ALTER TABLE mail.outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE mail.outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled', 'bounced'));

-- Hard bounces block an address after this many (per company): an unknown user (5.1.x) at
-- once by default, other permanent failures after three.
ALTER TABLE erp.companies ADD COLUMN block_after_unknown_user integer NOT NULL DEFAULT 1
    CHECK (block_after_unknown_user > 0);
ALTER TABLE erp.companies ADD COLUMN block_after_hard_bounces integer NOT NULL DEFAULT 3
    CHECK (block_after_hard_bounces > 0);

CREATE TABLE mail.bounces (
    id            bigserial PRIMARY KEY,
    mail_id       bigint NOT NULL REFERENCES mail.messages (id) ON DELETE CASCADE,
    outbox_id     bigint REFERENCES mail.outbox (id) ON DELETE SET NULL,
    recipient     text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('hard', 'soft')),
    status_code   text,          -- the enhanced status code, e.g. 5.1.1
    diagnostic    text NOT NULL DEFAULT '',
    remote_mta    text,
    matched_by    text CHECK (matched_by IN ('verp', 'message_id')),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mail_id, recipient)
);
CREATE INDEX bounces_outbox_idx ON mail.bounces (outbox_id);

-- Per address (lower case): bounce counts since the last good news, and when it was blocked.
CREATE TABLE mail.address_health (
    address         text PRIMARY KEY CHECK (address = lower(address)),
    hard_bounces    integer NOT NULL DEFAULT 0,
    unknown_user    integer NOT NULL DEFAULT 0,
    soft_bounces    integer NOT NULL DEFAULT 0,
    last_bounce_at  timestamptz,
    blocked_at      timestamptz,
    blocked_reason  text
);

-- A bounced letter fails with the remote server's diagnostic.
CREATE OR REPLACE FUNCTION erp.letter_follows_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE erp.letters
       SET status = CASE WHEN NEW.status = 'sent' THEN 'sent'
                         WHEN NEW.status IN ('failed', 'cancelled', 'bounced') THEN 'failed'
                         ELSE 'released' END,
           error = CASE WHEN NEW.status IN ('failed', 'cancelled', 'bounced')
                        THEN erp.outbox_failure_reason(NEW.id) END,
           updated_at = now()
     WHERE id = NEW.source_id
       AND outbox_id = NEW.id
       AND status IN ('released', 'sent', 'failed');
    RETURN NULL;
END $$;
