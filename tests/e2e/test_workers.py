"""End to end: the launcher and its per-database workers. Every database with the extension
is served, CREATE EXTENSION needs no restart, commits wake the worker, dead workers come
back, DROP DATABASE is never blocked, and a standby sends nothing until it is promoted."""

import os
import signal
import time

import psycopg
import pytest

from support.cluster import Cluster, cpu_seconds, wait_for, worker_pid, worker_state
from support.listener import ACK, Listener


def workers(db):
    """(pid, database) of every outbound_msg worker, from pg_stat_activity."""
    return db.execute("SELECT pid, datname FROM pg_stat_activity "
                      "WHERE backend_type = 'outbound_msg worker' ORDER BY datname").fetchall()


def launcher_pid(db):
    row = db.execute("SELECT pid FROM pg_stat_activity "
                     "WHERE backend_type = 'outbound_msg launcher'").fetchone()
    return row and row[0]


def serve(db, url, table="w"):
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    db.execute("SELECT outbound_msg.create_message(%s, 'W', 'W', %s, ARRAY['v'], 'postgres')",
               (table, url))


@pytest.fixture
def database(cluster):
    """A new database with the extension installed (no server restart)."""
    names = []

    def create(name):
        with cluster.connect() as db:
            db.execute(f"DROP DATABASE IF EXISTS {name}")
            db.execute(f"CREATE DATABASE {name}")
        names.append(name)
        conn = cluster.connect(dbname=name)
        conn.execute("CREATE EXTENSION outbound_msg")
        return conn

    yield create
    with cluster.connect() as db:
        for name in names:
            db.execute(f"DROP DATABASE IF EXISTS {name}")


def test_two_databases_are_served_at_once_without_a_restart(cluster, db, database):
    first, second = Listener(), Listener()
    try:
        one, two = database("served_one"), database("served_two")
        serve(one, first.url)
        serve(two, second.url)
        with one.transaction(), two.transaction():
            one.execute("INSERT INTO w VALUES (1, 'from one')")
            two.execute("INSERT INTO w VALUES (2, 'from two')")
        wait_for(lambda: first.notifications() and second.notifications(), what="both deliveries")
        assert [n["fields"]["v"] for n in first.notifications()] == ["from one"]
        assert [n["fields"]["v"] for n in second.notifications()] == ["from two"]
        one.close()
        two.close()
    finally:
        first.stop()
        second.stop()


def test_a_commit_wakes_the_worker_at_once(db, listener):
    serve(db, listener.url, "woken")
    try:
        # The worker's timed look at the queue is 10 s apart; the commit wakes it at once.
        for key in range(1, 4):
            db.execute("INSERT INTO woken VALUES (%s, 'x')", (key,))
            wait_for(lambda: len(listener.notifications()) == key, timeout=5,
                     what=f"delivery {key} within 5 s of its commit")
    finally:
        db.execute("DROP TABLE woken")


def test_an_idle_worker_sleeps(db, listener):
    # Regression: an empty queue once looked due now (greatest(0, NULL) is 0) and the worker
    # spun through claims on a whole core. Idle, it must wait for a commit or its timed look.
    serve(db, listener.url, "sleepy")
    try:
        db.execute("INSERT INTO sleepy VALUES (1, 'x')")
        # Its own notification: another test's group may still wait for a retry meanwhile.
        wait_for(lambda: len(listener.notifications()) == 1, what="the notification delivered")
        wait_for(lambda: db.execute(
            "SELECT count(*) = 0 FROM outbound_msg.queue q JOIN outbound_msg.message m "
            "ON m.id = q.message_id WHERE m.object = 'sleepy'::regclass").fetchone()[0],
            what="its group acknowledged")
        wait_for(lambda: worker_state(db) == "idle", what="the worker to be idle")
        pid = worker_pid(db)
        before = cpu_seconds(pid)
        time.sleep(2)
        # A spinning worker uses about 2 s of CPU here; a sleeping one next to none.
        assert cpu_seconds(pid) - before < 0.5
    finally:
        db.execute("DROP TABLE sleepy")


def test_drop_database_is_not_blocked_by_its_worker(cluster, db, database):
    listener = Listener()
    try:
        doomed = database("doomed")
        serve(doomed, listener.url)
        doomed.execute("INSERT INTO w VALUES (1, 'x')")
        wait_for(lambda: listener.notifications(), what="a delivery")
        assert "doomed" in {name for _, name in workers(db)}
        doomed.close()
        db.execute("DROP DATABASE doomed")
        assert "doomed" not in {name for _, name in workers(db)}
        # A failed DROP DATABASE (a session is connected) leaves the database served.
        kept = database("kept")
        serve(kept, listener.url)
        with pytest.raises(psycopg.errors.ObjectInUse):
            db.execute("DROP DATABASE kept")
        kept.execute("INSERT INTO w VALUES (2, 'y')")
        wait_for(lambda: len(listener.notifications()) == 2, what="delivery after a failed DROP")
        kept.close()
    finally:
        listener.stop()


