"""End to end: the delivery engine against listeners that misbehave in every way SPEC §3
names. Each failure is recorded with its reason and retried, and never holds up another
endpoint. The session cluster runs with timeout 2s, retry_min_interval 200ms and
retry_max_interval 1s (tests/conftest.py)."""

import time

import psycopg
import pytest

from support.cluster import cpu_seconds, wait_for, worker_pid, worker_state
from support import listener as behaviours
from support.listener import Listener


def define(db, table, url, unique_name):
    return db.execute(
        "SELECT outbound_msg.create_message(%s, %s, %s, %s, ARRAY['v'], 'postgres')",
        (table, unique_name, unique_name, url)).fetchone()[0]


def status_of(db, message_id):
    return db.execute(
        "SELECT s.state, s.attempts, s.last_error, s.notification_id, s.next_attempt_at "
        "FROM outbound_msg.delivery_status s JOIN outbound_msg.message m "
        "ON m.unique_name = s.message AND m.object = s.table_name WHERE m.id = %s",
        (message_id,)).fetchall()


@pytest.fixture
def table(db):
    db.execute("DROP TABLE IF EXISTS engine_t")
    db.execute("CREATE TABLE engine_t (id int PRIMARY KEY, v text)")
    yield "engine_t"
    db.execute("DROP TABLE engine_t")


FAILURES = [
    ("nack", behaviours.nack, "SOAP response was a nack"),
    ("soap fault", behaviours.fault, "HTTP 500: SOAP fault: ERP is down for maintenance"),
    ("http 500", behaviours.status(500), "HTTP 500 Internal Server Error"),
    ("http 503", behaviours.status(503), "HTTP 503 Service Unavailable"),
    ("slower than the timeout", behaviours.slow(4), "no answer within 2000 ms"),
    ("connection reset", behaviours.reset, "connection error"),
    ("garbage", behaviours.garbage, "response is not XML"),
    ("redirect", behaviours.redirect, "HTTP 302: redirects are not followed"),
    ("huge body", behaviours.huge, "response body larger than 1048576 bytes"),
]


