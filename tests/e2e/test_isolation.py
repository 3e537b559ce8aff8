"""End to end: no number of silent, refusing or failing endpoints delays a healthy one, and
the endpoints view shows each endpoint's health."""

import itertools
import threading
import time

import pytest

from support.cluster import wait_for
from support.listener import ACK, Dripping, Listener, Silent, status

SILENT = 20


@pytest.fixture
def tables(db):
    for table in ["iso_silent", "iso_healthy"]:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    yield
    for table in ["iso_silent", "iso_healthy"]:
        db.execute(f"DROP TABLE IF EXISTS {table}")


def define(db, table, unique_name, url):
    db.execute("SELECT outbound_msg.create_message(%s, %s, %s, %s, ARRAY['v'], 'postgres')",
               (table, unique_name, unique_name, url))


def endpoint(db, url):
    return db.execute("SELECT state, consecutive_failures, requests_in_flight, queued, last_error "
                      "FROM outbound_msg.endpoints WHERE endpoint = outbound_msg.endpoint_of(%s)",
                      (url,)).fetchone()


def test_silent_endpoints_with_backlogs_do_not_delay_a_healthy_one(db, tables, listener,
                                                                   reload_with):
    # Requests to a silent endpoint hang for the whole timeout: a minute here, longer than
    # every deadline of this test.
    reload_with(timeout="1min")
    silent = [Silent() for _ in range(SILENT)]
    try:
        for n, endpoint_ in enumerate(silent):
            define(db, "iso_silent", f"Silent{n}", endpoint_.url)
        define(db, "iso_healthy", "Healthy", listener.url)
        db.execute("INSERT INTO iso_silent SELECT g, 'x' FROM generate_series(1, 50) g")
        # The first silent endpoints hold a request each (the view is at most a second old).
        wait_for(lambda: db.execute(
            "SELECT sum(requests_in_flight) >= 8 FROM outbound_msg.endpoints "
            "WHERE endpoint IN (SELECT outbound_msg.endpoint_of(endpoint_url) "
            "FROM outbound_msg.message WHERE object = 'iso_silent'::regclass)").fetchone()[0],
            what="the silent endpoints to hold requests")
        for i in range(20):
            db.execute("INSERT INTO iso_healthy VALUES (%s, 'h')", (i,))
        wait_for(lambda: len(listener.notifications()) == 20, timeout=30,
                 what="every healthy notification while the silent ones still hang")
        # The worker records an acknowledgement after the listener sent it.
        wait_for(lambda: endpoint(db, listener.url)[0] == "healthy", what="a healthy endpoint")
        states = db.execute("SELECT state, requests_in_flight FROM outbound_msg.endpoints "
                            "WHERE endpoint IN (SELECT outbound_msg.endpoint_of(endpoint_url) "
                            "FROM outbound_msg.message WHERE object = 'iso_silent'::regclass)"
                            ).fetchall()
        assert len(states) == SILENT
        # (A port an earlier test's endpoint used may be known as failing.)
        assert all(state != "healthy" and n <= 1 for state, n in states), \
            "a silent endpoint gets one request, a probe, until it answers"
        # Probes: at most max_connections (8) young ones, and 3 x 8 unanswered past
        # connect_timeout.
        assert sum(n for _, n in states) <= 32
        # Unanswered past connect_timeout (5 s), each shows as failing, long before its
        # request times out.
        wait_for(lambda: db.execute(
            "SELECT bool_and(state = 'failing' AND last_error LIKE 'no answer within%%') "
            "FROM outbound_msg.endpoints WHERE endpoint IN (SELECT outbound_msg.endpoint_of("
            "endpoint_url) FROM outbound_msg.message WHERE object = 'iso_silent'::regclass)"
        ).fetchone()[0], timeout=30, what="every silent endpoint shown failing")
    finally:
        db.execute("DROP TABLE iso_silent")
        for endpoint_ in silent:
            endpoint_.stop()


def test_a_refusing_endpoint_shows_as_failing_and_recovers(db, tables, listener):
    refusing = Listener(status(500))
    url = refusing.url
    refusing.stop()  # the port now refuses connections
    define(db, "iso_healthy", "Refused", url)
    db.execute("INSERT INTO iso_healthy VALUES (1, 'a')")
    state = wait_for(lambda: (row := endpoint(db, url)) and row[0] == "failing" and row,
                     what="the endpoint to show as failing")
    assert state[1] >= 1 and state[3] == 1
    assert state[4].startswith("connection error")
    db.execute("SELECT outbound_msg.alter_message('iso_healthy', 'Refused', endpoint_url => %s)",
               (listener.url,))
    wait_for(lambda: listener.notifications(), what="delivery to the new endpoint")
    wait_for(lambda: endpoint(db, listener.url)[0] == "healthy", what="a healthy endpoint")


