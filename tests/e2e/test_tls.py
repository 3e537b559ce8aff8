"""End to end: HTTPS to real TLS listeners on 127.0.0.1 with certificates these tests make.
Server certificates are verified (chain and host name) against the system's CA store or
outbound_msg.ca_file; client certificates are imported, checked, never shown back, and
presented for mutual TLS."""

import psycopg
import pytest

from support import certs
from support.cluster import wait_for
from support.listener import Listener


@pytest.fixture(scope="module")
def pki():
    """A CA, its server certificate for 127.0.0.1, and files for them."""
    directory = certs.directory()
    ca = certs.Authority("outbound_msg test CA")
    server_cert, server_key = ca.issue("listener", ["127.0.0.1", "localhost"])
    wrong_cert, wrong_key = ca.issue("elsewhere", ["other.example"])
    self_cert, self_key = certs.self_signed(["127.0.0.1"])
    client_ca = certs.Authority("client CA")
    files = {name: certs.write(directory, f"{name}.pem", text) for name, text in {
        "ca": ca.pem, "server_cert": server_cert, "server_key": server_key,
        "wrong_cert": wrong_cert, "wrong_key": wrong_key,
        "self_cert": self_cert, "self_key": self_key, "client_ca": client_ca.pem}.items()}
    return {"ca": ca, "client_ca": client_ca, "files": files}


@pytest.fixture
def table(db):
    db.execute("DROP TABLE IF EXISTS secure")
    db.execute("CREATE TABLE secure (id int PRIMARY KEY, v text)")
    yield "secure"
    db.execute("DROP TABLE IF EXISTS secure")
    for name in db.execute("SELECT name FROM outbound_msg.client_certificates").fetchall():
        db.execute("SELECT outbound_msg.drop_client_certificate(%s)", name)


def listener_with(pki, cert, key, client_ca=False):
    files = pki["files"]
    tls = {"cert": files[cert], "key": files[key]}
    if client_ca:
        tls["client_ca"] = files["client_ca"]
    return Listener(tls=tls)


def send_one(db, url, **options):
    named = "".join(f", {name} => %({name})s" for name in options)
    message_id = db.execute(
        "SELECT outbound_msg.create_message('secure', 'S', 'S', %(url)s, ARRAY['v'], 'postgres'"
        + named + ")", {"url": url, **options}).fetchone()[0]
    db.execute("INSERT INTO secure VALUES (1, 'x')")
    return message_id


def failure(db, message_id):
    return wait_for(lambda: db.execute(
        "SELECT last_error FROM outbound_msg.queue WHERE message_id = %s", (message_id,)
    ).fetchone() or [None], what="a recorded failure")[0]


def wait_failure(db, message_id):
    return wait_for(lambda: failure(db, message_id), what="a recorded failure")


def test_https_to_a_server_signed_by_ca_file(db, table, pki, reload_with):
    reload_with(ca_file=pki["files"]["ca"])
    listener = listener_with(pki, "server_cert", "server_key")
    try:
        send_one(db, listener.url)
        wait_for(lambda: listener.notifications(), what="an HTTPS delivery")
    finally:
        listener.stop()


def test_the_system_store_does_not_trust_a_private_ca(db, table, pki):
    listener = listener_with(pki, "server_cert", "server_key")
    try:
        reason = wait_failure(db, send_one(db, listener.url))
        assert reason.startswith("TLS error") and "UnknownIssuer" in reason, reason
        assert listener.requests == []
    finally:
        listener.stop()


@pytest.mark.parametrize("cert,key,expected", [
    ("self_cert", "self_key", "UnknownIssuer"),
    ("wrong_cert", "wrong_key", "certificate not valid for name \"127.0.0.1\""),
])
def test_untrusted_or_wrong_host_servers_fail_with_a_clear_reason(db, table, pki, reload_with,
                                                                  cert, key, expected):
    reload_with(ca_file=pki["files"]["ca"])
    listener = listener_with(pki, cert, key)
    try:
        reason = wait_failure(db, send_one(db, listener.url))
        assert reason.startswith("TLS error") and expected in reason, reason
        assert listener.requests == []
    finally:
        listener.stop()


def test_an_unreadable_ca_file_is_a_recorded_failure(db, table, pki, reload_with):
    reload_with(ca_file="/nonexistent/ca.pem")
    listener = listener_with(pki, "server_cert", "server_key")
    try:
        reason = wait_failure(db, send_one(db, listener.url))
        assert reason.startswith('TLS error: outbound_msg.ca_file "/nonexistent/ca.pem" cannot be read')
    finally:
        listener.stop()


