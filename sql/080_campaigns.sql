-- Marketing campaigns: one text per language to many recipients, frozen once, queued through
-- the outbox like every mail; and who never gets marketing mail again (mail.suppressions).

CREATE TABLE mail.campaigns (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name <> ''),
    company         text NOT NULL REFERENCES erp.companies (code),
    account         text NOT NULL REFERENCES mail.accounts (name),
    -- the segment: a named query in sql/segments/ with its bound parameters, or a filter
    segment         text CHECK (segment ~ '^[a-z][a-z0-9_]*$'),
    segment_params  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(segment_params) = 'object'),
    customer_groups text[],
    languages       text[],
    countries       text[],
    start_at        timestamptz,
    status          text NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'scheduled', 'sending', 'paused', 'done', 'cancelled')),
    frozen_at       timestamptz,  -- the recipients were expanded, once
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'scheduled' OR start_at IS NOT NULL)
);

CREATE TABLE mail.campaign_texts (
    campaign_id  bigint NOT NULL REFERENCES mail.campaigns (id) ON DELETE CASCADE,
    language     text NOT NULL CHECK (language ~ '^[a-z]{2}$'),
    subject      text NOT NULL CHECK (subject <> ''),
    html         text,
    text         text NOT NULL,
    PRIMARY KEY (campaign_id, language)
);

-- The frozen list: each recipient once per campaign, with why it is skipped.
CREATE TABLE mail.campaign_recipients (
    id           bigserial PRIMARY KEY,
    campaign_id  bigint NOT NULL REFERENCES mail.campaigns (id) ON DELETE CASCADE,
    partner_id   bigint NOT NULL REFERENCES erp.partners (id),
    contact_id   bigint REFERENCES erp.contacts (id),
    address      text NOT NULL CHECK (address = lower(address)),
    language     text NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'queued', 'skipped', 'failed')),
    reason       text,
    outbox_id    bigint REFERENCES mail.outbox (id) ON DELETE SET NULL,
    UNIQUE (campaign_id, address),
    CHECK ((status IN ('skipped', 'failed')) = (reason IS NOT NULL))
);
CREATE INDEX campaign_recipients_pending_idx ON mail.campaign_recipients (campaign_id, id)
    WHERE status = 'pending';

-- Who gets no marketing mail: from every company (scope 'marketing') or from one.
CREATE TABLE mail.suppressions (
    address     text NOT NULL CHECK (address = lower(address)),
    scope       text NOT NULL CHECK (scope IN ('marketing', 'company')),
    company     text NOT NULL DEFAULT '' ,  -- '' for scope 'marketing'
    source      text NOT NULL CHECK (source IN ('one_click', 'confirmation', 'mailto', 'manual')),
    campaign_id bigint REFERENCES mail.campaigns (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address, scope, company),
    CHECK ((scope = 'company') = (company <> ''))
);

ALTER TABLE erp.partners ADD COLUMN marketing_opt_out boolean NOT NULL DEFAULT false;

ALTER TABLE mail.outbox DROP CONSTRAINT outbox_source_type_check;
ALTER TABLE mail.outbox ADD CONSTRAINT outbox_source_type_check
    CHECK (source_type IN ('letter', 'notification', 'autoreply', 'alert', 'manual', 'campaign'));
