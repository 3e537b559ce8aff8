"""End to end: the life around the happy path. Released scripts never change, 0.1.0 updates
to 0.2.0 with its queue delivered, a missing preload is said, every function refuses NULL
cleanly, and definitions survive pg_dump / pg_restore."""

import hashlib
import os
import subprocess

import psycopg
import pytest

from support.certs import Authority
from support.cluster import TEST_SETTINGS, Cluster, wait_for, worker_state
from support.listener import Listener

SQL = os.path.join(os.path.dirname(__file__), "..", "..", "sql")

# Every released script and its SHA-256. A release adds a line here and never edits one.
RELEASED = {
    "outbound_msg--0.1.0.sql":
        "6b8e4f45770a44e674b55017fd96fda2ea2484c1be7c613a32aed1e822da5a0a",
    "outbound_msg--0.1.0--0.2.0.sql":
        "f05faee24c0537818cfa8e97fa12368789d19d88ccf092bfc4ea690de55ff57f",
}

# Pure helpers (and internal ones of the DDL event triggers): STRICT, so NULL in gives NULL
# out, as PostgreSQL's own functions do.
STRICT_HELPERS = {"mask_credentials", "notification_id", "is_xml_name", "endpoint_of",
                  "refuse_sent_column_change", "forget_queued"}


