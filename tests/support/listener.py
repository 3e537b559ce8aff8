"""SOAP listeners on 127.0.0.1 that record what they receive and answer as told."""

import socket
import ssl
import struct
import threading
import time
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


FAULT = (b'<?xml version="1.0" encoding="UTF-8"?>'
         b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
         b'<soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode>'
         b'<faultstring>ERP is down for maintenance</faultstring></soapenv:Fault>'
         b'</soapenv:Body></soapenv:Envelope>')

#: Returned by a behaviour: close the connection with a TCP reset instead of answering.
RESET = object()


def ack(_request):
    return 200, ACK


def nack(_request):
    return 200, NACK


def fault(_request):
    return 500, FAULT


def status(code):
    return lambda _request: (code, b"<html><body>error</body></html>")


def slow(seconds):
    def answer(_request):
        time.sleep(seconds)
        return 200, ACK
    return answer


def reset(_request):
    return RESET


def garbage(_request):
    return 200, b"\x00\x01 this is not XML <<<"


def redirect(_request):
    return 302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}


def huge(_request):
    return 200, ACK + b" " * (2 * 1024 * 1024)


class Listener:
    """An HTTP server answering every POST with `respond(request)`, which returns
    `(status, body)`, `(status, body, headers)` or `RESET`.

    `requests` keeps every request as a dict with `path`, `headers` (names in lower case),
    `body` (bytes), `client_port`, `received_at` and, once answered, `answered_at`
    (time.monotonic())."""

    def __init__(self, respond=ack, tls=None):
        """`tls`: None for plain HTTP, or a dict with `cert` and `key` (PEM file paths) and,
        to require a client certificate, `client_ca`."""
        self.respond = respond
        self.scheme = "https" if tls else "http"
        self.requests = []
        self.lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                peer = getattr(self.connection, "getpeercert", lambda: None)()
                request = {"path": self.path, "headers": headers, "body": body,
                           "received_at": time.monotonic(), "client_certificate": peer}
                with listener.lock:
                    listener.requests.append(request)
                request["client_port"] = self.client_address[1]
                answer = listener.respond(request)
                if answer is RESET:
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.request.close()
                    return
                code, body, *headers = answer
                self.send_response(code)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                request["answered_at"] = time.monotonic()

            def log_message(self, *args):
                pass

            def finish(self):
                # After a deliberate reset the socket is gone: nothing left to flush.
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls["cert"], tls["key"])
            if tls.get("client_ca"):
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(tls["client_ca"])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.handle_error = lambda *args: None  # refused handshakes are expected
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/notify"

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


class Silent:
    """An endpoint that accepts TCP connections (the kernel completes them) and never answers:
    a hung listener, or a firewall that black-holes the reply."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}/notify"

    def stop(self):
        self.socket.close()


class Dripping:
    """An endpoint that reads the request, then answers one byte a second, forever: a listener
    that never finishes its answer."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    @staticmethod
    def _drip(connection):
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while True:
                    connection.sendall(b"x")
                    time.sleep(1)
            except OSError:
                return

    @property
    def url(self):
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}/notify"

    def stop(self):
        self.socket.close()
