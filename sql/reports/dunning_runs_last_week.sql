-- title: Dunning runs of the last seven days
-- column: run int Run
-- column: key_date date Key date
-- column: letters int Letters
-- column: sent int Sent
-- column: paper int Paper
-- column: failed int Failed
-- column: withheld int Withheld
SELECT r.id, r.key_date, count(l.id),
       count(l.id) FILTER (WHERE l.status = 'sent'),
       count(l.id) FILTER (WHERE l.status = 'paper'),
       count(l.id) FILTER (WHERE l.status = 'failed'),
       count(l.id) FILTER (WHERE l.status = 'withheld')
  FROM erp.runs r LEFT JOIN erp.letters l ON l.run_id = r.id
 WHERE r.kind = 'dunning' AND r.company = %(company)s AND NOT r.dry_run
   AND r.created_at >= now() - interval '7 days'
 GROUP BY r.id, r.key_date
 ORDER BY r.id
