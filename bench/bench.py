#!/usr/bin/python3
"""bench/bench.py: run benchmark scenarios, print their medians and write a
dated Markdown section for bench/RESULTS.md.

    bench.py [--runs N] [--results FILE] [--keep] [scenario ...]

With no scenario, runs them all (see scenarios.SCENARIOS). bench/run is the
usual way in: it installs what is needed, builds, and runs this as a user
PostgreSQL accepts. Exits non-zero only when the harness broke (a delivery
lost, a server that would not start), never because a figure missed its
target.
"""

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Bench, CpuMeter, log, machine_description  # noqa: E402
from scenarios import OPTIONAL, SCENARIOS, SIZES  # noqa: E402


def fmt(value):
    if value != value:      # NaN
        return '-'
    if abs(value) >= 100:
        return '%.0f' % value
    if abs(value) >= 10:
        return '%.1f' % value
    return '%.2f' % value


def verdict(met):
    return {True: 'met', False: 'MISSED', None: ''}[met]


def markdown(rows, errors, info):
    lines = [
        '## %s: `%s`' % (info['date'], info['command']),
        '',
        '- Machine: %(nproc)d CPUs (%(cpu)s), %(memory)s RAM, Linux %(kernel)s' % info['machine'],
        '- Software: PostgreSQL %s, %s, %s' % (info['pg'], info['nginx'], info['curl']),
        '- Settings: webhook.* (concurrency %s, endpoint_concurrency %s, '
        'timeout %s, poll_interval %s); shared_buffers 512MB, synchronous_commit on; '
        'nginx with 1 worker process%s' % (tuple(info['settings']) + (
            '; BENCH_CONF: `%s`' % os.environ['BENCH_CONF'] if os.environ.get('BENCH_CONF') else '',)),
        '- Sizes: %s' % ', '.join('%s=%d' % kv for kv in sorted(SIZES.items())),
        '- Shared machine: %s' % info['shared'],
        '- Took %.0f s; runs per scenario: %d (memory: 1)' % (info['elapsed'], info['runs']),
        '',
        '| scenario | metric | target | each run | median | |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append('| %s | %s | %s | %s | **%s** %s | %s |' % (
            r['scenario'], r['metric'], r['target'],
            ', '.join(fmt(v) for v in r['values']), fmt(r['median']), r['unit'],
            verdict(r['met'])))
    notes = [r for r in rows if r['note']]
    if notes:
        lines.append('')
        for r in notes:
            lines.append('- %s, %s: %s' % (r['scenario'], r['metric'], r['note']))
    for name, error in errors:
        lines.append('- %s: **harness error**: %s' % (name, error))
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('scenarios', nargs='*', metavar='scenario',
                        help='one or more of: %s (default: all but %s)' % (', '.join(SCENARIOS), ', '.join(sorted(OPTIONAL))))
    parser.add_argument('--runs', type=int, default=int(os.environ.get('BENCH_RUNS', 3)))
    parser.add_argument('--results', help='write the Markdown section here')
    parser.add_argument('--keep', action='store_true', help='keep the temporary directory')
    parser.add_argument('--command', default='bench/run', help='command line to record')
    parser.add_argument('--profile', action='store_true',
                        help='preload pg_stat_statements and print the costliest statements '
                             'after each scenario (perturbs the figures a little)')
    args = parser.parse_args()

    names = args.scenarios or [n for n in SCENARIOS if n not in OPTIONAL]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error('unknown scenario %s; known: %s' % (', '.join(unknown), ', '.join(SCENARIOS)))

    # Stop what we started however we are stopped (a background job ignores
    # SIGINT unless told otherwise).
    def interrupted(signum, frame):
        raise KeyboardInterrupt('signal %d' % signum)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    started = time.time()
    meter = CpuMeter()
    bench = Bench(keep=args.keep)
    rows, errors, foreign = [], [], {}
    context = {}
    settings = ['?'] * 4
    try:
        bench.start(profile=args.profile)
        settings = [bench.one('SHOW webhook.%s' % s)
                    for s in ('concurrency', 'endpoint_concurrency', 'timeout', 'poll_interval')]
        for name in names:
            log('== %s' % name)
            before = meter.snapshot()
            try:
                rows += SCENARIOS[name](bench, max(1, args.runs), context)
            except Exception as e:
                traceback.print_exc()
                errors.append((name, '%s: %s' % (type(e).__name__, e)))
                try:
                    bench.delete_endpoints()
                except Exception:
                    pass
            foreign[name] = CpuMeter.foreign_cores(before, meter.snapshot())
            bench.statement_profile()
            log('   other processes kept %.2f cores busy meanwhile' % foreign[name])
        pg_version = bench.pg_version
        nginx_version = bench.nginx.version.replace('nginx version: ', '')
    finally:
        bench.stop()

    busiest = max(foreign.values()) if foreign else 0.0
    shared = ('yes: other processes kept on average %s cores busy (per scenario: %s)'
              % (fmt(sum(foreign.values()) / max(1, len(foreign))),
                 ', '.join('%s %s' % (k, fmt(v)) for k, v in foreign.items()))
              if busiest >= 0.05 else 'no (other processes used < 0.05 cores)')
    curl = subprocess.run(['curl', '--version'], capture_output=True, text=True).stdout.split('\n')[0]
    curl = ' '.join(w for w in curl.split() if w.startswith('libcurl/')) or 'libcurl'
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'command': args.command,
        'machine': machine_description(),
        'pg': pg_version, 'nginx': nginx_version, 'curl': curl,
        'settings': settings, 'shared': shared, 'runs': max(1, args.runs),
        'elapsed': time.time() - started,
    }
    text = markdown(rows, errors, info)
    print('\n' + text)
    if args.results:
        with open(args.results, 'w') as f:
            f.write(text)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
