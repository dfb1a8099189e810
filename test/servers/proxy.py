#!/usr/bin/env python3
"""test/servers/proxy.py: a tiny forward HTTP proxy for the tests.

Listens on 127.0.0.1 only. Takes requests in absolute form ("POST
http://host:port/path HTTP/1.1"), logs each as one JSON line ({"method",
"path" (the absolute URL), "headers", "body", "received_at"}, as
test/receiver.py does), passes it on to its origin and relays the answer.
Plain http only: a CONNECT (https) is logged and refused with 501.

Usage: proxy.py [--port N] [--port-file FILE] [--log FILE]
"""

import http.client
import http.server
import os
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from serving import arguments, record_request, serve  # noqa: E402

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_CONNECT(self):
        self.server.record(self, b"")
        self.send_error(501, "CONNECT is not supported by this test proxy")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        self.server.record(self, body)

        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            self.send_error(400, "absolute http URL expected")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        origin_path = target.path or "/"
        if target.query:
            origin_path += "?" + target.query
        try:
            upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
            upstream.request(self.command, origin_path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError as e:
            self.send_error(502, "upstream failed: %s" % e)
            return
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Via", "1.1 webhook-test-proxy")
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST


class Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024       # listen backlog: the default 5 drops bursts

    def __init__(self, port, log_path):
        super().__init__(("127.0.0.1", port), Handler)
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self.lock = threading.Lock()

    def record(self, handler, body):
        record_request(self.log_file, self.lock, handler, body)


def main():
    parser = arguments("forward HTTP proxy for tests")
    args = parser.parse_args()

    server = Proxy(args.port, args.log)
    return serve(server, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
