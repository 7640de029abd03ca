-- Lists and reports mailed on a schedule: a named query of sql/reports/ with its bound
-- parameters, as PDF and/or CSV, to its recipients, when its cron says.
CREATE TABLE mail.report_subscriptions (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name <> ''),
    report       text NOT NULL CHECK (report ~ '^[a-z][a-z0-9_]*$'),
    params       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    company      text NOT NULL REFERENCES erp.companies (code),
    recipients   text[] NOT NULL CHECK (cardinality(recipients) > 0),
    formats      text[] NOT NULL DEFAULT '{pdf}'
                 CHECK (cardinality(formats) > 0 AND formats <@ ARRAY['pdf', 'csv']),
    language     text NOT NULL DEFAULT 'de' CHECK (language ~ '^[a-z]{2}$'),
    schedule     text NOT NULL,  -- a cron expression in the company's time zone
    send_empty   boolean NOT NULL DEFAULT false,
    account      text REFERENCES mail.accounts (name),  -- NULL: the company's sender, else the default
    enabled      boolean NOT NULL DEFAULT true,
    next_run_at  timestamptz NOT NULL DEFAULT now(),
    last_run_at  timestamptz,
    last_outcome text
);
