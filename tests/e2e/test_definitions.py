"""End to end: the SQL API of definitions. Every validation rule has a case here with its
SQLSTATE, and every refused call is shown to leave nothing behind."""

import psycopg
import pytest

from support.cluster import wait_for
from support.roles import drop_roles


def create(db, **overrides):
    """create_message with sensible defaults; `overrides` replace or add named arguments."""
    args = {"object": "acct", "name": "Acct", "unique_name": "Acct",
            "endpoint_url": "http://127.0.0.1:9/x", "fields": ["name"], "send_as": "postgres"}
    args.update(overrides)
    casts = {"object": "::regclass", "send_as": "::regrole", "fields": "::text[]"}
    named = ", ".join(f"{key} => %({key})s{casts.get(key, '')}" for key in args)
    return db.execute(f"SELECT outbound_msg.create_message({named})", args).fetchone()[0]


def messages_on(db, table):
    return db.execute("SELECT count(*) FROM outbound_msg.message m JOIN pg_class c "
                      "ON c.oid = m.object WHERE c.relname = %s", (table,)).fetchone()[0]


def triggers_on(db, table):
    return db.execute("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                      "WHERE c.relname = %s AND NOT t.tgisinternal", (table,)).fetchone()[0]


@pytest.fixture
def acct(db):
    db.execute("DROP TABLE IF EXISTS acct CASCADE")
    db.execute("CREATE TABLE acct (id int PRIMARY KEY, name text, amount numeric, "
               "status text, \"my col\" text, \"Id\" text)")
    yield "acct"
    db.execute("DROP TABLE IF EXISTS acct CASCADE")


REFUSED = [
    # (case, overrides, SQLSTATE, message fragment)
    ("name empty", {"name": ""}, "22023", 'name "" is invalid: it is empty'),
    ("name too long", {"name": "n" * 81}, "22023", "it is longer than 80 characters"),
    ("unique name empty", {"unique_name": ""}, "22023", "it is empty"),
    ("unique name too long", {"unique_name": "u" * 81}, "22023", "longer than 80"),
    ("unique name with space", {"unique_name": "a b"}, "22023", "it contains a space"),
    ("unique name with dash", {"unique_name": "a-b"}, "22023", "only ASCII letters, digits"),
    ("unique name not ASCII", {"unique_name": "café"}, "22023", "only ASCII letters, digits"),
    ("unique name starts with digit", {"unique_name": "1a"}, "22023", "must begin with a letter"),
    ("unique name starts with underscore", {"unique_name": "_a"}, "22023",
     "must begin with a letter"),
    ("unique name ends with underscore", {"unique_name": "a_"}, "22023",
     "must not end with an underscore"),
    ("unique name double underscore", {"unique_name": "a__b"}, "22023",
     "two consecutive underscores"),
    ("endpoint not http", {"endpoint_url": "ftp://example.com/"}, "22023",
     "scheme must be http or https"),
    ("endpoint relative", {"endpoint_url": "/soap"}, "22023", "absolute http or https URL"),
    ("endpoint without host", {"endpoint_url": "http://"}, "22023", "is invalid"),
    ("endpoint with space", {"endpoint_url": "http://a b/"}, "22023", "white space"),
    ("endpoint bad port", {"endpoint_url": "http://a:70000/"}, "22023", "port"),
    ("unknown role", {"send_as": "no_such_role"}, "42704", "no_such_role"),
    ("unknown field", {"fields": ["name", "nope"]}, "42703", 'column "nope" of table public.acct'),
    ("duplicate field", {"fields": ["name", "name"]}, "42701", "listed more than once"),
    ("system column", {"fields": ["ctid"]}, "22023", 'column "ctid" is a system column'),
    ("field not an XML name", {"fields": ["my col"]}, "22023", "XML name"),
    ("field named Id", {"fields": ["Id"]}, "22023", 'sObject already has a field "Id"'),
    ("unknown evaluate", {"evaluate": "sometimes"}, "22023",
     'invalid value for evaluate: "sometimes"'),
    ("edited_to_meet_criteria without criteria", {"evaluate": "edited_to_meet_criteria"},
     "22023", "needs criteria"),
    ("criteria empty", {"criteria": " "}, "22023", "criteria must not be empty"),
    ("criteria syntax", {"criteria": "amount >"}, "42601", "syntax error"),
    ("criteria unknown column", {"criteria": "nope > 1"}, "42703", "nope"),
    ("criteria not boolean", {"criteria": "amount + 1"}, "22023", "must be of type boolean"),
    ("criteria subquery", {"criteria": "amount > (SELECT 1)"}, "22023",
     "subqueries are not allowed"),
    ("criteria volatile", {"criteria": "random() > 0.5"}, "22023",
     "volatile functions are not allowed"),
    ("criteria aggregate", {"criteria": "count(*) > 1"}, "22023", "aggregate"),
    ("criteria set operation", {"criteria": "true) UNION SELECT (true"}, "22023",
     "single expression"),
    ("criteria second statement", {"criteria": "true; DROP TABLE acct"}, "42601", "syntax"),
    ("criteria comment escape", {"criteria": "true) FROM pg_authid --"}, "42601", "syntax"),
    ("unknown client certificate", {"client_certificate": "cert"}, "42704",
     'client certificate "cert" does not exist'),
]


@pytest.mark.parametrize("case,overrides,sqlstate,fragment", REFUSED,
                         ids=[case[0] for case in REFUSED])
def test_each_invalid_setting_is_refused_and_leaves_nothing(db, acct, case, overrides, sqlstate,
                                                            fragment):
    with pytest.raises(psycopg.Error) as refused:
        create(db, **overrides)
    assert refused.value.sqlstate == sqlstate, refused.value
    assert fragment in str(refused.value)
    assert messages_on(db, "acct") == 0
    assert triggers_on(db, "acct") == 0


@pytest.mark.parametrize("ddl,relation,sqlstate,fragment", [
    ("CREATE TABLE target (a int, b text)", "target", "42P16", "has no primary key"),
    ("CREATE TABLE target (a int, b text, PRIMARY KEY (a, b))", "target", "0A000",
     "composite primary key"),
    ("CREATE VIEW target AS SELECT 1 AS a", "target", "42809", "is not a table"),
    ("CREATE SEQUENCE target", "target", "42809", "is not a table"),
    ("CREATE TEMP TABLE target (a int PRIMARY KEY)", "target", "42809", "is a temporary table"),
    ('CREATE TABLE "target x" (a int PRIMARY KEY)', '"target x"', "22023",
     "cannot be an sObject type"),
    ('CREATE TABLE "sObject" (a int PRIMARY KEY)', '"sObject"', "22023", "base type"),
])
def test_only_permanent_tables_with_a_single_column_key_can_have_messages(
        db, ddl, relation, sqlstate, fragment):
    with db.transaction(force_rollback=True):
        db.execute(ddl)
        with pytest.raises(psycopg.Error) as refused:
            with db.transaction():
                create(db, object=relation, fields=[])
        assert refused.value.sqlstate == sqlstate, refused.value
        assert fragment in str(refused.value)
        assert db.execute("SELECT count(*) FROM outbound_msg.message").fetchone()[0] == 0


def test_unknown_table_is_42P01(db):
    with pytest.raises(psycopg.errors.UndefinedTable):
        create(db, object="no_such_table")


def test_unique_names_are_unique_per_table_only(db, acct):
    create(db, unique_name="Sync")
    with pytest.raises(psycopg.errors.DuplicateObject, match='"Sync" already exists on table public.acct'):
        create(db, unique_name="Sync")
    db.execute("DROP TABLE IF EXISTS other_acct")
    db.execute("CREATE TABLE other_acct (id int PRIMARY KEY, name text)")
    try:
        create(db, object="other_acct", unique_name="Sync")
        assert messages_on(db, "other_acct") == 1
    finally:
        db.execute("DROP TABLE other_acct")
    assert messages_on(db, "acct") == 1


def test_key_alone_and_every_evaluate_mode_are_accepted(db, acct):
    create(db, unique_name="Key_only", fields=[])
    create(db, unique_name="Created", evaluate="created")
    create(db, unique_name="Edited", evaluate="created_or_edited", criteria="amount > 0")
    create(db, unique_name="Meets", evaluate="edited_to_meet_criteria",
           criteria="status = 'won' AND acct.amount IS NOT NULL AND now() > '2000-01-01'")
    rows = db.execute("SELECT unique_name, fields, evaluate, criteria, active, protected, "
                      "created_by FROM outbound_msg.messages WHERE table_name = 'acct'::regclass "
                      "ORDER BY unique_name").fetchall()
    assert [r[0] for r in rows] == ["Created", "Edited", "Key_only", "Meets"]
    assert rows[2][1] == []
    assert all(r[4] is True and r[5] is False and r[6] == "postgres" for r in rows)


def test_alter_message_checks_like_create_and_changes_nothing_when_refused(db, acct):
    create(db, unique_name="Alterable")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="absolute http or https URL"):
        db.execute("SELECT outbound_msg.alter_message('acct', 'Alterable', "
                   "endpoint_url => 'mailto:x@example.com')")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        db.execute("SELECT outbound_msg.alter_message('acct', 'Alterable', fields => ARRAY['x'])")
    create(db, unique_name="Taken")
    with pytest.raises(psycopg.errors.DuplicateObject):
        db.execute("SELECT outbound_msg.alter_message('acct', 'Alterable', "
                   "new_unique_name => 'Taken')")
    assert db.execute("SELECT endpoint_url, fields FROM outbound_msg.message "
                      "WHERE unique_name = 'Alterable'").fetchone() == ("http://127.0.0.1:9/x",
                                                                         ["name"])
    db.execute("SELECT outbound_msg.alter_message('acct', 'Alterable', new_unique_name => 'Renamed',"
               " endpoint_url => 'https://erp.example/soap', description => 'to ERP')")
    assert db.execute("SELECT endpoint_url, description FROM outbound_msg.message "
                      "WHERE unique_name = 'Renamed'").fetchone() == ("https://erp.example/soap",
                                                                      "to ERP")


