"""bench/scenarios.py: the benchmark scenarios.

Each scenario takes the running set-up (harness.Bench) and a number of runs,
and returns rows: a metric, its target, the value of every run and what the
median says. Scenarios measure; a missed target is a finding, not an error.
Only a broken harness (a lost delivery, a failed query) raises.

Sizes can be changed through the environment (BENCH_DRAIN_EVENTS and so on,
see SIZES) to try things quickly; RESULTS.md records the sizes used.
"""

import json
import os
import re
import subprocess
import threading
import time

import psycopg2

from harness import (HERE, PG_BINDIR, Postgres, Sampler, log, median, payload, percentile,
                     process_cpu_seconds, wait_until)

SIZES = {
    'DRAIN_EVENTS': 100000,         # drain, history
    'HELD_EVENTS': 50000,           # held_snapshot (its drain slows down quadratically)
    'FANOUT_EVENTS': 10000,         # x FANOUT_ENDPOINTS
    'FANOUT_ENDPOINTS': 10,
    'LATENCY_SECONDS': 10,          # per rate and run
    'DEAD_EVENTS': 1000,
    'DEAD_SECONDS': 10,             # per window
    'LEDGER_SECONDS': 10,           # per pgbench run
    'LEDGER_CLIENTS': 8,
    'HISTORY_EVENTS': 10000000,
    'MEMORY_DELIVERIES': 1000000,
    'CEILING_SECONDS': 5,
    'TENANTS': 1000,                # x TENANT_ENDPOINTS endpoints
    'TENANT_ENDPOINTS': 10,
    'ORDERED_EVENTS': 20000,        # ordered: unordered and 100 keys
    'ORDERED_ONE_KEY_EVENTS': 2000, # ordered: one key (one round trip each)
    'CITUS_EVENTS': 20000,          # citus: rows (events) per run and placement
}
for _key in SIZES:
    SIZES[_key] = int(os.environ.get('BENCH_' + _key, SIZES[_key]))


def row(scenario, metric, unit, target, values, better, limit, note=''):
    """One line of the results: met is judged on the median against limit
    (None when there is no target)."""
    m = median(values)
    if limit is None:
        met = None
    elif better == 'higher':
        met = m >= limit
    else:
        met = m <= limit
    return {'scenario': scenario, 'metric': metric, 'unit': unit, 'target': target,
            'values': values, 'median': m, 'met': met, 'note': note}


# --- shared steps -------------------------------------------------------------

def emit_dispatched(b, count, event_type='journal_entry.posted'):
    """Emit count events in one transaction and wait until the worker has
    dispatched them (its cursor has moved past that transaction). Returns
    the server time just before the transaction."""
    conn = b.pg.connect()
    since = b.now()
    cur = conn.cursor()
    cur.execute('BEGIN')
    cur.execute('SELECT count(webhook.emit(%s, public.bench_payload(i))) '
                'FROM generate_series(1, %s) AS i', (event_type, count))
    cur.execute('SELECT pg_current_xact_id()')
    xid = cur.fetchone()[0]
    cur.execute('COMMIT')
    conn.close()
    wait_until(lambda: b.one('SELECT pg_visible_in_snapshot(%s::xid8, snapshot) '
                             'FROM webhook.dispatch_cursor', (xid,)),
               120, 0.1, 'the worker to dispatch the events')
    return since


def drain_once(b, endpoint, count, before_start=None):
    """The backlog drain: emit count events while the endpoint is disabled
    (dispatch skips it), enable it, then time from the commit of
    webhook.replay (which queues the count deliveries, due now, and wakes
    the worker) until the last one succeeded. Returns deliveries/s."""
    b.set_enabled(endpoint, False)
    since = emit_dispatched(b, count)
    b.set_enabled(endpoint, True)
    b.vacuum()
    if before_start:
        before_start()
    start_requests = b.nginx.requests()
    before = b.worker_counters()
    queued = b.one('SELECT webhook.replay(%s, %s)', (endpoint, since))
    t0 = time.time()
    if queued != count:
        raise RuntimeError('replay queued %d deliveries, expected %d' % (queued, count))
    rate = b.timed_drain([endpoint], count, t0, since, start_requests)
    b.note_worker_cost(before, count)
    return rate


def warm_up(b, endpoints, count=2000):
    """An untimed round so that connections and caches are warm."""
    start_requests = b.nginx.requests()
    b.emit(count)
    b.wait_drained(endpoints, count * len(endpoints), start_requests)


