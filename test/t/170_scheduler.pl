# test/t/170_scheduler.pl: the delivery scheduler (src/scheduler.c).
#
# - A delivery's next try depends on its own attempts only: an endpoint
#   that fails the first try of every event, or every event of one type,
#   gets each event on its own schedule, the others at full speed.
# - The breaker judges the endpoint as a whole: one that refuses every
#   connection is probed about once a second, and is served at once again
#   when it answers.
# - Retry-After on a 429 holds the whole endpoint.
# - rate_limit is never exceeded over any one-second window.
# - A gateway's hiccups (a few 503s in a row from an endpoint that answers
#   otherwise) do not open the breaker.

use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WebhookTest;

my $node = new_node('scheduler',
    conf => [ "webhook.retry_schedule = '1s,1s,1s'", "webhook.poll_interval = '1s'" ]);
my $receiver = start_receiver();

# Wait up to $seconds for $sql to return 't'; how long it took, or undef.
sub settle_within
{
    my ($seconds, $sql) = @_;
    my $start = time;
    while (time - $start < $seconds)
    {
        return time - $start if $node->safe_psql('postgres', $sql) eq 't';
        usleep(100_000);
    }
    return undef;
}

# ---------------------------------------------------------------------------
# Per-message schedules
# ---------------------------------------------------------------------------

my ($flaky) = create_endpoint($node, $receiver->url('/fail-each/1/flaky'),
    event_types => "ARRAY['account.created']");
my ($by_type) = create_endpoint($node, $receiver->url('/fail-type/account.updated/by-type'),
    event_types => "ARRAY['account.*']");
my ($healthy) = create_endpoint($node, $receiver->url('/healthy'),
    event_types => "ARRAY['account.*']");

$node->safe_psql('postgres', q{
    SELECT webhook.emit(CASE WHEN n % 2 = 0 THEN 'account.created' ELSE 'account.updated' END,
                        jsonb_build_object('n', n))
      FROM generate_series(1, 80) AS n});