@pytest.mark.parametrize("call", [
    "alter_message('acct', 'Missing', name => 'x')",
    "drop_message('acct', 'Missing')",
    "enable_message('acct', 'Missing')",
    "disable_message('acct', 'Missing')",
    "send('acct', 'Missing', '1')",
    "wsdl('acct', 'Missing')",
])
def test_unknown_message_is_42704(db, acct, call):
    with pytest.raises(psycopg.errors.UndefinedObject, match='"Missing" does not exist on table public.acct'):
        db.execute(f"SELECT outbound_msg.{call}")


def test_disabled_message_captures_nothing_until_enabled(db, acct):
    message_id = create(db, unique_name="Toggle")
    db.execute("SELECT outbound_msg.disable_message('acct', 'Toggle')")
    with db.transaction():
        db.execute("INSERT INTO acct (id, name) VALUES (1, 'off')")
        assert db.execute("SELECT count(*) FROM outbound_msg.queue WHERE message_id = %s",
                          (message_id,)).fetchone()[0] == 0
        db.execute("SELECT outbound_msg.enable_message('acct', 'Toggle')")
        db.execute("INSERT INTO acct (id, name) VALUES (2, 'on')")
        assert db.execute("SELECT record_ids FROM outbound_msg.queue "
                          "WHERE message_id = %s", (message_id,)).fetchall() == [(["2"],)]
        db.execute("DELETE FROM outbound_msg.queue WHERE message_id = %s", (message_id,))


