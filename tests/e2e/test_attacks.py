"""End to end: the attacks of a less trusted role fail. A writer, a table owner, a granted
extension admin, a database owner and a listener each try what an adversarial review found;
each test fails without its fix. A role that reaches superuser shows as rolsuper."""

import os
import signal

import psycopg
import pytest

from support.cluster import wait_for, worker_pid
from support.listener import Listener
from support.roles import drop_roles

ROLES = ["atk_writer", "atk_admin", "atk_owner", "atk_dbowner"]

def superuser(db, role):
    return db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0]


def queued(db, table):
    return db.execute("SELECT coalesce(sum(cardinality(q.record_ids)), 0) FROM outbound_msg.queue q "
                      "JOIN outbound_msg.message m ON m.id = q.message_id "
                      "WHERE m.object = %s::regclass", (table,)).fetchone()[0]


@pytest.fixture
def attackers(db):
    """Table `target` with a message (sent as atk_owner, its owner); atk_writer may only INSERT
    into it; atk_admin is a granted extension admin owning its own schema `ia`."""
    db.execute("DROP TABLE IF EXISTS target")
    drop_roles(db, ROLES)
    for role in ROLES:
        db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute("CREATE TABLE target (id int PRIMARY KEY, note text, amount int)")
    db.execute("ALTER TABLE target OWNER TO atk_owner")
    db.execute("GRANT INSERT ON target TO atk_writer")
    db.execute("GRANT USAGE ON SCHEMA outbound_msg TO atk_admin")
    db.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA outbound_msg TO atk_admin")
    db.execute("GRANT SELECT ON target TO atk_admin")
    db.execute("CREATE SCHEMA ia AUTHORIZATION atk_admin")
    db.execute("CREATE SCHEMA atk AUTHORIZATION atk_writer")
    db.execute("SELECT outbound_msg.create_message('target', 'T', 'T', 'http://127.0.0.1:9/', "
               "ARRAY['note'], 'atk_owner')")
    yield "target"
    db.execute("DROP TABLE IF EXISTS target")
    db.execute("DROP SCHEMA IF EXISTS ia CASCADE")
    db.execute("DROP SCHEMA IF EXISTS atk CASCADE")
    drop_roles(db, ROLES)


def function(name, args, role, returns="boolean", volatility="VOLATILE"):
    """CREATE FUNCTION `name`(`args`) that makes `role` a superuser when it runs with a
    superuser's privileges, and otherwise quietly does nothing (so an attack never shows as an
    error), then returns something of type `returns`."""
    result = {"boolean": "true", "text": "$1::text", "integer": "0"}[returns]
    return (f"CREATE FUNCTION {name}({args}) RETURNS {returns} LANGUAGE plpgsql {volatility} "
            f"AS $f$ BEGIN BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; "
            f"EXCEPTION WHEN insufficient_privilege THEN NULL; END; RETURN {result}; END $f$")


def test_a_writer_temporary_domain_does_not_run_as_the_owner(cluster, db, attackers):
    with cluster.connect(user="atk_writer") as writer:
        writer.execute(function("pg_temp.pwn", "", "atk_writer"))
        writer.execute("CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.pwn())")
        writer.execute("CREATE DOMAIN pg_temp.name AS pg_catalog.name CHECK (pg_temp.pwn())")
        writer.execute("INSERT INTO target VALUES (1, 'a', 1)")
    assert not superuser(db, "atk_writer")
    assert queued(db, "target") == 1, "the row was captured all the same"


def test_a_writer_schema_first_in_search_path_does_not_run_as_the_owner(cluster, db, attackers):
    with cluster.connect(user="atk_writer") as writer:
        writer.execute(function("atk.quote_ident", "name", "atk_writer", returns="text"))
        writer.execute(function("atk.quote_ident", "text", "atk_writer", returns="text"))
        writer.execute(function("atk.format_type", "oid, integer", "atk_writer", returns="text"))
        writer.execute(function("atk.same", "regclass, regclass", "atk_writer"))
        writer.execute("CREATE OPERATOR atk.= (LEFTARG = regclass, RIGHTARG = regclass, "
                       "FUNCTION = atk.same)")
        writer.execute(function("atk.same_oid", "oid, oid", "atk_writer"))
        writer.execute("CREATE OPERATOR atk.= (LEFTARG = oid, RIGHTARG = oid, "
                       "FUNCTION = atk.same_oid)")
        writer.execute("SET search_path = atk, pg_catalog")
        writer.execute("INSERT INTO public.target VALUES (1, 'a', 1)")
    assert not superuser(db, "atk_writer")
    assert queued(db, "target") == 1


