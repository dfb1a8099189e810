#!/usr/bin/env python3
"""demo/receiver.py: the webhook receiver of the ledger demo.

Listens on 127.0.0.1 and, for every delivery, checks both signatures the
extension sends -- X-Webhook-Signature (hex HMAC-SHA256 of the body) and the
Standard Webhooks webhook-signature (base64 HMAC-SHA256 of id.timestamp.body)
-- with the secret of the endpoint the request's path belongs to, and, for
an endpoint of a customer (a tenant), that the event is that customer's (the
"org" of its data). It prints one line: endpoint, the event's org ("-" for
none), event type, event id (webhook-id), a check mark per signature
("sha256" for X-Webhook-Signature, "v1" for webhook-signature) and the
answer.
A request whose signatures do not verify is answered 401; an event of
another customer, 403.

  --secrets FILE     JSON {"/path": {"name": ..., "secret": ..., "tenant": ...},
                     ...} ("tenant" only for a customer's endpoint); read
                     again whenever it changes, so it can be written after
                     the receiver has started (the endpoints need its port)
  --fail /path=N     answer 500 to the first N requests to /path
  --stats FILE       JSON counts per path, rewritten after every request;
                     "events_by_org" counts the distinct events per org
  --port N           0 (the default) picks a free port
  --port-file FILE   where to write the port once listening

Only the Python standard library: hmac, hashlib, base64.
"""

import argparse
import base64
import collections
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '../test'))
from serving import serve  # noqa: E402

TOLERANCE_SECONDS = 5 * 60          # Standard Webhooks: reject older/newer


def as_bytes(header):
    """A header value as the bytes received (http.server decodes latin-1)."""
    return (header or "").encode("latin-1", "replace")


def verify_hex(secret, body, header):
    """X-Webhook-Signature: "sha256=" + hex HMAC-SHA256 of the raw body,
    keyed by the secret's bytes exactly as stored."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), as_bytes(header))


def verify_standard(secret, body, msg_id, timestamp, header):
    """webhook-signature: one of the space-separated "v1,<base64>" entries is
    the HMAC-SHA256 of "<id>.<timestamp>.<body>", keyed by the bytes the
    whsec_ secret encodes (or by the secret itself otherwise); the timestamp
    is within five minutes of now."""
    try:
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            return False
    except (TypeError, ValueError):
        return False
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = b"v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    return any(hmac.compare_digest(entry, expected) for entry in as_bytes(header).split())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ledger-demo-receiver"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        code, text = self.server.receive(self.path, self.headers, body)
        payload = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port, secrets_path, failures, stats_path):
        super().__init__(("127.0.0.1", port), Handler)
        self.secrets_path = secrets_path
        self.secrets = {}
        self.secrets_mtime = None
        self.failures = failures
        self.stats_path = stats_path
        self.lock = threading.Lock()
        self.requests = collections.Counter()
        self.stats = collections.defaultdict(lambda: collections.Counter())
        self.seen = collections.defaultdict(set)
        self.events_by_org = collections.defaultdict(lambda: collections.defaultdict(set))

    def endpoint(self, path):
        """The {"name", "secret"} of path, reading the secrets file again if
        it changed; None for an unknown path."""
        if self.secrets_path:
            try:
                mtime = os.stat(self.secrets_path).st_mtime_ns
                if mtime != self.secrets_mtime:
                    with open(self.secrets_path, encoding="utf-8") as f:
                        self.secrets = json.load(f)
                    self.secrets_mtime = mtime
            except (OSError, ValueError):
                pass
        return self.secrets.get(path)

    def receive(self, path, headers, body):
        """Check, count and print one delivery; return (status, body)."""
        with self.lock:
            self.requests[path] += 1
            stats = self.stats[path]
            stats["requests"] += 1
            endpoint = self.endpoint(path)
            msg_id = headers.get("webhook-id") or ""
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                event = {}
            event_type = headers.get("X-Webhook-Event") or "?"
            data = event.get("data")
            org = (data.get("org") if isinstance(data, dict) else None) or "-"
            again = msg_id in self.seen[path]
            self.seen[path].add(msg_id)
            self.events_by_org[path][org].add(msg_id)

            if endpoint is None:
                hex_ok = standard_ok = False
            else:
                hex_ok = verify_hex(endpoint["secret"], body, headers.get("X-Webhook-Signature"))
                standard_ok = verify_standard(endpoint["secret"], body, msg_id,
                                              headers.get("webhook-timestamp"),
                                              headers.get("webhook-signature"))
            consistent = event.get("id") == msg_id and event.get("type") == event_type
            tenant = endpoint.get("tenant") if endpoint else None
            stats["signatures_verified"] += hex_ok + standard_ok
            stats["signatures_rejected"] += (not hex_ok) + (not standard_ok)

            if not (hex_ok and standard_ok and consistent):
                stats["rejected"] += 1
                code, verdict = 401, "REJECTED: signature or body does not verify"
            elif tenant is not None and org != tenant:
                stats["other_customers"] += 1
                code, verdict = 403, "REJECTED: an event of %s, not of %s" % (org, tenant)
            elif self.requests[path] <= self.failures.get(path, 0):
                stats["failed_on_purpose"] += 1
                code, verdict = 500, "500, failing on purpose (%d of %d)" % (
                    self.requests[path], self.failures[path])
            else:
                stats["accepted"] += 1
                code, verdict = 200, "200"

            print("  %-11s %-10s %-23s %s  %s sha256 %s v1  %s%s"
                  % (endpoint["name"] if endpoint else path, org, event_type, msg_id,
                     "✓" if hex_ok else "✗", "✓" if standard_ok else "✗", verdict,
                     "  (retry, same webhook-id)" if again else ""),
                  flush=True)
            self.write_stats()
        return code, "ok" if code == 200 else verdict

    def write_stats(self):
        if not self.stats_path:
            return
        with open(self.stats_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({path: dict(counts,
                                  events_by_org={org: len(ids) for org, ids
                                                 in self.events_by_org[path].items()})
                       for path, counts in self.stats.items()}, f)
        os.replace(self.stats_path + ".tmp", self.stats_path)


def main():
    parser = argparse.ArgumentParser(description="webhook receiver of the ledger demo")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--secrets")
    parser.add_argument("--stats")
    parser.add_argument("--fail", action="append", default=[], metavar="/PATH=N")
    args = parser.parse_args()

    failures = {}
    for item in args.fail:
        path, _, count = item.rpartition("=")
        if not path.startswith("/") or not count.isdigit():
            parser.error("--fail takes /path=N, not %r" % item)
        failures[path] = int(count)

    server = Receiver(args.port, args.secrets, failures, args.stats)
    return serve(server, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
