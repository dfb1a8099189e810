#!/usr/bin/python3
"""bench/receiver.py: the benchmarks' own receivers, in one asyncio process.

  --latency-port P   answers every request 204 at once and notes, per
                     webhook-id, when the request's last byte arrived
                     (time.time(), i.e. CLOCK_REALTIME, like the driver's
                     commit times).  GET /arrivals returns what it noted as
                     JSON lines "<webhook-id> <unix seconds>" and forgets them.
  --silent-port P    accepts connections, reads what is sent and never
                     answers: an endpoint that is up but dead.

Both print "ready" on stdout once they listen.  nginx is the throughput
receiver (it is faster than anything written here); this one exists because
nginx cannot log arrival times finer than a millisecond.
"""

import argparse
import asyncio
import time

arrivals = []


class LatencyProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for the worker's POSTs."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b''

    def data_received(self, data):
        now = time.time()
        self.buffer += data
        while True:
            end = self.buffer.find(b'\r\n\r\n')
            if end < 0:
                return
            head = self.buffer[:end].decode('latin-1').split('\r\n')
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(':')
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get('content-length', '0'))
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if head[0].startswith('GET /arrivals'):
                self.send_arrivals()
                continue
            arrivals.append('%s %.6f' % (headers.get('webhook-id', '-'), now))
            self.transport.write(b'HTTP/1.1 204 No Content\r\n\r\n')

    def send_arrivals(self):
        global arrivals
        body = ('\n'.join(arrivals) + '\n').encode() if arrivals else b''
        arrivals = []
        self.transport.write(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n'
                             b'Content-Length: %d\r\n\r\n' % len(body) + body)


class SilentProtocol(asyncio.Protocol):
    """Accept, read, never answer."""

    def data_received(self, data):
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--latency-port', type=int)
    parser.add_argument('--silent-port', type=int)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    servers = []
    if args.latency_port:
        servers.append(await loop.create_server(LatencyProtocol, '127.0.0.1',
                                                args.latency_port, backlog=1024))
    if args.silent_port:
        servers.append(await loop.create_server(SilentProtocol, '127.0.0.1',
                                                args.silent_port, backlog=1024))
    print('ready', flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
