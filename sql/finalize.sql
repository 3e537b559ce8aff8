-- Runs after every function exists: the capture function's privileges, the psql view, the DDL
-- event triggers, and who may call what.

-- The capture trigger runs as the role that changed the row (no SECURITY DEFINER call on
-- every row): it reads the definitions and evaluates criteria as the extension's owner, reads
-- rows as each message's send-as role, and the queue is written as the owner.

-- Hides the password of credentials in a URL (scheme://user:password@host): everything from
-- the first colon of the authority to its last @, as src/secrets.rs masks them.
CREATE FUNCTION outbound_msg.mask_credentials(url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN pg_catalog.regexp_replace(url, '^([^:/?#]+://[^/?#@:]*):[^/?#]*@', '\1:********@');
COMMENT ON FUNCTION outbound_msg.mask_credentials(text) IS
    'The URL with the password of its credentials replaced by ********';

-- Every definition, readably. Credentials in endpoint URLs are masked.
CREATE VIEW outbound_msg.messages AS
SELECT m.object AS table_name,
       m.name,
       m.unique_name,
       m.description,
       outbound_msg.mask_credentials(m.endpoint_url) AS endpoint_url,
       m.send_as,
       m.fields,
       m.evaluate,
       m.criteria,
       m.protected,
       m.active,
       m.client_certificate,
       m.created_by,
       m.created_at,
       m.id
  FROM outbound_msg.message m
 ORDER BY m.object::text, m.unique_name;
COMMENT ON VIEW outbound_msg.messages IS
    'Outbound message definitions, one row per message, for psql';

-- Like Salesforce's Outbound Messaging Delivery Status page: every notification not yet
-- acknowledged. A "sending" notification whose lease ran out is due again: shown as retrying;
-- a new one (the worker has not seen it yet) is queued.
CREATE VIEW outbound_msg.delivery_status AS
SELECT m.unique_name AS message,
       m.object AS table_name,
       outbound_msg.mask_credentials(m.endpoint_url) AS endpoint_url,
       r.record_id,
       outbound_msg.notification_id(q.id * 100 + r.position - 1) AS notification_id,
       CASE WHEN q.state = 'sending' AND q.next_attempt_at <= now() THEN 'retrying'
            WHEN q.state = 'new' THEN 'queued'
            ELSE q.state END AS state,
       q.attempts,
       q.created_at,
       CASE WHEN q.state <> 'expired' THEN q.next_attempt_at END AS next_attempt_at,
       q.last_attempt_at,
       q.last_error
  FROM outbound_msg.queue q
  JOIN outbound_msg.message m ON m.id = q.message_id
 CROSS JOIN LATERAL unnest(q.record_ids) WITH ORDINALITY AS r(record_id, position)
 ORDER BY q.id, r.position;
COMMENT ON VIEW outbound_msg.delivery_status IS
    'Every notification not yet acknowledged, with its state, attempts and last error';

-- Counters per message.
CREATE VIEW outbound_msg.delivery_stats AS
SELECT m.object AS table_name,
       m.unique_name AS message,
       coalesce(sum(cardinality(q.record_ids)) FILTER (WHERE q.state <> 'expired'), 0) AS queued,
       coalesce(s.delivered, 0) AS delivered,
       coalesce(s.failed_attempts, 0) AS failed_attempts,
       coalesce(sum(cardinality(q.record_ids)) FILTER (WHERE q.state = 'expired'), 0) AS expired,
       s.last_success,
       s.last_failure,
       CASE WHEN s.delivered > 0 THEN s.latency_total / s.delivered END AS average_latency,
       s.last_latency
  FROM outbound_msg.message m
  LEFT JOIN outbound_msg.message_stats s ON s.message_id = m.id
  LEFT JOIN outbound_msg.queue q ON q.message_id = m.id
 GROUP BY m.id, s.message_id
 ORDER BY m.object::text, m.unique_name;
COMMENT ON VIEW outbound_msg.delivery_stats IS
    'Per message: queued, delivered, failed attempts, expired, last success and failure, latency';

-- Every endpoint messages send to, with its health: one row per scheme, host and port.
CREATE VIEW outbound_msg.endpoints AS
WITH defined AS (
    SELECT outbound_msg.endpoint_of(m.endpoint_url) AS endpoint,
           count(*) AS messages,
           coalesce(sum(q.queued), 0)::bigint AS queued
      FROM outbound_msg.message m
      LEFT JOIN LATERAL (
            SELECT sum(cardinality(record_ids)) AS queued FROM outbound_msg.queue
             WHERE message_id = m.id AND state <> 'expired') q ON true
     GROUP BY 1)
SELECT d.endpoint,
       coalesce(h.state, 'unproven') AS state,
       coalesce(h.consecutive_failures, 0) AS consecutive_failures,
       h.failing_since,
       h.last_success,
       h.last_error,
       coalesce(h.requests_in_flight, 0) AS requests_in_flight,
       d.queued,
       d.messages,
       h.reported_at
  FROM defined d
  LEFT JOIN outbound_msg.endpoint_health h ON h.endpoint = d.endpoint
 ORDER BY d.endpoint;
COMMENT ON VIEW outbound_msg.endpoints IS
    'Each endpoint (scheme, host, port): health state, failures, last success and error, requests in flight, notifications queued';

-- Databases served by a delivery worker, or waiting for one (at most outbound_msg.max_workers
-- run at once): cluster-wide.
CREATE VIEW outbound_msg.workers AS
SELECT d.datname AS database,
       w.pid,
       CASE WHEN w.pid IS NOT NULL THEN 'serving'
            WHEN w.waiting_since IS NOT NULL THEN 'waiting'
            ELSE 'starting' END AS state,
       to_timestamp(w.waiting_since) AS waiting_since
  FROM outbound_msg.worker_slots() w
  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.database_oid
 ORDER BY 1;
COMMENT ON VIEW outbound_msg.workers IS
    'Databases served by a delivery worker or waiting for one, cluster-wide';

-- Client certificates, without their private keys.
CREATE VIEW outbound_msg.client_certificates AS
SELECT c.name,
       c.subject,
       c.not_before,
       c.not_after,
       c.fingerprint,
       c.created_at,
       ARRAY(SELECT format('%s on %s', m.unique_name, m.object)
               FROM outbound_msg.message m
              WHERE m.client_certificate = c.name
              ORDER BY 1) AS used_by
  FROM outbound_msg.client_certificate c
 ORDER BY c.name;
COMMENT ON VIEW outbound_msg.client_certificates IS
    'Imported client certificates (never their private keys) and the messages that present them';

-- Raises the error of a DDL command that would drop or rename a sent column.
CREATE FUNCTION outbound_msg.refuse_sent_column_change(column_name text, table_name text,
                                                       unique_name text) RETURNS void
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'column "%" of table % is sent by outbound message "%"',
                    column_name, table_name, unique_name
          USING ERRCODE = 'dependent_objects_still_exist',
                HINT = 'Remove it from the message''s fields (outbound_msg.alter_message) or drop the message first.';
END
$$;
COMMENT ON FUNCTION outbound_msg.refuse_sent_column_change(text, text, text) IS
    'Raises the error of DDL that would drop or rename a column an outbound message sends';

-- DDL that would break a definition. A dropped table takes its messages and their queued
-- notifications with it; dropping or renaming a sent column, or changing the primary key that
-- supplies the record Id, is refused while a message uses it.
CREATE FUNCTION outbound_msg.forget_dropped_tables() RETURNS event_trigger
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
COMMENT ON FUNCTION outbound_msg.forget_dropped_tables() IS
    'sql_drop event trigger: a dropped table takes its outbound messages with it';

CREATE FUNCTION outbound_msg.check_altered_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    broken record;
BEGIN
    IF to_regclass('outbound_msg.message') IS NULL THEN
        RETURN;
    END IF;
    SELECT m.unique_name, m.object::text AS table_name, f.column_name
      INTO broken
      FROM pg_event_trigger_ddl_commands() c
      JOIN outbound_msg.message m ON m.object = c.objid
     CROSS JOIN LATERAL unnest(m.fields || m.key_column::text) AS f(column_name)
     WHERE c.classid = 'pg_class'::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = m.object AND a.attname = f.column_name
                          AND a.attnum > 0 AND NOT a.attisdropped)
     LIMIT 1;
    IF FOUND THEN
        PERFORM outbound_msg.refuse_sent_column_change(broken.column_name, broken.table_name,
                                                       broken.unique_name);
    END IF;
    -- A table renamed (or moved) to a name that cannot be an XML type name: its messages'
    -- sObject type and WSDL are named after it.
    SELECT m.unique_name, m.object::text AS table_name, c.relname::text AS relname
      INTO broken
      FROM pg_event_trigger_ddl_commands() e
      JOIN outbound_msg.message m ON m.object = e.objid
      JOIN pg_class c ON c.oid = m.object
     WHERE e.classid = 'pg_class'::regclass AND NOT outbound_msg.is_xml_name(c.relname)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is the sObject type of outbound message "%": "%" is not an XML name',
                        broken.table_name, broken.unique_name, broken.relname
              USING ERRCODE = 'dependent_objects_still_exist',
                    HINT = 'Choose a name of letters, digits, ''_'', ''-'' and ''.'' that begins with a letter or ''_'', or drop the message first.';
    END IF;
    SELECT m.unique_name, m.object::text AS table_name, m.key_column::text AS column_name
      INTO broken
      FROM pg_event_trigger_ddl_commands() c
      JOIN outbound_msg.message m ON m.object = c.objid
     WHERE c.classid = 'pg_class'::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_index i
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = m.object AND i.indisprimary AND i.indnkeyatts = 1
                          AND a.attname = m.key_column)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the primary key of table % is the record Id of outbound message "%"',
                        broken.table_name, broken.unique_name
              USING ERRCODE = 'dependent_objects_still_exist',
                    HINT = format('Keep "%s" as the single primary key column, or drop the message first.',
                                  broken.column_name);
    END IF;
