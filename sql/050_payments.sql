-- Payment runs and their lines (the ERP's payment proposal once executed), and which payment
-- lines a payment advice letter lists. Balance confirmations list their open items in
-- erp.letter_items (030) with no level.

CREATE TABLE erp.payment_runs (
    id           bigserial PRIMARY KEY,
    company      text NOT NULL REFERENCES erp.companies (code),
    number       text NOT NULL CHECK (number ~ '^[0-9A-Za-z_-]{1,20}$'),
    payment_date date NOT NULL,
    status       text NOT NULL DEFAULT 'proposed'
                 CHECK (status IN ('proposed', 'executed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company, number)
);

-- One paid (or offset) document of one payee. Amounts are from the payee's point of view:
-- gross > 0 is paid to the payee (a supplier's invoice, a customer's credit note refunded),
-- gross < 0 is offset against it (a supplier's credit note); deductions only reduce a payment.
CREATE TABLE erp.payment_lines (
    id             bigserial PRIMARY KEY,
    payment_run_id bigint NOT NULL REFERENCES erp.payment_runs (id) ON DELETE CASCADE,
    partner_id     bigint NOT NULL REFERENCES erp.partners (id),
    open_item_id   bigint REFERENCES erp.open_items (id),
    doc_number     text NOT NULL CHECK (doc_number <> ''),  -- the payee's document reference
    doc_date       date,
    gross_amount   numeric(15, 2) NOT NULL CHECK (gross_amount <> 0),
    discount       numeric(15, 2) NOT NULL DEFAULT 0 CHECK (discount >= 0),
    fees           numeric(15, 2) NOT NULL DEFAULT 0 CHECK (fees >= 0),
    paid_amount    numeric(15, 2) NOT NULL,
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    CHECK (paid_amount = gross_amount - discount - fees),
    CHECK (gross_amount > 0 OR (discount = 0 AND fees = 0)),
    CHECK (discount + fees <= abs(gross_amount)),
    UNIQUE (payment_run_id, partner_id, doc_number, currency)
);
CREATE INDEX payment_lines_run_idx ON erp.payment_lines (payment_run_id, partner_id);

-- The lines a payment advice letter lists, fixed at generation: a rerun renders the same
-- lines, and a second advice run for the same payment run finds them already advised.
CREATE TABLE erp.letter_payment_lines (
    letter_id       bigint NOT NULL REFERENCES erp.letters (id) ON DELETE CASCADE,
    payment_line_id bigint NOT NULL REFERENCES erp.payment_lines (id),
    PRIMARY KEY (letter_id, payment_line_id)
);
CREATE INDEX letter_payment_lines_line_idx ON erp.letter_payment_lines (payment_line_id);