def test_an_admin_criteria_run_as_the_send_as_role_not_the_owner(cluster, db, attackers):
    with cluster.connect(user="atk_admin") as admin:
        admin.execute(function("ia.evil", "integer", "atk_admin"))
        admin.execute("CREATE FUNCTION ia.ok(integer) RETURNS boolean LANGUAGE sql IMMUTABLE "
                      "AS 'SELECT ia.evil($1)'")
        admin.execute("SELECT outbound_msg.create_message('target', 'C', 'C', "
                      "'http://127.0.0.1:9/', ARRAY['note'], 'atk_admin', criteria => 'ia.ok(id)')")
    db.execute("INSERT INTO target VALUES (1, 'a', 1)")
    assert not superuser(db, "atk_admin")
    assert queued(db, "target") == 2, "both messages captured the row: the criteria held"


def test_criteria_keep_the_names_they_were_defined_with(cluster, db, attackers):
    """A function created later earlier in a writer's search_path cannot stand in for one the
    criteria named, nor can an operator."""
    db.execute("SELECT outbound_msg.create_message('target', 'Big', 'Big', 'http://127.0.0.1:9/', "
               "ARRAY['note'], 'atk_owner', criteria => 'amount > 10 AND lower(note) = ''x''')")
    stored = db.execute("SELECT criteria FROM outbound_msg.message WHERE unique_name = 'Big'"
                        ).fetchone()[0]
    assert stored == "((amount > 10) AND (lower(note) = 'x'::text))"
    with cluster.connect(user="atk_writer") as writer:
        writer.execute(function("atk.lower", "text", "atk_writer", returns="text"))
        writer.execute(function("atk.gt", "integer, integer", "atk_writer"))
        writer.execute("CREATE OPERATOR atk.> (LEFTARG = integer, RIGHTARG = integer, "
                       "FUNCTION = atk.gt)")
        writer.execute("SET search_path = atk, pg_catalog, public")
        writer.execute("INSERT INTO target VALUES (1, 'X', 5), (2, 'X', 50)")
    assert not superuser(db, "atk_writer")
    assert queued(db, "target") == 3, "T: both rows; Big: only row 2"


def test_an_error_in_criteria_names_the_message(db, attackers):
    db.execute("SELECT outbound_msg.create_message('target', 'Ratio', 'Ratio', "
               "'http://127.0.0.1:9/', ARRAY['note'], 'atk_owner', "
               "criteria => '100 / (amount - 5) > 1')")
    with pytest.raises(psycopg.errors.DivisionByZero) as raised:
        db.execute("INSERT INTO target VALUES (1, 'a', 5)")
    assert 'criteria of outbound message "Ratio"' in raised.value.diag.context


def test_an_admin_search_path_does_not_steer_the_api(cluster, db, attackers):
    with cluster.connect(user="atk_admin") as admin:
        admin.execute("CREATE FUNCTION ia.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS "
                      "$f$ BEGIN BEGIN EXECUTE 'ALTER ROLE atk_admin SUPERUSER'; "
                      "EXCEPTION WHEN insufficient_privilege THEN NULL; END; "
                      "RETURN QUERY SELECT pg_catalog.unnest($1); END $f$")
        admin.execute(function("ia.has_column_privilege", "regrole, regclass, text, text",
                               "atk_admin"))
        admin.execute("SET search_path = ia, pg_catalog")
        admin.execute("SELECT outbound_msg.create_message('public.target', 'A', 'A', "
                      "'http://127.0.0.1:9/', ARRAY['note', 'amount'], 'atk_admin')")
        admin.execute("SELECT outbound_msg.wsdl('public.target', 'A')")
    assert not superuser(db, "atk_admin")


