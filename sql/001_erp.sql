-- The ERP side: companies, partners, contacts, open items, dunning configuration,
-- projects and cases. Money is numeric with its currency; business dates are dates.
CREATE SCHEMA erp;

CREATE TABLE erp.companies (
    code         text PRIMARY KEY CHECK (code ~ '^[A-Z0-9_]{1,20}$'),
    name         text NOT NULL,
    street       text NOT NULL DEFAULT '',
    postcode     text NOT NULL DEFAULT '',
    city         text NOT NULL DEFAULT '',
    country      char(2) NOT NULL DEFAULT 'DE',
    email        text,
    phone        text,
    iban         text,
    timezone     text NOT NULL DEFAULT 'Europe/Berlin',
    language     text NOT NULL DEFAULT 'de' CHECK (language ~ '^[a-z]{2}$'),
    currency     char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$')
);

CREATE TABLE erp.partners (
    id             bigserial PRIMARY KEY,
    company        text NOT NULL REFERENCES erp.companies (code),
    number         text NOT NULL CHECK (number <> ''),  -- text: leading zeros are significant
    name           text NOT NULL CHECK (name <> ''),
    is_customer    boolean NOT NULL DEFAULT true,
    is_supplier    boolean NOT NULL DEFAULT false,
    street         text NOT NULL DEFAULT '',
    postcode       text NOT NULL DEFAULT '',
    city           text NOT NULL DEFAULT '',
    country        char(2) NOT NULL DEFAULT 'DE',
    email          text,
    email_blocked  boolean NOT NULL DEFAULT false,
    language       text CHECK (language ~ '^[a-z]{2}$'),  -- NULL: the company's language
    customer_group text,
    dunning_block  boolean NOT NULL DEFAULT false,
    UNIQUE (company, number),
    CHECK (is_customer OR is_supplier)
);
CREATE INDEX partners_email_idx ON erp.partners (lower(email));

CREATE TABLE erp.contacts (
    id          bigserial PRIMARY KEY,
    partner_id  bigint NOT NULL REFERENCES erp.partners (id) ON DELETE CASCADE,
    name        text NOT NULL,
    email       text,
    role        text NOT NULL DEFAULT 'general'
                CHECK (role IN ('general', 'dunning', 'accounting', 'purchasing')),
    language    text CHECK (language ~ '^[a-z]{2}$')
);
CREATE INDEX contacts_partner_idx ON erp.contacts (partner_id);
CREATE INDEX contacts_email_idx ON erp.contacts (lower(email));

CREATE TABLE erp.open_items (
    id             bigserial PRIMARY KEY,
    partner_id     bigint NOT NULL REFERENCES erp.partners (id),
    side           text NOT NULL DEFAULT 'receivable' CHECK (side IN ('receivable', 'payable')),
    doc_number     text NOT NULL CHECK (doc_number <> ''),
    doc_type       text NOT NULL CHECK (doc_type IN ('invoice', 'credit_note')),
    doc_date       date NOT NULL,
    due_date       date NOT NULL,
    amount         numeric(15, 2) NOT NULL,
    open_amount    numeric(15, 2) NOT NULL,
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    dunning_block  boolean NOT NULL DEFAULT false,
    disputed       boolean NOT NULL DEFAULT false,
    UNIQUE (partner_id, side, doc_type, doc_number),
    -- an invoice is positive, a credit note negative; the open part never exceeds the whole
    CHECK ((doc_type = 'invoice' AND amount > 0) OR (doc_type = 'credit_note' AND amount < 0)),
    CHECK (abs(open_amount) <= abs(amount) AND sign(open_amount) IN (0, sign(amount))),
    CHECK (due_date >= doc_date)
);
CREATE INDEX open_items_due_idx ON erp.open_items (due_date) WHERE open_amount <> 0;
CREATE INDEX open_items_partner_idx ON erp.open_items (partner_id);

CREATE TABLE erp.dunning_levels (
    company      text NOT NULL REFERENCES erp.companies (code),
    level        smallint NOT NULL CHECK (level BETWEEN 1 AND 9),
    days_overdue integer NOT NULL CHECK (days_overdue >= 0),
    min_amount   numeric(15, 2) NOT NULL DEFAULT 0 CHECK (min_amount >= 0),
    fee          numeric(15, 2) NOT NULL DEFAULT 0 CHECK (fee >= 0),
    fee_currency char(3) NOT NULL DEFAULT 'EUR' CHECK (fee_currency ~ '^[A-Z]{3}$'),
    send_email   boolean NOT NULL DEFAULT true,
    archive      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (company, level)
);

CREATE TABLE erp.dunning_texts (
    company   text NOT NULL,
    level     smallint NOT NULL,
    language  text NOT NULL CHECK (language ~ '^[a-z]{2}$'),
    subject   text NOT NULL,
    intro     text NOT NULL,
    closing   text NOT NULL,
    PRIMARY KEY (company, level, language),
    FOREIGN KEY (company, level) REFERENCES erp.dunning_levels (company, level)
);

CREATE TABLE erp.projects (
    id          bigserial PRIMARY KEY,
    number      text NOT NULL CHECK (number <> ''),
    subproject  text NOT NULL DEFAULT '',
    phase       text NOT NULL DEFAULT '',
    name        text NOT NULL,
    partner_id  bigint REFERENCES erp.partners (id),
    UNIQUE (number, subproject, phase)
);

CREATE TABLE erp.cases (
    id          bigserial PRIMARY KEY,
    number      text NOT NULL UNIQUE CHECK (number <> ''),
    subject     text NOT NULL,
    queue       text NOT NULL DEFAULT 'support',
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'waiting', 'closed')),
    partner_id  bigint REFERENCES erp.partners (id),
    project_id  bigint REFERENCES erp.projects (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
