-- title: Unlinked mail of the last seven days
-- column: mail int No.
-- column: received timestamp Received
-- column: location text Mailbox
-- column: sender text From
-- column: subject text Subject
SELECT m.id, m.archived_at, l.name, m.from_address, m.subject
  FROM mail.messages m JOIN mail.import_locations l ON l.id = m.location_id
 WHERE m.direction = 'in' AND m.status IN ('unlinked', 'failed')
   AND m.archived_at >= now() - interval '7 days'
   AND %(company)s IS NOT NULL
 ORDER BY m.archived_at, m.id
