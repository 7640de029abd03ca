-- The mail side: accounts, the outbox, import locations and the archive.
-- No secrets here: accounts and locations name Airflow connections.
CREATE SCHEMA mail;

CREATE TABLE mail.accounts (
    id                    bigserial PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    conn_id               text NOT NULL,
    from_address          text NOT NULL CHECK (from_address LIKE '%_@_%'),
    display_name          text NOT NULL DEFAULT '',
    -- exact addresses ('anna@example.com') or whole domains ('example.com') it may send for
    sender_addresses      text[] NOT NULL DEFAULT '{}',
    is_default            boolean NOT NULL DEFAULT false,
    send_interval_seconds integer NOT NULL DEFAULT 60 CHECK (send_interval_seconds >= 0),
    hourly_cap            integer CHECK (hourly_cap > 0),
    next_send_at          timestamptz NOT NULL DEFAULT '-infinity',
    sent_folder_conn_id   text,
    sent_folder           text,
    demo_only             boolean NOT NULL DEFAULT false,
    CHECK ((sent_folder IS NULL) = (sent_folder_conn_id IS NULL))
);
CREATE UNIQUE INDEX accounts_one_default ON mail.accounts (is_default) WHERE is_default;

CREATE TABLE mail.outbox (
    id               bigserial PRIMARY KEY,
    key              text NOT NULL UNIQUE,
    message_id       text NOT NULL UNIQUE,
    account_id       bigint NOT NULL REFERENCES mail.accounts (id),
    source_type      text NOT NULL
                     CHECK (source_type IN ('letter', 'notification', 'autoreply', 'alert', 'manual')),
    source_id        bigint,
    envelope_from    text NOT NULL,
    recipients       text[] NOT NULL CHECK (cardinality(recipients) > 0),
    subject          text NOT NULL DEFAULT '',
    mime             bytea NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled')),
    -- a retry after a worker died mid-send may duplicate this one message: say so
    sent_uncertain   boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    claimed_at       timestamptz,
    sent_at          timestamptz,
    smtp_code        integer,
    smtp_reply       text,
    queue_id         text,
    last_error       text,
    sent_copy        text NOT NULL DEFAULT 'none' CHECK (sent_copy IN ('none', 'pending', 'done', 'failed')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'sending') = (claimed_at IS NOT NULL)),
    CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);
CREATE INDEX outbox_due_idx ON mail.outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX outbox_source_idx ON mail.outbox (source_type, source_id);

CREATE TABLE mail.outbox_recipients (
    outbox_id  bigint NOT NULL REFERENCES mail.outbox (id) ON DELETE CASCADE,
    address    text NOT NULL,
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'refused')),
    smtp_code  integer,
    smtp_reply text,
    PRIMARY KEY (outbox_id, address)
);

CREATE TABLE mail.import_locations (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    conn_id             text NOT NULL,
    folder              text NOT NULL DEFAULT 'INBOX',
    after_import        text NOT NULL DEFAULT 'flag_seen'
                        CHECK (after_import IN ('none', 'flag_seen', 'move', 'delete')),
    move_to             text,
    archive_folder      text NOT NULL DEFAULT 'mail',
    archive_subfolder   text NOT NULL DEFAULT '',
    store_attachments   boolean NOT NULL DEFAULT false,
    -- keyword -> entity type, e.g. {"relnr": "partner", "project": "project", "ticket": "case"}
    link_keywords       jsonb NOT NULL DEFAULT '{}',
    max_message_bytes   bigint NOT NULL DEFAULT 52428800 CHECK (max_message_bytes > 0),
    ticket_enabled      boolean NOT NULL DEFAULT false,
    ticket_project_id   bigint REFERENCES erp.projects (id),
    ticket_queue        text NOT NULL DEFAULT 'support',
    autoreply_enabled   boolean NOT NULL DEFAULT false,
    autoreply_account_id bigint REFERENCES mail.accounts (id),
    autoreply_subject   text,
    autoreply_body      text,
    notify_address      text,
    enabled             boolean NOT NULL DEFAULT true,
    CHECK (after_import <> 'move' OR move_to IS NOT NULL),
    CHECK (NOT autoreply_enabled OR (autoreply_account_id IS NOT NULL AND autoreply_body IS NOT NULL))
);

