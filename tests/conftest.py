"""pytest fixtures for the end-to-end tests: one preloaded cluster for the session, and a
fresh listener per test."""

import os

import pytest

from support.cluster import TEST_SETTINGS, Cluster, wait_for
from support.listener import Listener




@pytest.fixture(scope="session")
def cluster():
    # As a server may be started: no error of ours may show a Rust backtrace all the same.
    os.environ["RUST_BACKTRACE"] = "1"
    cluster = Cluster(TEST_SETTINGS)
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE EXTENSION outbound_msg")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db(cluster):
    with cluster.connect() as conn:
        yield conn


@pytest.fixture
def reload_with(db):
    """`reload_with(name=value, ...)`: ALTER SYSTEM and reload; reset after the test."""
    changed = []

    def apply(**settings):
        for name, value in settings.items():
            db.execute(f"ALTER SYSTEM SET outbound_msg.{name} = '{value}'")
            changed.append(name)
        db.execute("SELECT pg_reload_conf()")
        # This session applies the reload between commands: wait until it has.
        for name, value in settings.items():
            wait_for(lambda: db.execute("SELECT current_setting(%s) = %s",
                                        (f"outbound_msg.{name}", value)).fetchone()[0],
                     what=f"the reload of outbound_msg.{name} = {value}")

    yield apply
    for name in changed:
        db.execute(f"ALTER SYSTEM RESET outbound_msg.{name}")
    db.execute("SELECT pg_reload_conf()")


@pytest.fixture
def listener():
    listener = Listener()
    yield listener
    listener.stop()