def test_send_on_an_inactive_message_or_an_unknown_key_is_refused(db, acct):
    create(db, unique_name="Manual", active=False)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="inactive"):
        db.execute("SELECT outbound_msg.send('acct', 'Manual', '1')")
    db.execute("SELECT outbound_msg.enable_message('acct', 'Manual')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='no row with key "99"'):
        db.execute("SELECT outbound_msg.send('acct', 'Manual', '99')")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        db.execute("SELECT outbound_msg.send('acct', 'Manual', 'not a number')")


def test_send_delivers_the_row_as_it_is_now(db, listener):
    db.execute("CREATE TABLE approval (id text PRIMARY KEY, state text)")
    db.execute("INSERT INTO approval VALUES ('A-1', 'approved')")
    create(db, object="approval", unique_name="Approved", fields=["state"],
           endpoint_url=listener.url, evaluate="created")
    notification_id = db.execute(
        "SELECT outbound_msg.send('approval', 'Approved', 'A-1')").fetchone()[0]
    wait_for(lambda: listener.notifications(), what="the sent notification")
    [received] = listener.notifications()
    assert received["id"] == notification_id
    assert received["fields"] == {"Id": "A-1", "state": "approved"}


# DDL that would break a definition


def test_dropping_or_renaming_a_sent_column_is_refused_naming_the_message(db, acct):
    create(db, unique_name="Guarded", fields=["name", "amount"])
    for ddl in ["ALTER TABLE acct DROP COLUMN amount",
                "ALTER TABLE acct RENAME COLUMN name TO full_name",
                "ALTER TABLE acct DROP CONSTRAINT acct_pkey",
                "ALTER TABLE acct RENAME COLUMN id TO acct_id"]:
        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match='"Guarded"'):
            db.execute(ddl)
    db.execute("ALTER TABLE acct DROP COLUMN status")  # not sent: allowed
    db.execute("ALTER TABLE acct ALTER COLUMN amount TYPE float8")  # still sendable
    assert db.execute("SELECT fields FROM outbound_msg.message "
                      "WHERE unique_name = 'Guarded'").fetchone() == (["amount", "name"],)