def test_released_scripts_never_change():
    for name, digest in RELEASED.items():
        with open(os.path.join(SQL, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{name} was edited"
    scripts = {n for n in os.listdir(SQL) if n.startswith("outbound_msg--")}
    assert scripts == set(RELEASED), "every script in sql/ is a released one, listed above"


@pytest.fixture
def fresh_db(cluster):
    """A database of its own, dropped after the test."""
    name = "lifecycle"
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
        try:
            with cluster.connect(dbname=name) as conn:
                yield conn
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def catalog_of(db):
    """What an installation of the extension consists of, comparably across databases."""
    members = db.execute(
        "SELECT pg_describe_object(d.classid, d.objid, 0) FROM pg_depend d "
        "JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'outbound_msg' "
        "WHERE d.deptype = 'e' ORDER BY 1").fetchall()
    functions = db.execute(
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), "
        "obj_description(p.oid, 'pg_proc'), p.proacl::text FROM pg_proc p "
        "WHERE p.pronamespace = 'outbound_msg'::regnamespace ORDER BY 1").fetchall()
    relations = db.execute(
        "SELECT c.relname, c.relkind, pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class'), "
        "c.relacl::text, (SELECT array_agg(format('%s %s %s', a.attname, "
        "format_type(a.atttypid, a.atttypmod), a.attnotnull) ORDER BY a.attnum) "
        "FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
        "FROM pg_class c WHERE c.relnamespace = 'outbound_msg'::regnamespace ORDER BY 1"
    ).fetchall()
    triggers = db.execute(
        "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        "WHERE t.tgrelid IN (SELECT oid FROM pg_class "
        "WHERE relnamespace = 'outbound_msg'::regnamespace) ORDER BY 1").fetchall()
    dumped = db.execute(
        "SELECT array(SELECT unnest(extconfig)::regclass::text ORDER BY 1) FROM pg_extension "
        "WHERE extname = 'outbound_msg'").fetchone()
    return members, functions, relations, triggers, dumped


def test_update_from_0_1_0_delivers_the_queue_and_matches_a_fresh_install(cluster, fresh_db,
                                                                        listener):
    db = fresh_db
    db.execute("CREATE EXTENSION outbound_msg VERSION '0.1.0'")
    db.execute("CREATE TABLE acct (id int PRIMARY KEY, v text)")
    db.execute("SELECT outbound_msg.create_message('acct', 'Acct', 'Acct', %s, ARRAY['v'], "
               "'postgres')", (listener.url,))
    db.execute("ALTER SYSTEM SET outbound_msg.pause_delivery = on")
    db.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: db.execute("SELECT outbound_msg.wake_worker()") and
                 worker_state(db) == "paused", what="the worker paused")
        db.execute("INSERT INTO acct SELECT g, 'before' FROM generate_series(1, 5) g")
        assert db.execute("SELECT extversion FROM pg_extension "
                          "WHERE extname = 'outbound_msg'").fetchone()[0] == "0.1.0"
        db.execute("ALTER EXTENSION outbound_msg UPDATE")
        assert db.execute("SELECT extversion FROM pg_extension "
                          "WHERE extname = 'outbound_msg'").fetchone()[0] == "0.2.0"
        assert db.execute("SELECT sum(cardinality(record_ids)) FROM outbound_msg.queue"
                          ).fetchone()[0] == 5
        assert listener.notifications() == []
        db.execute("INSERT INTO acct SELECT g, 'after' FROM generate_series(6, 8) g")
    finally:
        db.execute("ALTER SYSTEM RESET outbound_msg.pause_delivery")
        db.execute("SELECT pg_reload_conf()")
    wait_for(lambda: {n["fields"]["Id"] for n in listener.notifications()}
             >= {str(i) for i in range(1, 9)}, what="queued and new notifications delivered")
    updated = catalog_of(db)

    with cluster.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS lifecycle_fresh")
        admin.execute("CREATE DATABASE lifecycle_fresh")
    try:
        with cluster.connect(dbname="lifecycle_fresh") as fresh:
            fresh.execute("CREATE EXTENSION outbound_msg")
            installed = catalog_of(fresh)
    finally:
        with cluster.connect() as admin:
            admin.execute("DROP DATABASE IF EXISTS lifecycle_fresh WITH (FORCE)")
    for name, got, want in zip(["members", "functions", "relations", "triggers", "dumped tables"],
                               updated, installed):
        assert got == want, f"the updated extension's {name} differ from a fresh install's"


def said(notice):
    """What a notice says: its fields are gone once the handler returns."""
    return notice.severity_nonlocalized, notice.message_primary, notice.message_hint


def test_without_preload_create_extension_warns_and_worker_status_says_why():
    settings = dict(TEST_SETTINGS, shared_preload_libraries="''")
    bare = Cluster(settings)
    try:
        with bare.connect() as db:
            notices = []
            db.add_notice_handler(lambda n: notices.append(said(n)))
            db.execute("CREATE EXTENSION outbound_msg")
            warnings = [n for n in notices if n[0] == "WARNING"]
            assert len(warnings) == 1
            _, message, hint = warnings[0]
            assert "not in shared_preload_libraries" in message
            assert "shared_preload_libraries" in hint and "restart" in hint
            db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            db.execute("SELECT outbound_msg.create_message('t', 'T', 'T', "
                       "'http://127.0.0.1:9/x', ARRAY['v'], 'postgres')")
            db.execute("INSERT INTO t VALUES (1, 'a')")
            status = db.execute("SELECT preloaded, launcher_pid, worker_pid, worker_state, "
                                "queued FROM outbound_msg.worker_status()").fetchone()
            assert status == (False, None, None, "not preloaded", 1)
    finally:
        bare.stop()


def test_worker_status_shows_the_worker_the_queue_and_the_last_error(fresh_db):
    db = fresh_db
    db.execute("CREATE EXTENSION outbound_msg")
    db.execute("CREATE TABLE ws (id int PRIMARY KEY, v text)")
    db.execute("SELECT outbound_msg.create_message('ws', 'Ws', 'Ws', "
               "'http://127.0.0.1:9/refused', ARRAY['v'], 'postgres')")
    db.execute("INSERT INTO ws VALUES (1, 'a')")
    status = wait_for(lambda: (row := db.execute(
        "SELECT * FROM outbound_msg.worker_status()").fetchone()) and row[6] and row,
        what="a delivery error")
    preloaded, launcher, worker, state, queued, age, error = status
    assert preloaded and launcher and worker
    assert state in ("idle", "delivering")
    assert queued >= 1 and age.total_seconds() >= 0
    assert error.startswith("connection error")


def extension_functions(db):
    return db.execute(
        "SELECT p.proname, p.oid::regprocedure::text, p.proargtypes::regtype[]::text[], "
        "p.proargnames, p.pronargdefaults, p.proisstrict FROM pg_proc p "
        "WHERE p.pronamespace = 'outbound_msg'::regnamespace AND p.pronargs > 0 "
        "AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype) "
        "ORDER BY 2").fetchall()


VALUE = {"regclass": "'nulls'::regclass", "text": "'x'", "text[]": "ARRAY['v']",
         "regrole": "'postgres'::regrole", "boolean": "true", "bigint": "1",
         "bigint[]": "ARRAY[0]::bigint[]",
         "anyelement": "1"}
NULL = {"anyelement": "NULL::integer"}


def test_every_function_refuses_null_cleanly(db):
    """Each function of the extension, called with NULL in each argument in turn: a required
    argument is SQLSTATE 22004 naming the parameter; one with a default is either accepted
    (whatever the other arguments make of the call, never an internal error) or refused the
    same way; a STRICT pure helper returns NULL. No error carries a Rust backtrace."""
    db.execute("DROP TABLE IF EXISTS nulls")
    db.execute("CREATE TABLE nulls (id int PRIMARY KEY, v text)")
    checked = 0
    try:
        for name, signature, types, names, defaults, strict in extension_functions(db):
            if strict:
                assert name in STRICT_HELPERS, f"{signature} is STRICT: NULL gives no error"
            for i, type_ in enumerate(types):
                args = [NULL.get(t, f"NULL::{t}") if j == i else VALUE[t]
                        for j, t in enumerate(types)]
                call = f"SELECT outbound_msg.{name}({', '.join(args)})"
                required = i < len(types) - defaults
                try:
                    with db.transaction():
                        result = db.execute(call).fetchone()[0]
                        raise psycopg.Rollback()
                except psycopg.Error as error:
                    state, diag = error.sqlstate, error.diag
                    assert state != "XX000", f"{call}: {error}"
                    assert "backtrace" not in (diag.message_detail or "").lower(), call
                    if required:
                        assert state == "22004", f"{call}: {state} {error}"
                    if state == "22004":
                        assert diag.message_primary == f"{names[i]} must not be null", call
                else:
                    assert not required or strict, f"{call} accepted NULL and gave {result}"
                    if strict:
                        assert result is None, call
                checked += 1
    finally:
        db.execute("DROP TABLE nulls")
    assert checked >= 40


def test_null_elements_of_fields_are_refused(db):
    db.execute("DROP TABLE IF EXISTS nulls")
    db.execute("CREATE TABLE nulls (id int PRIMARY KEY, v text)")
    try:
        for call in ["SELECT outbound_msg.create_message('nulls', 'N', 'N', 'http://x/', "
                     "ARRAY['v', NULL], 'postgres')",
                     "SELECT outbound_msg.alter_message('nulls', 'N', fields => ARRAY[NULL])"]:
            with pytest.raises(psycopg.errors.NullValueNotAllowed,
                               match="fields must not contain null elements"):
                db.execute(call)
    finally:
        db.execute("DROP TABLE nulls")


def test_every_function_and_view_has_a_comment(db):
    missing = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = 'outbound_msg'::regnamespace "
        "AND obj_description(p.oid, 'pg_proc') IS NULL "
        "UNION ALL SELECT c.oid::regclass::text FROM pg_class c "
        "WHERE c.relnamespace = 'outbound_msg'::regnamespace AND c.relkind IN ('v', 'r') "
        "AND obj_description(c.oid, 'pg_class') IS NULL").fetchall()
    assert missing == []
    settings = db.execute("SELECT name FROM pg_settings WHERE name LIKE 'outbound_msg.%' "
                          "AND coalesce(short_desc, '') = ''").fetchall()
    assert settings == []


