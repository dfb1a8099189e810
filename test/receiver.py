#!/usr/bin/env python3
"""test/receiver.py: an HTTP endpoint for the tests, demo and benchmarks.

Listens on 127.0.0.1 only and logs every request as one JSON line
({"method", "path", "headers", "body", "received_at"}) as soon as its body is
read.  The path chooses the answer, so one receiver serves many endpoints:

  /status/<code>[/...]                 that status (3xx with Location: /ok)
  /fail/<n>/<key...>                   500 for the first n requests to the path, then 200
  /fail-each/<n>[/...]                 500 for the first n requests of each webhook-id, then 200
  /fail-type/<event type>[/...]        500 for events of that type (X-Webhook-Event), 200 for others
  /flaky/<percent>[/...]               500 for that share of requests, at random; else 200
  /blip/<every>/<n>/<key...>           a gateway's hiccups: 503 for n requests in a row out of
                                       each <every>, from the second request to the path; else 200
  /retry-after/<s>/<n>/<key...>        429 with Retry-After: <s> for the first n, then 200
                                       (?status=503: 503 instead of 429)
  /hang[/...]                          never answers (until the client leaves, or 600 s)
  /slow/<ms>[/...]                     200 after <ms> milliseconds
  /big/<bytes>[/...]                   200 with a body of <bytes> bytes
  anything else                        200 "ok"

Usage: receiver.py [--port N] [--port-file FILE] [--log FILE]
                   [--tls-cert FILE --tls-key FILE]   (serve https)
"""

import collections
import http.server
import os
import random
import select
import socket
import ssl
import sys
import threading
import time

from serving import arguments, record_request, serve

HANG_SECONDS = 600


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as webhook senders use it
    server_version = "webhook-test-receiver"

    def log_message(self, format, *args):
        pass                        # no access log on stderr

    def do_POST(self):
        self.handle_request()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST

    def handle_request(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        self.server.record(self, body)

        parts = self.path.split("?", 1)[0].strip("/").split("/")
        try:
            if parts[0] == "status" and len(parts) >= 2:
                code = int(parts[1])
                location = {"Location": "/ok"} if 300 <= code < 400 else {}
                self.answer(code, b"status %d" % code, location)
            elif parts[0] == "fail" and len(parts) >= 3:
                failing = self.server.count(self.path) <= int(parts[1])
                self.answer(500 if failing else 200, b"fail" if failing else b"ok")
            elif parts[0] == "fail-each" and len(parts) >= 2:
                event = self.headers.get("webhook-id", "")
                failing = self.server.count(self.path + "#" + event) <= int(parts[1])
                self.answer(500 if failing else 200, b"fail" if failing else b"ok")
            elif parts[0] == "blip" and len(parts) >= 4:
                count = self.server.count(self.path)
                failing = count >= 2 and (count - 2) % int(parts[1]) < int(parts[2])
                self.answer(503 if failing else 200, b"blip" if failing else b"ok")
            elif parts[0] == "flaky" and len(parts) >= 2:
                failing = random.random() * 100 < float(parts[1])
                self.answer(500 if failing else 200, b"fail" if failing else b"ok")
            elif parts[0] == "fail-type" and len(parts) >= 2:
                failing = self.headers.get("X-Webhook-Event", "") == parts[1]
                self.answer(500 if failing else 200, b"fail" if failing else b"ok")
            elif parts[0] == "retry-after" and len(parts) >= 4:
                failing = self.server.count(self.path) <= int(parts[2])
                if failing:
                    code = 503 if self.path.endswith("?status=503") else 429
                    self.answer(code, b"slow down", {"Retry-After": parts[1]})
                else:
                    self.answer(200, b"ok")
            elif parts[0] == "hang":
                self.hang()
            elif parts[0] == "slow" and len(parts) >= 2:
                time.sleep(int(parts[1]) / 1000.0)
                self.answer(200, b"ok")
            elif parts[0] == "big" and len(parts) >= 2:
                self.answer(200, b"x" * int(parts[1]))
            else:
                self.answer(200, b"ok")
        except ValueError:
            self.answer(400, b"malformed test path")

    def answer(self, code, body, headers=None):
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if code in (204, 304):      # these never carry a body
            self.end_headers()
            return
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def hang(self):
        """Hold the connection, answering nothing, until the client closes it."""
        deadline = time.monotonic() + HANG_SECONDS
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 1.0)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break       # the client closed the connection
                except OSError:
                    break
                time.sleep(1.0)     # data, not EOF: do not spin on it
        self.close_connection = True


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True           # hanging requests do not block exit
    request_queue_size = 1024       # listen backlog: the default 5 drops bursts

    def handle_error(self, request, client_address):
        """A client that hung up (a timeout, a stop) is no error of ours."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, port, log_path):
        super().__init__(("127.0.0.1", port), Handler)
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def count(self, path):
        """Count a request to this exact path; return how many so far."""
        with self.lock:
            self.counts[path] += 1
            return self.counts[path]

    def record(self, handler, body):
        record_request(self.log_file, self.lock, handler, body)


def main():
    parser = arguments("HTTP receiver for webhook tests")
    parser.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    parser.add_argument("--tls-key", help="... and this key (PEM)")
    args = parser.parse_args()

    server = Receiver(args.port, args.log)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return serve(server, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
