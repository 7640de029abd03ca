-- The import links a mail to the open items whose document number it names (060 allowed the
-- link type): found by number, case-insensitively, for each chunk of mail.
CREATE INDEX open_items_doc_number_idx ON erp.open_items (upper(doc_number));
