"""bench/harness.py: what the benchmarks run on.

A throwaway PostgreSQL (initdb in a temporary directory, the library
preloaded, the worker serving database "bench"), nginx answering 204 on
loopback ports, the latency receiver (bench/receiver.py), and the helpers
the scenarios share: emit a backlog, wait for it to drain without stealing
CPU, time it from the worker's own attempt history, sample the machine.

Everything runs as the calling user (bench/run makes that an unprivileged
one) and lives in one temporary directory removed at the end.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
PG_BINDIR = os.environ.get('PG_BINDIR') or '/usr/lib/postgresql/15/bin'
NGINX = shutil.which('nginx', path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin') or '/usr/sbin/nginx'
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')

# The payload of every benchmark event: a posted journal entry, as a ledger
# would send it (about 300 bytes of JSON, 420 on the wire with the envelope).
PAYLOAD_SQL = """
CREATE FUNCTION public.bench_payload(i bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object(
    'id', i,
    'number', 'JE-2026-' || lpad(i::text, 7, '0'),
    'date', '2026-11-24',
    'status', 'posted',
    'currency', 'EUR',
    'description', 'Office rent, November',
    'lines', jsonb_build_array(
        jsonb_build_object('account', '6132', 'debit', '1250.00', 'credit', '0.00'),
        jsonb_build_object('account', '5121', 'debit', '0.00', 'credit', '1250.00')),
    'posted_by', 'accounting@example.com')
"""


def payload(i):
    """The same payload as public.bench_payload(i), built client-side."""
    return {
        'id': i, 'number': 'JE-2026-%07d' % i, 'date': '2026-11-24',
        'status': 'posted', 'currency': 'EUR',
        'description': 'Office rent, November',
        'lines': [{'account': '6132', 'debit': '1250.00', 'credit': '0.00'},
                  {'account': '5121', 'debit': '0.00', 'credit': '1250.00'}],
        'posted_by': 'accounting@example.com'}


def log(message):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), message), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_until(condition, timeout, interval, what):
    """Poll condition() until it returns a true value; raise after timeout."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError('timed out after %ds waiting for %s' % (timeout, what))
        time.sleep(interval)


def median(values):
    return statistics.median(values) if values else float('nan')


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float('nan')
    rank = max(1, int(-(-p * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Postgres:
    """A throwaway cluster, started as a child of this process."""

    def __init__(self, root, extra_conf=()):
        self.root = root
        self.data = os.path.join(root, 'pgdata')
        self.logfile = os.path.join(root, 'postgres.log')
        self.port = free_port()
        subprocess.run([os.path.join(PG_BINDIR, 'initdb'), '-D', self.data, '-U', 'postgres',
                        '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'],
                       check=True, stdout=subprocess.DEVNULL)
        conf = [
            "listen_addresses = ''",
            "unix_socket_directories = '%s'" % root,
            'port = %d' % self.port,
            "shared_preload_libraries = 'webhook_outbox'",
            "webhook.databases = 'bench'",
            'webhook.allow_private_networks = on',
            "shared_buffers = '512MB'",
            "max_wal_size = '8GB'",
            "checkpoint_timeout = '30min'",
            'max_connections = 50',
            "log_line_prefix = '%m [%p] '",
            'log_min_messages = warning',
        ] + list(extra_conf)
        with open(os.path.join(self.data, 'postgresql.conf'), 'a') as f:
            f.write('\n'.join(conf) + '\n')
        self.start()

    @classmethod
    def standby_of(cls, primary, root):
        """A hot standby of primary in root, streaming as application_name
        'standby', started."""
        standby = cls.__new__(cls)
        standby.root = root
        standby.data = os.path.join(root, 'pgdata')
        standby.logfile = os.path.join(root, 'postgres.log')
        standby.port = free_port()
        os.makedirs(root)
        subprocess.run([os.path.join(PG_BINDIR, 'pg_basebackup'), '-D', standby.data,
                        '-X', 'stream', '-h', primary.root, '-p', str(primary.port),
                        '-U', 'postgres', '--no-sync'], check=True)
        with open(os.path.join(standby.data, 'postgresql.conf'), 'a') as f:
            f.write("port = %d\nunix_socket_directories = '%s'\n"
                    "primary_conninfo = 'host=%s port=%d user=postgres application_name=standby'\n"
                    % (standby.port, root, primary.root, primary.port))
        open(os.path.join(standby.data, 'standby.signal'), 'w').close()
        standby.start()
        return standby

    def start(self):
        self.process = subprocess.Popen([os.path.join(PG_BINDIR, 'postgres'), '-D', self.data],
                                        stdout=open(self.logfile, 'a'), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        wait_until(self._accepts, 60, 0.1, 'PostgreSQL to start (see %s)' % self.logfile)

    def _accepts(self):
        if self.process.poll() is not None:
            raise RuntimeError('PostgreSQL exited; see %s' % self.logfile)
        try:
            psycopg2.connect(**self.dsn('postgres')).close()
            return True
        except psycopg2.OperationalError:
            return False

    def dsn(self, dbname='bench'):
        return {'host': self.root, 'port': self.port, 'user': 'postgres', 'dbname': dbname}

    def connect(self, dbname='bench'):
        conn = psycopg2.connect(**self.dsn(dbname))
        conn.autocommit = True
        return conn

    def env(self, **extra):
        """Environment for libpq programs (psql, pgbench)."""
        env = dict(os.environ, PGHOST=self.root, PGPORT=str(self.port), PGUSER='postgres',
                   PGDATABASE='bench')
        env.update(extra)
        return env

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)     # fast shutdown
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Nginx:
    """nginx answering 204 to everything on `count` loopback ports (503 to
    one request in ten under /flaky, as a load balancer would; 500 under
    /flaky500, after which nginx closes the connection; /steady draws the
    same lot and answers 204 anyway, for the healthy side of that
    comparison), plus a
    stub_status port that counts requests (progress without asking the
    database)."""

    def __init__(self, root, count=10):
        self.dir = os.path.join(root, 'nginx')
        os.makedirs(self.dir)
        self.ports = [free_port() for _ in range(count)]
        self.status_port = free_port()
        self.status_polls = 0
        servers = '\n'.join(
            '    server { listen 127.0.0.1:%d reuseport backlog=4096; location / { return 204; }'
            ' location /steady { if ($flaky) { return 204; } return 204; }'
            ' location /flaky { if ($flaky) { return 503; } return 204; }'
            ' location /flaky500 { if ($flaky) { return 500; } return 204; } }' % p
            for p in self.ports)
        temp = ''.join('    %s_temp_path %s/%s;\n' % (t, self.dir, t)
                       for t in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
        conf = os.path.join(self.dir, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write("""# written by bench/harness.py
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    # /flaky, /flaky500: one request in ten fails, as behind a load balancer that drops some
    split_clients "${request_id}" $flaky { 10%% 1; * 0; }
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
%(temp)s%(servers)s
    server { listen 127.0.0.1:%(status)d; location / { stub_status; } }
}
""" % {'dir': self.dir, 'temp': temp, 'servers': servers, 'status': self.status_port})
        self.process = subprocess.Popen([NGINX, '-p', self.dir, '-c', conf,
                                         '-e', os.path.join(self.dir, 'error.log')],
                                        stdin=subprocess.DEVNULL)
        wait_until(self._accepts, 30, 0.05, 'nginx to start')
        self.version = subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.strip()

    def _accepts(self):
        if self.process.poll() is not None:
            raise RuntimeError('nginx exited; see %s/error.log' % self.dir)
        try:
            with socket.create_connection(('127.0.0.1', self.status_port), 1):
                return True
        except OSError:
            return False

    def url(self, i=0, path='/hooks/ledger'):
        return 'http://127.0.0.1:%d%s' % (self.ports[i], path)

    def requests(self):
        """Requests nginx has answered, not counting our own status polls."""
        with urllib.request.urlopen('http://127.0.0.1:%d/' % self.status_port) as r:
            text = r.read().decode()
        self.status_polls += 1
        # "server accepts handled requests\n a b c"
        return int(text.split('\n')[2].split()[2]) - self.status_polls

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class Receiver:
    """bench/receiver.py: arrival times per webhook-id, and a dead socket."""

    def __init__(self):
        self.latency_port = free_port()
        self.silent_port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'receiver.py'),
             '--latency-port', str(self.latency_port), '--silent-port', str(self.silent_port)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        if self.process.stdout.readline().strip() != 'ready':
            raise RuntimeError('bench/receiver.py did not start')

    def url(self, silent=False):
        return 'http://127.0.0.1:%d/hooks/ledger' % (self.silent_port if silent else self.latency_port)

    def arrivals(self):
        """{webhook-id: arrival time} noted since the previous call."""
        with urllib.request.urlopen('http://127.0.0.1:%d/arrivals' % self.latency_port) as r:
            lines = r.read().decode().split('\n')
        result = {}
        for line in lines:
            if line:
                wid, t = line.split(' ')
                result.setdefault(wid, float(t))
        return result

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class CpuMeter:
    """CPU used on the machine, split into ours (this process and its
    descendants: PostgreSQL, nginx, receiver, pgbench, wrk) and everyone
    else's, to say whether the machine was shared while we measured."""

    def __init__(self):
        self.root = os.getpid()

    @staticmethod
    def _machine_busy():
        with open('/proc/stat') as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS

    def _ours(self):
        stats = {}
        for name in os.listdir('/proc'):
            if not name.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % name) as f:
                    text = f.read()
            except OSError:
                continue
            rest = text[text.rfind(')') + 2:].split()
            stats[int(name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))  # ppid, u+s+cu+cs
        total = 0
        for pid, (_, ticks) in stats.items():
            p = pid
            while p in stats and p != self.root and p > 1:
                p = stats[p][0]
            if p == self.root:
                total += ticks
        # children reaped by this process (psql, pgbench, wrk, restarted servers)
        t = os.times()
        return total / CLOCK_TICKS + t.children_user + t.children_system

    def snapshot(self):
        return (time.time(), self._machine_busy(), self._ours())

    @staticmethod
    def foreign_cores(start, end):
        """Average number of cores others kept busy between two snapshots."""
        wall = end[0] - start[0]
        if wall <= 0:
            return 0.0
        return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / wall)


def machine_description():
    with open('/proc/cpuinfo') as f:
        models = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    with open('/proc/meminfo') as f:
        mem_kb = int(next(l for l in f if l.startswith('MemTotal')).split()[1])
    return {
        'nproc': os.cpu_count(),
        'cpu': models[0] if models else 'unknown',
        'memory': '%.1f GiB' % (mem_kb / 1024 / 1024),
        'kernel': os.uname().release,
    }


class Bench:
    """The running set-up the scenarios use: server, admin connection,
    nginx, receiver, and helpers."""

    def __init__(self, keep=False):
        self.root = tempfile.mkdtemp(prefix='webhook-bench.')
        os.chmod(self.root, 0o755)
        self.keep = keep
        self.pg = None
        self.nginx = None
        self.receiver = None
        self.costs = []

    def start(self, profile=False):
        log('starting PostgreSQL, nginx and the latency receiver in %s' % self.root)
        extra = []
        if profile:
            extra = ["shared_preload_libraries = 'webhook_outbox, pg_stat_statements'",
                     'pg_stat_statements.track = all', 'track_functions = all']
        # BENCH_CONF: extra postgresql.conf lines, ";"-separated, for experiments
        # (RESULTS.md records them).
        extra += [line.strip() for line in os.environ.get('BENCH_CONF', '').split(';') if line.strip()]
        self.pg = Postgres(self.root, extra)
        admin = self.pg.connect('postgres')
        admin.cursor().execute('CREATE DATABASE bench')
        admin.close()
        self.db = self.pg.connect()
        self.profile = profile
        if profile:
            self.sql('CREATE EXTENSION pg_stat_statements')
        self.sql('CREATE EXTENSION webhook_outbox')
        self.sql(PAYLOAD_SQL)
        self.nginx = Nginx(self.root)
        self.receiver = Receiver()
        self.pg_version = self.one('SHOW server_version')
        wait_until(lambda: (self.worker_activity() or '').startswith('delivering'), 60, 0.2,
                   'the delivery worker to start')

    def stop(self):
        for part in (self.receiver, self.nginx, self.pg):
            if part is not None:
                try:
                    part.stop()
                except Exception as e:      # keep stopping the others
                    log('could not stop %s: %s' % (type(part).__name__, e))
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log('kept %s' % self.root)

    # --- SQL ---------------------------------------------------------------

    def sql(self, query, args=None, conn=None):
        cur = (conn or self.db).cursor()
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None

    def one(self, query, args=None, conn=None):
        rows = self.sql(query, args, conn)
        return rows[0][0] if rows else None

    def now(self):
        return self.one('SELECT clock_timestamp()')

    def worker_pid(self):
        return self.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'")

    def worker_activity(self):
        return self.one("SELECT query FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'")

    def worker_counters(self):
        """(worker CPU seconds, transactions committed in the bench database)."""
        self.sql('SELECT pg_stat_clear_snapshot()')
        return (process_cpu_seconds(self.worker_pid()),
                self.one("SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"))

    def note_worker_cost(self, before, deliveries):
        """Log (and keep, in self.costs) the worker's CPU time per delivery and
        deliveries per transaction since before = worker_counters(). The
        statistics are flushed at most once a second: wait for that."""
        time.sleep(1.1)
        after = self.worker_counters()
        cost = (1e6 * (after[0] - before[0]) / deliveries,
                deliveries / max(1, after[1] - before[1]))
        self.costs.append(cost)
        log('   worker: %.0f us of CPU per delivery, %.1f deliveries per pass' % cost)

    def statement_profile(self, limit=12):
        """With --profile: the statements that took the most time (the
        worker's included, nested ones too), then forget them."""
        if not self.profile:
            return
        rows = self.sql(
            "SELECT calls, round(total_exec_time::numeric, 0), round(mean_exec_time::numeric, 3), "
            "       round(mean_plan_time::numeric, 3), rows, "
            "       regexp_replace(left(query, 110), '\\s+', ' ', 'g') "
            "  FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT %s", (limit,))
        log('   statements (calls, total ms, mean ms, mean plan ms, rows, query):')
        for r in rows:
            log('     %8d %8s %8s %8s %9d  %s' % r)
        self.sql('SELECT pg_stat_statements_reset()')

    def create_endpoint(self, url, event_types=None, enabled=True, tenant=None):
        return self.one('SELECT id FROM webhook.create_webhook(%s, %s::text[], enabled => %s, '
                        'tenant => %s)', (url, event_types, enabled, tenant))

    def set_enabled(self, endpoint, enabled):
        self.sql('SELECT 1 FROM webhook.update_webhook(%s, enabled => %s)', (endpoint, enabled))

    def delete_endpoints(self):
        """Delete every endpoint (pending deliveries are cancelled) and wait
        until the worker has nothing left in flight."""
        self.sql('SELECT webhook.delete_webhook(id) FROM webhook.endpoints')
        def idle():
            activity = self.worker_activity()
            # "delivering: 0 in flight", perhaps with the endpoints that wait
            return activity is None or activity.split(';')[0] == 'delivering: 0 in flight'

        wait_until(idle,
                   60, 0.5, 'the worker to finish its requests in flight')

    def emit(self, count, event_type='journal_entry.posted', conn=None, tenants=0):
        """Emit count events in one transaction (spread over tenants t1..tN
        when tenants is given); returns the server time just before it (for
        webhook.replay's window)."""
        since = self.now()
        self.sql("SELECT count(webhook.emit(%s, public.bench_payload(i), "
                 "tenant => CASE WHEN %s > 0 THEN 't' || (i %% %s + 1) END)) "
                 "FROM generate_series(1, %s) AS i",
                 (event_type, tenants, max(tenants, 1), count), conn)
        return since

    def pending(self, endpoints):
        return self.one("SELECT count(*) FROM webhook.delivery_log "
                        "WHERE endpoint_id = ANY(%s::uuid[]) AND status = 'pending'",
                        (list(endpoints),))

    def vacuum(self):
        """Clean the queue tables and checkpoint between timed runs so each
        starts alike (a checkpoint during a run adds full-page writes to
        whichever run it falls in)."""
        self.sql('VACUUM webhook.delivery_log, webhook.event_log, webhook.attempt_log')
        self.sql('CHECKPOINT')

    def wait_drained(self, endpoints, expected, start_requests, timeout=600):
        """Wait until nginx has answered `expected` more requests, then until
        the database shows none of them pending. Polls nginx (free) and
        touches the database only at the end."""
        wait_until(lambda: self.nginx.requests() - start_requests >= expected,
                   timeout, 0.25, '%d deliveries to reach nginx' % expected)
        wait_until(lambda: self.pending(endpoints) == 0, 120, 0.1,
                   'the last outcomes to be recorded')

    def attempts_since(self, endpoints, since):
        """(attempts, succeeded, first start, last finish) of the endpoints'
        attempts started at or after since, as Unix times."""
        return self.sql(
            "SELECT count(*), count(*) FILTER (WHERE status_code BETWEEN 200 AND 299), "
            "       extract(epoch FROM min(started_at))::float8, "
            "       extract(epoch FROM max(started_at + duration_ms * interval '1 ms'))::float8 "
            "  FROM webhook.attempt_log "
            " WHERE started_at >= %s AND endpoint_id = ANY(%s::uuid[])",
            (since, list(endpoints)))[0]

    def timed_drain(self, endpoints, expected, t0, since, start_requests):
        """After the commit at t0 (Unix time) that made `expected` deliveries
        due: wait, check every one succeeded once, return deliveries/s."""
        self.wait_drained(endpoints, expected, start_requests)
        attempts, succeeded, _first, last = self.attempts_since(endpoints, since)
        if attempts != expected or succeeded != expected:
            raise RuntimeError('expected %d successful attempts, found %d attempts, %d successful'
                               % (expected, attempts, succeeded))
        return expected / (last - t0)


class Sampler(threading.Thread):
    """Samples a process's memory and open files every interval seconds."""

    def __init__(self, pid, interval=0.2):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak = {'VmRSS': 0, 'VmHWM': 0, 'RssAnon': 0, 'RssFile': 0, 'RssShmem': 0,
                     'fds': 0, 'sockets': 0}
        self.samples = 0
        self.series = []            # (time, fds, sockets)

    def run(self):
        while not self.stop_event.is_set():
            try:
                with open('/proc/%d/status' % self.pid) as f:
                    for line in f:
                        key, _, value = line.partition(':')
                        if key in self.peak:
                            self.peak[key] = max(self.peak[key], int(value.split()[0]))
                fds = sockets = 0
                for fd in os.listdir('/proc/%d/fd' % self.pid):
                    fds += 1
                    try:
                        sockets += os.readlink('/proc/%d/fd/%s' % (self.pid, fd)).startswith('socket:')
                    except OSError:
                        pass
                self.peak['fds'] = max(self.peak['fds'], fds)
                self.peak['sockets'] = max(self.peak['sockets'], sockets)
                self.series.append((time.time(), fds, sockets))
                self.samples += 1
            except OSError:
                pass
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join()


def process_cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open('/proc/%d/stat' % pid) as f:
        text = f.read()
    rest = text[text.rfind(')') + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS

