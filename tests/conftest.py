"""pytest fixtures for the end-to-end tests: one preloaded cluster for the session, and a
fresh listener per test."""

import pytest

from support.cluster import Cluster
from support.listener import Listener


@pytest.fixture(scope="session")
def cluster():
    cluster = Cluster()
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
def listener():
    listener = Listener()
    yield listener
    listener.stop()
