"""End to end: messages the worker really sent validate strictly against the XSD of the WSDL
that outbound_msg.wsdl() generates, and an independent SOAP stack (zeep) loads that WSDL and
parses the messages into typed values."""

import datetime
import decimal

import pytest
import xmlschema
import zeep
from lxml import etree

from support.cluster import wait_for
from support.listener import OUTBOUND_NS

COLUMNS = {
    "t": "text", "v": "varchar(20)", "b": "boolean", "s": "smallint", "i": "integer",
    "l": "bigint", "n": "numeric", "f": "double precision", "r": "real", "d": "date",
    "ts": "timestamp", "tz": "timestamptz", "raw": "bytea", "u": "uuid", "j": "jsonb",
}

ROWS = [
    # Ordinary values.
    "(1, 'plain', 'short', true, 7, 42, 9000000000, 12.50, 1.5, 0.25, '2024-02-29', "
    "'2024-02-29 13:34:56.789', '2024-02-29 13:34:56.789+01', '\\x00ff', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2]}')",
    # Every value NULL but the key.
    "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    # Values at the edges: XSD specials, values with no XSD form (left out), odd text.
    "(3, E'<&>\"'' \\u00e9\\u6771 \\x01 end\\r\\n', '', false, -32768, -2147483648, "
    "-9223372036854775808, 'NaN', 'Infinity', '-Infinity', '-infinity', 'infinity', "
    "'0044-03-15 12:00:00+00 BC', '', '00000000-0000-0000-0000-000000000000', 'null')",
    "(4, 'x', 'y', true, 0, 0, 0, '-0.000001', 'NaN', 1e-30, '0044-03-15 BC', "
    "'294276-12-31 23:59:59', '1970-01-01 00:00:00+00', '\\x', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]')",
]


@pytest.fixture
def delivered(db, listener):
    """A message on a table of every mapped type, four rows delivered, and its WSDL."""
    columns = ", ".join(f"{name} {sql_type}" for name, sql_type in COLUMNS.items())
    db.execute(f"CREATE TABLE typed (id int PRIMARY KEY, {columns})")
    db.execute("SELECT outbound_msg.create_message('typed', 'Typed', 'Typed', %s, %s, "
               "'postgres')", (listener.url, list(COLUMNS)))
    db.execute(f"INSERT INTO typed VALUES {', '.join(ROWS)}")
    wait_for(lambda: len(listener.notifications()) == len(ROWS), what="every row delivered")
    wsdl = db.execute("SELECT outbound_msg.wsdl('typed', 'Typed')").fetchone()[0]
    yield wsdl, [r["body"] for r in listener.requests]
    db.execute("DROP TABLE typed")


def schema_of(wsdl):
    """The XSD inside the WSDL, as one xmlschema schema (its three schema documents)."""
    root = etree.fromstring(wsdl.encode())
    schemas = root.findall("{http://schemas.xmlsoap.org/wsdl/}types/"
                           "{http://www.w3.org/2001/XMLSchema}schema")
    # Serialising a sub-element keeps the namespace declarations it inherits.
    sources = [etree.tostring(schema).decode() for schema in schemas]
    outbound = next(s for s in sources if f'targetNamespace="{OUTBOUND_NS}"' in s)
    others = [s for s in sources if s is not outbound]
    return xmlschema.XMLSchema10([outbound, *others])


def notifications_element(body):
    return etree.fromstring(body).find(f".//{{{OUTBOUND_NS}}}notifications")


def test_every_sent_message_validates_against_the_wsdl_schema(delivered):
    wsdl, bodies = delivered
    schema = schema_of(wsdl)
    for body in bodies:
        element = notifications_element(body)
        schema.validate(etree.tostring(element).decode())


def test_the_schema_rejects_what_the_wsdl_forbids(delivered):
    # Proof that the validation above can fail: a value outside its XSD type.
    wsdl, bodies = delivered
    schema = schema_of(wsdl)
    broken = bodies[0].replace(b"<sf:i>42</sf:i>", b"<sf:i>forty-two</sf:i>")
    assert broken != bodies[0]
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(etree.tostring(notifications_element(broken)).decode())


def test_zeep_loads_the_wsdl_and_parses_our_messages(delivered, tmp_path):
    wsdl, bodies = delivered
    path = tmp_path / "typed.wsdl"
    path.write_text(wsdl)
    client = zeep.Client(str(path))
    service = client.wsdl.services["NotificationService"]
    port = service.ports["Notification"]
    assert port.binding_options["address"].startswith("http://127.0.0.1:")
    assert "notifications" in port.binding._operations

    element = client.get_element(f"{{{OUTBOUND_NS}}}notifications")
    parsed = {}
    for body in bodies:
        message = element.parse(notifications_element(body), client.wsdl.types)
        assert len(message.OrganizationId) == 18
        for notification in message.Notification:
            parsed[notification.sObject.Id] = notification.sObject

    first = parsed["1"]
    assert first.t == "plain" and first.b is True and first.s == 7 and first.l == 9000000000
    assert first.n == decimal.Decimal("12.50") and first.f == 1.5
    assert first.d == datetime.date(2024, 2, 29)
    assert first.raw == b"\x00\xff"
    assert first.j == '{"k": [1, 2]}'
    assert all(getattr(parsed["2"], name) is None for name in COLUMNS)
    edge = parsed["3"]
    assert edge.t == "<&>\"' é東 \ufffd end\r\n"
    assert edge.n is None, "numeric NaN has no xsd:decimal form: left out"
    assert edge.ts is None and edge.tz is None, "infinite timestamps are left out"
    assert str(edge.f) == "inf" and str(edge.r) == "-inf"
    # An empty string is sent as an empty element (a NULL is left out); zeep reads both as None.
    third = next(b for b in bodies if b"<sf:Id>3</sf:Id>" in b)
    assert b"<sf:v></sf:v>" in third and b"<sf:raw></sf:raw>" in third
