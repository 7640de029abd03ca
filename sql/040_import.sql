-- Mail import: what the import saw but left on the server, and ticket numbers for new cases.

-- A mail over its location's size limit: recorded once per UID, never fetched, left on the server.
CREATE TABLE mail.import_skipped (
    location_id   bigint NOT NULL REFERENCES mail.import_locations (id) ON DELETE CASCADE,
    folder        text NOT NULL,
    uidvalidity   bigint NOT NULL,
    uid           bigint NOT NULL,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    reason        text NOT NULL CHECK (reason <> ''),
    internal_date timestamptz,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, folder, uidvalidity, uid)
);

-- Cases the import opens get 'T' and at least six digits, like the ERP's own ticket numbers;
-- starting high keeps them clear of numbers the ERP already handed out.
CREATE SEQUENCE erp.ticket_number_seq START 500001;

