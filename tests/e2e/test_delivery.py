"""End to end: a real preloaded server, real triggers, the real worker, a real HTTP listener."""

import psycopg
import pytest

from support.cluster import wait_for
from support.listener import Listener, ack, nack


def define(db, table, fields, url, unique_name="Notify"):
    return db.execute(
        "SELECT outbound_msg.create_message(%s, 'Notify', %s, %s, %s, 'postgres')",
        (table, unique_name, url, fields)).fetchone()[0]


def queued(db, message_id):
    return db.execute("SELECT count(*) FROM outbound_msg.queue WHERE message_id = %s",
                      (message_id,)).fetchone()[0]


def test_committed_rows_arrive_and_rolled_back_rows_never_do(db, cluster, listener):
    db.execute("""CREATE TABLE expense (id int PRIMARY KEY, note text, amount numeric(10,2),
                                        paid boolean, spent_at timestamptz, secret text)""")
    message_id = define(db, "expense", ["note", "amount", "paid", "spent_at"], listener.url)

    with cluster.connect() as other:
        with pytest.raises(psycopg.errors.RaiseException):
            with other.transaction():
                other.execute("INSERT INTO expense VALUES (1, 'rolled back', 1, true, now(), 's')")
                other.execute("DO $$ BEGIN RAISE EXCEPTION 'abort'; END $$")
    with db.transaction():
        db.execute("INSERT INTO expense VALUES (10, 'lunch', 12.50, true, "
                   "'2024-02-29 13:34:56.789+01', 'hidden')")
        db.execute("INSERT INTO expense VALUES (11, NULL, 3, false, NULL, 'hidden')")
    db.execute("INSERT INTO expense VALUES (12, %s, 0.10, NULL, NULL, 'hidden')",
               ("<tag> & \"quotes\" 'apostrophes' — café 東京",))
    db.execute("BEGIN")
    db.execute("INSERT INTO expense VALUES (13, 'also rolled back', 1, true, now(), 's')")
    db.execute("ROLLBACK")

    wait_for(lambda: queued(db, message_id) == 0 and len(listener.notifications()) >= 3,
             what="three notifications delivered and the queue empty")

    notifications = listener.notifications()
    by_id = {n["fields"]["Id"]: n for n in notifications}
    assert sorted(by_id) == ["10", "11", "12"]
    assert len(notifications) == 3, "each committed row exactly once"
    assert by_id["10"]["fields"] == {"Id": "10", "amount": "12.50", "note": "lunch",
                                     "paid": "true", "spent_at": "2024-02-29T12:34:56.789Z"}
    assert by_id["10"]["field_order"] == ["Id", "amount", "note", "paid", "spent_at"]
    assert by_id["11"]["fields"] == {"Id": "11", "amount": "3.00", "paid": "false"}
    assert by_id["12"]["fields"]["note"] == "<tag> & \"quotes\" 'apostrophes' — café 東京"
    assert all(n["type"] == "sf:expense" for n in notifications)
    assert all("hidden" not in r["body"].decode() for r in listener.requests)

    request = listener.requests[0]
    assert request["headers"]["content-type"] == "text/xml; charset=utf-8"
    assert request["headers"]["soapaction"] == '""'
    message = listener.received()[0]
    assert message["header_order"] == ["OrganizationId", "ActionId", "SessionId",
                                       "EnterpriseUrl", "PartnerUrl"]
    assert len(message["organization_id"]) == 18 and message["organization_id"].isalnum()
    assert len(message["action_id"]) == 18 and message["action_id"].startswith("04k")
    assert message["session_nil"] == "true"
    ids = [n["id"] for n in notifications]
    assert len(set(ids)) == 3 and all(len(i) == 18 for i in ids)


def test_each_change_is_sent_as_it_was_at_that_moment(db, listener):
    db.execute("CREATE TABLE ticket (id bigint PRIMARY KEY, status text)")
    message_id = define(db, "ticket", ["status"], listener.url)
    db.execute("INSERT INTO ticket VALUES (7, 'new')")
    db.execute("UPDATE ticket SET status = 'open' WHERE id = 7")
    db.execute("UPDATE ticket SET status = 'closed' WHERE id = 7")

    wait_for(lambda: queued(db, message_id) == 0 and len(listener.notifications()) >= 3,
             what="three notifications delivered")
    statuses = sorted(n["fields"]["status"] for n in listener.notifications())
    assert statuses == ["closed", "new", "open"]


