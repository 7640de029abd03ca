-- The autoreply and the unlinked-mail alert are rendered from include/templates (autoreply/,
-- notification/) in the location's language. autoreply_subject and autoreply_body remain the
-- admin's override, so a location with the autoreply on no longer needs a body of its own.
ALTER TABLE mail.import_locations
    ADD COLUMN language text CHECK (language ~ '^[a-z]{2}$');  -- NULL: the default language, de

DO $$
DECLARE
    con record;
BEGIN
    FOR con IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'mail.import_locations'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%autoreply_body%'
    LOOP
        EXECUTE format('ALTER TABLE mail.import_locations DROP CONSTRAINT %I', con.conname);
    END LOOP;
END
$$;

ALTER TABLE mail.import_locations ADD CONSTRAINT import_locations_autoreply_account
    CHECK (NOT autoreply_enabled OR autoreply_account_id IS NOT NULL);