def test_a_terminated_worker_and_launcher_come_back(db, listener):
    serve(db, listener.url, "revived")
    try:
        db.execute("INSERT INTO revived VALUES (1, 'x')")
        wait_for(lambda: listener.notifications(), what="a first delivery")
        [old_worker] = [pid for pid, name in workers(db) if name == "postgres"]
        old_launcher = launcher_pid(db)
        db.execute("SELECT pg_terminate_backend(%s)", (old_launcher,))
        db.execute("SELECT pg_terminate_backend(%s)", (old_worker,))
        wait_for(lambda: launcher_pid(db) not in (None, old_launcher), timeout=30,
                 what="a new launcher")
        db.execute("INSERT INTO revived VALUES (2, 'y')")
        wait_for(lambda: len(listener.notifications()) == 2, timeout=30,
                 what="delivery by a new worker")
        assert [pid for pid, name in workers(db) if name == "postgres"] != [old_worker]
    finally:
        db.execute("DROP TABLE revived")


def test_a_standby_sends_nothing_until_promoted(cluster, db, listener):
    dead = Listener()
    dead_url = dead.url
    dead.stop()  # nothing listens there: the notification stays queued on the primary
    serve(db, dead_url, "replicated")
    db.execute("INSERT INTO replicated VALUES (1, 'queued before the base backup')")
    wait_for(lambda: db.execute("SELECT attempts > 0 FROM outbound_msg.queue n "
                                "JOIN outbound_msg.message m ON m.id = n.message_id "
                                "WHERE m.object = 'replicated'::regclass").fetchone(),
             what="a failed attempt on the primary")
    standby = Cluster(standby_of=cluster)
    try:
        with standby.connect() as replica:
            assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert launcher_pid(replica) is None and workers(replica) == []
            replica.execute("SELECT pg_promote()")
            wait_for(lambda: launcher_pid(replica), what="the promoted server's launcher")
            replica.execute("SELECT outbound_msg.alter_message('replicated', 'W', "
                            "endpoint_url => %s)", (listener.url,))
            wait_for(lambda: listener.notifications(), what="delivery by the promoted server")
            [received] = listener.notifications()
            assert received["fields"]["v"] == "queued before the base backup"
    finally:
        standby.stop()
        db.execute("DROP TABLE replicated")


def queue_of(db, table):
    """(state, attempts) of each queue row of `table`'s messages, oldest first."""
    return db.execute("SELECT q.state, q.attempts FROM outbound_msg.queue q "
                      "JOIN outbound_msg.message m ON m.id = q.message_id "
                      "WHERE m.object = %s::regclass ORDER BY q.id", (table,)).fetchall()


def pause(db, reload_with):
    """Pauses delivery and waits until the worker shows it."""
    reload_with(pause_delivery="on")
    wait_for(lambda: worker_state(db) == "paused", what="the worker to show it is paused")


def index_entries_for(db, ctid):
    """How many entries of the queue's index point at the queue row `ctid` (pageinspect)."""
    db.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    return db.execute("SELECT count(*) FROM generate_series(1, pg_relation_size("
                      "'outbound_msg.queue_due') / current_setting('block_size')::int - 1) b, "
                      "bt_page_items('outbound_msg.queue_due', b::int) i "
                      "WHERE i.htid = %s::tid", (ctid,)).fetchone()[0]