def test_large_values_are_stored_out_of_line_and_arrive_intact(db, listener):
    # Over a megabyte of hard-to-compress text, and as much that compresses well: the queue
    # row is compressed and moved to TOAST storage, and must come back byte for byte.
    db.execute("CREATE TABLE document (id int PRIMARY KEY, body text, filler text)")
    message_id = define(db, "document", ["body", "filler"], listener.url)
    body = "".join(chr(0x4e00 + (i * 7919) % 20000) + str(i) for i in range(150_000))
    with db.transaction():
        db.execute("INSERT INTO document VALUES (1, %s, repeat('abc', 400000))", (body,))
        # Queued at the end of the statement; the worker cannot see it before the commit.
        stored, full = db.execute(
            "SELECT pg_column_size(payloads), octet_length(payloads::text) "
            "FROM outbound_msg.queue WHERE message_id = %s", (message_id,)).fetchone()
        assert stored < full / 2

    wait_for(lambda: queued(db, message_id) == 0 and listener.notifications(),
             what="the large notification delivered")
    fields = listener.notifications()[0]["fields"]
    assert fields["body"] == body
    assert fields["filler"] == "abc" * 400_000


def test_rows_are_queued_by_the_statement_that_captured_them_not_by_a_later_savepoint(
        db, listener):
    # COPY runs no executor of its own: its rows wait in the backend until commit. A later
    # statement inside a savepoint writes only what that savepoint captured, so rolling the
    # savepoint back cannot take the COPY's notifications with it.
    db.execute("CREATE TABLE parcel (id int PRIMARY KEY, note text)")
    message_id = define(db, "parcel", ["note"], listener.url)
    with db.transaction():
        with db.cursor().copy("COPY parcel FROM STDIN") as copy:
            copy.write_row((1, "copied"))
            copy.write_row((2, "copied"))
        db.execute("INSERT INTO parcel VALUES (3, 'kept')")
        waiting = db.execute(
            "SELECT array_agg(r ORDER BY r) FROM outbound_msg.queue, unnest(record_ids) r "
            "WHERE message_id = %s", (message_id,)).fetchone()[0]
        assert waiting == ["3"], "the INSERT's row is queued when it finishes; the COPY's wait"
        db.execute("SAVEPOINT s")
        db.execute("INSERT INTO parcel VALUES (4, 'rolled back')")
        db.execute("ROLLBACK TO SAVEPOINT s")
        db.execute("UPDATE parcel SET note = 'updated' WHERE id = 3")

    wait_for(lambda: queued(db, message_id) == 0 and len(listener.notifications()) >= 4,
             what="four notifications delivered")
    sent = sorted((n["fields"]["Id"], n["fields"]["note"]) for n in listener.notifications())
    assert sent == [("1", "copied"), ("2", "copied"), ("3", "kept"), ("3", "updated")]


def test_rows_left_waiting_by_copy_go_with_a_table_or_extension_dropped_before_commit(
        db, cluster, listener):
    db.execute("CREATE TABLE crate (id int PRIMARY KEY)")
    message_id = define(db, "crate", [], listener.url)
    with db.transaction():
        with db.cursor().copy("COPY crate FROM STDIN") as copy:
            copy.write_row((1,))
        db.execute("DROP TABLE crate")
    assert queued(db, message_id) == 0, "nothing queued for a message dropped with its table"

    db.execute("CREATE DATABASE copy_then_drop")
    try:
        with cluster.connect(dbname="copy_then_drop") as other:
            other.execute("CREATE EXTENSION outbound_msg")
            other.execute("CREATE TABLE crate (id int PRIMARY KEY)")
            define(other, "crate", [], listener.url)
            with other.transaction():
                with other.cursor().copy("COPY crate FROM STDIN") as copy:
                    copy.write_row((1,))
                other.execute("DROP EXTENSION outbound_msg CASCADE")
            assert other.execute("SELECT count(*) FROM crate").fetchone()[0] == 1, \
                "the transaction committed"
    finally:
        db.execute("DROP DATABASE copy_then_drop WITH (FORCE)")


