-- outbound_msg 0.1.0 -> 0.2.0. Released: never edit (sql/released.sha256 holds its checksum).
\echo Use "ALTER EXTENSION outbound_msg UPDATE" to load this file. \quit

-- NULL in a required argument is now an error naming the parameter (SQLSTATE 22004), not a
-- NULL result: the functions are called on NULL input.
ALTER FUNCTION outbound_msg.disable_message(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.enable_message(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.drop_message(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.discard(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.discard(text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.retry(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.retry(text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.send(regclass, text, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.import_client_certificate(text, text, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.drop_client_certificate(text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.wsdl(regclass, text) CALLED ON NULL INPUT;
ALTER FUNCTION outbound_msg.refuse_sent_column_change(text, text, text) STRICT;

-- The key of send() in its column's own type.
CREATE FUNCTION outbound_msg.send(object regclass, unique_name text, key anyelement)
RETURNS text LANGUAGE c AS 'MODULE_PATHNAME', 'send_key_wrapper';

CREATE FUNCTION outbound_msg.preloaded() RETURNS boolean
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'preloaded_wrapper';

CREATE FUNCTION outbound_msg.worker_status(
    OUT preloaded boolean, OUT launcher_pid integer, OUT worker_pid integer,
    OUT worker_state text, OUT queued bigint, OUT oldest_queued_age interval,
    OUT last_error text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
SELECT outbound_msg.preloaded(),
       (SELECT a.pid FROM pg_catalog.pg_stat_activity a
         WHERE a.backend_type = 'outbound_msg launcher' LIMIT 1),
       w.pid,
       CASE WHEN NOT outbound_msg.preloaded() THEN 'not preloaded'
            WHEN w.pid IS NOT NULL THEN coalesce(a.query, 'starting')
            WHEN w.waiting_since IS NOT NULL THEN 'waiting for a worker slot'
            WHEN w.database_oid IS NOT NULL THEN 'starting'
            ELSE 'no worker (nothing to deliver)' END,
       q.queued,
       pg_catalog.now() - q.oldest,
       (SELECT e.last_error FROM outbound_msg.queue e
         WHERE e.last_error IS NOT NULL AND e.state <> 'new'
         ORDER BY e.last_attempt_at DESC NULLS LAST LIMIT 1)
  FROM (SELECT coalesce(sum(cardinality(record_ids)), 0)::bigint AS queued,
               min(created_at) AS oldest
          FROM outbound_msg.queue WHERE state <> 'expired') q
  LEFT JOIN outbound_msg.worker_slots() w
         ON w.database_oid = (SELECT d.oid FROM pg_catalog.pg_database d
                               WHERE d.datname = pg_catalog.current_database())
  LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid;
END;
REVOKE ALL ON FUNCTION outbound_msg.send(regclass, text, anyelement), outbound_msg.preloaded(),
                       outbound_msg.worker_status()
    FROM PUBLIC;

-- What a dropped table or message leaves in the queue goes as the queue's own SQL says.
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
REVOKE ALL ON FUNCTION outbound_msg.forget_queued(bigint[]) FROM PUBLIC;
CREATE OR REPLACE FUNCTION outbound_msg.forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    broken record;
    gone bigint[];
BEGIN
    -- DROP EXTENSION removes these tables too: nothing to forget then.
    IF to_regclass('outbound_msg.message') IS NULL THEN
        RETURN;
    END IF;
    -- A column dropped on its own (or with a type or domain dropped CASCADE) that a message
    -- sends: refused, as ALTER TABLE ... DROP COLUMN is (check_altered_tables).
    SELECT m.unique_name, m.object::text AS table_name,
           d.address_names[array_length(d.address_names, 1)] AS column_name
      INTO broken
      FROM pg_event_trigger_dropped_objects() d
      JOIN outbound_msg.message m ON m.object = d.objid
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid > 0
       AND d.address_names[array_length(d.address_names, 1)] = ANY (m.fields || m.key_column::text)
     LIMIT 1;
    IF FOUND THEN
        PERFORM outbound_msg.refuse_sent_column_change(broken.column_name, broken.table_name,
                                                       broken.unique_name);
    END IF;
    WITH dropped AS (
        DELETE FROM outbound_msg.message m
         USING pg_event_trigger_dropped_objects() d
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.objid = m.object
        RETURNING m.id)
    SELECT array_agg(id) INTO gone FROM dropped;
    -- The queue's rows go as the queue's own SQL says (src/queue/forget.sql).
    IF gone IS NOT NULL THEN
        PERFORM outbound_msg.forget_queued(gone);
    END IF;
END
$$;

CREATE FUNCTION outbound_msg.definitions_written() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'definitions_written_wrapper';
REVOKE ALL ON FUNCTION outbound_msg.definitions_written() FROM PUBLIC;
-- Every write of definitions, whoever makes it (the SQL API, the DDL event trigger,
-- pg_restore's COPY, a superuser's own DML), makes capture in every backend and the delivery
-- worker look them up again.
CREATE TRIGGER definitions_written AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON outbound_msg.message FOR EACH STATEMENT
    EXECUTE FUNCTION outbound_msg.definitions_written();
COMMENT ON FUNCTION outbound_msg.definitions_written() IS
    'Statement trigger of outbound_msg.message: every backend looks definitions up again';

-- Definitions and client certificates are dumped with the database; the queue is not.
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.message', '');
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.client_certificate', '');

COMMENT ON FUNCTION outbound_msg.worker_status() IS
    'This database''s delivery: library preloaded, launcher and worker pids, the worker''s state, notifications queued, the oldest one''s age, the last delivery error';
COMMENT ON FUNCTION outbound_msg.send(regclass, text, anyelement) IS
    'Queues a notification for the row with the given primary key, given in its own type; returns its notification Id';
COMMENT ON FUNCTION outbound_msg.retry(text) IS
    'Makes one notification (by its Id), with the group it is sent in, due now; returns how many were rescheduled';
COMMENT ON FUNCTION outbound_msg.retry(regclass, text) IS
    'Makes every notification of an outbound message due now, expired ones included; returns how many';
COMMENT ON FUNCTION outbound_msg.retry_expired() IS
    'Makes every expired notification due again (protected messages'' only for a superuser); returns how many';
COMMENT ON FUNCTION outbound_msg.discard(text) IS
    'Deletes one notification (by its Id) without sending it';
COMMENT ON FUNCTION outbound_msg.discard(regclass, text) IS
    'Deletes every queued or expired notification of an outbound message; returns how many';
COMMENT ON FUNCTION outbound_msg.discard_expired() IS
    'Deletes every expired notification (protected messages'' only for a superuser); returns how many';
COMMENT ON FUNCTION outbound_msg.notification_id(bigint) IS
    'The 18-character notification Id of a notification number';
COMMENT ON FUNCTION outbound_msg.endpoint_of(text) IS
    'The endpoint (scheme, host, port) of a URL, as endpoint health knows it, credentials left out';
COMMENT ON FUNCTION outbound_msg.worker_slots() IS
    'Databases served by a delivery worker or waiting for one; read through outbound_msg.workers';
COMMENT ON FUNCTION outbound_msg.wake_worker() IS
    'Asks this database''s delivery worker to look at the queue when the transaction commits';
COMMENT ON FUNCTION outbound_msg.preloaded() IS
    'Whether the library was loaded by shared_preload_libraries (without it nothing is delivered)';
COMMENT ON FUNCTION outbound_msg.capture() IS
    'Row trigger of tables with outbound messages: captures changes into the queue';

DO $$
BEGIN
    IF NOT outbound_msg.preloaded() THEN
        RAISE WARNING 'outbound_msg is not in shared_preload_libraries: notifications will be queued but not delivered'
              USING HINT = 'Add outbound_msg to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END
$$;