def test_send_takes_the_key_in_its_own_type(db, listener):
    db.execute("DROP TABLE IF EXISTS expense")
    db.execute("CREATE TABLE expense (id int PRIMARY KEY, v text)")
    try:
        db.execute("INSERT INTO expense VALUES (3, 'three')")
        db.execute("SELECT outbound_msg.create_message('expense', 'Expense_to_ERP', "
                   "'Expense_to_ERP', %s, ARRAY['v'], 'postgres')", (listener.url,))
        by_int = db.execute("SELECT outbound_msg.send('expense', 'Expense_to_ERP', 3)"
                            ).fetchone()[0]
        by_text = db.execute("SELECT outbound_msg.send('expense', 'Expense_to_ERP', '3')"
                             ).fetchone()[0]
        assert by_int != by_text and len(by_int) == 18
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no row with key"):
            db.execute("SELECT outbound_msg.send('expense', 'Expense_to_ERP', 4)")
        wait_for(lambda: [n["fields"]["Id"] for n in listener.notifications()] == ["3", "3"],
                 what="both notifications")
    finally:
        db.execute("DROP TABLE expense")


def test_drop_of_a_message_with_a_queue_says_how_many_were_discarded(db):
    db.execute("DROP TABLE IF EXISTS dropped")
    db.execute("CREATE TABLE dropped (id int PRIMARY KEY, v text)")
    try:
        # An endpoint that refuses: the notifications stay queued, retrying.
        db.execute("SELECT outbound_msg.create_message('dropped', 'D', 'D', "
                   "'http://127.0.0.1:9/refused', ARRAY['v'], 'postgres')")
        db.execute("INSERT INTO dropped SELECT g, 'x' FROM generate_series(1, 3) g")
        notices = []
        db.add_notice_handler(lambda n: notices.append(said(n)))
        db.execute("SELECT outbound_msg.drop_message('dropped', 'D')")
        assert [n[1] for n in notices if n[0] == "NOTICE"] == \
            ['outbound message "D" dropped with 3 queued notifications discarded']
    finally:
        db.execute("DROP TABLE dropped")


