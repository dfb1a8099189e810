"""test/serving.py: what the test and demo HTTP servers share.

arguments() starts each server's command line (--port, --port-file,
--log). serve() ends its main(): it exits at once on SIGTERM, writes the
bound port where the caller waits for it (write then rename, so a reader
never sees a partial number), and serves until stopped. record_request()
appends a request to the JSON-lines log the TAP tests read.
"""

import argparse
import json
import os
import signal
import time


def arguments(description):
    """The command line every test server takes (--port, --port-file,
    --log); a server adds its own options to the parser returned."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--port-file", help="write the bound port here")
    parser.add_argument("--log", help="append one JSON line per request here")
    return parser


def record_request(log_file, lock, handler, body):
    """Append one JSON line describing handler's request to log_file, if any."""
    if log_file is None:
        return
    line = json.dumps({
        "method": handler.command,
        "path": handler.path,
        "headers": {k.lower(): v for k, v in handler.headers.items()},
        "body": body.decode("utf-8", errors="replace"),
        "received_at": time.time(),
    })
    with lock:
        log_file.write(line + "\n")
        log_file.flush()


def serve(server, port_file=None):
    """Announce server's port in port_file, then serve until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    if port_file:
        with open(port_file + ".tmp", "w") as f:
            f.write("%d\n" % server.server_address[1])
        os.replace(port_file + ".tmp", port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
