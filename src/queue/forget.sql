-- The queue's own SQL: what a dropped table or message leaves in the queue goes with it.
CREATE FUNCTION outbound_msg.forget_queued(message_ids bigint[]) RETURNS bigint
LANGUAGE sql STRICT SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (
        DELETE FROM outbound_msg.queue WHERE message_id = ANY (message_ids)
        RETURNING cardinality(record_ids) AS size),
    counters AS (
        DELETE FROM outbound_msg.message_stats WHERE message_id = ANY (message_ids))
    SELECT coalesce(sum(size), 0)::bigint FROM gone;
END;
COMMENT ON FUNCTION outbound_msg.forget_queued(bigint[]) IS
    'Deletes the queued notifications and counters of messages being dropped; returns how many notifications';
