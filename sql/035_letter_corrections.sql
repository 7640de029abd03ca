-- A clerk may put a letter on paper by hand (the Letters screen); the reason says so.
ALTER TABLE erp.letters DROP CONSTRAINT letters_paper_reason_check;
ALTER TABLE erp.letters ADD CONSTRAINT letters_paper_reason_check
    CHECK (paper_reason IN ('no_address', 'blocked', 'invalid_address', 'paper_only', 'by_hand'));
