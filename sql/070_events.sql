-- Event mail: what happens in the ERP (or in erpmail itself) and the mail it sends. The ERP
-- writes erp.events; the event_mail DAG claims each one, queues its mail in the outbox in
-- the same transaction as marking it, and records the outcome.

-- The ERP's users, to notify a clerk or a group of them.
CREATE TABLE erp.users (
    login     text PRIMARY KEY CHECK (login <> ''),
    name      text NOT NULL,
    email     text NOT NULL CHECK (email LIKE '%_@_%'),
    language  text CHECK (language ~ '^[a-z]{2}$')
);
CREATE TABLE erp.user_groups (
    name text PRIMARY KEY CHECK (name <> '')
);
CREATE TABLE erp.user_group_members (
    group_name text NOT NULL REFERENCES erp.user_groups (name) ON DELETE CASCADE,
    login      text NOT NULL REFERENCES erp.users (login) ON DELETE CASCADE,
    PRIMARY KEY (group_name, login)
);
-- the clerk responsible for a partner
ALTER TABLE erp.partners ADD COLUMN clerk text REFERENCES erp.users (login);

CREATE TABLE erp.events (
    id            bigserial PRIMARY KEY,
    type          text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*$'),
    payload       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    company       text REFERENCES erp.companies (code),
    partner_id    bigint REFERENCES erp.partners (id),
    -- erpmail's own events: one per fact, whatever writes it twice
    dedup_key     text UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    outcome       text CHECK (outcome IN ('queued', 'digest', 'skipped', 'expired', 'failed')),
    detail        text,
    CHECK ((processed_at IS NULL) = (outcome IS NULL)),
    CHECK (outcome IS DISTINCT FROM 'failed' OR detail IS NOT NULL)
);
CREATE INDEX events_pending_idx ON erp.events (id) WHERE processed_at IS NULL;

-- Event type -> who gets which mail. recipient_kind: 'address' (recipient: an address),
-- 'contact' (recipient: the partner's contact role, else the partner's address), 'clerk'
-- (the partner's clerk), 'group' (recipient: a user group), 'payload' (recipient: the
-- payload field holding the address).
CREATE TABLE mail.event_rules (
    id              bigserial PRIMARY KEY,
    event_type      text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_]*$'),
    company         text REFERENCES erp.companies (code),  -- NULL: every company
    recipient_kind  text NOT NULL CHECK (recipient_kind IN ('address', 'contact', 'clerk', 'group', 'payload')),
    recipient       text,
    template        text NOT NULL CHECK (template ~ '^[a-z][a-z0-9_]*$'),
    account         text REFERENCES mail.accounts (name),  -- NULL: the company's sender, else the default
    enabled         boolean NOT NULL DEFAULT true,
    digest          text NOT NULL DEFAULT 'immediate' CHECK (digest IN ('immediate', 'hourly', 'daily')),
    CHECK ((recipient_kind = 'clerk') = (recipient IS NULL))
);
CREATE INDEX event_rules_type_idx ON mail.event_rules (event_type);

-- Each event's mail per rule and recipient; a digest's waits (outbox_id NULL) until due.
CREATE TABLE mail.event_deliveries (
    event_id   bigint NOT NULL REFERENCES erp.events (id) ON DELETE CASCADE,
    rule_id    bigint NOT NULL REFERENCES mail.event_rules (id) ON DELETE CASCADE,
    recipient  text NOT NULL,
    language   text NOT NULL,
    due_at     timestamptz NOT NULL,
    outbox_id  bigint REFERENCES mail.outbox (id) ON DELETE SET NULL,
    sent_in_digest boolean NOT NULL DEFAULT false,
    PRIMARY KEY (event_id, rule_id, recipient)
);
CREATE INDEX event_deliveries_due_idx ON mail.event_deliveries (due_at) WHERE NOT sent_in_digest AND outbox_id IS NULL;

-- A mail whose text holds a secret (a password-reset link): no copy in the sent-mail
-- archive or the account's sent folder; the outbox row is its only copy.
ALTER TABLE mail.outbox ADD COLUMN secret boolean NOT NULL DEFAULT false;