def test_dropping_a_table_drops_its_messages_and_their_queue(db, acct):
    message_id = create(db, unique_name="Gone")
    db.execute("INSERT INTO acct (id, name) VALUES (1, 'x')")
    db.execute("DROP TABLE acct")
    assert db.execute("SELECT count(*) FROM outbound_msg.message WHERE id = %s",
                      (message_id,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM outbound_msg.queue WHERE message_id = %s",
                      (message_id,)).fetchone()[0] == 0


def test_drop_extension_is_not_blocked_by_its_event_triggers(cluster):
    with cluster.connect() as db:
        db.execute("DROP DATABASE IF EXISTS dropper")
        db.execute("CREATE DATABASE dropper")
    try:
        with cluster.connect(dbname="dropper") as db:
            db.execute("CREATE EXTENSION outbound_msg")
            db.execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
            create(db, object="t", fields=["a"])
            db.execute("DROP EXTENSION outbound_msg CASCADE")
            assert triggers_on(db, "t") == 0
            db.execute("INSERT INTO t VALUES (1, 'still works')")
            db.execute("ALTER TABLE t DROP COLUMN a")
    finally:
        with cluster.connect() as db:
            db.execute("DROP DATABASE dropper")


# Who may do what


ROLES = ["om_admin", "om_reader", "om_outsider"]


@pytest.fixture
def roles(db, acct):
    """om_admin may call the API and is a member of om_reader, who reads acct's id and name;
    om_outsider has no privileges."""
    drop_roles(db, ROLES)
    for role in ROLES:
        db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute("GRANT om_reader TO om_admin")
    db.execute("GRANT USAGE ON SCHEMA outbound_msg TO om_admin")
    db.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA outbound_msg TO om_admin")
    db.execute("GRANT SELECT (id, name) ON acct TO om_reader")
    yield
    db.execute("DROP TABLE IF EXISTS acct CASCADE")
    drop_roles(db, ROLES)


def test_a_definer_must_be_a_member_of_the_send_as_role(cluster, db, roles):
    with cluster.connect(user="om_admin") as admin:
        create(admin, unique_name="As_reader", send_as="om_reader", fields=["name"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match='must be a member of role "om_outsider"'):
            create(admin, unique_name="As_outsider", send_as="om_outsider", fields=["name"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match='must be a member of role "postgres"'):
            create(admin, unique_name="As_postgres", send_as="postgres")
    assert db.execute("SELECT unique_name, created_by FROM outbound_msg.message "
                      "WHERE object = 'acct'::regclass").fetchall() == [("As_reader", "om_admin")]


def test_the_send_as_role_must_read_every_sent_column(db, roles):
    with pytest.raises(psycopg.errors.InsufficientPrivilege,
                       match=r'role "om_reader" cannot read column\(s\) "amount", "status"'):
        create(db, send_as="om_reader", fields=["name", "amount", "status"])
    assert messages_on(db, "acct") == 0


def test_only_granted_roles_may_call_the_api(cluster, db, roles):
    with cluster.connect(user="om_outsider") as outsider:
        for call in ["create_message('acct', 'N', 'N', 'http://h/', ARRAY['name'], 'om_outsider')",
                     "drop_message('acct', 'N')", "wsdl('acct', 'N')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                outsider.execute(f"SELECT outbound_msg.{call}")
        for table in ["message", "notification", "messages"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                outsider.execute(f"SELECT * FROM outbound_msg.{table}")


def test_a_protected_message_is_changed_by_superusers_only(cluster, db, roles):
    create(db, unique_name="Locked", send_as="om_reader", protected=True)
    with cluster.connect(user="om_admin") as admin:
        for call in ["alter_message('acct', 'Locked', name => 'x')",
                     "disable_message('acct', 'Locked')",
                     "enable_message('acct', 'Locked')",
                     "drop_message('acct', 'Locked')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match='"Locked" is protected'):
                admin.execute(f"SELECT outbound_msg.{call}")
    db.execute("SELECT outbound_msg.alter_message('acct', 'Locked', name => 'Changed')")
    db.execute("SELECT outbound_msg.drop_message('acct', 'Locked')")
    assert messages_on(db, "acct") == 0


def test_send_reads_the_row_as_the_send_as_role(db, roles):
    db.execute("INSERT INTO acct (id, name) VALUES (1, 'visible'), (2, 'hidden')")
    db.execute("ALTER TABLE acct ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY only_one ON acct FOR SELECT TO om_reader USING (id = 1)")
    create(db, unique_name="Reader", send_as="om_reader", fields=["name"])
    db.execute("SELECT outbound_msg.send('acct', 'Reader', '1')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="visible to the send-as role"):
        db.execute("SELECT outbound_msg.send('acct', 'Reader', '2')")


def test_the_view_masks_credentials_in_endpoints(db, acct):
    create(db, unique_name="Secret", endpoint_url="https://svc:s3cr3t@erp.example/soap")
    assert db.execute("SELECT endpoint_url FROM outbound_msg.messages "
                      "WHERE unique_name = 'Secret'").fetchone() == (
        "https://svc:********@erp.example/soap",)
