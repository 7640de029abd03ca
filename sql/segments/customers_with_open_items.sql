-- Customers of the campaign's company with open receivables of at least an amount.
-- param: min_open int
SELECT p.id, NULL::bigint
  FROM erp.partners p
 WHERE p.company = %(company)s AND p.is_customer
   AND (SELECT coalesce(sum(o.open_amount), 0) FROM erp.open_items o
         WHERE o.partner_id = p.id AND o.side = 'receivable') >= %(min_open)s
 ORDER BY p.number