-- Customer groups and their portal mails (a billing and receivables portal).
CREATE TABLE erp.customer_groups (
    code     text PRIMARY KEY CHECK (code <> ''),
    company  text NOT NULL REFERENCES erp.companies (code),
    name     text NOT NULL
);
CREATE TABLE erp.portal_settings (
    customer_group      text PRIMARY KEY REFERENCES erp.customer_groups (code) ON DELETE CASCADE,
    access_requests_to  text CHECK (access_requests_to LIKE '%_@_%'),
    mail_from           text NOT NULL CHECK (mail_from LIKE '%_@_%')
);
-- Per group and portal event: on or off, and (access requests) whether the customer gets
-- a copy when someone else asked for the access.
CREATE TABLE erp.portal_events (
    customer_group  text NOT NULL REFERENCES erp.customer_groups (code) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('access_request', 'validation_confirmed',
                        'new_main_contact', 'old_main_contact', 'forgot_username', 'password_reset')),
    enabled         boolean NOT NULL DEFAULT true,
    notify_customer boolean NOT NULL DEFAULT false,
    PRIMARY KEY (customer_group, event)
);
CREATE TABLE erp.portal_texts (
    customer_group  text NOT NULL,
    event           text NOT NULL,
    language        text NOT NULL CHECK (language ~ '^[a-z]{2}$'),
    subject         text NOT NULL,
    body            text NOT NULL,
    PRIMARY KEY (customer_group, event, language),
    FOREIGN KEY (customer_group, event) REFERENCES erp.portal_events (customer_group, event) ON DELETE CASCADE
);

-- erpmail's own events, written where the fact is, in its transaction: a letter's mail
-- failed or bounced, a mail linked to nothing, a reply to a balance confirmation.
CREATE FUNCTION erp.event_from_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO erp.events (type, payload, company, partner_id, dedup_key)
    SELECT CASE NEW.status WHEN 'bounced' THEN 'mail_bounced' ELSE 'letter_failed' END,
           jsonb_build_object(
               'letter_id', l.id, 'run_id', l.run_id, 'document', l.document,
               'partner', p.number, 'partner_name', p.name, 'recipients', to_jsonb(NEW.recipients),
               'subject', NEW.subject, 'reply', erp.outbox_failure_reason(NEW.id),
               'outbox_id', NEW.id),
           r.company, p.id,
           concat_ws(':', NEW.status, 'outbox', NEW.id, NEW.attempts)
      FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id JOIN erp.partners p ON p.id = l.partner_id
     WHERE l.id = NEW.source_id
    ON CONFLICT (dedup_key) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_events
    AFTER UPDATE OF status ON mail.outbox
    FOR EACH ROW
    WHEN (NEW.source_type = 'letter' AND NEW.status IN ('failed', 'bounced')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION erp.event_from_outbox();

CREATE FUNCTION erp.event_from_mail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO erp.events (type, payload, dedup_key)
    SELECT 'mail_unlinked',
           jsonb_build_object(
               'mail_id', NEW.id, 'location', l.name, 'notify_address', l.notify_address,
               'from', NEW.from_address, 'subject', NEW.subject,
               'received_at', NEW.archived_at, 'failure', NEW.failure),
           'mail_unlinked:' || NEW.id
      FROM mail.import_locations l WHERE l.id = NEW.location_id
    ON CONFLICT (dedup_key) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_unlinked_events
    AFTER INSERT ON mail.messages
    FOR EACH ROW
    WHEN (NEW.direction = 'in' AND NEW.status IN ('unlinked', 'failed'))
    EXECUTE FUNCTION erp.event_from_mail();

CREATE FUNCTION erp.event_from_reply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO erp.events (type, payload, company, partner_id, dedup_key)
    SELECT 'balance_reply_received',
           jsonb_build_object(
               'letter_id', l.id, 'run_id', l.run_id, 'partner', p.number,
               'partner_name', p.name, 'mail_id', m.id, 'from', m.from_address,
               'subject', m.subject, 'key_date', r.key_date),
           r.company, p.id,
           'balance_reply_received:' || m.id || ':' || l.id
      FROM erp.letters l JOIN erp.runs r ON r.id = l.run_id
      JOIN erp.partners p ON p.id = l.partner_id
      JOIN mail.messages m ON m.id = NEW.message_id
     WHERE l.id = NEW.entity_id AND l.document = 'balance_confirmation' AND m.direction = 'in'
    ON CONFLICT (dedup_key) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER message_links_reply_events
    AFTER INSERT ON mail.message_links
    FOR EACH ROW
    WHEN (NEW.entity_type = 'letter' AND NEW.method = 'reply')
    EXECUTE FUNCTION erp.event_from_reply();

-- The unlinked-mail alert the import sent itself is now this rule's digest (one per hour
-- to each location's notification address).
INSERT INTO mail.event_rules (event_type, recipient_kind, recipient, template, digest)
VALUES ('mail_unlinked', 'payload', 'notify_address', 'mail_unlinked', 'hourly');