def drive(b, rate, seconds, event_type='journal_entry.posted', synchronous_commit=None):
    """Emit events one transaction each at a steady rate (open loop, several
    connections so a slow commit does not delay the next), noting the time
    each COMMIT returned; then collect arrival times from the receiver.
    Returns sorted latencies in ms (arrival - commit) and the rate achieved."""
    threads = max(1, rate // 200)
    per_thread = [[] for _ in range(threads)]
    start = time.time() + 0.3
    end = start + seconds
    b.receiver.arrivals()           # forget earlier arrivals

    def run(k):
        conn = b.pg.connect()
        cur = conn.cursor()
        if synchronous_commit:
            cur.execute('SET synchronous_commit = %s', (synchronous_commit,))
        interval = threads / rate
        t_next = start + k / rate
        i = k
        while t_next < end:
            delay = t_next - time.time()
            if delay > 0:
                time.sleep(delay)
            cur.execute('SELECT webhook.emit(%s, %s::jsonb)', (event_type, json.dumps(payload(i))))
            event_id = cur.fetchone()[0]
            per_thread[k].append((event_id, time.time()))
            t_next += interval
            i += threads
        conn.close()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    commits = [c for lst in per_thread for c in lst]
    arrived = {}

    def all_arrived():
        arrived.update(b.receiver.arrivals())
        return all(event_id in arrived for event_id, _ in commits)

    wait_until(all_arrived, 60, 0.2, 'every event to reach the receiver')
    latencies = sorted((arrived[event_id] - t) * 1000.0 for event_id, t in commits)
    # Where the median goes: commit -> the worker starts the request (its
    # first attempt's started_at), and from there to the arrival.
    started = dict(b.sql('SELECT event_id::text, extract(epoch FROM started_at)::float8 '
                         'FROM webhook.attempt_log WHERE attempt = 1 AND event_id = ANY (%s::uuid[])',
                         ([str(e) for e, _ in commits],)))
    before = sorted((started[str(e)] - t) * 1000.0 for e, t in commits if str(e) in started)
    after = sorted((arrived[e] - started[str(e)]) * 1000.0 for e, _ in commits if str(e) in started)
    if before:
        log('   medians: commit -> request started %.2f ms, started -> arrival %.2f ms'
            % (percentile(before, 50), percentile(after, 50)))
    return latencies, len(commits) / seconds


# --- scenarios ----------------------------------------------------------------

def scenario_ceiling(b, runs, context):
    """wrk POSTing a delivery-sized request to the same nginx: what the
    receiver itself can take, with one endpoint's connections (16) and with
    all of the worker's (64)."""
    body = json.dumps({'id': '019ab2c3-0000-7000-8000-000000000000',
                       'type': 'journal_entry.posted',
                       'timestamp': '2026-11-24T10:00:00.123456Z', 'data': payload(1)},
                      separators=(',', ':'))
    script = os.path.join(b.root, 'post.lua')
    with open(script, 'w') as f:
        f.write('wrk.method = "POST"\n'
                'wrk.body = %s\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["User-Agent"] = "webhook_outbox/0.1"\n'
                'wrk.headers["X-Webhook-Event"] = "journal_entry.posted"\n'
                'wrk.headers["X-Webhook-Signature"] = "sha256=" .. string.rep("a", 64)\n'
                'wrk.headers["webhook-id"] = "019ab2c3-0000-7000-8000-000000000000"\n'
                'wrk.headers["webhook-timestamp"] = "1764000000"\n'
                'wrk.headers["webhook-signature"] = "v1," .. string.rep("A", 43) .. "="\n'
                % json.dumps(body))
    rows = []
    for connections in (16, 64):
        values = []
        for _ in range(runs):
            out = subprocess.run(['wrk', '-t1', '-c%d' % connections,
                                  '-d%ds' % SIZES['CEILING_SECONDS'], '-s', script, b.nginx.url(0)],
                                 check=True, capture_output=True, text=True).stdout
            values.append(float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1)))
        rows.append(row('ceiling', 'wrk -t1 -c%d POST, nginx return 204' % connections, 'req/s',
                        'reference', values, 'higher', None))
    context['ceiling'] = rows[0]['median']
    context['ceiling64'] = rows[1]['median']
    return rows


def scenario_drain(b, runs, context):
    """A backlog of DRAIN_EVENTS deliveries to one endpoint."""
    n = SIZES['DRAIN_EVENTS']
    endpoint = b.create_endpoint(b.nginx.url(0))
    warm_up(b, [endpoint])
    values = []
    for r in range(runs):
        values.append(drain_once(b, endpoint, n))
        log('drain run %d: %.0f deliveries/s' % (r + 1, values[-1]))
    b.delete_endpoints()
    context['drain'] = median(values)
    note = ''
    if context.get('ceiling'):
        note = '%.0f%% of the receiver\'s own ceiling (wrk, 16 connections)' % (
            100.0 * median(values) / context['ceiling'])
    return [row('drain', 'backlog of %d to one endpoint' % n, 'deliveries/s', '>= 20000',
                values, 'higher', 20000, note)]


def scenario_fanout(b, runs, context):
    """FANOUT_EVENTS events, each to FANOUT_ENDPOINTS endpoints (nginx ports);
    timed from the commit of the emitting transaction, so dispatch counts
    (and the worker's CPU per delivery, dispatch included)."""
    n, k = SIZES['FANOUT_EVENTS'], SIZES['FANOUT_ENDPOINTS']
    endpoints = [b.create_endpoint(b.nginx.url(i % len(b.nginx.ports))) for i in range(k)]
    warm_up(b, endpoints, 200)
    values = []
    for r in range(runs):
        b.vacuum()
        start_requests = b.nginx.requests()
        before = b.worker_counters()
        since = b.emit(n)
        t0 = time.time()
        values.append(b.timed_drain(endpoints, n * k, t0, since, start_requests))
        b.note_worker_cost(before, n * k)
        log('fanout run %d: %.0f deliveries/s' % (r + 1, values[-1]))
    b.delete_endpoints()
    context['fanout'] = median(values)
    return [row('fanout', '%d events x %d endpoints, from commit' % (n, k), 'deliveries/s',
                '>= 20000', values, 'higher', 20000)]


def scenario_latency(b, runs, context):
    """Commit -> arrival at a steady 100 and 1,000 events/s."""
    endpoint = b.create_endpoint(b.receiver.url())
    drive(b, 100, 2)                # warm-up
    seconds = SIZES['LATENCY_SECONDS']
    results = {100: ([], [], []), 1000: ([], [], [])}
    for r in range(runs):
        for rate in (100, 1000):
            latencies, achieved = drive(b, rate, seconds)
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            results[rate][0].append(p50)
            results[rate][1].append(p99)
            results[rate][2].append(latencies[-1])
            log('latency run %d at %d/s (achieved %.0f/s): p50 %.2f ms, p99 %.2f ms, max %.2f ms'
                % (r + 1, rate, achieved, p50, p99, latencies[-1]))
    b.delete_endpoints()
    rows = []
    for rate in (100, 1000):
        p50s, p99s, maxes = results[rate]
        rows.append(row('latency', 'p50 commit->arrival at %d/s' % rate, 'ms', '<= 2',
                        p50s, 'lower', 2.0))
        rows.append(row('latency', 'p99 commit->arrival at %d/s' % rate, 'ms', '<= 10',
                        p99s, 'lower', 10.0, 'max of each run: %s ms' % ', '.join(
                            '%.1f' % m for m in maxes)))
    return rows


