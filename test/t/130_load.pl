# test/t/130_load.pl: many endpoints, dead endpoints, a long outage.
#
# 1. 1,000 endpoints each receive an event, exactly once.
# 2. 64 endpoints that never answer, at the default webhook.concurrency of
#    64, while a healthy endpoint on the same receiver (same host and port)
#    goes on being delivered to: requests waiting over a second stop
#    counting against webhook.concurrency, so the healthy endpoint waits at
#    most about that second, never webhook.timeout.
# 3. A receiver outage with 10,000 events queued: attempts fail (connection
#    refused); once the endpoint is failing it gets one request at a time
#    (the circuit breaker of webhook.due_deliveries), so the outage costs
#    few attempts and gives nothing up; when the receiver is back, the first
#    success lifts the limit and every event is delivered, each once. The outage lasts 15 s here (a
#    real one may last hours; the schedule below is shortened to match) so
#    that the suite stays fast.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WebhookTest;

my $node = new_node(
    'load',
    conf => [
        # part 3 sends 10,000 events to one endpoint: with the default of
        # 16 in flight the Python receiver takes ~30 s for them, with 64 ~8
        "webhook.endpoint_concurrency = 64",
        "webhook.timeout = '8s'",
        # tries at about 0, 1, 3, 6, 10, 15, 20, 25, 30, 35 s: survives the
        # 15 s outage with room to spare, and retries soon after it
        "webhook.retry_schedule = '1s,2s,3s,4s,5s,5s,5s,5s,5s'",
        "webhook.poll_interval = '100ms'",
    ]);
my $receiver = start_receiver();

# ---------------------------------------------------------------------------
# 1. 1,000 endpoints, one event each
# ---------------------------------------------------------------------------

$node->safe_psql(
    'postgres', sprintf(
        q{SELECT count(*) FROM generate_series(1, 1000) AS i,
                 webhook.create_webhook('%s' || i, ARRAY['account.created']) AS w},
        $receiver->url('/many/')));
my $started = time;
my $fanout = $node->safe_psql('postgres',
    q{SELECT webhook.emit('account.created', '{"fan": "out"}')});
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = 1000 FROM webhook.deliveries
          WHERE event_id = '$fanout' AND status = 'succeeded'"),
    '1,000 endpoints: every delivery succeeded');
note(sprintf('1,000 deliveries in %.1f s', time - $started));
my @many = $receiver->requests(qr{^/many/});
my %paths = map { $_->{path} => 1 } @many;
is(scalar(@many), 1000, 'the receiver got 1,000 requests');
is(scalar(keys %paths), 1000, '... one for each endpoint');
is(scalar(grep { $_->{headers}{'webhook-id'} eq $fanout } @many),
    1000, '... all of the one event');
is( $node->safe_psql(
        'postgres',
        "SELECT string_agg(DISTINCT error, ', ') FROM webhook.attempts
          WHERE event_id = '$fanout' AND status_code IS DISTINCT FROM 200"),
    '',
    '... each at the first attempt');
$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');

# ---------------------------------------------------------------------------
# 2. 64 dead endpoints beside a healthy one
# ---------------------------------------------------------------------------

$node->safe_psql(
    'postgres', sprintf(
        q{SELECT count(*) FROM generate_series(1, 64) AS i,
                 webhook.create_webhook('%s' || i, ARRAY['period.closed']) AS w},
        $receiver->url('/hang/')));
my ($healthy) = create_endpoint($node, $receiver->url('/healthy'),
    event_types => "ARRAY['journal_entry.posted']");
my $dead_event = $node->safe_psql('postgres',
    q{SELECT webhook.emit('period.closed', '{"dead": true}')});
ok($receiver->wait_for_count(64, qr{^/hang/}, 30),
    'all 64 dead endpoints are being tried at once');

# Healthy events every 200 ms while the dead ones hold their connections.
my @healthy_events;
my $until = time + 4;
while (time < $until)
{
    push @healthy_events, $node->safe_psql('postgres',
        q{SELECT webhook.emit('journal_entry.posted', '{"healthy": true}')});
    usleep(200_000);
}
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = " . scalar(@healthy_events) . " FROM webhook.deliveries
          WHERE endpoint_id = '$healthy' AND status = 'succeeded'"),
    scalar(@healthy_events) . ' healthy deliveries succeeded');
my $slowest = $node->safe_psql(
    'postgres', qq{
    SELECT max(extract(epoch FROM d.succeeded_at - e.created_at))
      FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
     WHERE d.endpoint_id = '$healthy'});
note("slowest healthy delivery: ${slowest}s");
cmp_ok($slowest, '<', 2.5,
    '... each within the stall allowance, while 64 endpoints hung');
is( $node->safe_psql(
        'postgres',
        "SELECT count(*) FROM webhook.attempts WHERE event_id = '$dead_event'"),
    0,
    'the dead endpoints were still hanging meanwhile');
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = 64 FROM webhook.attempts
          WHERE event_id = '$dead_event' AND error LIKE 'Timeout was reached%'"),
    '... until webhook.timeout ended each attempt');
$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');

# ---------------------------------------------------------------------------
# 3. An outage with 10,000 events queued
# ---------------------------------------------------------------------------

# Take the receiver down, keeping its port for its return.
my $port = $receiver->port;
$receiver->stop;
my ($outage_id) = create_endpoint($node, "http://127.0.0.1:$port/outage",
    event_types => "ARRAY['period.reopened']");
my $outage_started = time;
$node->safe_psql(
    'postgres', q{
    SELECT count(webhook.emit('period.reopened', jsonb_build_object('n', n)))
      FROM generate_series(1, 10000) AS n});
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = 10000 FROM webhook.deliveries WHERE endpoint_id = '$outage_id'"),
    '10,000 deliveries queued');

# Wait out the outage, while attempts fail.
usleep(1_000_000 * ($outage_started + 15 - time)) if time < $outage_started + 15;
my ($failed_attempts, $retried, $pending, $refused) = split /\|/,
  $node->safe_psql(
    'postgres', qq{
    SELECT count(*), count(*) FILTER (WHERE attempt > 1),
           (SELECT count(*) FROM webhook.deliveries
             WHERE endpoint_id = '$outage_id' AND status = 'pending'),
           bool_and(error LIKE 'Couldn''t connect to server:%Connection refused%')
      FROM webhook.attempts WHERE endpoint_id = '$outage_id'});
note("during the outage: $failed_attempts failed attempts, $retried of them retries");
cmp_ok($failed_attempts, '>', 0, 'during the outage deliveries were tried');
cmp_ok($failed_attempts, '<', 10000 * 2,
    '... one at a time once the endpoint was failing, not every delivery on every try');
is($refused, 't', '... each failing with "Connection refused"');
is($pending, 10000, '... and none given up');

# The receiver is back.
$receiver = start_receiver(port => $port);
my $back = time;
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = 10000 FROM webhook.deliveries
          WHERE endpoint_id = '$outage_id' AND status = 'succeeded'"),
    'after the outage, all 10,000 deliveries succeeded');
note(sprintf('all delivered %.1f s after the receiver came back', time - $back));
my %ids;
$ids{ $_->{headers}{'webhook-id'} }++ foreach $receiver->requests(qr{^/outage$});
is(scalar(keys %ids), 10000, 'the receiver got all 10,000 events');
is(scalar(grep { $_ > 1 } values %ids), 0, '... each once');

$receiver->stop;
$node->stop;
done_testing();
