"""bench/chaos.py: the fault-injection run (bench/chaos runs it).

A steady stream of emitting transactions -- most committed, some rolled
back, some prepared and then committed or rolled back later -- goes to three
endpoints (one of them failing a share of its requests at random) while
faults are injected one after another: SIGKILL to the delivery worker, to a
backend, to the postmaster; a restart of a receiver; a worker starved of
file descriptors; and once, a failover to a synchronous standby. At the end,
from what the receivers recorded and what the surviving database holds, it
checks that:

- every committed event reached every endpoint (lost: 0);
- no event that does not exist -- rolled back, or lost in the failover --
  was ever received (phantom: 0);
- an event whose commit returned is there after the failover (the standby
  is synchronous);
- repeats have the same webhook-id (they are counted).

It prints the figures and writes them to the results file given.
"""

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import PG_BINDIR, Postgres, free_port, log, machine_description, wait_until  # noqa: E402

RECEIVER = os.path.join(HERE, '..', 'test', 'receiver.py')


class Receiver:
    """test/receiver.py on a fixed port, restartable, logging to one file."""

    def __init__(self, root, name):
        self.port = free_port()
        self.log = os.path.join(root, 'receiver-%s.jsonl' % name)
        self.start()

    def start(self):
        port_file = self.log + '.port'
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.process = subprocess.Popen(
            [sys.executable, RECEIVER, '--port', str(self.port), '--log', self.log,
             '--port-file', port_file], stdin=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(port_file), 30, 0.05, 'a receiver to start')

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def url(self, path):
        return 'http://127.0.0.1:%d%s' % (self.port, path)

    def receipts(self):
        """[(webhook-id, received_at)] of every request, in order."""
        result = []
        if not os.path.exists(self.log):
            return result
        with open(self.log, encoding='utf-8') as f:
            for line in f:
                if line.endswith('\n'):
                    r = json.loads(line)
                    result.append((r['headers'].get('webhook-id'), r['received_at']))
        return result


def run(node, statements, db='bench'):
    """Run statements on node, each on its own (autocommit), closing after;
    the last one's rows."""
    conn = node.connect(db)
    try:
        cur = conn.cursor()
        rows = None
        for statement in statements:
            if isinstance(statement, tuple):
                cur.execute(*statement)
            else:
                cur.execute(statement)
            rows = cur.fetchall() if cur.description else None
        return rows
    finally:
        conn.close()


class Cluster:
    """The primary (and, until the failover, its synchronous standby)."""

    def __init__(self, root, with_standby):
        conf = ["webhook.retry_schedule = '200ms,500ms,1s,2s,2s,2s,2s,2s,2s,2s'",
                "webhook.poll_interval = '200ms'", 'max_prepared_transactions = 20',
                'max_wal_senders = 4', "wal_level = replica", 'max_connections = 60']
        self.root = root
        self.primary = Postgres(os.path.join(root, 'primary'), conf)
        run(self.primary, ['CREATE DATABASE bench'], 'postgres')
        run(self.primary, ['CREATE EXTENSION webhook_outbox'])
        self.standby = None
        if with_standby:
            self._start_standby()

    def _start_standby(self):
        standby = Postgres.standby_of(self.primary, os.path.join(self.root, 'standby'))
        self.standby = standby
        run(self.primary, ["ALTER SYSTEM SET synchronous_standby_names = 'standby'",
                           'SELECT pg_reload_conf()'], 'postgres')
        wait_until(lambda: self.one("SELECT count(*) FROM pg_stat_replication "
                                    "WHERE application_name = 'standby' AND sync_state = 'sync'",
                                    db='postgres') == 1, 60, 0.2, 'the standby to be synchronous')

    def one(self, query, args=None, db='bench'):
        return run(self.primary, [(query, args)], db)[0][0]

    def pids(self, where):
        try:
            return [r[0] for r in run(self.primary,
                                      ['SELECT pid FROM pg_stat_activity WHERE ' + where],
                                      'postgres')]
        except psycopg2.Error:
            return []

    def wait_up(self):
        wait_until(lambda: self.primary._accepts(), 120, 0.2, 'PostgreSQL to accept connections')

    def _kill(self, node):
        """SIGKILL to a postmaster; returns once its children have left."""
        children = subprocess.run(['pgrep', '-P', str(node.process.pid)],
                                  capture_output=True, text=True).stdout.split()
        node.process.kill()
        node.process.wait()

        def children_gone():
            return not any(os.path.exists('/proc/%s' % pid) for pid in children)
        wait_until(children_gone, 60, 0.1, 'the old backends to exit')

    def kill_postmaster(self):
        """SIGKILL to the postmaster, then start it again."""
        self._kill(self.primary)
        self.primary.start()

    def failover(self):
        """The primary dies; the synchronous standby is promoted."""
        self._kill(self.primary)
        subprocess.run([os.path.join(PG_BINDIR, 'pg_ctl'), 'promote', '-w', '-D', self.standby.data],
                       check=True, stdout=subprocess.DEVNULL)
        self.primary, self.standby = self.standby, None
        self.wait_up()