def test_a_database_owner_settings_do_not_steer_the_worker(cluster, db, listener):
    drop_roles(db, ["atk_dbowner"])
    db.execute("DROP DATABASE IF EXISTS atk_db")
    db.execute("CREATE ROLE atk_dbowner LOGIN")
    db.execute("CREATE DATABASE atk_db OWNER atk_dbowner")
    try:
        with cluster.connect(dbname="atk_db") as su:
            su.execute("CREATE EXTENSION outbound_msg")
            su.execute("CREATE TABLE t (id int PRIMARY KEY)")
            su.execute("SELECT outbound_msg.create_message('t', 'T', 'T', %s, ARRAY[]::text[], "
                       "'postgres')", (listener.url,))
            wait_for(lambda: worker_pid(su), what="the worker of atk_db")
            with cluster.connect(dbname="atk_db", user="atk_dbowner") as owner:
                owner.execute("CREATE SCHEMA mal")
                for name, args, returns in [("cardinality", "anyarray", "integer"),
                                            ("now", "", "boolean")]:
                    owner.execute(function(f"mal.{name}", args, "atk_dbowner", returns=returns)
                                  .replace("RETURN 0;", "RETURN pg_catalog.cardinality($1);"))
                owner.execute("ALTER DATABASE atk_db SET search_path = mal, pg_catalog")
            # The next worker of the database starts with its settings.
            old = worker_pid(su)
            if old:
                os.kill(old, signal.SIGTERM)
                wait_for(lambda: worker_pid(su) != old, what="the old worker to leave")
            su.execute("INSERT INTO t VALUES (1), (2)")
            wait_for(lambda: len(listener.notifications()) == 2, what="two deliveries")
            wait_for(lambda: su.execute("SELECT count(*) = 0 FROM outbound_msg.queue"
                                        ).fetchone()[0], what="the acknowledgement")
        assert not superuser(db, "atk_dbowner")
    finally:
        db.execute("DROP DATABASE IF EXISTS atk_db")
        drop_roles(db, ["atk_dbowner"])


# Names that reach XML


def test_a_table_owner_cannot_rename_a_table_into_markup(cluster, db, attackers, listener):
    db.execute("SELECT outbound_msg.alter_message('target', 'T', endpoint_url => %s)",
               (listener.url,))
    forged = 'q"/></Notification><Notification><Id>FORGED</Id><x a="'
    db.execute("GRANT CREATE ON SCHEMA public TO atk_owner")  # renaming a table needs it
    with cluster.connect(user="atk_owner") as owner:
        with pytest.raises(psycopg.errors.DependentObjectsStillExist,
                           match="is not an XML name"):
            owner.execute(f'ALTER TABLE target RENAME TO "{forged.replace(chr(34), chr(34) * 2)}"')
        owner.execute("ALTER TABLE target RENAME TO renamed_target")
    db.execute("INSERT INTO renamed_target VALUES (1, 'a', 1)")
    wait_for(lambda: listener.received(), what="a delivery")
    assert b'xsi:type="sf:renamed_target"' in listener.requests[0]["body"]
    wsdl = db.execute("SELECT outbound_msg.wsdl('renamed_target', 'T')").fetchone()[0]
    assert '<complexType name="renamed_target">' in wsdl
    db.execute("ALTER TABLE renamed_target RENAME TO target")


def test_dropping_a_sent_column_type_cascade_is_refused(db, listener):
    db.execute("DROP TABLE IF EXISTS domained")
    db.execute("DROP DOMAIN IF EXISTS atk_code")
    db.execute("CREATE DOMAIN atk_code AS text CHECK (VALUE <> '')")
    db.execute("CREATE TABLE domained (id int PRIMARY KEY, code atk_code, other atk_code)")
    db.execute("SELECT outbound_msg.create_message('domained', 'D', 'D', %s, ARRAY['code'], "
               "'postgres')", (listener.url,))
    try:
        with pytest.raises(psycopg.errors.DependentObjectsStillExist,
                           match='column "code" of table public.domained is sent by outbound message "D"'):
            db.execute("DROP DOMAIN atk_code CASCADE")
        assert db.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'domained'::regclass "
                          "AND attname = 'code' AND NOT attisdropped").fetchone()[0] == 1
        db.execute("INSERT INTO domained VALUES (1, 'c', 'o')")
        wait_for(lambda: listener.notifications(), what="a delivery")
        assert listener.notifications()[0]["fields"] == {"Id": "1", "code": "c"}
    finally:
        db.execute("DROP TABLE IF EXISTS domained")
        db.execute("DROP DOMAIN IF EXISTS atk_code")


# Listeners: only a real acknowledgement deletes


ACK_BODY = (b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
            b'<Ack>true</Ack></notificationsResponse>')


def envelope(header=b"", body=b"", before_body=b""):
    return (b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            + (b"<soapenv:Header>" + header + b"</soapenv:Header>" if header else b"")
            + before_body + b"<soapenv:Body>" + body + b"</soapenv:Body></soapenv:Envelope>")


FORGED_ACKS = {
    "ack in a fault's detail": envelope(body=b"<soapenv:Fault><faultcode>soapenv:Server</faultcode>"
                                        b"<detail>" + ACK_BODY + b"</detail></soapenv:Fault>"),
    "ack in the header": envelope(header=ACK_BODY),
    "ack under the envelope": envelope(before_body=ACK_BODY),
    "wrapped ack": envelope(body=ACK_BODY.replace(b"<Ack>true</Ack>", b"<Ack><x>true</x></Ack>")),
}