# 0.1 put an endpoint that failed once into the breaker: 0 of 40 delivered
# after 12 s. Each event's retry is due a second after its first try.
my $took = settle_within(10, "SELECT count(*) = 40 FROM webhook.deliveries
                               WHERE endpoint_id = '$flaky' AND status = 'succeeded'");
ok(defined $took, 'an endpoint failing the first try of every event gets all 40 on their own schedules');
note(sprintf('the 40 fail-once deliveries took %.1f s', $took // -1));
is( $node->safe_psql('postgres',
        "SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$flaky' AND attempts = 2"),
    '40', '... each on its second try');

ok( defined settle_within(5, "SELECT count(*) = 40 FROM webhook.deliveries
                               WHERE endpoint_id = '$by_type' AND event_type = 'account.created'
                                 AND status = 'succeeded' AND attempts = 1"),
    'an endpoint rejecting one event type gets the other type at once, at the first try');
ok( defined settle_within(10, "SELECT count(*) = 40 FROM webhook.deliveries
                                WHERE endpoint_id = '$by_type' AND event_type = 'account.updated'
                                  AND status = 'failed' AND attempts = 4"),
    '... and the rejected type on its schedule, to the end');
is( $node->safe_psql('postgres',
        "SELECT count(*) FROM webhook.deliveries
          WHERE endpoint_id = '$healthy' AND status = 'succeeded' AND attempts = 1"),
    '80', 'a healthy endpoint beside them got all 80 at the first try');

# ---------------------------------------------------------------------------
# The breaker: an endpoint that refuses every connection
# ---------------------------------------------------------------------------

# A free port, with nothing listening on it for now.
my $socket = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
  or die "no free port: $!";
my $port = $socket->sockport;
close($socket);

my ($dead) = create_endpoint($node, "http://127.0.0.1:$port/dead",
    event_types => "ARRAY['period.*']");
$node->safe_psql('postgres',
    "SELECT webhook.emit('period.closed', jsonb_build_object('n', n)) FROM generate_series(1, 20) AS n");
usleep(6_000_000);
my $outage_attempts = $node->safe_psql('postgres',
    "SELECT count(*) FROM webhook.attempts WHERE endpoint_id = '$dead'");
note("attempts to the dead endpoint in 6 s: $outage_attempts");
cmp_ok($outage_attempts, '>=', 3, 'the dead endpoint was tried');
cmp_ok($outage_attempts, '<=', 20 + 3,
    '... and then only probed (at most about two a second), not sent every retry');
like(
    $node->safe_psql('postgres',
        "SELECT query FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'"),
    qr/1 endpoint\(s\) failing \(breaker open\), 0 held by Retry-After, 0 at their rate limit/,
    'the worker says an endpoint is failing');

# It comes back: served at once.
my $revived = start_receiver(port => $port);
$took = settle_within(10, "SELECT count(*) = 20 FROM webhook.deliveries
                            WHERE endpoint_id = '$dead' AND status <> 'pending'");
ok(defined $took, 'once it answers, its backlog goes out at once');
note(sprintf('recovery took %.1f s', $took // -1));
cmp_ok(scalar($revived->requests), '>=', 15,
    '... all but those whose schedule ran out on probes');

# ---------------------------------------------------------------------------
# Retry-After holds the whole endpoint
# ---------------------------------------------------------------------------

my ($held) = create_endpoint($node, $receiver->url('/retry-after/3/1/held'),
    event_types => "ARRAY['journal_entry.*']");
$node->safe_psql('postgres', "SELECT webhook.emit('journal_entry.created', '{}')");
ok($receiver->wait_for_count(1, qr{^/retry-after/3/1/held}), 'the first request got a 429');
my ($throttled) = $receiver->requests(qr{^/retry-after/3/1/held});
$node->safe_psql('postgres',
    "SELECT webhook.emit('journal_entry.posted', jsonb_build_object('n', n)) FROM generate_series(1, 5) AS n");
ok($receiver->wait_for_count(7, qr{^/retry-after/3/1/held}, 15), 'then everything went out');
my @after = grep { $_->{received_at} > $throttled->{received_at} }
  $receiver->requests(qr{^/retry-after/3/1/held});
my $first_after = (sort { $a <=> $b } map { $_->{received_at} } @after)[0];
cmp_ok($first_after - $throttled->{received_at}, '>=', 2.9,
    sprintf('no request to the endpoint for Retry-After: 3 (%.2f s), not even of other events',
        $first_after - $throttled->{received_at}));

# ---------------------------------------------------------------------------
# The rate limit
# ---------------------------------------------------------------------------

my ($limited) = create_endpoint($node, $receiver->url('/limited'),
    event_types => "ARRAY['period.reopened']", rate_limit => 5);
$node->safe_psql('postgres',
    "SELECT webhook.emit('period.reopened', jsonb_build_object('n', n)) FROM generate_series(1, 30) AS n");
ok( $node->poll_query_until('postgres',
        q{SELECT query LIKE '%1 at their rate limit' FROM pg_stat_activity
           WHERE backend_type = 'webhook_outbox worker'}),
    'the worker says an endpoint waits for its rate limit');
ok($receiver->wait_for_count(30, qr{^/limited}, 30), 'all 30 rate-limited deliveries arrived');
my @arrivals = sort { $a <=> $b } map { $_->{received_at} } $receiver->requests(qr{^/limited});
my $crowded = grep { $arrivals[ $_ + 5 ] - $arrivals[$_] < 1.0 } 0 .. $#arrivals - 5;
is($crowded, 0, 'never more than 5 within any one second at the receiver');
cmp_ok($arrivals[-1] - $arrivals[0], '>=', 5.0, '... so 30 took at least 5 s');
is( $node->safe_psql('postgres',
        "SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$limited' AND attempts = 1"),
    '30', '... none failed for it: they waited');

# ---------------------------------------------------------------------------
# A gateway's hiccups
# ---------------------------------------------------------------------------

# Three 503s in a row out of every 20 requests, one request at a time so
# that nothing else in flight can answer meanwhile. Were each hiccup to
# open the breaker, the next request would wait for a probe (0.4 s or more,
# five times over); the endpoint answered a moment before, so it stays
# closed, and the 503s follow their own schedules.
$node->safe_psql('postgres', q{
    ALTER SYSTEM SET webhook.endpoint_concurrency = 1;
    SELECT pg_reload_conf();
});
my ($gateway) = create_endpoint($node, $receiver->url('/blip/20/3/gateway'),
    event_types => "ARRAY['journal_entry.*']");
$node->safe_psql('postgres', q{
    SELECT webhook.emit('journal_entry.posted', jsonb_build_object('n', n))
      FROM generate_series(1, 100) AS n});
ok( defined settle_within(20, "SELECT count(*) = 100 FROM webhook.deliveries
                                WHERE endpoint_id = '$gateway' AND status = 'succeeded'"),
    'every event behind the hiccuping gateway is delivered');
# The attempts in the order they started: after each run of three 503s,
# how long until the next one started.
my @attempts = map { [ split /\|/ ] } split /\n/, $node->safe_psql('postgres', qq{
    SELECT extract(epoch FROM started_at), status_code FROM webhook.attempts
     WHERE endpoint_id = '$gateway' ORDER BY started_at});
my @after_hiccup;
for my $i (3 .. $#attempts)
{
    push @after_hiccup, $attempts[$i][0] - $attempts[ $i - 1 ][0]
      if 3 == grep { $attempts[ $i - $_ ][1] == 503 } 1 .. 3;
}
cmp_ok(scalar(@after_hiccup), '>=', 3, 'the gateway answered 503 three times in a row, again and again');
my $median = (sort { $a <=> $b } @after_hiccup)[ int(@after_hiccup / 2) ];
cmp_ok($median, '<', 0.3,
    sprintf('the next request went at once, not after a probe\'s cool-off (median wait %.3f s)', $median));
$node->safe_psql('postgres', q{
    ALTER SYSTEM RESET webhook.endpoint_concurrency;
    SELECT pg_reload_conf();
});

$revived->stop;
$receiver->stop;
$node->stop;
done_testing();
