-- Documents on demand: the ERP's own documents (invoices, offers, order confirmations) with
-- their lines, and the documents each on-demand run (erp.runs kind 'on_demand') was asked to
-- send. One letter per partner carries all of that partner's documents in one mail.

ALTER TABLE erp.runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE erp.runs ADD CONSTRAINT runs_kind_check
    CHECK (kind IN ('dunning', 'balance_confirmation', 'payment_advice', 'on_demand'));

-- A document the ERP issued, as its form prints it. Amounts are the document's own (net per
-- line, tax and gross on the head), in its currency.
CREATE TABLE erp.documents (
    id           bigserial PRIMARY KEY,
    company      text NOT NULL REFERENCES erp.companies (code),
    kind         text NOT NULL CHECK (kind IN ('invoice', 'offer', 'order_confirmation')),
    number       text NOT NULL CHECK (number ~ '^[0-9A-Za-z_./-]{1,40}$'),
    partner_id   bigint NOT NULL REFERENCES erp.partners (id),
    doc_date     date NOT NULL,
    due_date     date,          -- an invoice's; an offer's valid-until; a delivery date
    customer_ref text NOT NULL DEFAULT '',  -- the customer's order or enquiry reference
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    net_amount   numeric(15, 2) NOT NULL,
    tax_amount   numeric(15, 2) NOT NULL DEFAULT 0,
    gross_amount numeric(15, 2) NOT NULL,
    CHECK (gross_amount = net_amount + tax_amount),
    UNIQUE (company, kind, number)
);
CREATE INDEX documents_partner_idx ON erp.documents (partner_id);

CREATE TABLE erp.document_lines (
    document_id bigint NOT NULL REFERENCES erp.documents (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position > 0),
    description text NOT NULL CHECK (description <> ''),
    quantity    numeric(15, 3) NOT NULL,
    unit        text NOT NULL DEFAULT '',
    unit_price  numeric(15, 2) NOT NULL,
    amount      numeric(15, 2) NOT NULL,  -- net
    PRIMARY KEY (document_id, position)
);

-- Each document an on-demand run was asked for, in the order asked (position in the request;
-- a payment advice reprint gives one row per payee). A document that cannot be found or
-- rendered is 'failed' alone with the reason naming kind and number; the others go on their
-- partner's letter, which carries the mail's status. ``pages`` is where a rendered document
-- sits in its letter's PDF (first page, count), so its mail attaches it as a file of its own;
-- an archived one is attached from ``source_path`` as stored.
CREATE TABLE erp.run_documents (
    id           bigserial PRIMARY KEY,
    run_id       bigint NOT NULL REFERENCES erp.runs (id) ON DELETE CASCADE,
    position     integer NOT NULL CHECK (position >= 0),
    kind         text NOT NULL
                 CHECK (kind IN ('invoice', 'offer', 'order_confirmation', 'payment_advice', 'archive')),
    number       text NOT NULL,  -- the document number, payment run number or archive key
    partner_id   bigint REFERENCES erp.partners (id),
    letter_id    bigint REFERENCES erp.letters (id) ON DELETE CASCADE,
    document_id  bigint REFERENCES erp.documents (id),
    advice_letter_id bigint REFERENCES erp.letters (id),  -- the payment advice reprinted
    source_path  text,            -- an archived PDF sent as it is stored
    status       text NOT NULL DEFAULT 'requested'
                 CHECK (status IN ('requested', 'rendered', 'failed')),
    error        text,
    first_page   integer CHECK (first_page >= 0),
    page_count   integer CHECK (page_count > 0),
    CHECK ((status = 'failed') = (error IS NOT NULL)),
    CHECK (status = 'failed' OR letter_id IS NOT NULL)
);
CREATE INDEX run_documents_run_idx ON erp.run_documents (run_id, position);
CREATE INDEX run_documents_letter_idx ON erp.run_documents (letter_id);

-- The status of each requested document with its recipient: its own failure, else its
-- letter's (and so its mail's) status.
CREATE VIEW erp.run_document_status AS
SELECT d.run_id,
       r.airflow_run_id,
       d.id AS run_document_id,
       d.position,
       d.kind,
       d.number,
       p.number AS partner_number,
       d.letter_id,
       CASE WHEN d.status = 'failed' THEN 'failed' ELSE coalesce(l.status, d.status) END AS status,
       coalesce(d.error, l.error) AS error,
       l.paper_reason,
       l.recipient,
       o.status AS mail_status,
       o.sent_at
  FROM erp.run_documents d
  JOIN erp.runs r ON r.id = d.run_id
  LEFT JOIN erp.partners p ON p.id = d.partner_id
  LEFT JOIN erp.letters l ON l.id = d.letter_id
  LEFT JOIN mail.outbox o ON o.id = l.outbox_id;