def first_failure(db, answer):
    """The last_error of a notification sent to a listener that answers `answer`."""
    listener = Listener(lambda _request: answer)
    db.execute("DROP TABLE IF EXISTS answered")
    db.execute("CREATE TABLE answered (id int PRIMARY KEY)")
    try:
        db.execute("SELECT outbound_msg.create_message('answered', 'A', 'A', %s, "
                   "ARRAY[]::text[], 'postgres')", (listener.url,))
        db.execute("INSERT INTO answered VALUES (1)")
        return wait_for(lambda: db.execute(
            "SELECT last_error FROM outbound_msg.delivery_status WHERE table_name = "
            "'answered'::regclass").fetchone()[0], what="a failed attempt")
    finally:
        db.execute("DROP TABLE IF EXISTS answered")
        listener.stop()


@pytest.mark.parametrize("case", sorted(FORGED_ACKS))
def test_only_envelope_body_response_ack_counts(db, case):
    assert first_failure(db, (200, FORGED_ACKS[case])), "kept queued, with its reason"


def test_a_long_fault_string_is_kept_bounded(db):
    fault = envelope(body=b"<soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>"
                     + b"z" * 5000 + b"</faultstring></soapenv:Fault>")
    error = first_failure(db, (500, fault))
    assert error.startswith("HTTP 500: SOAP fault: zzz")
    assert error.endswith("more characters)") and len(error) < 1100


# Administration


@pytest.fixture
def protected(db, attackers):
    db.execute("SELECT outbound_msg.create_message('target', 'P', 'P', 'http://127.0.0.1:9/', "
               "ARRAY['note'], 'atk_owner', protected => true)")
    db.execute("SELECT outbound_msg.drop_message('target', 'T')")
    db.execute("INSERT INTO target VALUES (1, 'a', 1)")
    yield db.execute("SELECT notification_id FROM outbound_msg.delivery_status "
                     "WHERE message = 'P'").fetchone()[0]


def test_only_a_superuser_retries_or_discards_a_protected_message(cluster, db, protected):
    with cluster.connect(user="atk_admin") as admin:
        for sql, args in [("SELECT outbound_msg.discard('target', 'P')", ()),
                          ("SELECT outbound_msg.retry('target', 'P')", ()),
                          ("SELECT outbound_msg.discard(%s)", (protected,)),
                          ("SELECT outbound_msg.retry(%s)", (protected,))]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is protected"):
                admin.execute(sql, args)
        db.execute("UPDATE outbound_msg.queue SET state = 'expired'")
        assert admin.execute("SELECT outbound_msg.discard_expired()").fetchone()[0] == 0
        assert admin.execute("SELECT outbound_msg.retry_expired()").fetchone()[0] == 0
    assert queued(db, "target") == 1
    assert db.execute("SELECT outbound_msg.discard('target', 'P')").fetchone()[0] == 1


def test_send_requires_membership_in_the_send_as_role(cluster, db, attackers):
    db.execute("INSERT INTO target VALUES (1, 'a', 1)")
    with cluster.connect(user="atk_admin") as admin:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match='must be a member of role "atk_owner"'):
            admin.execute("SELECT outbound_msg.send('target', 'T', '1')")
    db.execute("GRANT atk_owner TO atk_admin")
    with cluster.connect(user="atk_admin") as admin:
        admin.execute("SELECT outbound_msg.send('target', 'T', '1')")
    assert queued(db, "target") == 2


# Secrets


def test_a_password_with_an_at_sign_is_masked_whole(db, attackers):
    db.execute("SELECT outbound_msg.alter_message('target', 'T', "
               "endpoint_url => 'http://svc:p@ss@tTail9@127.0.0.1:9/x')")
    url = db.execute("SELECT endpoint_url FROM outbound_msg.messages "
                     "WHERE table_name = 'target'::regclass").fetchone()[0]
    assert url == "http://svc:********@127.0.0.1:9/x"
    db.execute("INSERT INTO target VALUES (1, 'a', 1)")
    url = db.execute("SELECT endpoint_url FROM outbound_msg.delivery_status").fetchone()[0]
    assert "tTail9" not in url


def test_bind_parameters_in_log_context_are_masked(cluster, db, attackers):
    db.execute("ALTER SYSTEM SET log_parameter_max_length_on_error = -1")
    db.execute("SELECT pg_reload_conf()")
    try:
        with cluster.connect() as conn:
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT outbound_msg.create_message('target', 'X', 'X', %s, "
                             "ARRAY['nope'], 'postgres')",
                             ("https://svc:CtxS3cret@127.0.0.1:9/",), prepare=True)
        conn_marker = "marker: context logged"
        db.execute(f"SELECT 1 /* {conn_marker} */")
        log = cluster.log()
        assert "CtxS3cret" not in log
        assert "svc:********@" in log
    finally:
        db.execute("ALTER SYSTEM RESET log_parameter_max_length_on_error")
        db.execute("SELECT pg_reload_conf()")