END
$$;
COMMENT ON FUNCTION outbound_msg.check_altered_tables() IS
    'ddl_command_end event trigger: refuses ALTER TABLE that breaks an outbound message';

CREATE EVENT TRIGGER outbound_msg_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION outbound_msg.forget_dropped_tables();
CREATE EVENT TRIGGER outbound_msg_check_altered_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION outbound_msg.check_altered_tables();

-- Every write of definitions, whoever makes it (the SQL API, the DDL event trigger,
-- pg_restore's COPY, a superuser's own DML), makes capture in every backend and the delivery
-- worker look them up again.
CREATE TRIGGER definitions_written AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON outbound_msg.message FOR EACH STATEMENT
    EXECUTE FUNCTION outbound_msg.definitions_written();
COMMENT ON FUNCTION outbound_msg.definitions_written() IS
    'Statement trigger of outbound_msg.message: every backend looks definitions up again';

-- How delivery stands in this database, for a DBA wondering why no listener hears anything.
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
COMMENT ON FUNCTION outbound_msg.worker_status() IS
    'This database''s delivery: library preloaded, launcher and worker pids, the worker''s state, notifications queued, the oldest one''s age, the last delivery error';

-- Definitions and client certificates are dumped with the database (pg_dump); queued
-- notifications, counters and endpoint health are not: a restored copy must not send again
-- what the original sent.
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.message', '');
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbound_msg.client_certificate', '');