def test_a_definition_written_outside_the_api_is_captured_and_delivered(cluster, db, listener):
    """pg_restore's COPY or a superuser's own INSERT into outbound_msg.message goes round the
    SQL API: the table's statement trigger still tells capture, in every backend, and the
    running worker to look definitions up again."""
    db.execute("DROP TABLE IF EXISTS dml_t")
    db.execute("CREATE TABLE dml_t (id int PRIMARY KEY, v text)")
    other = Listener()
    try:
        db.execute("SELECT outbound_msg.create_message('dml_t', 'DmlA', 'DmlA', %s, "
                   "ARRAY['v'], 'postgres')", (listener.url,))
        with cluster.connect() as writer:
            # A backend whose capture has read the definitions, and a worker that has too.
            writer.execute("INSERT INTO dml_t VALUES (1, 'through the api')")
            wait_for(lambda: listener.notifications(), what="the first delivery")
            db.execute("INSERT INTO outbound_msg.message (object, name, unique_name, "
                       "endpoint_url, fields, send_as, evaluate, key_column) "
                       "SELECT object, 'Copied', 'Copied', %s, fields, send_as, evaluate, "
                       "key_column FROM outbound_msg.message WHERE unique_name = 'DmlA'",
                       (other.url,))
            writer.execute("INSERT INTO dml_t VALUES (2, 'after the copy')")
        wait_for(lambda: [n["fields"]["Id"] for n in other.notifications()] == ["2"],
                 what="the copied definition's notification delivered")
    finally:
        db.execute("DROP TABLE dml_t")
        other.stop()


def pg_tool(cluster, tool, *args):
    return subprocess.run([*cluster.tool(tool), "-h", "127.0.0.1",
                           "-p", str(cluster.port), "-U", "postgres", *args],
                          check=True, capture_output=True)


@pytest.mark.parametrize("dump_format", ["custom", "plain"])
def test_dump_and_restore_keep_definitions_and_certificates(cluster, fresh_db, listener,
                                                            tmp_path, dump_format):
    db = fresh_db
    db.execute("CREATE EXTENSION outbound_msg")
    db.execute("CREATE TABLE acct (id int PRIMARY KEY, v text, amount int)")
    db.execute("SELECT outbound_msg.create_message('acct', 'Acct', 'Acct', %s, "
               "ARRAY['v', 'amount'], 'postgres', criteria => 'amount > 10')", (listener.url,))
    cert, key = Authority("dump").issue("erp", client=True)
    db.execute("SELECT outbound_msg.import_client_certificate('erp', %s, %s)", (cert, key))
    db.execute("INSERT INTO acct VALUES (1, 'sent by the original', 50)")
    wait_for(lambda: listener.notifications(), what="the original's delivery")
    # Queued, not delivered, when the dump is taken: the copy must not send it again.
    db.execute("ALTER SYSTEM SET outbound_msg.pause_delivery = on")
    db.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: db.execute("SELECT current_setting('outbound_msg.pause_delivery') = 'on'"
                                    ).fetchone()[0], what="the pause")
        db.execute("INSERT INTO acct VALUES (2, 'queued in the original', 50)")
        dump = tmp_path / "dump"
        pg_tool(cluster, "pg_dump", "-d", "lifecycle", "-f", str(dump),
                "-F", "c" if dump_format == "custom" else "p")
    finally:
        db.execute("ALTER SYSTEM RESET outbound_msg.pause_delivery")
        db.execute("SELECT pg_reload_conf()")

    copy = Cluster(TEST_SETTINGS)
    try:
        with copy.connect() as admin:
            admin.execute("CREATE DATABASE restored")
        if dump_format == "custom":
            pg_tool(copy, "pg_restore", "-d", "restored", "--exit-on-error", str(dump))
        else:
            pg_tool(copy, "psql", "-d", "restored", "-v", "ON_ERROR_STOP=1", "-q",
                    "-f", str(dump))
        with copy.connect(dbname="restored") as restored:
            assert restored.execute(
                "SELECT object::text, unique_name, fields, criteria, send_as::text "
                "FROM outbound_msg.message").fetchall() == \
                [("acct", "Acct", ["amount", "v"], "(amount > 10)", "postgres")]
            assert restored.execute("SELECT name FROM outbound_msg.client_certificates"
                                    ).fetchall() == [("erp",)]
            assert restored.execute("SELECT count(*) FROM outbound_msg.queue").fetchone()[0] == 0
            before = len(listener.notifications())
            restored.execute("INSERT INTO acct VALUES (3, 'captured by the copy', 50), "
                             "(4, 'below the criteria', 5)")
            wait_for(lambda: any(n["fields"]["Id"] == "3" for n in listener.notifications()),
                     what="the restored copy's delivery")
            ids = [n["fields"]["Id"] for n in listener.notifications()[before:]]
            assert "2" not in ids and "4" not in ids
            # A new definition gets an id after the restored ones.
            restored.execute("SELECT outbound_msg.create_message('acct', 'Acct2', 'Acct2', %s, "
                             "ARRAY['v'], 'postgres')", (listener.url,))
    finally:
        copy.stop()
