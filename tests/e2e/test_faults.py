"""End to end, with the fault injected for real: a worker killed with SIGKILL, the server shut
down as by a power cut, a streaming standby promoted over a stopped primary, a bulk commit
during a pgbench load. Each scenario counts at the listener that every committed notification
arrived at least once and none from rolled-back work, and reports the duplicates (at least
once allows them: they are resent with the same Ids).

Small numbers by default; FULL=1 runs them at ten times the size."""

import os
import signal
import subprocess
import time
from collections import Counter

import psycopg
import pytest

from support.cluster import TEST_SETTINGS, Cluster, wait_for, worker_pid
from support.listener import ACK, Listener

SCALE = 10 if os.environ.get("FULL") else 1


class Counting(Listener):
    """A listener that acknowledges after `delay` seconds and counts each record Id."""

    def __init__(self, delay=0.0):
        self.delay = delay
        super().__init__(self.answer)

    def answer(self, _request):
        time.sleep(self.delay)
        return 200, ACK

    def counts(self):
        return Counter(n["fields"]["Id"] for n in self.notifications())


def connect(cluster, dbname="postgres"):
    """A connection to `cluster`, waiting while it recovers from a crash."""
    return wait_for(lambda: try_connect(cluster, dbname), timeout=60, what="the server")


def try_connect(cluster, dbname):
    try:
        return cluster.connect(dbname=dbname)
    except psycopg.OperationalError:
        return None


def gone(db):
    try:
        db.execute("SELECT 1")
        return False
    except psycopg.OperationalError:
        return True


def define(db, url):
    db.execute("CREATE TABLE IF NOT EXISTS f (id int PRIMARY KEY, v text)")
    db.execute("SELECT outbound_msg.create_message('f', 'F', 'F', %s, ARRAY['v'], 'postgres')",
               (url,))


def committed_ids(db):
    return {str(i) for (i,) in db.execute("SELECT id FROM f").fetchall()}


def queue_empty(db):
    return db.execute("SELECT count(*) = 0 FROM outbound_msg.queue").fetchone()[0]


def check_everything_arrived(db, listener, what):
    try:
        wait_for(lambda: queue_empty(db), timeout=180,
                 what=f"{what}: every notification acknowledged")
    except AssertionError:
        print(db.execute("SELECT state, count(*), sum(cardinality(record_ids)), min(last_error) "
                         "FROM outbound_msg.queue GROUP BY 1").fetchall())
        print(db.execute("SELECT * FROM outbound_msg.endpoints").fetchall())
        raise
    counts = listener.counts()
    expected = committed_ids(db)
    missing = expected - set(counts)
    extra = set(counts) - expected
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"{what}: {len(expected)} committed, {len(counts)} arrived, {duplicates} duplicates")
    assert not missing, f"{len(missing)} committed notifications never arrived"
    assert not extra, f"notifications of rolled-back rows arrived: {sorted(extra)[:5]}"


@pytest.fixture
def own_cluster():
    cluster = Cluster(TEST_SETTINGS)
    try:
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION outbound_msg")
        yield cluster
    finally:
        cluster.stop()


def queue_backlog(db, rows, commits=20):
    """`rows` rows in `commits` transactions, and one rolled back (ids above `rows`)."""
    per = rows // commits
    for c in range(commits):
        db.execute("INSERT INTO f SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
                   (c * per + 1, (c + 1) * per))
    with pytest.raises(psycopg.errors.RaiseException):
        with db.transaction():
            db.execute("INSERT INTO f SELECT g, 'rolled back' FROM generate_series(%s::int, %s::int) g",
                       (rows + 1, rows + 100))
            db.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")


def crash_mid_backlog(cluster, what, crash):
    """Queues a backlog, lets deliveries start, calls `crash(db)`, and checks afterwards that
    every committed notification arrived."""
    listener = Counting(delay=0.02)
    try:
        db = cluster.connect()
        define(db, listener.url)
        queue_backlog(db, 2_000 * SCALE)
        wait_for(lambda: len(listener.requests) >= 3, what="deliveries under way")
        crash(db)
        db.close()
        db = connect(cluster)
        check_everything_arrived(db, listener, what)
        db.close()
    finally:
        listener.stop()


def test_a_worker_killed_mid_backlog_loses_nothing(own_cluster):
    def kill_worker(db):
        pid = wait_for(lambda: worker_pid(db), what="the worker")
        os.kill(pid, signal.SIGKILL)  # PostgreSQL restarts every process
        # Until the postmaster has ended every session, a new one may still be of the old
        # server: connect once this one is gone.
        wait_for(lambda: gone(db), what="the crash restart")

    crash_mid_backlog(own_cluster, "SIGKILL", kill_worker)


def test_an_immediate_shutdown_mid_backlog_loses_nothing(own_cluster):
    def power_cut(_db):
        own_cluster.stop_immediate()
        own_cluster.start()

    crash_mid_backlog(own_cluster, "immediate shutdown", power_cut)


def test_a_promoted_standby_delivers_the_backlog_of_a_stopped_primary(own_cluster):
    listener = Counting()
    standby = Cluster(standby_of=own_cluster)
    try:
        db = own_cluster.connect()
        db.execute("ALTER SYSTEM SET outbound_msg.pause_delivery = on")
        db.execute("SELECT pg_reload_conf()")
        define(db, listener.url)
        queue_backlog(db, 1_000 * SCALE)
        lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        replica = standby.connect()
        wait_for(lambda: replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                         (lsn,)).fetchone()[0], what="the standby to catch up")
        db.close()
        own_cluster.stop_immediate()
        replica.execute("SELECT pg_promote()")
        replica.execute("ALTER SYSTEM RESET outbound_msg.pause_delivery")
        replica.execute("SELECT pg_reload_conf()")
        replica.execute("SELECT outbound_msg.wake_worker()")
        check_everything_arrived(replica, listener, "promotion")
        replica.close()
    finally:
        standby.stop()
        listener.stop()


def test_a_bulk_commit_during_pgbench_and_delivery_loses_nothing(own_cluster):
    listener = Counting()
    try:
        db = own_cluster.connect()
        define(db, listener.url)
        db.execute("CREATE SEQUENCE f_ids START 1000000")
        script = os.path.join(own_cluster.root, "insert.sql")
        with open(script, "w") as f:
            f.write("INSERT INTO f VALUES (nextval('f_ids'), 'pgbench');\n")
        pgbench = subprocess.Popen(
            [*own_cluster.tool("pgbench"), "-n", "-c", "8", "-j", "2",
             "-T", str(5 * SCALE), "-f", script, "-h", "127.0.0.1",
             "-p", str(own_cluster.port), "-U", "postgres", "postgres"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        db.execute("INSERT INTO f SELECT g, 'bulk' FROM generate_series(1, 50000) g")
        output, _ = pgbench.communicate(timeout=120 * SCALE)
        assert pgbench.returncode == 0, output
        assert "number of failed transactions: 0" in output, output
        check_everything_arrived(db, listener, "bulk during pgbench")
        db.close()
    finally:
        listener.stop()