def test_new_groups_wait_outside_the_index_and_show_as_queued(db, listener, reload_with):
    serve(db, listener.url, "fresh")
    try:
        pause(db, reload_with)
        db.execute("INSERT INTO fresh VALUES (1, 'x')")
        assert queue_of(db, "fresh") == [("new", 0)]
        # Not in the due index (its predicate leaves new groups out), yet listed as queued.
        assert db.execute("SELECT state FROM outbound_msg.delivery_status "
                          "WHERE table_name = 'fresh'::regclass").fetchall() == [("queued",)]
        [(ctid,)] = db.execute("SELECT q.ctid::text FROM outbound_msg.queue q "
                               "JOIN outbound_msg.message m ON m.id = q.message_id "
                               "WHERE m.object = 'fresh'::regclass").fetchall()
        assert index_entries_for(db, ctid) == 0
        # The same row moved into the index (a claim found its message busy) is in it.
        db.execute("UPDATE outbound_msg.queue SET state = 'queued' WHERE ctid = %s::tid",
                   (ctid,))
        [(moved,)] = db.execute("SELECT q.ctid::text FROM outbound_msg.queue q "
                                "JOIN outbound_msg.message m ON m.id = q.message_id "
                                "WHERE m.object = 'fresh'::regclass").fetchall()
        assert index_entries_for(db, moved) == 1  # and is claimed from there once resumed
        reload_with(pause_delivery="off")
        db.execute("INSERT INTO fresh VALUES (2, 'y')")  # wakes the worker
        wait_for(lambda: len(listener.notifications()) == 2, what="both deliveries")
        wait_for(lambda: queue_of(db, "fresh") == [], what="both acknowledged")
    finally:
        db.execute("DROP TABLE fresh")


def test_more_groups_at_one_commit_than_shared_memory_lists_are_all_sent(db, listener):
    # Each statement queues a group of its own: 2,500 groups at one commit, more than the
    # 2,048 a worker's shared memory lists. The rest are found by a sweep of the queue.
    serve(db, listener.url, "many")
    try:
        with db.transaction():
            for i in range(2500):
                db.execute("INSERT INTO many VALUES (%s, 'x')", (i,))
        wait_for(lambda: len(listener.notifications()) == 2500, timeout=60,
                 what="2,500 deliveries")
        assert sorted(int(n["fields"]["Id"]) for n in listener.notifications()) == \
            list(range(2500))
        wait_for(lambda: queue_of(db, "many") == [], what="an empty queue")
    finally:
        db.execute("DROP TABLE many")


def test_a_new_worker_finds_groups_committed_while_none_ran(db, listener, reload_with):
    serve(db, listener.url, "orphaned")
    try:
        pause(db, reload_with)
        db.execute("INSERT INTO orphaned VALUES (1, 'x')")
        old_worker = worker_pid(db)
        db.execute("SELECT pg_terminate_backend(%s)", (old_worker,))
        wait_for(lambda: worker_pid(db) not in (None, old_worker), timeout=30,
                 what="a new worker")
        db.execute("INSERT INTO orphaned VALUES (2, 'y')")
        reload_with(pause_delivery="off")
        # Nothing commits now: the new worker finds both groups by itself.
        wait_for(lambda: len(listener.notifications()) == 2, timeout=30,
                 what="delivery by the new worker")
    finally:
        db.execute("DROP TABLE orphaned")


def test_a_new_group_locked_by_another_transaction_is_sent_once_released(cluster, db,
                                                                         listener, reload_with):
    serve(db, listener.url, "held")
    try:
        pause(db, reload_with)
        db.execute("INSERT INTO held VALUES (1, 'x')")
        with cluster.connect() as other:
            other.execute("BEGIN")
            assert other.execute("SELECT q.state FROM outbound_msg.queue q JOIN "
                                 "outbound_msg.message m ON m.id = q.message_id "
                                 "WHERE m.object = 'held'::regclass FOR UPDATE"
                                 ).fetchall() == [("new",)]
            reload_with(pause_delivery="off")
            wait_for(lambda: worker_state(db) != "paused", what="the worker to resume")
            time.sleep(0.5)
            # The worker could not take it: it is neither sent nor lost.
            assert listener.notifications() == []
            assert queue_of(db, "held") == [("new", 0)]
            other.execute("COMMIT")
        wait_for(lambda: len(listener.notifications()) == 1, what="delivery once released")
    finally:
        db.execute("DROP TABLE held")


def test_a_prepared_transaction_is_sent_once_committed_elsewhere():
    listener = Listener()
    prepared = Cluster({"max_prepared_transactions": "2"})
    try:
        with prepared.connect() as db:
            db.execute("CREATE EXTENSION outbound_msg")
            serve(db, listener.url, "two_phase")
            db.execute("BEGIN")
            db.execute("INSERT INTO two_phase VALUES (1, 'x')")
            db.execute("PREPARE TRANSACTION 'outbound_msg_test'")
            db.execute("INSERT INTO two_phase VALUES (2, 'y')")
            wait_for(lambda: len(listener.notifications()) == 1, what="the plain commit")
            time.sleep(0.5)
            assert len(listener.notifications()) == 1
        with prepared.connect() as other:
            other.execute("COMMIT PREPARED 'outbound_msg_test'")
            wait_for(lambda: len(listener.notifications()) == 2, timeout=30,
                     what="the prepared transaction's delivery")
            assert sorted(n["fields"]["v"] for n in listener.notifications()) == ["x", "y"]
    finally:
        prepared.stop()
        listener.stop()