@pytest.mark.parametrize("case,behaviour,reason", FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failing_listener_is_recorded_retried_and_holds_up_no_one(db, table, listener, case,
                                                                   behaviour, reason):
    failing = Listener(behaviour)
    try:
        bad = define(db, table, failing.url, "Failing")
        good = define(db, table, listener.url, "Working")
        db.execute("INSERT INTO engine_t VALUES (1, 'one')")

        wait_for(lambda: listener.notifications(), what="the working endpoint's delivery")
        try:
            rows = wait_for(lambda: [r for r in status_of(db, bad) if r[1] >= 2 and r[2]],
                            timeout=60, what=f"{case}: a recorded, retried failure")
        except AssertionError as timed_out:
            # What the queue and the worker's view of endpoints showed, for the diagnosis.
            endpoints = db.execute("SELECT * FROM outbound_msg.endpoints").fetchall()
            raise AssertionError(f"{timed_out}; status {status_of(db, bad)}; requests "
                                 f"{len(failing.requests)}; endpoints {endpoints}") from None
        state, attempts, last_error, notification_id, _ = rows[0]
        assert last_error.startswith(reason), last_error
        assert state in ("retrying", "sending")
        assert status_of(db, good) == [], "the working endpoint's notification is delivered"
        ids = {parse_id(r["body"]) for r in failing.requests}
        assert ids == {notification_id}, "every retry carries the same notification Id"
    finally:
        failing.stop()


def parse_id(body):
    return behaviours.parse_message(body)["notifications"][0]["id"]


def test_a_slow_endpoint_does_not_delay_another(db, table, listener):
    slow = Listener(behaviours.slow(1.5))
    try:
        define(db, table, slow.url, "Slow")
        define(db, table, listener.url, "Fast")
        db.execute("INSERT INTO engine_t VALUES (1, 'one')")
        wait_for(lambda: slow.requests, what="the slow endpoint to be called")
        wait_for(lambda: listener.notifications(), what="the fast endpoint's delivery")
        fast_arrival = listener.requests[0]["received_at"]
        first_slow = slow.requests[0]
        # The fast endpoint got its message while the slow one was still answering.
        assert "answered_at" not in first_slow or fast_arrival < first_slow["answered_at"]
    finally:
        slow.stop()


def test_a_message_with_every_connection_busy_leaves_the_worker_idle(db, table, reload_with):
    # Regression: with all of a message's connections busy, its other due notifications made
    # the worker claim again at once, in a loop, each claim reading the whole backlog.
    reload_with(batch_size="1")
    slow = Listener(behaviours.slow(1.8))
    try:
        define(db, table, slow.url, "Busy")
        db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(1, 20) g")
        # A new endpoint gets one request, a probe; once it answered, max_connections 8: a
        # message uses at most 4 of them; 15 notifications stay due.
        wait_for(lambda: len(slow.requests) >= 5, what="a probe, then four requests in flight")
        pid = worker_pid(db)
        before = cpu_seconds(pid)
        time.sleep(1)
        # A worker claiming in a loop uses about 1 s of CPU here; a waiting one next to none.
        assert cpu_seconds(pid) - before < 0.4
        assert len(slow.requests) == 5
        wait_for(lambda: len(slow.notifications()) == 20, what="all twenty delivered in the end")
    finally:
        slow.stop()


def test_groups_moved_by_vacuum_full_while_in_flight_are_sent_again_and_none_is_lost(
        db, table, reload_with):
    # A delivery finds its claimed rows again by ctid, checked against their ids. VACUUM FULL
    # in between moves every row: the acknowledgement then finds none of its rows (and takes
    # no other row that now sits where one of them was), so they are sent again when their
    # lease (timeout + 30 s) runs out.
    reload_with(batch_size="1")
    slow = Listener(behaviours.slow(1.0))
    try:
        message_id = define(db, table, slow.url, "Moved")
        db.execute("VACUUM FULL outbound_msg.queue")
        db.execute("DO $$ BEGIN FOR i IN 1..10 LOOP "
                   "INSERT INTO engine_t VALUES (i, 'x'); END LOOP; END $$")
        wait_for(lambda: len(slow.requests) >= 4, what="four requests in flight")

        def in_flight():
            return dict(db.execute("SELECT id, ctid::text FROM outbound_msg.queue "
                                   "WHERE message_id = %s AND state = 'sending'",
                                   (message_id,)).fetchall())

        before = in_flight()
        db.execute("VACUUM FULL outbound_msg.queue")
        after = in_flight()
        assert before and before.keys() == after.keys()
        assert all(after[id] != before[id] for id in before), "VACUUM FULL moved them"

        wait_for(lambda: db.execute("SELECT count(*) = 0 FROM outbound_msg.queue "
                                    "WHERE message_id = %s", (message_id,)).fetchone()[0],
                 timeout=90, what="every group delivered and acknowledged")
        sent = [n["id"] for n in slow.notifications()]
        assert len(set(sent)) == 10
        # The moved groups went twice, the others once.
        assert len(sent) == 10 + len(before)
    finally:
        slow.stop()


def test_statistics_that_call_a_busy_queue_empty_are_refreshed(db, table, listener, reload_with):
    # Analyzed while drained, the queue keeps its pages and is believed empty whatever arrives:
    # claims planned for one row read the whole backlog. The worker analyzes it when a claim
    # takes more groups than the statistics believe there are. The belief scales with the
    # table's pages: where the burst must extend the table (one compacted by VACUUM FULL, say),
    # claims of the default 4 groups can stay under it. Here a claim may take 32.
    reload_with(max_connections="64")
    define(db, table, listener.url, "Stats")
    db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(1, 300) g")
    wait_for(lambda: len(listener.notifications()) == 300, what="the first rows delivered")
    db.execute("ANALYZE outbound_msg.queue")

    def statistics():
        return db.execute("SELECT relpages, reltuples FROM pg_class "
                          "WHERE oid = 'outbound_msg.queue'::regclass").fetchone()

    def manual_analyzes():
        # Not autovacuum's (autoanalyze_count): only the worker runs a plain ANALYZE here.
        return db.execute("SELECT analyze_count FROM pg_stat_all_tables "
                          "WHERE relid = 'outbound_msg.queue'::regclass").fetchone()[0]

    pages, tuples = statistics()
    assert pages > 0 and tuples < 5  # groups other tests may have left, expired
    before = manual_analyzes()
    db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(301, 3300) g")
    wait_for(lambda: statistics()[1] >= 10, what="the queue's statistics to catch up")
    wait_for(lambda: manual_analyzes() > before, what="the worker's own ANALYZE counted")
    wait_for(lambda: len(listener.notifications()) == 3300, what="every row delivered")


def test_the_worker_vacuums_the_queue_after_many_deliveries(db, table, listener):
    # Every delivered group leaves dead index entries that each claim steps over until a
    # vacuum; autovacuum may be a minute away. After 20,000 groups the worker vacuums itself.
    message_id = define(db, table, listener.url, "Vacuumed")

    def vacuums():
        return db.execute("SELECT vacuum_count FROM pg_stat_all_tables "
                          "WHERE relid = 'outbound_msg.queue'::regclass").fetchone()[0]

    before = vacuums()
    # One statement per row: 20,100 groups of one notification.
    db.execute("DO $$ BEGIN FOR i IN 1..20100 LOOP "
               "INSERT INTO engine_t VALUES (i, 'x'); END LOOP; END $$")
    wait_for(lambda: db.execute("SELECT count(*) = 0 FROM outbound_msg.queue "
                                "WHERE message_id = %s", (message_id,)).fetchone()[0],
             timeout=120, what="20,100 groups delivered")
    wait_for(lambda: vacuums() > before, what="the worker's own VACUUM of the queue")


def test_retries_back_off_exponentially_up_to_the_maximum(db, table):
    failing = Listener(behaviours.status(500))
    try:
        message_id = define(db, table, failing.url, "Backoff")
        db.execute("INSERT INTO engine_t VALUES (1, 'one')")
        wait_for(lambda: len(failing.requests) >= 6, timeout=60, what="six attempts")
        times = [r["received_at"] for r in failing.requests[:6]]
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        # 200 ms doubling with jitter in [0.5, 1]: the 4th wait is longer than the 1st.
        assert gaps[3] > gaps[0], gaps
        # retry_max_interval is 1 s (plus the worker's own scheduling).
        assert max(gaps) < 2.0, gaps
        [(_, attempts, _, _, next_attempt)] = status_of(db, message_id)
        assert attempts >= 6
    finally:
        failing.stop()


def test_past_max_age_a_notification_expires_and_can_be_retried(db, table, listener,
                                                               reload_with):
    reload_with(max_age="2s")
    failing = Listener(behaviours.status(503))
    message_id = define(db, table, failing.url, "Expiring")
    db.execute("INSERT INTO engine_t VALUES (1, 'one')")
    [(state, attempts, last_error, notification_id, next_attempt)] = wait_for(
        lambda: [r for r in status_of(db, message_id) if r[0] == "expired"],
        timeout=30, what="the notification to expire")
    assert last_error == "HTTP 503 Service Unavailable"
    assert next_attempt is None
    stats = db.execute("SELECT queued, expired, failed_attempts FROM outbound_msg.delivery_stats "
                       "WHERE message = 'Expiring'").fetchone()
    assert stats[0] == 0 and stats[1] == 1 and stats[2] == attempts

    # Another failing notification retries several times while the expired one stays put.
    db.execute("INSERT INTO engine_t VALUES (2, 'two')")
    wait_for(lambda: db.execute(
        "SELECT attempts >= 3 FROM outbound_msg.queue WHERE record_ids = '{2}'"
        " AND message_id = %s", (message_id,)).fetchone()[0], what="the other one's retries")
    assert db.execute("SELECT attempts FROM outbound_msg.queue WHERE record_ids = '{1}' "
                      "AND message_id = %s", (message_id,)).fetchone() == (attempts,)

    # An administrator sends it again, to a listener that now works.
    failing.stop()
    db.execute("SELECT outbound_msg.alter_message(%s, 'Expiring', endpoint_url => %s)",
               (table, listener.url))
    assert db.execute("SELECT outbound_msg.retry(%s)", (notification_id,)).fetchone() == (1,)
    wait_for(lambda: [n for n in listener.notifications() if n["id"] == notification_id],
             what="the retried notification")


def test_retry_and_discard_by_message_and_expired(db, table, reload_with):
    reload_with(max_age="1s")
    failing = Listener(behaviours.status(500))
    try:
        message_id = define(db, table, failing.url, "Admin")
        db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(1, 3) g")
        wait_for(lambda: len([r for r in status_of(db, message_id) if r[0] == "expired"]) == 3,
                 timeout=30, what="three expired notifications")
        assert db.execute("SELECT outbound_msg.retry_expired()").fetchone()[0] >= 3
        assert {r[0] for r in status_of(db, message_id)} <= {"queued", "retrying", "sending"}
        assert db.execute("SELECT outbound_msg.retry(%s, 'Admin')", (table,)).fetchone()[0] <= 3
        wait_for(lambda: len([r for r in status_of(db, message_id) if r[0] == "expired"]) == 3,
                 timeout=30, what="them to expire again")
        assert db.execute("SELECT outbound_msg.discard_expired()").fetchone()[0] >= 3
        assert status_of(db, message_id) == []
        db.execute("INSERT INTO engine_t VALUES (9, 'y')")
        assert db.execute("SELECT outbound_msg.discard(%s, 'Admin')", (table,)).fetchone() == (1,)
        assert status_of(db, message_id) == []
    finally:
        failing.stop()


@pytest.mark.parametrize("call,error", [
    ("retry('not an id')", psycopg.errors.InvalidParameterValue),
    ("discard('04lXXXXXXXXXXXXAAA')", psycopg.errors.InvalidParameterValue),
    ("retry(outbound_msg.notification_id(999999999))", psycopg.errors.UndefinedObject),
    ("discard(outbound_msg.notification_id(999999999))", psycopg.errors.UndefinedObject),
    ("retry('engine_t', 'Missing')", psycopg.errors.UndefinedObject),
])
def test_retry_and_discard_refuse_unknown_notifications(db, table, call, error):
    with pytest.raises(error):
        db.execute(f"SELECT outbound_msg.{call}")


def test_counters_count_deliveries_and_latency(db, table, listener):
    message_id = define(db, table, listener.url, "Counted")
    db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(1, 5) g")
    wait_for(lambda: status_of(db, message_id) == [] and len(listener.notifications()) == 5,
             what="five deliveries")
    queued, delivered, failed, expired, last_success, latency = db.execute(
        "SELECT queued, delivered, failed_attempts, expired, last_success, average_latency "
        "FROM outbound_msg.delivery_stats WHERE message = 'Counted'").fetchone()
    assert (queued, delivered, failed, expired) == (0, 5, 0, 0)
    assert last_success is not None and latency is not None


def test_connections_are_kept_alive(db, table, listener):
    define(db, table, listener.url, "KeepAlive")
    for key in range(1, 4):
        db.execute("INSERT INTO engine_t VALUES (%s, 'x')", (key,))
        wait_for(lambda: len(listener.requests) == key, what=f"delivery {key}")
    ports = {r["client_port"] for r in listener.requests}
    assert len(ports) < 3, "several SOAP messages travelled over one connection"


def test_batch_size_changes_on_reload(db, table, listener, reload_with):
    reload_with(batch_size="2")
    define(db, table, listener.url, "Small_batches")

    def batches_of_at_most_two():
        # The worker applies the reload at its next wake: send until a round shows it.
        listener.requests.clear()
        base = db.execute("SELECT coalesce(max(id), 0) FROM engine_t").fetchone()[0]
        db.execute("INSERT INTO engine_t SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
                   (base + 1, base + 10))
        wait_for(lambda: len(listener.notifications()) == 10, what="ten deliveries")
        return max(len(m["notifications"]) for m in listener.received()) <= 2

    wait_for(batches_of_at_most_two, timeout=30, what="batches of at most two")


def test_header_values_come_from_settings(db, table, listener, reload_with):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("ALTER SYSTEM SET outbound_msg.organization_id = 'too short'")
    reload_with(organization_id="00DAbCdEfGhIjKlMnO", enterprise_url="https://db.example/e",
                partner_url="https://db.example/p")
    define(db, table, listener.url, "Org")

    def sent_with_configured_id():
        listener.requests.clear()
        db.execute("INSERT INTO engine_t VALUES ((SELECT coalesce(max(id), 0) + 1 FROM engine_t),"
                   " 'x')")
        wait_for(lambda: listener.requests, what="a delivery")
        return listener.received()[0]["organization_id"] == "00DAbCdEfGhIjKlMnO"

    wait_for(sent_with_configured_id, timeout=30, what="the configured OrganizationId")
    body = listener.requests[0]["body"].decode()
    assert "<EnterpriseUrl>https://db.example/e</EnterpriseUrl>" in body
    assert "<PartnerUrl>https://db.example/p</PartnerUrl>" in body


def test_pausing_delivery_keeps_notifications_queued_until_resumed(db, table, listener,
                                                                  reload_with):
    define(db, table, listener.url, "Paused")
    reload_with(pause_delivery="on")
    db.execute("INSERT INTO engine_t VALUES (0, 'wakes the worker')")
    wait_for(lambda: worker_state(db) == "paused", what="the worker to show it is paused")
    db.execute("INSERT INTO engine_t VALUES (1, 'held')")
    assert db.execute("SELECT sum(attempts), count(*) FROM outbound_msg.queue q JOIN "
                      "outbound_msg.message m ON m.id = q.message_id WHERE m.unique_name = 'Paused'"
                      ).fetchone() == (0, 2)
    reload_with(pause_delivery="off")
    db.execute("SELECT outbound_msg.retry('engine_t', 'Paused')")  # wakes the worker
    wait_for(lambda: len(listener.notifications()) == 2, what="delivery after resuming")
    assert worker_state(db) in ("idle", "delivering")