CREATE TABLE mail.import_watermarks (
    location_id  bigint NOT NULL REFERENCES mail.import_locations (id) ON DELETE CASCADE,
    folder       text NOT NULL,
    uidvalidity  bigint NOT NULL,
    last_uid     bigint NOT NULL DEFAULT 0 CHECK (last_uid >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, folder)
);

-- Every mail erpmail holds, received or sent: the raw .eml in the document store, its parse.
CREATE TABLE mail.messages (
    id             bigserial PRIMARY KEY,
    direction      text NOT NULL CHECK (direction IN ('in', 'out')),
    location_id    bigint REFERENCES mail.import_locations (id),
    outbox_id      bigint REFERENCES mail.outbox (id),
    folder         text,
    uid            bigint,
    uidvalidity    bigint,
    message_id     text,
    sha256         char(64) NOT NULL,
    eml_path       text NOT NULL,
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),
    subject        text NOT NULL DEFAULT '',
    from_address   text,
    from_name      text,
    to_addresses   text[] NOT NULL DEFAULT '{}',
    cc_addresses   text[] NOT NULL DEFAULT '{}',
    sent_date      timestamptz,
    in_reply_to    text,
    refs           text[] NOT NULL DEFAULT '{}',
    body_text      text,
    body_html      text,
    defects        text[] NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'unlinked'
                   CHECK (status IN ('linked', 'unlinked', 'malformed')),
    legal_hold     boolean NOT NULL DEFAULT false,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (direction = 'out' OR location_id IS NOT NULL)
);
CREATE UNIQUE INDEX messages_location_msgid ON mail.messages (location_id, message_id)
    WHERE message_id IS NOT NULL;
CREATE UNIQUE INDEX messages_location_sha ON mail.messages (location_id, sha256)
    WHERE message_id IS NULL;
CREATE INDEX messages_msgid_idx ON mail.messages (message_id);
CREATE INDEX messages_archived_idx ON mail.messages (location_id, archived_at);

CREATE TABLE mail.message_links (
    message_id   bigint NOT NULL REFERENCES mail.messages (id) ON DELETE CASCADE,
    entity_type  text NOT NULL CHECK (entity_type IN ('partner', 'contact', 'project', 'case', 'letter')),
    entity_id    bigint NOT NULL,
    method       text NOT NULL CHECK (method IN ('reply', 'keyword', 'ticket', 'sender', 'manual')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, entity_type, entity_id)
);
CREATE INDEX message_links_entity_idx ON mail.message_links (entity_type, entity_id);

CREATE TABLE mail.attachments (
    id            bigserial PRIMARY KEY,
    message_id    bigint NOT NULL REFERENCES mail.messages (id) ON DELETE CASCADE,
    filename      text NOT NULL CHECK (filename <> '' AND filename !~ '[/\\]'),
    content_type  text NOT NULL,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    sha256        char(64) NOT NULL,
    path          text,
    UNIQUE (message_id, filename)
);

CREATE TABLE mail.autoreply_log (
    location_id  bigint NOT NULL REFERENCES mail.import_locations (id) ON DELETE CASCADE,
    sender       text NOT NULL CHECK (sender = lower(sender)),
    day          date NOT NULL,
    outbox_id    bigint REFERENCES mail.outbox (id),
    PRIMARY KEY (location_id, sender, day)
);

CREATE TABLE mail.retention_policies (
    id              bigserial PRIMARY KEY,
    scope           text NOT NULL CHECK (scope IN ('location', 'sent')),
    location_id     bigint UNIQUE REFERENCES mail.import_locations (id) ON DELETE CASCADE,
    keep_days       integer CHECK (keep_days >= 0),  -- NULL or 0: keep forever
    legal_min_days  integer NOT NULL DEFAULT 2190 CHECK (legal_min_days >= 0),  -- 6 years
    invoice_legal_min_days integer NOT NULL DEFAULT 3650 CHECK (invoice_legal_min_days >= 0),
    CHECK ((scope = 'location') = (location_id IS NOT NULL))
);
CREATE UNIQUE INDEX retention_one_sent_policy ON mail.retention_policies (scope) WHERE scope = 'sent';

CREATE TABLE mail.audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL CHECK (action <> ''),
    subject  text,
    details  jsonb NOT NULL DEFAULT '{}'
);