def test_new_groups_moved_by_vacuum_full_before_the_worker_took_them_are_sent(db, listener,
                                                                              reload_with):
    # The worker knows new groups by address; VACUUM FULL moves every row of the queue.
    serve(db, listener.url, "moved")
    serve(db, listener.url, "filler")
    try:
        db.execute("INSERT INTO moved VALUES (0, 'first')")  # the worker has claimed since
        wait_for(lambda: len(listener.notifications()) == 1, what="a first delivery")
        pause(db, reload_with)
        for i in range(20):  # twenty groups ahead of the others, deleted below
            db.execute("INSERT INTO filler VALUES (%s, 'gone')", (i,))
        db.execute("INSERT INTO moved SELECT g, 'x' FROM generate_series(1, 3) g")
        db.execute("INSERT INTO moved VALUES (4, 'y')")
        db.execute("INSERT INTO moved VALUES (5, 'z')")
        db.execute("DROP TABLE filler")  # takes its queued groups with it

        def addresses():
            return db.execute("SELECT array_agg(ctid::text ORDER BY id) "
                              "FROM outbound_msg.queue").fetchone()[0]

        before = addresses()
        db.execute("VACUUM FULL outbound_msg.queue")
        assert addresses() != before, "VACUUM FULL moved them"
        reload_with(pause_delivery="off")
        wait_for(lambda: len(listener.notifications()) == 6, what="every notification")
        assert sorted(n["fields"]["v"] for n in listener.notifications()) == \
            ["first", "x", "x", "x", "y", "z"]
    finally:
        db.execute("DROP TABLE IF EXISTS moved, filler")


def test_more_databases_than_workers_are_all_served_in_turn(cluster, db, database, reload_with):
    """Twenty databases at max_workers 4 (and the default max_worker_processes 8): each
    delivers; workers leave when idle and others wait."""
    listeners = [Listener() for _ in range(20)]
    connections = []
    try:
        for n, listener in enumerate(listeners):
            conn = database(f"turns_{n}")
            serve(conn, listener.url)
            connections.append(conn)
        for conn in connections:
            conn.execute("INSERT INTO w VALUES (1, 'x')")
        serving = []

        def delivered(listener):
            serving.append(db.execute("SELECT count(*) FROM outbound_msg.workers "
                                      "WHERE state = 'serving'").fetchone()[0])
            return listener.notifications()

        for n, listener in enumerate(listeners):
            wait_for(lambda: delivered(listener), timeout=60, what=f"delivery in turns_{n}")
        assert max(serving) <= 4, "never more than max_workers serving at once"
    finally:
        for conn in connections:
            conn.close()
        for listener in listeners:
            listener.stop()


def test_a_worker_with_retries_pending_keeps_its_place_while_places_are_free(database):
    """At the default max_workers (4), a database waiting for its worker does not make an idle
    worker of another database leave: there is room for both. (They took turns before: the
    worker with retries pending left, and a new database's worker could be gone again before
    anyone saw it.)"""
    retrying = database("keeps_retrying")
    quiet = None
    try:
        serve(retrying, "http://127.0.0.1:9/")
        retrying.execute("INSERT INTO w VALUES (1, 'x')")

        def attempts():
            return retrying.execute("SELECT coalesce(sum(attempts), 0) FROM outbound_msg.queue"
                                    ).fetchone()[0]

        wait_for(lambda: attempts() >= 1, what="a first failed attempt")
        retrying_worker = wait_for(lambda: worker_pid(retrying), what="the retrying worker")
        quiet = database("keeps_quiet")
        quiet_worker = wait_for(lambda: worker_pid(quiet), what="a worker for the new database")
        # Its replacement waits out the launcher's restart pause (2 s): the retrying worker
        # looks at least once meanwhile.
        os.kill(quiet_worker, signal.SIGTERM)
        wait_for(lambda: worker_pid(quiet) not in (None, quiet_worker),
                 what="the replaced worker of the new database")
        seen = attempts()
        wait_for(lambda: attempts() >= seen + 2, what="two more retries")
        assert worker_pid(retrying) == retrying_worker, "the retrying database kept its worker"
    finally:
        retrying.close()
        if quiet:
            quiet.close()


