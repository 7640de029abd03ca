-- title: Open items by partner (aging)
-- param: key_date date
-- column: partner text Partner
-- column: name text Name
-- column: currency text Currency
-- column: not_due money Not due
-- column: days_1_30 money 1-30 days
-- column: days_31_60 money 31-60 days
-- column: days_61_90 money 61-90 days
-- column: over_90 money Over 90 days
-- column: total money Total
SELECT p.number, p.name, o.currency,
       sum(o.open_amount) FILTER (WHERE o.due_date >= %(key_date)s),
       sum(o.open_amount) FILTER (WHERE %(key_date)s - o.due_date BETWEEN 1 AND 30),
       sum(o.open_amount) FILTER (WHERE %(key_date)s - o.due_date BETWEEN 31 AND 60),
       sum(o.open_amount) FILTER (WHERE %(key_date)s - o.due_date BETWEEN 61 AND 90),
       sum(o.open_amount) FILTER (WHERE %(key_date)s - o.due_date > 90),
       sum(o.open_amount)
  FROM erp.open_items o JOIN erp.partners p ON p.id = o.partner_id
 WHERE p.company = %(company)s AND o.side = 'receivable' AND o.open_amount <> 0
 GROUP BY p.number, p.name, o.currency
 ORDER BY p.number, o.currency