def test_a_flapping_endpoint_gets_everything_in_the_end(db, tables):
    answers = itertools.count()
    flaps = Listener(lambda _request: (200, ACK) if next(answers) % 2 else (503, b"down"))
    try:
        define(db, "iso_healthy", "Flapping", flaps.url)
        for i in range(6):
            db.execute("INSERT INTO iso_healthy VALUES (%s, 'f')", (i,))
        wait_for(lambda: db.execute(
            "SELECT count(*) = 0 FROM outbound_msg.delivery_status WHERE message = 'Flapping'"
        ).fetchone()[0], what="every notification acknowledged")
        assert {n["fields"]["Id"] for n in flaps.notifications()} >= {str(i) for i in range(6)}
        assert endpoint(db, flaps.url)[0] == "healthy"
    finally:
        flaps.stop()


def test_retry_after_is_honoured_within_retry_max_interval(db, tables, reload_with):
    reload_with(retry_max_interval="1h")
    busy = Listener(lambda _request: (503, b"busy", {"Retry-After": "120"}))
    try:
        define(db, "iso_healthy", "Busy", busy.url)
        db.execute("INSERT INTO iso_healthy VALUES (1, 'b')")
        wait = wait_for(lambda: db.execute(
            "SELECT extract(epoch FROM next_attempt_at - last_attempt_at) FROM "
            "outbound_msg.delivery_status WHERE message = 'Busy' AND state = 'retrying'"
        ).fetchone(), what="the failed attempt")[0]
        assert 110 <= wait <= 130, f"next attempt {wait} s after the 503, as asked"
        assert len(busy.requests) == 1
    finally:
        busy.stop()


def test_a_dripping_listener_is_cut_off_at_the_timeout(db, tables):
    """A listener answering a byte a second never finishes: the whole exchange is bounded by
    outbound_msg.timeout (2 s in these tests), and the notification is retried."""
    dripping = Dripping()
    try:
        define(db, "iso_healthy", "Dripping", dripping.url)
        db.execute("INSERT INTO iso_healthy VALUES (1, 'd')")
        error = wait_for(lambda: db.execute(
            "SELECT last_error FROM outbound_msg.delivery_status WHERE message = 'Dripping' "
            "AND last_error IS NOT NULL").fetchone(), what="the cut-off attempt")[0]
        assert error == "no answer within 2000 ms"
        wait_for(lambda: dripping.connections >= 2, what="a retry")
    finally:
        dripping.stop()


def test_a_healthy_endpoint_that_stops_answering_leaves_capacity_to_the_others(
        db, tables, listener, reload_with):
    """An endpoint that answered, with three messages, stops answering: its requests hang, and
    it is not shown failing for a minute (connect_timeout). Until then it holds at most half
    the worker's connections (8), however many messages it has; another endpoint still gets
    its notifications while every request to the first one hangs."""
    reload_with(timeout="2min", connect_timeout="1min")
    hang = threading.Event()
    release = threading.Event()

    def answer(_request):
        if hang.is_set():
            release.wait()
        return 200, ACK

    stopping = Listener(answer)
    try:
        for n in range(3):
            define(db, "iso_silent", f"Stopping{n}", stopping.url)
        define(db, "iso_healthy", "Healthy", listener.url)
        db.execute("INSERT INTO iso_silent VALUES (0, 'answered')")
        wait_for(lambda: len(stopping.notifications()) == 3, what="the first deliveries")
        wait_for(lambda: endpoint(db, stopping.url)[0] == "healthy", what="a healthy endpoint")
        hang.set()
        for i in range(1, 16):
            db.execute("INSERT INTO iso_silent VALUES (%s, 'hangs')", (i,))
            time.sleep(0.05)
        wait_for(lambda: len(stopping.requests) >= 3 + 4, what="requests hanging")
        for i in range(5):
            db.execute("INSERT INTO iso_healthy VALUES (%s, 'h')", (i,))
        wait_for(lambda: len(listener.notifications()) == 5, timeout=30,
                 what="the other endpoint's notifications while the first one hangs")
        assert not release.is_set()
        assert len(stopping.requests) - 3 == 4, "half of max_connections, not more"
        assert endpoint(db, stopping.url)[0] == "healthy"
    finally:
        release.set()
        stopping.stop()