class Emitters:
    """Threads emitting one event per transaction, noting what each became."""

    def __init__(self, cluster, threads=4, rate=200):
        self.cluster = cluster
        self.lock = threading.Lock()
        self.state = {}          # seq -> committed | rolled_back | unknown | prepared
        self.committed_at = {}   # seq -> time its COMMIT returned
        self.prepared = []       # (gid, seq, when to resolve)
        self.next_seq = 0
        self.stop_event = threading.Event()
        self.interval = threads / rate
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.resolver = threading.Thread(target=self._resolve, daemon=True)

    def start(self):
        for t in self.threads:
            t.start()
        self.resolver.start()

    def _seq(self):
        with self.lock:
            self.next_seq += 1
            return self.next_seq

    def _connect(self, until_stopped=True):
        """A connection to the current primary, retried while it restarts;
        None once the emitters are stopped (unless until_stopped is off)."""
        while not (until_stopped and self.stop_event.is_set()):
            try:
                conn = psycopg2.connect(connect_timeout=2, **self.cluster.primary.dsn())
                conn.autocommit = True
                return conn
            except psycopg2.Error:
                time.sleep(0.2)
        return None

    def _run(self):
        conn = None
        while not self.stop_event.is_set():
            if conn is None:
                conn = self._connect()
                if conn is None:
                    return
            seq = self._seq()
            choice = random.random()
            try:
                cur = conn.cursor()
                cur.execute('BEGIN')
                cur.execute("SELECT webhook.emit('journal_entry.posted', %s::jsonb)",
                            (json.dumps({'seq': seq}),))
                if choice < 0.7:
                    with self.lock:
                        self.state[seq] = 'unknown'
                    cur.execute('COMMIT')
                    with self.lock:
                        self.state[seq] = 'committed'
                        self.committed_at[seq] = time.time()
                elif choice < 0.85:
                    cur.execute('ROLLBACK')
                    with self.lock:
                        self.state[seq] = 'rolled_back'
                else:
                    gid = 'chaos-%d' % seq
                    with self.lock:
                        self.state[seq] = 'unknown'
                    cur.execute('PREPARE TRANSACTION %s', (gid,))
                    with self.lock:
                        self.state[seq] = 'prepared'
                        self.prepared.append((gid, seq, time.time() + random.uniform(0.2, 2.0)))
            except psycopg2.Error:
                with self.lock:
                    if self.state.get(seq) is None:
                        self.state[seq] = 'rolled_back'     # failed before its commit
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
                time.sleep(0.1)
            time.sleep(self.interval)

    def _resolve(self, everything=False):
        conn = None
        while everything or not self.stop_event.is_set():
            now = time.time()
            with self.lock:
                due = [p for p in self.prepared if everything or p[2] <= now]
            if not due:
                if everything:
                    return
                time.sleep(0.05)
                continue
            for gid, seq, _ in due:
                if conn is None:
                    conn = self._connect(until_stopped=False)
                commit = random.random() < 0.7
                try:
                    with self.lock:
                        self.state[seq] = 'unknown'
                    conn.cursor().execute(('COMMIT PREPARED %s' if commit else 'ROLLBACK PREPARED %s'),
                                          (gid,))
                    with self.lock:
                        self.state[seq] = 'committed' if commit else 'rolled_back'
                        if commit:
                            self.committed_at[seq] = time.time()
                        self.prepared = [p for p in self.prepared if p[0] != gid]
                except psycopg2.Error:
                    # lost with a failover, or the server restarting: try later
                    with self.lock:
                        self.state[seq] = 'prepared'
                    conn = None
                    time.sleep(0.2)

    def stop(self):
        self.stop_event.set()
        for t in self.threads + [self.resolver]:
            t.join(30)
        # Prepared transactions still open: those the server still has are
        # resolved; the others were lost with the old primary (uncommitted).
        conn = self._connect(until_stopped=False)
        cur = conn.cursor()
        cur.execute('SELECT gid FROM pg_prepared_xacts')
        alive = {r[0] for r in cur.fetchall()}
        with self.lock:
            self.prepared = [p for p in self.prepared if p[0] in alive]
        self._resolve(everything=True)
        conn.close()