def test_mutual_tls_presents_the_imported_certificate(db, table, pki, reload_with):
    reload_with(ca_file=pki["files"]["ca"])
    client_cert, client_key = pki["client_ca"].issue("outbound_msg client", client=True)
    listener = listener_with(pki, "server_cert", "server_key", client_ca=True)
    try:
        message_id = send_one(db, listener.url)
        reason = wait_failure(db, message_id)
        assert reason.startswith("TLS error") or reason.startswith("connection error"), reason
        assert listener.requests == [], "without a client certificate the listener refuses"

        fingerprint = db.execute("SELECT outbound_msg.import_client_certificate('erp_client', %s, %s)",
                                 (client_cert, client_key)).fetchone()[0]
        assert len(fingerprint) == 95
        db.execute("SELECT outbound_msg.alter_message('secure', 'S', client_certificate => 'erp_client')")
        db.execute("SELECT outbound_msg.retry('secure', 'S')")
        wait_for(lambda: listener.notifications(), what="a mutual-TLS delivery")
        subject = dict(x[0] for x in listener.requests[0]["client_certificate"]["subject"])
        assert subject["commonName"] == "outbound_msg client"
        row = db.execute("SELECT name, subject, fingerprint, used_by FROM "
                         "outbound_msg.client_certificates").fetchone()
        assert row == ("erp_client", "CN=outbound_msg client", fingerprint, ["S on secure"])
        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="S on public.secure"):
            db.execute("SELECT outbound_msg.drop_client_certificate('erp_client')")
    finally:
        listener.stop()


def test_imported_certificates_are_checked(db, table, pki):
    good_cert, good_key = pki["client_ca"].issue("good", client=True)
    expired_cert, expired_key = pki["client_ca"].issue("old", client=True, valid_days=(-10, -1))
    future_cert, future_key = pki["client_ca"].issue("future", client=True, valid_days=(2, 10))
    cases = [
        ("not a certificate", good_key, "22023", "holds no PEM certificate"),
        (good_cert, "not a key", "22023", "holds no PEM private key"),
        (good_cert, good_key + good_key, "22023", "or more than one"),
        (good_cert, certs.other_key(), "22023", "does not belong to the certificate"),
        (expired_cert, expired_key, "22023", "has expired"),
        (future_cert, future_key, "22023", "is not valid yet"),
    ]
    for certificate, key, sqlstate, fragment in cases:
        with pytest.raises(psycopg.Error) as refused:
            db.execute("SELECT outbound_msg.import_client_certificate('c', %s, %s)",
                       (certificate, key))
        assert refused.value.sqlstate == sqlstate and fragment in str(refused.value)
        assert "PRIVATE KEY" not in str(refused.value)
    assert db.execute("SELECT count(*) FROM outbound_msg.client_certificates").fetchone() == (0,)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT outbound_msg.import_client_certificate('bad name', %s, %s)",
                   (good_cert, good_key))
    db.execute("SELECT outbound_msg.import_client_certificate('c', %s, %s)", (good_cert, good_key))
    with pytest.raises(psycopg.errors.DuplicateObject):
        db.execute("SELECT outbound_msg.import_client_certificate('c', %s, %s)",
                   (good_cert, good_key))
    with pytest.raises(psycopg.errors.UndefinedObject):
        db.execute("SELECT outbound_msg.drop_client_certificate('missing')")
    with pytest.raises(psycopg.errors.UndefinedObject, match='client certificate "missing"'):
        send_one(db, "https://127.0.0.1:9/", client_certificate="missing")


def test_the_private_key_is_never_shown_or_logged(cluster, db, table, pki):
    certificate, key = pki["client_ca"].issue("secret keeper", client=True)
    key_body = key.splitlines()[1]
    db.execute("ALTER SYSTEM SET log_statement = 'all'")
    db.execute("SELECT pg_reload_conf()")
    try:
        db.execute("SELECT outbound_msg.import_client_certificate('kept', %s, %s)",
                   (certificate, key))
        with pytest.raises(psycopg.errors.DuplicateObject):
            db.execute("SELECT outbound_msg.import_client_certificate('kept', %s, %s)",
                       (certificate, key))
        columns = [d.name for d in db.execute(
            "SELECT * FROM outbound_msg.client_certificates").description]
        assert not any("key" in c for c in columns)
        db.execute("SELECT 1 /* marker: key logged? */")
        wait_for(lambda: "marker: key logged?" in cluster.log(), what="the server log")
        assert key_body not in cluster.log()
    finally:
        db.execute("ALTER SYSTEM RESET log_statement")
        db.execute("SELECT pg_reload_conf()")
