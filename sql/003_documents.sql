-- Document runs (dunning, balance confirmation, payment advice) and their letters.
-- One run per Airflow run id and kind, so a rerun resumes instead of duplicating.
CREATE TABLE erp.runs (
    id             bigserial PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('dunning', 'balance_confirmation', 'payment_advice')),
    airflow_run_id text NOT NULL,
    company        text NOT NULL REFERENCES erp.companies (code),
    key_date       date NOT NULL,
    dry_run        boolean NOT NULL DEFAULT false,
    params         jsonb NOT NULL DEFAULT '{}',
    note           text NOT NULL DEFAULT '',
    status         text NOT NULL DEFAULT 'created'
                   CHECK (status IN ('created', 'generated', 'rendered', 'archived', 'routed', 'done', 'failed')),
    print_batch_path text,
    summary        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    UNIQUE (kind, airflow_run_id)
);

CREATE TABLE erp.letters (
    id                bigserial PRIMARY KEY,
    run_id            bigint NOT NULL REFERENCES erp.runs (id) ON DELETE CASCADE,
    partner_id        bigint NOT NULL REFERENCES erp.partners (id),
    document          text NOT NULL CHECK (document ~ '^[a-z_]+$'),
    language          text NOT NULL CHECK (language ~ '^[a-z]{2}$'),
    language_fallback text,  -- the language asked for, when its template was missing
    level             smallint,
    recipient         text,
    status            text NOT NULL DEFAULT 'generated'
                      CHECK (status IN ('generated', 'rendered', 'archived', 'released', 'paper', 'sent', 'failed')),
    paper_reason      text CHECK (paper_reason IN ('no_address', 'blocked', 'invalid_address', 'paper_only')),
    error             text,
    pdf_path          text,
    outbox_id         bigint REFERENCES mail.outbox (id),
    totals            jsonb NOT NULL DEFAULT '{}',  -- currency -> amount as string
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, partner_id),
    CHECK ((status = 'paper') = (paper_reason IS NOT NULL)),
    CHECK (status <> 'failed' OR error IS NOT NULL),
    CHECK (status NOT IN ('released', 'sent') OR outbox_id IS NOT NULL)
);
CREATE INDEX letters_status_idx ON erp.letters (run_id, status);
CREATE INDEX letters_outbox_idx ON erp.letters (outbox_id);