-- Only superusers, or roles a superuser grants EXECUTE to, define and administer messages.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbound_msg FROM PUBLIC;
-- Serve this database from the commit of CREATE EXTENSION on, without a restart.
SELECT outbound_msg.wake_worker();

COMMENT ON FUNCTION outbound_msg.is_xml_name(text) IS
    'Whether a table or column name can name an XML element or type';

-- Pure helpers the views use: harmless, so the views work for whoever may read them.
GRANT EXECUTE ON FUNCTION outbound_msg.mask_credentials(text), outbound_msg.notification_id(bigint),
                          outbound_msg.endpoint_of(text)
    TO PUBLIC;
REVOKE ALL ON outbound_msg.client_certificates FROM PUBLIC;
REVOKE ALL ON outbound_msg.messages, outbound_msg.delivery_status, outbound_msg.delivery_stats,
              outbound_msg.endpoints, outbound_msg.workers
    FROM PUBLIC;

COMMENT ON FUNCTION outbound_msg.create_message(
    regclass, text, text, text, text[], regrole, text, text, text, boolean, text, boolean) IS
    'Defines an outbound message on a table and installs its capture trigger; returns its id';
COMMENT ON FUNCTION outbound_msg.alter_message(
    regclass, text, text, text, text, text, text[], regrole, text, text, boolean, text, boolean) IS
    'Changes settings of an outbound message: NULL keeps a setting, '''' removes an optional one';
COMMENT ON FUNCTION outbound_msg.drop_message(regclass, text) IS
    'Drops an outbound message and its queued notifications';
COMMENT ON FUNCTION outbound_msg.enable_message(regclass, text) IS
    'Makes an outbound message capture changes again';
COMMENT ON FUNCTION outbound_msg.disable_message(regclass, text) IS
    'Stops an outbound message capturing; queued notifications are still delivered';
COMMENT ON FUNCTION outbound_msg.send(regclass, text, text) IS
    'Queues a notification for the row with the given primary key; returns its notification Id';
COMMENT ON FUNCTION outbound_msg.import_client_certificate(text, text, text) IS
    'Stores a client certificate (PEM chain) and its private key (PEM) for mutual TLS; returns its SHA-256 fingerprint';
COMMENT ON FUNCTION outbound_msg.drop_client_certificate(text) IS
    'Deletes a client certificate that no message presents';
COMMENT ON FUNCTION outbound_msg.wsdl(regclass, text) IS
    'The WSDL a listener for this outbound message is built from';
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

-- Without the preload there is no worker: rows are captured and queued, and nothing is sent.
DO $$
BEGIN
    IF NOT outbound_msg.preloaded() THEN
        RAISE WARNING 'outbound_msg is not in shared_preload_libraries: notifications will be queued but not delivered'
              USING HINT = 'Add outbound_msg to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END
$$;