def test_created_sends_inserts_only(db, listener):
    db.execute("CREATE TABLE signup (id int PRIMARY KEY, email text)")
    message_id = db.execute(
        "SELECT outbound_msg.create_message('signup', 'New signup', 'New_signup', %s, "
        "ARRAY['email'], 'postgres', evaluate => 'created')", (listener.url,)).fetchone()[0]
    db.execute("INSERT INTO signup VALUES (1, 'a@example.com')")
    db.execute("UPDATE signup SET email = 'b@example.com'")
    wait_for(lambda: queued(db, message_id) == 0 and listener.notifications(),
             what="the insert delivered")
    assert [n["fields"]["email"] for n in listener.notifications()] == ["a@example.com"]


def test_a_bulk_insert_is_sent_in_batches_of_at_most_100(db, listener):
    db.execute("CREATE TABLE reading (id int PRIMARY KEY, value float8)")
    message_id = define(db, "reading", ["value"], listener.url)
    db.execute("INSERT INTO reading SELECT g, g / 4.0 FROM generate_series(1, 250) g")

    wait_for(lambda: queued(db, message_id) == 0, what="the queue to drain")
    sizes = [len(m["notifications"]) for m in listener.received()]
    assert max(sizes) <= 100
    assert sum(sizes) == 250
    assert sorted(int(n["fields"]["Id"]) for n in listener.notifications()) == list(range(1, 251))
    assert {n["fields"]["Id"]: n["fields"]["value"] for n in listener.notifications()}["3"] == "0.75"


def test_unacknowledged_notification_stays_queued_and_is_retried_with_the_same_id(db, listener):
    answers = iter([nack])
    listener.respond = lambda request: next(answers, ack)(request)
    db.execute("CREATE TABLE invoice (id int PRIMARY KEY, total int)")
    message_id = define(db, "invoice", ["total"], listener.url)
    db.execute("INSERT INTO invoice VALUES (1, 100)")

    failed = wait_for(lambda: db.execute(
        "SELECT attempts, last_error FROM outbound_msg.queue "
        "WHERE message_id = %s AND last_error IS NOT NULL", (message_id,)).fetchone(),
        what="the nack to be recorded")
    assert failed == (1, "SOAP response was a nack")

    wait_for(lambda: queued(db, message_id) == 0, what="the retry to be acknowledged")
    ids = [n["id"] for n in listener.notifications()]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_a_refused_definition_leaves_nothing_behind(db, listener):
    db.execute("CREATE TABLE refused (id int PRIMARY KEY, a text)")
    with pytest.raises(psycopg.errors.UndefinedColumn, match='column "nope"'):
        define(db, "refused", ["a", "nope"], listener.url)
    assert db.execute("SELECT count(*) FROM outbound_msg.message "
                      "WHERE object = 'refused'::regclass").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pg_trigger "
                      "WHERE tgrelid = 'refused'::regclass").fetchone()[0] == 0


def test_a_failing_listener_does_not_hold_back_another_message(db, listener):
    broken = Listener(lambda request: (500, b"<html>oops</html>"))
    try:
        db.execute("CREATE TABLE order_line (id int PRIMARY KEY, qty int)")
        good_id = define(db, "order_line", ["qty"], listener.url, "Good")
        bad_id = define(db, "order_line", ["qty"], broken.url, "Broken")
        db.execute("INSERT INTO order_line VALUES (1, 5)")
        wait_for(lambda: queued(db, good_id) == 0, what="the good listener's delivery")
        error = wait_for(lambda: db.execute(
            "SELECT last_error FROM outbound_msg.queue WHERE message_id = %s",
            (bad_id,)).fetchone(), what="the failure to be recorded")
        assert error == ("HTTP 500 Internal Server Error",)
        assert [n["fields"]["qty"] for n in listener.notifications()] == ["5"]
    finally:
        broken.stop()
