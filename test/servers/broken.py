#!/usr/bin/env python3
"""test/servers/broken.py: an HTTP receiver that misbehaves, for the tests.

Listens on 127.0.0.1 only, reads each request (headers and body), logs it
as one JSON line as test/receiver.py does ({"method", "path", "headers",
"body", "received_at"}), then answers badly as the path says:

  /reset[/...]                 half a response, then a TCP reset
  /garbage[/...]               bytes that are not HTTP, then close
  /drip[/...]                  a status line dripped a byte a second, never
                               finished
  /endless/<code>[/...]        that status, then a chunked body that never ends
  /huge/<code>/<bytes>[/...]   that status and Content-Length: <bytes>, all sent
  /hang[/...]                  nothing at all, until the client leaves
  anything else                200 "ok"

When a connection ends, a second line {"path": "done:<path>", "bytes_sent",
"client_closed", "finished_at"} says how much of the answer was sent and
whether the client hung up first.

Usage: broken.py [--port N] [--port-file FILE] [--log FILE]
"""

import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from serving import arguments, serve  # noqa: E402

MAX_SECONDS = 600                   # no misbehaviour lasts longer than this


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.sent = 0
        self.client_closed = False
        request = self.read_request()
        if request is None:
            return
        method, path, headers, body = request
        self.server.record({
            "method": method,
            "path": path,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            "received_at": time.time(),
        })
        parts = path.split("?", 1)[0].strip("/").split("/")
        try:
            self.misbehave(parts)
        except OSError:
            self.client_closed = True
        self.server.record({
            "path": "done:" + path,
            "bytes_sent": self.sent,
            "client_closed": self.client_closed,
            "finished_at": time.time(),
        })

    def read_request(self):
        """Read one request; return (method, path, headers, body) or None."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(body) < length:
            chunk = self.request.recv(65536)
            if not chunk:
                return None
            body += chunk
        return method, path, headers, body

    def send(self, data):
        self.request.sendall(data)
        self.sent += len(data)

    def misbehave(self, parts):
        kind = parts[0]
        deadline = time.monotonic() + MAX_SECONDS
        if kind == "reset":
            self.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            time.sleep(0.2)
            # SO_LINGER with a zero timeout: close() sends RST, not FIN
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            self.request.close()
        elif kind == "garbage":
            self.send(b"\x00\x01 this is not HTTP at all \xff\xfe\r\n\r\n")
        elif kind == "drip":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" * 100:
                if time.monotonic() > deadline:
                    break
                self.send(bytes([byte]))
                time.sleep(1.0)
        elif kind == "endless" and len(parts) >= 2:
            self.send(b"HTTP/1.1 %d Endless\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: text/plain\r\n\r\n" % int(parts[1]))
            chunk = b"x" * 65536
            while time.monotonic() < deadline:
                self.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif kind == "huge" and len(parts) >= 3:
            size = int(parts[2])
            self.send(b"HTTP/1.1 %d Huge\r\nContent-Length: %d\r\n"
                      b"Content-Type: text/plain\r\n\r\n" % (int(parts[1]), size))
            chunk = b"y" * 65536
            left = size
            while left > 0:
                self.send(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
        elif kind == "hang":
            self.request.settimeout(1.0)
            while time.monotonic() < deadline:
                try:
                    if not self.request.recv(1):
                        break       # the client left
                except socket.timeout:
                    pass
            self.client_closed = True
        else:
            self.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                      b"Connection: close\r\n\r\nok")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024       # listen backlog: the default 5 drops bursts

    def __init__(self, port, log_path):
        super().__init__(("127.0.0.1", port), Handler)
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self.lock = threading.Lock()

    def record(self, entry):
        if self.log_file is None:
            return
        with self.lock:
            self.log_file.write(json.dumps(entry) + "\n")
            self.log_file.flush()

    def handle_error(self, request, client_address):
        pass                        # a client that leaves is no error here


def main():
    parser = arguments("misbehaving HTTP receiver for tests")
    args = parser.parse_args()

    server = Server(args.port, args.log)
    return serve(server, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
