-- Keyword linking looks partners up by number alone ("relnr 000123"), across companies;
-- the (company, number) key cannot serve that.
CREATE INDEX partners_number_idx ON erp.partners (number);
