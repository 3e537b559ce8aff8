-- The claim (src/queue/mod.rs, claim()): takes due groups within the limits, oldest first, and
-- leases them ($1 most notifications in all; $2, $3 each message allowed and how many it may
-- take; $4 the lease in seconds; $5 the new rows offered; $6 the messages to look up in the
-- due index).
WITH allowance AS (
    SELECT p.message_id, p.n
      FROM unnest($2::bigint[], $3::bigint[]) AS p(message_id, n)
     WHERE p.n > 0),
scan AS (
    SELECT q.ctid, q.id, q.message_id, q.next_attempt_at, a.n AS allowed,
           cardinality(q.record_ids) AS size
      FROM allowance a
     CROSS JOIN LATERAL (
           SELECT ctid, id, message_id, next_attempt_at, record_ids
             FROM outbound_msg.queue
            WHERE message_id = a.message_id AND next_attempt_at <= now()
              AND state <> 'expired' AND state <> 'new'
            ORDER BY next_attempt_at, id
            LIMIT least(a.n, $1)) q
     WHERE a.message_id = ANY ($6)
    UNION ALL
    SELECT q.ctid, q.id, q.message_id, q.next_attempt_at, a.n,
           cardinality(q.record_ids)
      FROM outbound_msg.queue q
      JOIN allowance a ON a.message_id = q.message_id
     WHERE q.ctid = ANY ($5) AND q.state = 'new'),
running AS (
    SELECT ctid, size, allowed,
           sum(size) OVER (PARTITION BY message_id ORDER BY next_attempt_at, id)
               AS message_total,
           sum(size) OVER (ORDER BY next_attempt_at, id) AS total
      FROM scan),
locked AS (
    SELECT q.ctid FROM outbound_msg.queue q
     WHERE q.ctid = ANY (ARRAY(
               SELECT r.ctid FROM running r
                WHERE r.total - r.size < $1
                  AND r.message_total - r.size < r.allowed))
       FOR UPDATE SKIP LOCKED)
UPDATE outbound_msg.queue q
   SET attempts = q.attempts + 1,
       last_attempt_at = now(),
       state = 'sending',
       next_attempt_at = now() + make_interval(secs => $4)
  FROM outbound_msg.message m
 WHERE q.ctid = ANY (ARRAY(SELECT ctid FROM locked)) AND m.id = q.message_id
RETURNING q.ctid, q.id, q.message_id, q.payloads, q.attempts, m.endpoint_url,
          (SELECT c.relname::text FROM pg_catalog.pg_class c
            WHERE c.oid = m.object),
          m.client_certificate
