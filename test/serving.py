"""test/serving.py: the end of every test and demo HTTP server's main().

Exits at once on SIGTERM, writes the bound port where the caller waits
for it (write then rename, so a reader never sees a partial number), and
serves until stopped.
"""

import os
import signal


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
