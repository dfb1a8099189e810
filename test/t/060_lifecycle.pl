# test/t/060_lifecycle.pl: the worker as an operator sees it.
#
# The node serves a database that does not exist at start, named by the
# deprecated webhook.database of 0.1 (which still works, and is logged as
# deprecated): the launcher waits quietly (no FATAL in the log); once the
# database is created, no worker stays connected to it until CREATE
# EXTENSION, which starts one at once, and it delivers.
# Both show in pg_stat_activity.  A reload changes webhook.timeout; DROP
# DATABASE of another database does not hang on the worker (procsignal
# barrier), even with a request in flight; an event arrives within
# milliseconds of its commit, also with a long history of events; SIGTERM
# to the worker and a normal stop are clean, and a request cut off by the
# stop is sent again after restart.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WebhookTest;

my $node = new_node(
    'lifecycle',
    no_extension => 1,
    conf => [ "webhook.database = 'ledger'", "webhook.poll_interval = '100ms'" ]);
my $receiver = start_receiver();

sub ledger { return $node->safe_psql('ledger', $_[0]); }

# The webhook_outbox processes in pg_stat_activity, as "backend_type|datname|query".
sub processes
{
    return $node->safe_psql(
        'postgres', q{
        SELECT string_agg(concat_ws('|', backend_type, coalesce(datname, ''), query), E'\n' ORDER BY backend_type)
          FROM pg_stat_activity WHERE backend_type LIKE 'webhook_outbox%'});
}

# Problems in the server log since byte $offset.
sub log_problems
{
    my ($offset) = @_;
    my $log = slurp_file($node->logfile, $offset);
    return join("\n", grep { /FATAL|PANIC|ERROR|WARNING|terminated by signal/ } split /\n/, $log);
}

# ---------------------------------------------------------------------------
# webhook.database does not exist yet
# ---------------------------------------------------------------------------

ok( $node->poll_query_until(
        'postgres',
        q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'webhook_outbox launcher'}),
    'the launcher runs');
sleep 3;    # several launcher rounds while the database is missing
is(processes(), 'webhook_outbox launcher||serving databases',
    'no delivery worker while the database does not exist');
is(log_problems(0), '', 'no FATAL (or any error) in the log meanwhile');
like(slurp_file($node->logfile),
    qr/webhook_outbox serves database "ledger" alone: webhook.database is set\n.*HINT:  webhook.database is deprecated; set webhook.databases instead/,
    'the launcher says webhook.database is deprecated');

my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE ledger');
sleep 7;    # more than a launcher scan: a worker came, found no extension, left
is(processes(), 'webhook_outbox launcher||serving databases',
    'CREATE DATABASE: no worker stays connected to a database without the extension');

my $created_at = time;
ledger('CREATE EXTENSION webhook_outbox');
ok( $node->poll_query_until(
        'postgres', q{
        SELECT count(*) = 1 FROM pg_stat_activity
         WHERE backend_type = 'webhook_outbox worker' AND datname = 'ledger'}),
    'CREATE EXTENSION starts the worker');
cmp_ok(time - $created_at, '<', 3, '... at once, not at the next look at the databases');
my ($endpoint) = split /\|/, ledger(
    "SELECT id FROM webhook.create_webhook('" . $receiver->url('/ledger') . "')");
ledger(q{SELECT webhook.emit('account.created', '{"code": "1000"}')});
ok($receiver->wait_for_count(1, qr{^/ledger$}), 'CREATE EXTENSION: events are delivered');
ok(wait_until_settled($node, 'ledger'), '... and recorded');
like(processes(), qr/^webhook_outbox worker\|ledger\|delivering: 0 in flight$/m,
    'pg_stat_activity shows what the worker does');
is(log_problems($offset), '', 'no error in the log while it started');

# ---------------------------------------------------------------------------
# Latency: an isolated event arrives within milliseconds of its commit.
# ---------------------------------------------------------------------------

