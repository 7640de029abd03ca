-- Customers of the campaign's company in one country; the address of a general contact
-- where one has an address, else the partner's.
-- param: country text
SELECT p.id, c.id
  FROM erp.partners p
  LEFT JOIN LATERAL (
       SELECT c.id FROM erp.contacts c
        WHERE c.partner_id = p.id AND c.role = 'general' AND coalesce(c.email, '') <> ''
        ORDER BY c.id LIMIT 1) c ON true
 WHERE p.company = %(company)s AND p.is_customer AND p.country = %(country)s
 ORDER BY p.number