def alternated_latency(b, runs, scenario, variants):
    """Commit -> arrival at 1,000 events/s under each of variants, alternated
    in the same run: (label, prepare) pairs, prepare() setting the variant
    up and returning drive()'s further arguments. Rows of p50 and p99 per
    variant."""
    b.create_endpoint(b.receiver.url())
    drive(b, 100, 2)                # warm-up
    seconds = SIZES['LATENCY_SECONDS']
    results = {label: ([], []) for label, _ in variants}
    for r in range(runs):
        for label, prepare in variants:
            latencies, achieved = drive(b, 1000, seconds, **prepare())
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            results[label][0].append(p50)
            results[label][1].append(p99)
            log('%s run %d, %s (achieved %.0f/s): p50 %.2f ms, p99 %.2f ms'
                % (scenario, r + 1, label, achieved, p50, p99))
    b.delete_endpoints()
    rows = []
    for label, _ in variants:
        p50s, p99s = results[label]
        rows.append(row(scenario, 'p50 at 1000/s, %s' % label, 'ms', 'report', p50s, 'lower', None))
        rows.append(row(scenario, 'p99 at 1000/s, %s' % label, 'ms', 'report', p99s, 'lower', None))
    return rows


def scenario_latency_async(b, runs, context):
    """What durable-before-delivered costs: commit -> arrival at 1,000
    events/s with the emitters on synchronous_commit = on (their commits
    are durable when they return) and off (the worker flushes the WAL
    before it sends what it dispatched), alternated in the same run."""
    return alternated_latency(b, runs, 'latency_async', [
        ('emitters synchronous_commit = %s' % mode,
         lambda mode=mode: {'synchronous_commit': mode}) for mode in ('on', 'off')])


def scenario_latency_syncrep(b, runs, context):
    """What a synchronous standby costs delivery: commit -> arrival at 1,000
    events/s with synchronous_standby_names naming a streaming standby on
    this machine, against none, alternated in the same run. Emitters and
    the worker wait for the standby alike (durable before delivered)."""
    standby = Postgres.standby_of(b.pg, os.path.join(b.root, 'standby'))

    def synchronous(names):
        b.sql('ALTER SYSTEM SET synchronous_standby_names = %s', (names,))
        b.sql('SELECT pg_reload_conf()')
        wait_until(lambda: b.one("SELECT count(*) FROM pg_stat_replication WHERE "
                                 "application_name = 'standby' AND sync_state = %s",
                                 ('sync' if names else 'async',)) == 1, 60, 0.2,
                   'the standby to be %s' % ('synchronous' if names else 'asynchronous'))
        return {}
    try:
        synchronous('')
        return alternated_latency(b, runs, 'latency_syncrep', [
            ('no synchronous standby', lambda: synchronous('')),
            ('a synchronous standby', lambda: synchronous('standby'))])
    finally:
        b.sql('ALTER SYSTEM RESET synchronous_standby_names')
        b.sql('SELECT pg_reload_conf()')
        standby.stop()