def test_a_database_waiting_for_a_worker_is_visible(cluster, db, database, reload_with):
    reload_with(max_workers="1")
    busy_listener = Listener(lambda _request: (time.sleep(1.5), (200, ACK))[1])
    waiting_listener = Listener()
    try:
        busy, waiting = database("turn_busy"), database("turn_waiting")
        serve(busy, busy_listener.url)
        serve(waiting, waiting_listener.url)
        # Only one worker runs: the postgres database's leaves, idle, when others wait.
        busy.execute("INSERT INTO w SELECT g, 'b' FROM generate_series(1, 5) g")
        wait_for(lambda: busy_listener.requests, what="the busy database served")
        waiting.execute("INSERT INTO w VALUES (1, 'w')")
        row = wait_for(lambda: db.execute(
            "SELECT state, waiting_since IS NOT NULL FROM outbound_msg.workers "
            "WHERE database = 'turn_waiting' AND state = 'waiting'").fetchone(),
            what="the waiting database shown")
        assert row == ("waiting", True)
        wait_for(lambda: waiting_listener.notifications(), timeout=60,
                 what="the waiting database served once the busy one is idle")
        assert len(busy_listener.notifications()) == 5
    finally:
        busy_listener.stop()
        waiting_listener.stop()


def test_a_database_dropped_while_waiting_for_a_worker_leaves_no_trace(cluster, db, database,
                                                                      reload_with):
    """A database that waited for a place when it was dropped does not stay in
    outbound_msg.workers (nor hold one of the 64 slots) for good."""
    reload_with(max_workers="1", batch_size="1")  # the busy database stays busy for seconds
    busy_listener = Listener(lambda _request: (time.sleep(1.5), (200, ACK))[1])
    busy, waiting = database("drop_busy"), database("drop_waiting")
    try:
        serve(busy, busy_listener.url)
        serve(waiting, "http://127.0.0.1:9/")
        busy.execute("INSERT INTO w SELECT g, 'b' FROM generate_series(1, 20) g")
        wait_for(lambda: busy_listener.requests, what="the busy database served")
        waiting.execute("INSERT INTO w VALUES (1, 'w')")
        wait_for(lambda: db.execute("SELECT 1 FROM outbound_msg.workers "
                                    "WHERE database = 'drop_waiting' AND state = 'waiting'"
                                    ).fetchone(), what="the waiting database shown")
        waiting.close()
        db.execute("DROP DATABASE drop_waiting")
        assert db.execute("SELECT state FROM outbound_msg.workers WHERE database IS NULL"
                          ).fetchall() == [], "no slot left for the dropped database"
        wait_for(lambda: len(busy_listener.notifications()) == 20,
                 what="the busy database's twenty")
    finally:
        busy.close()
        busy_listener.stop()


def test_a_renamed_database_is_served_again_without_a_new_commit(cluster, db, database):
    """ALTER DATABASE ... RENAME stops the database's worker (it needs the database free of
    connections); afterwards a worker serves the database again, so its queued retries are
    delivered though nothing new is committed."""
    answers = {"ok": False}
    listener = Listener(lambda r: (200, ACK) if answers["ok"] else (500, b"<fault/>"))
    conn = database("to_rename")
    try:
        serve(conn, listener.url)
        conn.execute("INSERT INTO w VALUES (1, 'x')")
        wait_for(lambda: listener.requests, what="a first, failed attempt")
        conn.close()
        db.execute("DROP DATABASE IF EXISTS renamed_db")
        db.execute("ALTER DATABASE to_rename RENAME TO renamed_db")
        answers["ok"] = True
        failed = len(listener.requests)
        wait_for(lambda: len(listener.requests) > failed, what="the retry after the rename")
        with cluster.connect(dbname="renamed_db") as renamed:
            wait_for(lambda: renamed.execute("SELECT count(*) = 0 FROM outbound_msg.queue"
                                             ).fetchone()[0], what="the acknowledgement")
    finally:
        conn.close()
        listener.stop()
        db.execute("DROP DATABASE IF EXISTS renamed_db")


def test_an_idle_worker_leaves_and_the_next_commit_brings_one_back(database, listener,
                                                                 reload_with):
    reload_with(worker_idle_timeout="1s")
    db = database("idle_leaves")
    serve(db, listener.url)
    db.execute("INSERT INTO w VALUES (1, 'a')")
    wait_for(lambda: listener.notifications(), what="a delivery")
    wait_for(lambda: worker_pid(db) is None, what="the idle worker to leave")
    db.execute("INSERT INTO w VALUES (2, 'b')")
    wait_for(lambda: len(listener.notifications()) == 2, what="a new worker's delivery")
    db.close()
