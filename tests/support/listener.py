"""SOAP listeners on 127.0.0.1 that record what they receive and answer as told."""

import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

ACK = (b'<?xml version="1.0" encoding="UTF-8"?>'
       b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
       b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
       b'<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>')
NACK = ACK.replace(b"<Ack>true</Ack>", b"<Ack>false</Ack>")


def ack(_request):
    return 200, ACK


def nack(_request):
    return 200, NACK


class Listener:
    """An HTTP server answering every POST with `respond(request) -> (status, body)`.

    `requests` keeps every request as a dict with `path`, `headers` (names in lower case)
    and `body` (bytes)."""

    def __init__(self, respond=ack):
        self.respond = respond
        self.requests = []
        self.lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = {"path": self.path, "headers": headers, "body": body}
                with listener.lock:
                    listener.requests.append(request)
                status, answer = listener.respond(request)
                self.send_response(status)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def received(self):
        """Every SOAP message received so far, parsed (see `parse_message`)."""
        with self.lock:
            bodies = [r["body"] for r in self.requests]
        return [parse_message(body) for body in bodies]

    def notifications(self):
        """Every notification received so far, in arrival order."""
        return [n for message in self.received() for n in message["notifications"]]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def parse_message(body):
    """Parses an outbound message: its header values and its notifications, each with its id,
    sObject type and fields (text by local name, in document order)."""
    root = ET.fromstring(body)
    notifications = root.find(f"{{{ENVELOPE_NS}}}Body/{{{OUTBOUND_NS}}}notifications")
    header = [child.tag.split("}")[1] for child in notifications
              if child.tag != f"{{{OUTBOUND_NS}}}Notification"]
    message = {
        "header_order": header,
        "organization_id": notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId"),
        "action_id": notifications.findtext(f"{{{OUTBOUND_NS}}}ActionId"),
        "session_nil": notifications.find(f"{{{OUTBOUND_NS}}}SessionId").get(f"{{{XSI_NS}}}nil"),
        "notifications": [],
    }
    for notification in notifications.findall(f"{{{OUTBOUND_NS}}}Notification"):
        sobject = notification.find(f"{{{OUTBOUND_NS}}}sObject")
        fields = [(child.tag.split("}")[1], child.text or "") for child in sobject]
        assert all(child.tag.startswith(f"{{{SOBJECT_NS}}}") for child in sobject)
        message["notifications"].append({
            "id": notification.findtext(f"{{{OUTBOUND_NS}}}Id"),
            "type": sobject.get(f"{{{XSI_NS}}}type"),
            "field_order": [name for name, _ in fields],
            "fields": dict(fields),
        })
    return message
