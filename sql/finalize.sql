-- Runs after every function exists: privileges and comments on functions.

-- The capture trigger writes the queue, which the changing role cannot: it runs as the
-- extension's owner, and reads the changed row only through its trigger data.
ALTER FUNCTION outbound_msg.capture() SECURITY DEFINER;

-- Only superusers, or roles a superuser grants EXECUTE to, define messages.
REVOKE ALL ON FUNCTION outbound_msg.create_message(
    regclass, text, text, text, text[], regrole, text, text, text, boolean, text, boolean)
    FROM PUBLIC;

COMMENT ON FUNCTION outbound_msg.create_message(
    regclass, text, text, text, text[], regrole, text, text, text, boolean, text, boolean) IS
    'Defines an outbound message on a table and installs its capture trigger; returns its id';