# Emit one period.closed event; return the seconds from the start of the
# psql call that commits it to the arrival of the last of the $n requests
# it causes at /latency/*: an upper bound of the latency (the commit happens
# during the call), and the same from the end of the call: a lower bound.
sub latency
{
    my ($n) = @_;
    my $before = $receiver->count(qr{^/latency/});
    my $call_start = time;
    ledger(q{SELECT webhook.emit('period.closed', '{}')});
    my $call_end = time;
    $receiver->wait_for_count($before + $n, qr{^/latency/}, 30) or return (999, 999);
    my @arrived = map { $_->{received_at} } $receiver->requests(qr{^/latency/});
    my ($last) = sort { $b <=> $a } @arrived[ $before .. $#arrived ];
    return ($last - $call_start, $last - $call_end);
}

# Measure 5 isolated events; the largest upper bound, and a note of all.
sub worst_latency
{
    my ($what) = @_;
    my @measured = map { [ latency(10) ] } 1 .. 5;
    note(sprintf('%s: commit to arrival at all 10 endpoints: %s ms', $what,
        join(', ', map { sprintf '%.1f..%.1f', 1000 * $_->[1], 1000 * $_->[0] } @measured)));
    return (sort { $b <=> $a } map { $_->[0] } @measured)[0];
}

ledger("SELECT webhook.update_webhook('$endpoint', event_types => ARRAY['account.*'])");
ledger("SELECT webhook.create_webhook('" . $receiver->url("/latency/$_")
      . "', ARRAY['period.closed'])")
  foreach 1 .. 10;
cmp_ok(worst_latency('isolated events'), '<', 0.5, 'each arrives within 500 ms of commit');

# With a long history: dispatch reads only what is new.
ledger(q{SELECT webhook.register_event_type('history.noise')});
ledger(q{SELECT count(webhook.emit('history.noise', jsonb_build_object('n', i)))
           FROM generate_series(1, 100000) i});
# The first event after them is dispatched with them.
cmp_ok((latency(10))[0], '<', 30, 'a history of 100000 events dispatched');
cmp_ok(worst_latency('with 100000 events of history'), '<', 0.5,
    '... each still within 500 ms of commit');
ok(wait_until_settled($node, 'ledger'), 'latency deliveries settled');

# ---------------------------------------------------------------------------
# Reload: webhook.timeout is taken at SIGHUP.
# ---------------------------------------------------------------------------

# Set webhook.timeout with ALTER SYSTEM and reload; wait until sessions see it.
sub set_timeout
{
    my ($value) = @_;
    $node->safe_psql('postgres', "ALTER SYSTEM SET webhook.timeout = '$value'");
    $node->reload;
    $node->poll_query_until('postgres', "SELECT current_setting('webhook.timeout') = '$value'")
      or die "webhook.timeout not reloaded";
}

# Send one event to a hanging endpoint; return the duration of its first
# attempt in milliseconds, and its error.
sub hang_once
{
    my ($key) = @_;
    ledger("SELECT webhook.register_event_type('hang.$key')");
    my ($id) = split /\|/, ledger(
        "SELECT id FROM webhook.create_webhook('" . $receiver->url("/hang/$key")
          . "', ARRAY['hang.$key'])");
    my $event = ledger("SELECT webhook.emit('hang.$key', '{}')");
    $node->poll_query_until('ledger',
        "SELECT count(*) > 0 FROM webhook.attempts WHERE event_id = '$event'")
      or return (-1, 'no attempt');
    my ($ms, $error) = split /\|/, ledger(
        "SELECT round(duration_ms), error FROM webhook.attempts WHERE event_id = '$event' AND attempt = 1");
    ledger("SELECT webhook.delete_webhook('$id')");
    return ($ms, $error);
}

set_timeout('1s');
my ($ms, $error) = hang_once('one');
ok($ms >= 900 && $ms < 1900, "after reload with webhook.timeout = 1s: timed out after $ms ms");
like($error, qr/time/i, "... with a timeout error ($error)");
set_timeout('2500ms');
($ms, $error) = hang_once('two');
ok($ms >= 2400 && $ms < 3500, "after reload with webhook.timeout = 2500ms: $ms ms");
set_timeout('1s');

# ---------------------------------------------------------------------------
# DROP DATABASE of another database: the worker absorbs the procsignal
# barrier at once, even with a request in flight.
# ---------------------------------------------------------------------------

# A long poll interval and request timeout: a worker (or launcher) that
# did not wake for the barrier would hold DROP DATABASE for 30 s or more.
$node->safe_psql('postgres', q{ALTER SYSTEM SET webhook.poll_interval = '60s'});
set_timeout('30s');
ledger(q{SELECT webhook.register_event_type('hang.barrier')});
my ($barrier_endpoint) = split /\|/, ledger(
    "SELECT id FROM webhook.create_webhook('" . $receiver->url('/hang/barrier')
      . "', ARRAY['hang.barrier'])");
ledger(q{SELECT webhook.emit('hang.barrier', '{}')});
ok($receiver->wait_for_count(1, qr{^/hang/barrier$}), 'a request hangs');
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
my $started = time;
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', 'DROP DATABASE scratch', timeout => 20);
my $took = time - $started;
is($ret, 0, 'DROP DATABASE of another database succeeds') or diag($stderr);
cmp_ok($took, '<', 5, sprintf('... without waiting on the worker (%.2f s)', $took));
ledger("SELECT webhook.delete_webhook('$barrier_endpoint')");
$node->safe_psql('postgres', 'ALTER SYSTEM RESET webhook.timeout');
$node->safe_psql('postgres', q{ALTER SYSTEM SET webhook.poll_interval = '100ms'});
$node->reload;    # timeout back to 15s: more than the slow request below takes

# ---------------------------------------------------------------------------
# SIGTERM to the worker: it exits cleanly and the launcher starts another.
# ---------------------------------------------------------------------------

my $worker_pid = $node->safe_psql('postgres',
    q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'});
$offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker_pid)");
ok( $node->poll_query_until(
        'postgres', qq{
        SELECT count(*) = 1 FROM pg_stat_activity
         WHERE backend_type = 'webhook_outbox worker' AND pid <> $worker_pid}),
    'SIGTERM: the launcher starts a new worker');
my $before = $receiver->count(qr{^/ledger$});
ledger(q{SELECT webhook.emit('account.updated', '{}')});
ok($receiver->wait_for_count($before + 1, qr{^/ledger$}), '... which delivers');
my $problems = log_problems($offset);
unlike($problems, qr/terminated by signal|PANIC|server process/,
    'no crash-restart after SIGTERM');

# ---------------------------------------------------------------------------
# Normal stop with a request in flight: the stop does not wait for it, the
# delivery stays pending and is sent again (same webhook-id) after restart.
# ---------------------------------------------------------------------------

ledger(q{SELECT webhook.register_event_type('slow.stop')});
ledger("SELECT webhook.create_webhook('" . $receiver->url('/slow/3000/stop')
      . "', ARRAY['slow.stop'])");
my $slow_event = ledger(q{SELECT webhook.emit('slow.stop', '{}')});
ok($receiver->wait_for_count(1, qr{^/slow/3000/stop$}), 'a slow request is in flight');
$offset = -s $node->logfile;
$started = time;
$node->stop('fast');
$took = time - $started;
cmp_ok($took, '<', 3, sprintf('fast stop does not wait for it (%.2f s)', $took));
$problems = log_problems($offset);
is($problems, '', 'the stop is clean (no error, no crash in the log)');
like(slurp_file($node->logfile, $offset), qr/database system is shut down/, '... and complete');

$node->start;
ok( $node->poll_query_until(
        'ledger',
        "SELECT status = 'succeeded' FROM webhook.deliveries WHERE event_id = '$slow_event'"),
    'after restart the interrupted delivery is sent again and succeeds');
my @slow = $receiver->requests(qr{^/slow/3000/stop$});
is(scalar @slow, 2, '... the request was made twice');
is(scalar(grep { $_->{headers}{'webhook-id'} eq $slow_event } @slow),
    2, '... both with the same webhook-id');

$node->stop;
$receiver->stop;
done_testing();
