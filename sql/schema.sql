-- Catalog and queue tables of outbound_msg. Both are ordinary, WAL-logged tables: a committed
-- capture survives a crash, and a standby has the same queue its primary had.

-- One row per outbound message definition. Written only by src/catalog.rs.
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

-- The delivery queue: one row per notification still to be acknowledged. Written only by
-- src/queue.rs. A row leaves the queue only when a listener acknowledged its message.
CREATE TABLE outbound_msg.notification (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      bigint NOT NULL,
    record_id       text NOT NULL,
    payload         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text
);
CREATE INDEX notification_due ON outbound_msg.notification (next_attempt_at, id);
CREATE INDEX notification_message ON outbound_msg.notification (message_id);
COMMENT ON TABLE outbound_msg.notification IS
    'Notifications waiting for delivery, with the outcome of their last attempt';
COMMENT ON COLUMN outbound_msg.notification.payload IS
    'The sObject fields as SOAP XML, rendered when the row changed';
COMMENT ON COLUMN outbound_msg.notification.next_attempt_at IS
    'When the worker may next send it; while a delivery is in flight, the end of its lease';

REVOKE ALL ON outbound_msg.message, outbound_msg.notification FROM PUBLIC;