def inject(cluster, receivers, kind):
    """One fault; returns what was done, for the log."""
    if kind == 'kill worker':
        pids = cluster.pids("backend_type = 'webhook_outbox worker'")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        cluster.wait_up()
        return '%s (%d process)' % (kind, len(pids))
    if kind == 'kill backend':
        pids = cluster.pids("backend_type = 'client backend' AND pid <> pg_backend_pid()")
        if pids:
            os.kill(random.choice(pids), signal.SIGKILL)
        time.sleep(0.5)
        cluster.wait_up()
        return kind
    if kind == 'kill postmaster':
        cluster.kill_postmaster()
        return kind
    if kind == 'restart receiver':
        receivers[2].stop()
        time.sleep(1.0)
        receivers[2].start()
        return kind
    if kind == 'starve worker of file descriptors':
        # the worker's soft limit lowered to 12 open files for 2 s: sockets,
        # curl handles and relation files fail to open meanwhile
        wait_until(lambda: [p for p in cluster.pids("backend_type = 'webhook_outbox worker'")
                            if os.path.exists('/proc/%d' % p)], 30, 0.1, 'a worker')
        done = []
        for pid in cluster.pids("backend_type = 'webhook_outbox worker'"):
            try:
                soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (12, hard))
                done.append((pid, soft, hard))
            except OSError as e:
                return '%s (not done: %s)' % (kind, e)
        time.sleep(2.0)
        for pid, soft, hard in done:
            try:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            except OSError:
                pass            # it died meanwhile, and its successor has its own
        return kind
    if kind == 'failover':
        cluster.failover()
        return kind
    raise ValueError(kind)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=int, default=90)
    parser.add_argument('--every', type=float, default=4.0, help='seconds between faults')
    parser.add_argument('--no-standby', action='store_true')
    parser.add_argument('--results', help='append the figures to this file')
    parser.add_argument('--command', default='bench/chaos')
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix='webhook-chaos.')
    cluster = Cluster(root, not args.no_standby)
    receivers = [Receiver(root, 'a'), Receiver(root, 'flaky'), Receiver(root, 'c')]
    paths = ['/ok/a', '/flaky/20/b', '/ok/c']
    run(cluster.primary, [("SELECT webhook.create_webhook(%s, ARRAY['journal_entry.*'])",
                           (r.url(path),)) for r, path in zip(receivers, paths)])
    emitters = Emitters(cluster)
    emitters.start()
    started = time.time()

    kinds = ['kill worker', 'restart receiver', 'kill backend', 'starve worker of file descriptors',
             'kill postmaster']
    faults = []
    failover_at = started + args.seconds * 2 / 3 if cluster.standby else None
    i = 0
    while time.time() - started < args.seconds:
        time.sleep(args.every)
        if failover_at and time.time() >= failover_at:
            kind = 'failover'
            failover_at = None
        else:
            kind = kinds[i % len(kinds)]
            i += 1
        done = inject(cluster, receivers, kind)
        faults.append(done)
        log('chaos: %s' % done)
    emitters.stop()

    # Settle: every delivery recorded (the flaky endpoint retries).
    wait_until(lambda: cluster.one("SELECT count(*) FROM webhook.deliveries WHERE status = 'pending'")
               == 0 and cluster.one('SELECT undispatched_events FROM webhook.queue_status') == 0,
               300, 0.5, 'every delivery to settle')
    time.sleep(1.0)

    in_db = dict(run(cluster.primary, ["SELECT id::text, (payload->>'seq')::int FROM webhook.events "
                                       "WHERE event_type = 'journal_entry.posted'"]))
    not_succeeded = cluster.one("SELECT count(*) FROM webhook.deliveries WHERE status <> 'succeeded'")
    seqs_in_db = set(in_db.values())
    committed = {s for s, st in emitters.state.items() if st == 'committed'}
    rolled_back = {s for s, st in emitters.state.items() if st == 'rolled_back'}
    unknown = {s for s, st in emitters.state.items() if st in ('unknown', 'prepared')}

    lost = phantom = duplicates = flaky_repeats = received_rolled_back = 0
    longest_wait = 0.0
    receipts_of = {r: r.receipts() for r in receivers}
    first_arrival = {}          # seq -> its earliest receipt at any endpoint
    for r in receivers:
        receipts = receipts_of[r]
        ids = [wid for wid, _ in receipts]
        distinct = set(ids)
        if r is receivers[1]:
            flaky_repeats += len(ids) - len(distinct)     # its 500s are retried
        else:
            duplicates += len(ids) - len(distinct)
        lost += len(set(in_db) - distinct)
        phantom += len(distinct - set(in_db))
        for wid, at in receipts:
            if wid in in_db:
                seq = in_db[wid]
                first_arrival[seq] = min(at, first_arrival.get(seq, at))
    for seq, at in first_arrival.items():
        if seq in emitters.committed_at:
            longest_wait = max(longest_wait, at - emitters.committed_at[seq])
    received_rolled_back = len(rolled_back & seqs_in_db)
    committed_missing = len(committed - seqs_in_db)

    figures = [
        ('faults injected', len(faults)),
        ('transactions', len(emitters.state)),
        ('committed (as the client saw it)', len(committed)),
        ('rolled back', len(rolled_back)),
        ('outcome unknown to the client (cut by a fault)', len(unknown)),
        ('events in the database at the end', len(in_db)),
        ('lost: an event in the database missing at an endpoint', lost),
        ('phantom: received, but no such event', phantom),
        ('rolled back yet in the database', received_rolled_back),
        ('committed but gone after the failover', committed_missing),
        ('deliveries not succeeded at the end', not_succeeded),
        ('requests to the two healthy endpoints', len(receipts_of[receivers[0]]) +
         len(receipts_of[receivers[2]])),
        ('... of which repeats, around the faults (same webhook-id)', duplicates),
        ('retries at the endpoint failing 20% (same webhook-id)', flaky_repeats),
        ('longest wait, commit to first arrival (s)', round(longest_wait, 2)),
    ]
    ok = lost == 0 and phantom == 0 and received_rolled_back == 0 and committed_missing == 0 \
        and not_succeeded == 0
    for name, value in figures:
        print('%-56s %s' % (name, value))
    print('faults: %s' % ', '.join(faults))
    print('chaos: %s' % ('PASS' if ok else 'FAIL'))
    if args.results:
        with open(args.results, 'w') as f:
            f.write('## %s: `%s`\n\n' % (time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                                         args.command))
            m = machine_description()
            f.write('- Machine: %d CPUs (%s), %s RAM, Linux %s\n'
                    % (m['nproc'], m['cpu'], m['memory'], m['kernel']))
            f.write('- %d s of faults every %.0f s%s; 4 emitting threads at 200 transactions/s '
                    '(70%% committed, 15%% rolled back, 15%% prepared then 70%% committed); '
                    'three endpoints, one failing 20%% of requests at random\n'
                    % (args.seconds, args.every,
                       ', with a failover to a synchronous standby' if not args.no_standby else ''))
            f.write('- Faults: %s\n\n' % ', '.join(faults))
            f.write('| figure | value |\n|---|---|\n')
            for name, value in figures:
                f.write('| %s | %s |\n' % (name, value))
            f.write('\nResult: **%s**\n' % ('PASS' if ok else 'FAIL'))
    for r in receivers:
        r.stop()
    cluster.primary.stop()
    if cluster.standby:
        cluster.standby.stop()
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