def scenario_workers(b, runs, context):
    """The fan-out (FANOUT_EVENTS events to FANOUT_ENDPOINTS endpoints, timed
    from commit) with webhook.workers = 1, 2 and 4, alternated in the same
    run; and the worker processes' CPU per delivery."""
    n, k = SIZES['FANOUT_EVENTS'], SIZES['FANOUT_ENDPOINTS']
    endpoints = [b.create_endpoint(b.nginx.url(i % len(b.nginx.ports))) for i in range(k)]

    def set_workers(count):
        b.sql('ALTER SYSTEM SET webhook.workers = %s', (count,))
        b.sql('SELECT pg_reload_conf()')
        wait_until(lambda: b.one("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "backend_type = 'webhook_outbox worker' AND datname = 'bench'")
                   == count, 60, 0.1, '%d workers' % count)
        time.sleep(0.5)

    def worker_cpu():
        pids = [r[0] for r in b.sql("SELECT pid FROM pg_stat_activity "
                                    "WHERE backend_type = 'webhook_outbox worker'")]
        return sum(process_cpu_seconds(p) for p in pids)

    results = {1: [], 2: [], 4: []}
    cpu = {1: [], 2: [], 4: []}
    try:
        for count in (1, 2, 4):
            set_workers(count)
            warm_up(b, endpoints, 200)
        for r in range(runs):
            for count in (1, 2, 4):
                set_workers(count)
                b.vacuum()
                start_requests = b.nginx.requests()
                before = worker_cpu()
                since = b.emit(n)
                t0 = time.time()
                results[count].append(b.timed_drain(endpoints, n * k, t0, since, start_requests))
                cpu[count].append(1e6 * (worker_cpu() - before) / (n * k))
                log('workers run %d, %d worker(s): %.0f deliveries/s, %.0f us of worker CPU each'
                    % (r + 1, count, results[count][-1], cpu[count][-1]))
    finally:
        b.sql('ALTER SYSTEM RESET webhook.workers')
        b.sql('SELECT pg_reload_conf()')
    b.delete_endpoints()
    rows = []
    for count in (1, 2, 4):
        rows.append(row('workers', '%d events x %d endpoints, webhook.workers = %d' % (n, k, count),
                        'deliveries/s', '>= 25000 (best setting)', results[count], 'higher', None,
                        'worker CPU per delivery: %s us' % ', '.join('%.0f' % c for c in cpu[count])))
    return rows


def scenario_idle_endpoints(b, runs, context):
    """A drain of DRAIN_EVENTS / 5 events to one endpoint, timed from commit,
    with 10,000 other endpoints enabled but idle (subscribed to an event
    type never emitted), against the same drain with them disabled,
    alternated in the same run: what idle endpoints cost the fetch."""
    n = SIZES['DRAIN_EVENTS'] // 5
    active = b.create_endpoint(b.nginx.url(0))
    b.sql("SELECT count(*) FROM generate_series(1, 10000) AS i "
          "CROSS JOIN LATERAL webhook.create_webhook(%s, ARRAY['period.reopened']) w",
          (b.nginx.url(1),))
    warm_up(b, [active], 2000)
    results = {False: [], True: []}
    for r in range(runs):
        for idle_enabled in (False, True):
            b.sql("UPDATE webhook.endpoints SET enabled = %s WHERE id <> %s",
                  (idle_enabled, active))
            b.vacuum()
            start_requests = b.nginx.requests()
            since = b.emit(n)
            t0 = time.time()
            results[idle_enabled].append(b.timed_drain([active], n, t0, since, start_requests))
            log('idle_endpoints run %d, 10,000 idle endpoints %s: %.0f deliveries/s'
                % (r + 1, 'enabled' if idle_enabled else 'disabled', results[idle_enabled][-1]))
    b.delete_endpoints()
    return [row('idle_endpoints', 'drain of %d to one endpoint, 10,000 others disabled' % n,
                'deliveries/s', 'baseline', results[False], 'higher', None),
            row('idle_endpoints', 'drain of %d to one endpoint, 10,000 others enabled, idle' % n,
                'deliveries/s', 'like the baseline', results[True], 'higher',
                0.9 * median(results[False]),
                'ratio per run: %s' % ', '.join('%.2f' % (a / b_) for a, b_ in
                                                 zip(results[True], results[False])))]


def scenario_dead_endpoint(b, runs, context):
    """A healthy endpoint's latency at 100 events/s, alone, then while
    another endpoint accepts connections and never answers with DEAD_EVENTS
    deliveries queued for it (they time out after webhook.timeout)."""
    seconds = SIZES['DEAD_SECONDS']
    healthy = b.create_endpoint(b.receiver.url(), ['journal_entry.posted'])
    drive(b, 100, 2)
    baseline = []
    for r in range(runs):
        latencies, _ = drive(b, 100, seconds)
        baseline.append(percentile(latencies, 99))
        log('dead_endpoint baseline run %d: p99 %.2f ms' % (r + 1, baseline[-1]))
    dead = b.create_endpoint(b.receiver.url(silent=True), ['period.closed'])
    emit_dispatched(b, SIZES['DEAD_EVENTS'], 'period.closed')
    time.sleep(1)
    with_dead = []
    for r in range(runs):
        latencies, _ = drive(b, 100, seconds)
        with_dead.append(percentile(latencies, 99))
        log('dead_endpoint run %d with the dead endpoint: p99 %.2f ms' % (r + 1, with_dead[-1]))
    stuck = b.one("SELECT count(*) FROM webhook.delivery_log WHERE endpoint_id = %s "
                  "AND status = 'pending'", (dead,))
    timeout = b.one('SHOW webhook.timeout')
    b.delete_endpoints()
    ratio = median(with_dead) / median(baseline)
    return [
        row('dead_endpoint', 'healthy p99 at 100/s, alone', 'ms', 'baseline', baseline,
            'lower', None),
        row('dead_endpoint', 'healthy p99 at 100/s, dead endpoint with %d queued'
            % SIZES['DEAD_EVENTS'], 'ms', '<= 2x baseline', with_dead, 'lower',
            2 * median(baseline),
            'ratio of medians %.2f; %d deliveries to the dead endpoint still pending at the end '
            '(webhook.timeout %s)' % (ratio, stuck, timeout)),
    ]


def scenario_held_snapshot(b, runs, context):
    """The drain with a REPEATABLE READ transaction held open (idle) in
    another session, alternating with the plain drain."""
    n = SIZES['HELD_EVENTS']
    endpoint = b.create_endpoint(b.nginx.url(0))
    warm_up(b, [endpoint])
    baseline, held = [], []
    for r in range(runs):
        baseline.append(drain_once(b, endpoint, n))
        holder = psycopg2.connect(**b.pg.dsn())
        holder.set_session(isolation_level='REPEATABLE READ')

        def hold():
            holder.cursor().execute('SELECT 1')     # takes the snapshot; stays idle in transaction
        try:
            held.append(drain_once(b, endpoint, n, before_start=hold))
        finally:
            holder.rollback()
            holder.close()
        log('held_snapshot run %d: %.0f/s plain, %.0f/s with the snapshot held'
            % (r + 1, baseline[-1], held[-1]))
    b.delete_endpoints()
    ratio = median(held) / median(baseline)
    return [
        row('held_snapshot', 'drain of %d, plain (alternated)' % n, 'deliveries/s', 'baseline',
            baseline, 'higher', None),
        row('held_snapshot', 'drain of %d, REPEATABLE READ held open' % n, 'deliveries/s',
            '>= 90% of baseline', held, 'higher', 0.9 * median(baseline),
            '%.0f%% of baseline' % (100 * ratio)),
    ]


def build_history(b, events):
    """events old events, each with one succeeded delivery and its attempt,
    inserted directly (as the superuser) in batches of a million over two
    connections, then VACUUM ANALYZE."""
    gone = b.create_endpoint('http://127.0.0.1:9/old')
    b.sql('SELECT webhook.delete_webhook(%s)', (gone,))
    payload_json = json.dumps(payload(0))     # one payload for all: building each is slow
    # Ids of transactions that ended before the history was written: never
    # "new" to dispatch.
    top = b.one('SELECT pg_current_xact_id()::text::bigint')
    batch = 1000000
    batches = [(start, min(events, start + batch - 1)) for start in range(1, events + 1, batch)]
    errors = []

    def insert(first, last):
        conn = b.pg.connect()
        cur = conn.cursor()
        cur.execute('BEGIN')
        cur.execute("""
            CREATE TEMP TABLE batch ON COMMIT DROP AS
            SELECT webhook.uuid_v7() AS id,
                   now() - interval '29 days' + (i::float8 / %(n)s) * interval '28 days' AS created_at,
                   (3 + i %% (%(top)s - 3))::text::xid8 AS txid
              FROM generate_series(%(a)s, %(b)s) AS i""",
                    {'n': events, 'a': first, 'b': last, 'top': top})
        cur.execute("""
            INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
            SELECT id, 'journal_entry.posted', %s::jsonb, created_at, txid FROM batch""",
                    (payload_json,))
        cur.execute("""
            INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts,
                                              last_status_code, next_attempt_at, succeeded_at, created_at)
            SELECT id, %s, 'journal_entry.posted', 'succeeded', 1, 204, NULL,
                   created_at + interval '40 ms', created_at FROM batch""", (gone,))
        cur.execute("""
            INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at, duration_ms,
                                             status_code, error, response_body, manual)
            SELECT id, %s, 1, created_at + interval '35 ms', 4.2, 204, NULL, '', false FROM batch""",
                    (gone,))
        cur.execute('COMMIT')
        conn.close()
        log('history: events %d to %d inserted' % (first, last))

    def stream(k):
        try:
            for first, last in batches[k::2]:
                insert(first, last)
        except Exception as e:          # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    b.sql('VACUUM ANALYZE webhook.event_log, webhook.delivery_log, webhook.attempt_log')


def scenario_history(b, runs, context):
    """The drain before and after HISTORY_EVENTS events of history (each
    with its delivery and attempt) are present."""
    n, events = SIZES['DRAIN_EVENTS'], SIZES['HISTORY_EVENTS']
    endpoint = b.create_endpoint(b.nginx.url(0))
    warm_up(b, [endpoint])
    baseline, with_history = [], []
    for r in range(runs):
        baseline.append(drain_once(b, endpoint, n))
        log('history baseline run %d: %.0f/s' % (r + 1, baseline[-1]))
    started = time.time()
    b.set_enabled(endpoint, False)
    build_history(b, events)
    b.set_enabled(endpoint, True)
    built = time.time() - started
    sizes = b.one("SELECT pg_size_pretty(sum(pg_total_relation_size(c))) FROM unnest("
                  "ARRAY['webhook.event_log', 'webhook.delivery_log', 'webhook.attempt_log']::regclass[]) AS c")
    for r in range(runs):
        with_history.append(drain_once(b, endpoint, n))
        log('history run %d with history: %.0f/s' % (r + 1, with_history[-1]))
    b.delete_endpoints()
    ratio = median(with_history) / median(baseline)
    return [
        row('history', 'drain of %d, empty history' % n, 'deliveries/s', 'baseline', baseline,
            'higher', None),
        row('history', 'drain of %d, %d events of history' % (n, events), 'deliveries/s',
            '>= 90% of baseline', with_history, 'higher', 0.9 * median(baseline),
            '%.0f%% of baseline; history (%d events + deliveries + attempts, %s with indexes) '
            'built in %.0f s, then VACUUM ANALYZE' % (100 * ratio, events, sizes, built)),
    ]


def scenario_memory(b, runs, context):
    """MEMORY_DELIVERIES deliveries: events to all FANOUT_ENDPOINTS endpoints,
    so every one of webhook.concurrency's slots is busy, emitted in
    transactions of 10,000 events while the worker drains; the worker's
    memory and open files are sampled every half second. Run once: the
    figures are peaks, not rates."""
    total, k = SIZES['MEMORY_DELIVERIES'], SIZES['FANOUT_ENDPOINTS']
    events = total // k
    endpoints = [b.create_endpoint(b.nginx.url(i % len(b.nginx.ports))) for i in range(k)]
    warm_up(b, endpoints, 200)
    pid = b.worker_pid()
    concurrency = int(b.one('SHOW webhook.concurrency'))
    sampler = Sampler(pid)
    sampler.start()
    b.vacuum()
    start_requests = b.nginx.requests()
    since = b.now()
    t0 = time.time()
    emitted = 0
    while emitted < events:
        count = min(10000, events - emitted)
        b.emit(count)
        emitted += count
    rate = b.timed_drain(endpoints, events * k, t0, since, start_requests)
    sampler.stop()
    b.delete_endpoints()
    peak = sampler.peak
    mb = 1024.0
    note = ('VmHWM %.1f MB, RssFile %.1f MB (mapped binaries and libraries), RssShmem %.1f MB '
            '(shared buffers the worker touched); %d samples; %.0f deliveries/s from the first '
            'emit to the last delivery' % (peak['VmHWM'] / mb, peak['RssFile'] / mb,
                                             peak['RssShmem'] / mb, sampler.samples, rate))
    at_peak = max(sampler.series, key=lambda sample: sample[1], default=(0, 0, 0))
    fds_note = ('at the peak %d sockets and %d other files (PostgreSQL\'s own: relation '
                'files and their forks, WAL, log, latch); most sockets at any sample %d'
                % (at_peak[2], at_peak[1] - at_peak[2], peak['sockets']))
    return [
        row('memory', 'worker private memory (RssAnon), %d deliveries to %d endpoints'
            % (events * k, k), 'MB', '<= 64', [peak['RssAnon'] / mb], 'lower', 64, note),
        row('memory', 'worker VmRSS (counts shared buffers too)', 'MB', 'see note',
            [peak['VmRSS'] / mb], 'lower', None),
        row('memory', 'worker open files (webhook.concurrency = %d)' % concurrency, 'fds',
            '<= %d' % (concurrency + 32), [peak['fds']], 'lower', concurrency + 32, fds_note),
    ]


def pgbench(b, schema, seconds, clients):
    env = b.pg.env(PGOPTIONS='-c search_path=%s' % schema)
    out = subprocess.run([os.path.join(PG_BINDIR, 'pgbench'), '-n', '-M', 'prepared',
                          '-c', str(clients), '-j', '2', '-T', str(seconds),
                          '-f', os.path.join(HERE, 'ledger.pgbench')],
                         env=env, check=True, capture_output=True, text=True).stdout
    return float(re.search(r'tps = ([\d.]+) \(without initial connection time\)', out).group(1))


def scenario_ledger(b, runs, context):
    """pgbench: a journal entry with two lines, posted. Alternates four
    variants: no trigger; a hand-written trigger inserting the same row
    into a plain table shaped like event_log (the floor: what recording an
    event in the transaction costs at all); the emitting trigger with the
    endpoint disabled (what the ledger's transaction itself pays, and
    dispatch); the trigger with the endpoint enabled, so the worker
    delivers every event on the same two cores meanwhile (the whole cost,
    the figure the target is about)."""
    seconds, clients = SIZES['LEDGER_SECONDS'], SIZES['LEDGER_CLIENTS']
    with open(os.path.join(HERE, 'ledger.sql')) as f:
        b.sql(f.read())
    b.sql('VACUUM ANALYZE')
    endpoint = b.create_endpoint(b.nginx.url(0), ['journal_entry.posted'])
    pid = b.worker_pid()
    for schema in ('ledger_plain', 'ledger_audit', 'ledger_outbox', 'ledger_tenant'):  # warm-up
        pgbench(b, schema, 3, clients)
    plain, audit, emit_only, outbox, tenant_only = [], [], [], [], []
    worker_cpu, emit_worker_cpu, backlog = [], [], []

    def settle():
        wait_until(lambda: b.pending([endpoint]) == 0, 300, 0.5, 'the worker to catch up')
        b.sql('CHECKPOINT')

    for r in range(runs):
        settle()
        plain.append(pgbench(b, 'ledger_plain', seconds, clients))
        settle()
        audit.append(pgbench(b, 'ledger_audit', seconds, clients))
        b.set_enabled(endpoint, False)
        settle()
        cpu = process_cpu_seconds(pid)
        emit_only.append(pgbench(b, 'ledger_outbox', seconds, clients))
        emit_worker_cpu.append(100.0 * (process_cpu_seconds(pid) - cpu) / seconds)
        settle()
        tenant_only.append(pgbench(b, 'ledger_tenant', seconds, clients))
        b.set_enabled(endpoint, True)
        settle()
        cpu = process_cpu_seconds(pid)
        outbox.append(pgbench(b, 'ledger_outbox', seconds, clients))
        worker_cpu.append(100.0 * (process_cpu_seconds(pid) - cpu) / seconds)
        backlog.append(b.pending([endpoint]))
        log('ledger run %d: %.0f tps plain, %.0f hand-written audit insert, %.0f emitting only '
            '(worker %.0f%% of a core), %.0f emitting and delivering (worker %.0f%% of a core)'
            % (r + 1, plain[-1], audit[-1], emit_only[-1], emit_worker_cpu[-1], outbox[-1],
               worker_cpu[-1]))
    settle()
    b.delete_endpoints()
    base = median(plain)
    return [
        row('ledger', 'pgbench TPS, no trigger (%d clients, alternated)' % clients, 'tps',
            'baseline', plain, 'higher', None),
        row('ledger', 'pgbench TPS, PL/pgSQL trigger inserting the same row into a plain table',
            'tps', 'reference', audit, 'higher', None,
            'ratio of medians %.3f: the floor, what writing the event in the transaction costs '
            'without any outbox' % (median(audit) / base)),
        row('ledger', 'pgbench TPS, emit_trigger, endpoint disabled', 'tps',
            '>= 95% of baseline', emit_only, 'higher', 0.95 * base,
            'ratio of medians %.3f: the cost inside the ledger transaction, and dispatch (the '
            'worker used %.0f%% of a core)' % (median(emit_only) / base, median(emit_worker_cpu))),
        row('ledger', 'pgbench TPS, emit_trigger with tenant=org, endpoint disabled', 'tps',
            'like emit_trigger alone', tenant_only, 'higher', None,
            'ratio to emit_trigger alone %.3f (1000 tenants, taken from a column of the row)'
            % (median(tenant_only) / median(emit_only))),
        row('ledger', 'pgbench TPS, emit_trigger, every event delivered meanwhile', 'tps',
            '>= 95% of baseline', outbox, 'higher', 0.95 * base,
            'ratio of medians %.3f; the worker used %.0f%% of a core; pending at the end of each '
            'run: %s' % (median(outbox) / base, median(worker_cpu),
                         ', '.join(str(x) for x in backlog))),
    ]


def scenario_flaky(b, runs, context):
    """DRAIN_EVENTS deliveries to an endpoint that fails one request in ten:
    the rate of its successful share, against the same drain to a healthy
    endpoint in the same run. Two such endpoints, alternated: a load
    balancer's 503 (nginx /flaky; the target), and nginx's own 500 (/flaky500),
    after which nginx closes the connection, so that one request in ten
    pays a new one. Failed tries are retried on their own schedule (5 s
    later); the others must not wait for them."""
    n = SIZES['DRAIN_EVENTS']
    # The healthy endpoint's nginx location draws the same lot per request
    # (a request id, split_clients) as the flaky ones': only the failures differ.
    healthy = b.create_endpoint(b.nginx.url(0, '/steady'))
    flaky = {'503': b.create_endpoint(b.nginx.url(1, '/flaky')),
             '500': b.create_endpoint(b.nginx.url(2, '/flaky500'))}
    for endpoint in flaky.values():
        b.set_enabled(endpoint, False)
    warm_up(b, [healthy])
    healthy_rates = []
    rates = {code: [] for code in flaky}
    ratios = {code: [] for code in flaky}
    request_ratios = {code: [] for code in flaky}
    for r in range(runs):
        healthy_rates.append(drain_once(b, healthy, n))
        b.set_enabled(healthy, False)
        since = emit_dispatched(b, n)
        for code, endpoint in flaky.items():
            b.set_enabled(endpoint, True)
            b.vacuum()
            before = b.worker_counters()
            queued = b.one('SELECT webhook.replay(%s, %s)', (endpoint, since))
            t0 = time.time()
            if queued != n:
                raise RuntimeError('replay queued %d deliveries, expected %d' % (queued, n))
            # Every first try, then the rate of those that succeeded.
            wait_until(lambda: b.one("SELECT count(*) FROM webhook.delivery_log "
                                     "WHERE endpoint_id = %s AND created_at >= %s "
                                     "AND (attempts >= 1 OR status <> 'pending')",
                                     (endpoint, since)) >= n, 600, 0.25, 'every first try')
            ok, last = b.sql("SELECT count(*), extract(epoch FROM max(started_at + duration_ms * "
                             "interval '1 ms'))::float8 FROM webhook.attempt_log "
                             "WHERE endpoint_id = %s AND attempt = 1 AND started_at >= %s "
                             "AND status_code BETWEEN 200 AND 299", (endpoint, since))[0]
            rates[code].append(ok / (last - t0))
            ratios[code].append(rates[code][-1] / healthy_rates[-1])
            # Every request the endpoint was sent meanwhile, retries included:
            # the successful share's ceiling is 0.9 of their rate.
            requests = b.one("SELECT count(*) FROM webhook.attempt_log WHERE endpoint_id = %s "
                             "AND started_at >= %s AND started_at + duration_ms * interval '1 ms' "
                             "<= to_timestamp(%s)", (endpoint, since, last))
            request_ratios[code].append(requests / (last - t0) / healthy_rates[-1])
            # A stall would show as a long pause between two requests.
            pause = b.one("SELECT max(gap) FROM (SELECT extract(epoch FROM started_at - "
                          "lag(started_at) OVER (ORDER BY started_at)) * 1000 AS gap "
                          "FROM webhook.attempt_log WHERE endpoint_id = %s AND started_at >= %s) g",
                          (endpoint, since))
            log('   longest pause between two requests: %.1f ms' % pause)
            log('flaky run %d: healthy %.0f/s, %s endpoint\'s successes %.0f/s (%d of %d first '
                'tries; %.2f of healthy), its requests %.0f/s (%d, retries included; %.2f)'
                % (r + 1, healthy_rates[-1], code, rates[code][-1], ok, n, ratios[code][-1],
                   requests / (last - t0), requests, request_ratios[code][-1]))
            b.note_worker_cost(before, b.one('SELECT count(*) FROM webhook.attempt_log '
                                             'WHERE endpoint_id = %s AND started_at >= %s',
                                             (endpoint, since)))
            b.set_enabled(endpoint, False)
            b.sql("UPDATE webhook.delivery_log SET status = 'cancelled' "
                  "WHERE endpoint_id = %s AND status = 'pending'", (endpoint,))
        b.set_enabled(healthy, True)
    b.delete_endpoints()
    return [row('flaky', 'drain of %d, healthy endpoint (alternated)' % n, 'deliveries/s',
                'baseline', healthy_rates, 'higher', None),
            row('flaky', 'drain of %d, 1 in 10 answered 503: successful share' % n, 'deliveries/s',
                '>= 90% of healthy', rates['503'], 'higher', 0.9 * median(healthy_rates),
                'ratio per run: %s; its requests, retries included, against the healthy '
                'drain: %s (the successful share cannot pass 0.9 of that)'
                % (', '.join('%.2f' % x for x in ratios['503']),
                   ', '.join('%.2f' % x for x in request_ratios['503']))),
            row('flaky', 'drain of %d, 1 in 10 answered 500, connection closed: successful share' % n,
                'deliveries/s', 'report', rates['500'], 'higher', None,
                'ratio per run: %s; requests: %s'
                % (', '.join('%.2f' % x for x in ratios['500']),
                   ', '.join('%.2f' % x for x in request_ratios['500'])))]


def scenario_tenants(b, runs, context):
    """TENANTS tenants of TENANT_ENDPOINTS endpoints each; FANOUT_EVENTS
    events spread over the tenants, each to its tenant's endpoints: timed
    from commit like fanout, which has the same deliveries per event but
    10 endpoints in all."""
    t, k, n = SIZES['TENANTS'], SIZES['TENANT_ENDPOINTS'], SIZES['FANOUT_EVENTS']
    b.sql("SELECT count(*) FROM generate_series(0, %s - 1) AS i "
          "CROSS JOIN LATERAL webhook.create_webhook(%s, tenant => 't' || (i / %s + 1)) w",
          (t * k, b.nginx.url(0), k))
    endpoints = [r[0] for r in b.sql('SELECT id FROM webhook.endpoints')]
    # Warm up: one event per tenant (each to its tenant's k endpoints).
    start_requests = b.nginx.requests()
    b.emit(t, tenants=t)
    b.wait_drained(endpoints, t * k, start_requests)
    values = []
    for r in range(runs):
        b.vacuum()
        start_requests = b.nginx.requests()
        since = b.emit(n, tenants=t)
        t0 = time.time()
        values.append(b.timed_drain(endpoints, n * k, t0, since, start_requests))
        log('tenants run %d: %.0f deliveries/s' % (r + 1, values[-1]))
    b.delete_endpoints()
    note = ''
    if context.get('fanout'):
        note = '%.0f%% of fanout (same deliveries per event, 10 endpoints in all)' % (
            100.0 * median(values) / context['fanout'])
    return [row('tenants', '%d events over %d tenants x %d endpoints, from commit' % (n, t, k),
                'deliveries/s', 'like fanout', values, 'higher', None, note)]


def scenario_ordered(b, runs, context):
    """An ordered endpoint (one delivery at a time per ordering key) against
    an unordered one, in the same run: ORDERED_EVENTS events emitted in one
    transaction, spread over 100 keys, timed from commit to the last
    delivery; and ORDERED_ONE_KEY_EVENTS events of a single key, which go
    one round trip (and one recorded outcome) at a time."""
    n, n_one = SIZES['ORDERED_EVENTS'], SIZES['ORDERED_ONE_KEY_EVENTS']
    unordered = b.create_endpoint(b.nginx.url(0))
    ordered = b.create_endpoint(b.nginx.url(1))
    b.sql('SELECT 1 FROM webhook.update_webhook(%s, ordered => true)', (ordered,))

    def timed(endpoint, count, keys, warm_up=False):
        b.set_enabled(unordered, endpoint == unordered)
        b.set_enabled(ordered, endpoint == ordered)
        b.vacuum()
        start_requests = b.nginx.requests()
        since = b.now()
        b.sql("SELECT count(webhook.emit('journal_entry.posted', public.bench_payload(i), "
              "ordering_key => 'key-' || (i %% %s))) FROM generate_series(1, %s) AS i",
              (keys, count))
        t0 = time.time()
        if warm_up:
            return b.wait_drained([endpoint], count, start_requests)
        return b.timed_drain([endpoint], count, t0, since, start_requests)

    timed(unordered, 2000, 100, warm_up=True)
    timed(ordered, 2000, 100, warm_up=True)
    plain, hundred, one, ratios = [], [], [], []
    for r in range(runs):
        plain.append(timed(unordered, n, 100))
        hundred.append(timed(ordered, n, 100))
        one.append(timed(ordered, n_one, 1))
        ratios.append(hundred[-1] / plain[-1])
        log('ordered run %d: unordered %.0f/s, ordered with 100 keys %.0f/s (%.2f), '
            'one key %.0f/s' % (r + 1, plain[-1], hundred[-1], ratios[-1], one[-1]))
    b.delete_endpoints()
    return [row('ordered', '%d events, unordered endpoint, from commit' % n, 'deliveries/s',
                'baseline', plain, 'higher', None),
            row('ordered', '%d events over 100 keys, ordered endpoint' % n, 'deliveries/s',
                '>= 50% of unordered', hundred, 'higher', 0.5 * median(plain),
                'ratio per run: %s' % ', '.join('%.2f' % x for x in ratios)),
            row('ordered', '%d events of one key, ordered endpoint' % n_one, 'deliveries/s',
                'report (one round trip each)', one, 'higher', None,
                'median %.2f ms per event' % (1000.0 / median(one)))]


# Run order for "all": history last (it leaves 10 million rows behind),
# memory before it (it is long and needs no baseline).

def scenario_citus(b, runs, context):
    """Citus (not run by default: bench/run citus): a coordinator and two
    worker nodes on this machine, beside the bench's own server (idle
    meanwhile); a ledger table distributed by tenant whose trigger emits on
    the node holding the row; CITUS_EVENTS rows written in one distributed
    transaction, their tenants' shards all on one worker node, against
    spread over both, alternated in the same run. Deliveries/s from commit
    to the last arrival at nginx, and each node's delivery worker CPU per
    delivery of the run."""
    n = SIZES['CITUS_EVENTS']
    conf = ["listen_addresses = '127.0.0.1'",
            "shared_preload_libraries = 'citus,webhook_outbox'",
            "citus.local_hostname = '127.0.0.1'", 'max_prepared_transactions = 20',
            "shared_buffers = '256MB'"]
    nodes, conns = [], []

    def sql(i, query, args=None):
        return b.sql(query, args, conn=conns[i])

    def worker_cpu(i):
        pids = [r[0] for r in sql(i, "SELECT pid FROM pg_stat_activity "
                                     "WHERE backend_type = 'webhook_outbox worker'")]
        return sum(process_cpu_seconds(p) for p in pids)

    try:
        for name in ('coordinator', 'worker1', 'worker2'):
            root = os.path.join(b.root, 'citus-' + name)
            os.makedirs(root)
            nodes.append(Postgres(root, conf))
            admin = nodes[-1].connect('postgres')
            admin.cursor().execute('CREATE DATABASE bench')
            admin.close()
            conns.append(nodes[-1].connect())
            sql(len(conns) - 1, 'CREATE EXTENSION citus')
        sql(0, "SELECT citus_set_coordinator_host('127.0.0.1', %s)", (nodes[0].port,))
        for node in nodes[1:]:
            sql(0, "SELECT citus_add_node('127.0.0.1', %s)", (node.port,))
        sql(0, 'CREATE EXTENSION webhook_outbox')
        sql(0, 'CREATE TABLE journal_entries (tenant text NOT NULL, entry bigint NOT NULL, '
               'amount numeric NOT NULL, PRIMARY KEY (tenant, entry))')
        sql(0, 'SET citus.enable_unsafe_triggers = on')
        sql(0, "SELECT create_distributed_table('journal_entries', 'tenant')")
        sql(0, "CREATE TRIGGER journal_entries_emit AFTER INSERT ON journal_entries FOR EACH ROW "
               "EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted', 'tenant=tenant')")
        sql(0, 'SELECT webhook.create_webhook(%s)', (b.nginx.url(),))
        for i in range(3):
            wait_until(lambda: sql(i, "SELECT count(*) FROM pg_stat_activity WHERE "
                                      "backend_type = 'webhook_outbox worker'")[0][0] == 1,
                       60, 0.2, 'the delivery worker of Citus node %d' % i)

        on_node = {}
        for t in range(400):
            port = sql(0, 'SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = '
                          "get_shard_id_for_distribution_column('journal_entries', %s)",
                       ('t%d' % t,))[0][0]
            on_node.setdefault(port, []).append('t%d' % t)
        placements = {'one worker node': on_node[nodes[1].port][:8],
                      'two worker nodes': on_node[nodes[1].port][:4] + on_node[nodes[2].port][:4]}
        next_entry = [0]

        def run(tenants):
            start_requests = b.nginx.requests()
            before = [worker_cpu(i) for i in range(3)]
            sql(0, 'INSERT INTO journal_entries SELECT (%s::text[])[1 + g %% %s], %s + g, 1 '
                   'FROM generate_series(1, %s) g',
                (tenants, len(tenants), next_entry[0], n))
            t0 = time.time()
            next_entry[0] += n
            wait_until(lambda: b.nginx.requests() - start_requests >= n, 600, 0.05,
                       '%d deliveries from the Citus nodes' % n)
            rate = n / (time.time() - t0)
            return rate, [1e6 * (worker_cpu(i) - before[i]) / n for i in range(3)]

        run(placements['two worker nodes'])     # warm-up
        results = {label: ([], []) for label in placements}
        for r in range(runs):
            for label, tenants in placements.items():
                rate, cpu = run(tenants)
                results[label][0].append(rate)
                results[label][1].append(cpu)
                log('citus run %d, %s: %.0f deliveries/s; worker CPU per delivery (us): '
                    'coordinator %.0f, worker1 %.0f, worker2 %.0f' % ((r + 1, label, rate) + tuple(cpu)))
    finally:
        for conn in conns:
            conn.close()
        for node in nodes:
            node.stop()
    rows = []
    for label, (rates, cpus) in results.items():
        note = 'worker CPU per delivery, us (worker1/worker2) by run: %s' % ', '.join(
            '%.0f/%.0f' % (c[1], c[2]) for c in cpus)
        rows.append(row('citus', '%d events, shards on %s' % (n, label), 'deliveries/s', 'report',
                        rates, 'higher', None, note))
    return rows

SCENARIOS = {
    'ceiling': scenario_ceiling,
    'drain': scenario_drain,
    'fanout': scenario_fanout,
    'latency': scenario_latency,
    'latency_async': scenario_latency_async,
    'latency_syncrep': scenario_latency_syncrep,
    'dead_endpoint': scenario_dead_endpoint,
    'ledger': scenario_ledger,
    'held_snapshot': scenario_held_snapshot,
    'flaky': scenario_flaky,
    'tenants': scenario_tenants,
    'workers': scenario_workers,
    'idle_endpoints': scenario_idle_endpoints,
    'ordered': scenario_ordered,
    'citus': scenario_citus,
    'memory': scenario_memory,
    'history': scenario_history,
}

# Run only when named: they need more than the bench installs by default.
OPTIONAL = {'citus'}