# Errors stay PostgreSQL's


def test_errors_of_other_commands_pass_through_unchanged(db, attackers):
    """The server runs with RUST_BACKTRACE=1 (conftest): no error gets a backtrace, and errors
    raised under our hooks keep every field."""
    with pytest.raises(psycopg.errors.UndefinedTable) as raised:
        db.execute("DROP TABLE nosuch")
    assert raised.value.diag.message_detail is None
    db.execute("DROP TABLE IF EXISTS atk_parent CASCADE")
    db.execute("CREATE TABLE atk_parent (id int PRIMARY KEY)")
    db.execute("ALTER TABLE target ADD CONSTRAINT target_parent FOREIGN KEY (amount) "
               "REFERENCES atk_parent (id)")
    try:
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
            db.execute("INSERT INTO target VALUES (1, 'a', 42)")
        assert raised.value.diag.constraint_name == "target_parent"
        assert raised.value.diag.table_name == "target"
        assert "backtrace" not in (raised.value.diag.message_detail or "")
        assert "stack backtrace" not in str(raised.value)
        # In a subtransaction that catches the error, capture goes on as before.
        db.execute("""DO $$ BEGIN
                          BEGIN INSERT INTO target VALUES (2, 'b', 42);
                          EXCEPTION WHEN foreign_key_violation THEN NULL; END;
                          INSERT INTO atk_parent VALUES (7);
                          INSERT INTO target VALUES (3, 'c', 7);
                      END $$""")
        assert queued(db, "target") == 1
    finally:
        db.execute("ALTER TABLE target DROP CONSTRAINT IF EXISTS target_parent")
        db.execute("DROP TABLE IF EXISTS atk_parent")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        db.execute("SELECT outbound_msg.create_message('target', '', 'E', 'http://h/', "
                   "ARRAY[]::text[], 'postgres')")
    assert "backtrace" not in str(raised.value) and raised.value.diag.message_detail is None


# Workers never block DDL


def test_drop_database_does_not_wait_for_a_paused_worker(cluster, db, reload_with):
    reload_with(pause_delivery="on")
    db.execute("SELECT outbound_msg.wake_worker()")
    wait_for(lambda: db.execute("SELECT query = 'paused' FROM pg_stat_activity WHERE "
                                "backend_type = 'outbound_msg worker' AND datname = "
                                "current_database()").fetchone(), what="the worker to pause")
    db.execute("DROP DATABASE IF EXISTS atk_other")
    db.execute("CREATE DATABASE atk_other")
    db.execute("SET statement_timeout = '20s'")
    try:
        db.execute("DROP DATABASE atk_other")
    finally:
        db.execute("RESET statement_timeout")


# Sizes


def test_values_larger_than_a_group_are_captured_where_a_plain_insert_succeeds(db, reload_with):
    reload_with(pause_delivery="on")
    db.execute("DROP TABLE IF EXISTS big")
    db.execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
    try:
        db.execute("SELECT outbound_msg.create_message('big', 'B', 'B', 'http://127.0.0.1:9/', "
                   "ARRAY['v'], 'postgres')")
        db.execute("INSERT INTO big SELECT i, repeat('y', 64 * 1024 * 1024) "
                   "FROM generate_series(1, 18) i")
        assert queued(db, "big") == 18
        assert db.execute("SELECT max(pg_column_size(payloads)) < 200 * 1024 * 1024 "
                          "FROM outbound_msg.queue q JOIN outbound_msg.message m "
                          "ON m.id = q.message_id WHERE m.object = 'big'::regclass"
                          ).fetchone()[0]
        notices = []
        db.add_notice_handler(lambda notice: notices.append(notice.message_primary))
        db.execute("INSERT INTO big VALUES (19, repeat('<', 40 * 1024 * 1024))")
        assert any('column "v" is left out of a notification' in n for n in notices)
        assert db.execute("SELECT payloads[1] FROM outbound_msg.queue q WHERE 'big'::regclass = "
                          "(SELECT object FROM outbound_msg.message WHERE id = q.message_id) "
                          "AND record_ids[1] = '19'").fetchone()[0] == \
            "     <sf:Id>19</sf:Id>\n"
    finally:
        db.execute("DROP TABLE IF EXISTS big")
