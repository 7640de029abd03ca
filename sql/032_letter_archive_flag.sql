-- A dunning level may say "do not archive the generated document": its letters still render,
-- go out by mail (the outbox holds the bytes) or into the print batch, and then their PDF is
-- dropped. keep_pdf says so on the letter; pdf_path is NULL once the PDF is gone.
ALTER TABLE erp.letters ADD COLUMN keep_pdf boolean NOT NULL DEFAULT true;
