-- Catalog and queue tables of outbound_msg. Both are ordinary, WAL-logged tables: a committed
-- capture survives a crash, and a standby has the same queue its primary had.

-- One row per outbound message definition. Written only by src/define/catalog.rs.
CREATE TABLE outbound_msg.message (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object             regclass NOT NULL,
    name               text NOT NULL,
    unique_name        text NOT NULL,
    description        text,
    endpoint_url       text NOT NULL,
    fields             text[] NOT NULL,
    send_as            regrole NOT NULL,
    evaluate           text NOT NULL,
    criteria           text,
    protected          boolean NOT NULL DEFAULT false,
    client_certificate text,
    active             boolean NOT NULL DEFAULT true,
    key_column         name NOT NULL,
    created_by         name NOT NULL DEFAULT current_user,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (object, unique_name),
    CHECK (evaluate IN ('created', 'created_or_edited', 'edited_to_meet_criteria'))
);
COMMENT ON TABLE outbound_msg.message IS
    'Outbound message definitions: what to send, from which table, to which endpoint, as whom';
COMMENT ON COLUMN outbound_msg.message.fields IS
    'Columns sent besides the primary key, in the order they are sent (alphabetical)';
COMMENT ON COLUMN outbound_msg.message.key_column IS
    'Primary key column whose value is sent as the record Id';

-- The delivery queue: one row per group of notifications of one message, captured together
-- (by one statement, or one transaction) and sent together in one SOAP message. Written only
-- by src/queue/. A row leaves the queue only when a listener acknowledged its message, or an
-- administrator discarded it. Notification n of row r (from 0) has the notification number
-- r * 100 + n: its Id, the same on every retry.
-- Its rules are kept by src/queue/ rather than CHECK constraints: 1 to 100 record ids, as
-- many payloads, and a state of queued, sending, retrying or expired. PostgreSQL parses and
-- plans a table's CHECK expressions again for every INSERT statement, a large part of what a
-- single-row capture would cost (bench/README.md).
-- Ids come from src/queue/insert.rs: each backend takes a block of a hundred from
-- queue_id_blocks (its values are 1, 101, 201, ...) and numbers rows from it, so a single-row
-- capture rarely calls the sequence at all. Ids stay unique and grow; they are not in commit
-- order across backends (they never were), and a backend that exits leaves a gap.
-- No index on id alone (the blocks keep it unique): each index costs every capture an insert,
-- and deliveries find their claimed rows again by ctid. Administrative work on one
-- notification (retry, discard) reads the queue instead.
CREATE TABLE outbound_msg.queue (
    id              bigint NOT NULL,
    message_id      bigint NOT NULL,
    record_ids      text[] NOT NULL,
    payloads        text[] COMPRESSION lz4 NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'new',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text,
    retried_at      timestamptz
);
-- Claims read each message's groups in order of due time, and only of messages that may take
-- more: a message whose connections are all busy costs a claim nothing, whatever its backlog.
-- New groups are not in it: an index entry is a large part of what capturing a single-row
-- change costs (bench/README.md). The committing transaction tells the worker where its rows are, and a claim takes them
-- at those addresses; only those a claim leaves while their message's connections are busy go
-- into the index (state 'queued') to wait (src/queue/new_rows.rs). Rows go
-- into the queue without the executor (src/queue/insert.rs), which would plan this predicate
-- for every INSERT statement. Expired groups stay in it: their next_attempt_at is 'infinity',
-- after every due one.
CREATE SEQUENCE outbound_msg.queue_id_blocks INCREMENT BY 100 OWNED BY outbound_msg.queue.id;
CREATE INDEX queue_due ON outbound_msg.queue (message_id, next_attempt_at, id)
    WHERE state <> 'new';
-- Never searched by content: ANALYZE (autovacuum's, or the worker's after a burst) need not
-- read and hash every payload.
ALTER TABLE outbound_msg.queue ALTER COLUMN record_ids SET STATISTICS 0,
                               ALTER COLUMN payloads SET STATISTICS 0,
                               ALTER COLUMN last_error SET STATISTICS 0;
-- A queue churns: every row is deleted once acknowledged. Vacuum it after a few hundred dead
-- rows rather than a fraction of its size, so claims never wade through dead index entries.
ALTER TABLE outbound_msg.queue SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 500,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 500,
    autovacuum_vacuum_cost_delay = 0);
COMMENT ON TABLE outbound_msg.queue IS
    'Notifications waiting for delivery or expired, in groups sent together; see delivery_status';
COMMENT ON COLUMN outbound_msg.queue.payloads IS
    'The sObject fields of each notification as SOAP XML, rendered when the row changed';
COMMENT ON COLUMN outbound_msg.queue.state IS
    'new: never tried, not yet seen by the worker (in no index); queued: never tried; sending: in flight until next_attempt_at (its lease); retrying: failed, '
    'next try at next_attempt_at; expired: failed past outbound_msg.max_age, kept, not retried';
COMMENT ON COLUMN outbound_msg.queue.retried_at IS
    'Last outbound_msg.retry() of this group: its age for outbound_msg.max_age counts from here';

-- Delivery counters per message. Written only by src/queue/.
CREATE TABLE outbound_msg.message_stats (
    message_id      bigint PRIMARY KEY,
    delivered       bigint NOT NULL DEFAULT 0,
    failed_attempts bigint NOT NULL DEFAULT 0,
    last_success    timestamptz,
    last_failure    timestamptz,
    latency_total   interval NOT NULL DEFAULT '0',
    last_latency    interval
);
COMMENT ON TABLE outbound_msg.message_stats IS
    'Per message: notifications delivered, failed notification attempts, capture-to-ack latency';

REVOKE ALL ON outbound_msg.message, outbound_msg.queue, outbound_msg.message_stats
    FROM PUBLIC;

-- What the worker last reported of each endpoint (scheme, host and port) it sends to: its
-- circuit state (healthy, unproven, failing), consecutive failures, since when it fails, and
-- its requests in flight. Written only by src/deliver/endpoints.rs; read by the next worker of
-- the database and by the outbound_msg.endpoints view.
CREATE TABLE outbound_msg.endpoint_health (
    endpoint             text PRIMARY KEY,
    state                text NOT NULL,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    last_success         timestamptz,
    last_error           text,
    requests_in_flight   integer NOT NULL DEFAULT 0,
    reported_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE outbound_msg.endpoint_health IS
    'Health of each endpoint as the delivery worker last reported it; see outbound_msg.endpoints';
REVOKE ALL ON outbound_msg.endpoint_health FROM PUBLIC;

-- Client certificates for mutual TLS. Written only by src/define/certificates.rs. The private key is
-- never shown back: the view outbound_msg.client_certificates leaves it out.
CREATE TABLE outbound_msg.client_certificate (
    name            text PRIMARY KEY,
    certificate_pem text NOT NULL,
    private_key_pem text NOT NULL,
    subject         text NOT NULL,
    not_before      timestamptz NOT NULL,
    not_after       timestamptz NOT NULL,
    fingerprint     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE outbound_msg.client_certificate IS
    'Client certificates and their private keys, presented to endpoints that require mutual TLS';
REVOKE ALL ON outbound_msg.client_certificate FROM PUBLIC;
