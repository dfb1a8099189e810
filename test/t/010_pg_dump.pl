# test/t/010_pg_dump.pl: configuration and the outbox survive pg_dump and
# restore.
#
# Endpoints (with their secrets) and user-registered event types are user
# configuration: pg_dump must keep them (pg_extension_config_dump), and a
# restore into a fresh database must recreate them exactly, with the
# built-in event types present once, not twice.
#
# The outbox itself (events, deliveries, attempts) is kept too: restored on
# another server, it delivers what was pending there, sends nothing that
# was delivered already, keeps the history as it was, and goes on
# delivering new events once.  Every endpoint is on a local receiver.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $receiver = start_receiver();
# A retry waits 12 to 18 s on node A: a failed delivery is pending, with
# one attempt, when the dump is taken, and A is stopped before it retries.
my $node = new_node('dump',
    conf => [ "webhook.poll_interval = '100ms'", "webhook.retry_schedule = '15s'" ]);

# ---------------------------------------------------------------------------
# Configuration: into another database of the same server
# ---------------------------------------------------------------------------

my $hook_url = $receiver->url('/config/hook');
my $all_url = $receiver->url('/config/all');
$node->safe_psql(
    'postgres', qq{
    SELECT secret FROM webhook.create_webhook('$hook_url',
        ARRAY['journal_entry.*'], 'a-secret-of-16-chars-at-least',
        description => 'ledger sink', headers => '{"X-Tenant": "acme"}');
    SELECT secret FROM webhook.create_webhook('$all_url');
    SELECT webhook.register_event_type('invoice.paid', 'desc');
});

my %queries = (
    endpoints => 'SELECT id, url, event_types, description, headers, enabled
                  FROM webhook.list_webhooks() ORDER BY id',
    secrets => 'SELECT id, secret FROM webhook.endpoints ORDER BY id',
    event_types => 'SELECT name FROM webhook.event_types ORDER BY 1',
);
my %before = map { $_ => $node->safe_psql('postgres', $queries{$_}) }
  keys %queries;

like($before{secrets}, qr/a-secret-of-16-chars-at-least/, 'secret stored');
like($before{event_types}, qr/^invoice\.paid$/m, 'event type registered');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/postgres.sql';
$node->command_ok([ 'pg_dump', '--no-owner', '-f', $dump, 'postgres' ],
    'pg_dump');
$node->command_ok([ 'createdb', 'restored' ], 'createdb');
$node->command_ok(
    [ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, 'restored' ],
    'restore runs without errors');

foreach my $what (sort keys %queries)
{
    is($node->safe_psql('restored', $queries{$what}),
        $before{$what}, "$what identical after restore");
}

is( $node->safe_psql(
        'restored', 'SELECT count(*) FROM webhook.event_types
                     WHERE name = \'journal_entry.posted\''),
    '1',
    'built-in event types appear once');

# ---------------------------------------------------------------------------
# The outbox: node A delivers some events and fails others, is dumped while
# running, and stops; node B, another server, restores the dump.
# ---------------------------------------------------------------------------

my ($ok_id, $ok_secret) = create_endpoint($node, $receiver->url('/ok'),
    event_types => "ARRAY['account.*', 'journal_entry.*']");
# 500 for the first two requests (A's), 200 after (B's).
my ($flaky_id, $flaky_secret) = create_endpoint($node, $receiver->url('/fail/2/flaky'),
    event_types => "ARRAY['period.*']");

my @old_events = split /\n/, $node->safe_psql(
    'postgres', q{
    SELECT webhook.emit('journal_entry.posted', '{"entry": 1}');
    SELECT webhook.emit('account.created', '{"account": "4000"}');
    SELECT webhook.emit('period.closed', '{"period": "2026-01"}');
    SELECT webhook.emit('period.reopened', '{"period": "2026-01"}');
});
is(scalar @old_events, 4, 'node A: four events emitted');

# What each path receives from node A.
my %from_a = ('/ok' => 2, '/fail/2/flaky' => 2, '/config/hook' => 1, '/config/all' => 4);
foreach my $path (sort keys %from_a)
{
    ok($receiver->wait_for_count($from_a{$path}, qr{^\Q$path\E$}),
        "node A: $path received its events");
}
ok( $node->poll_query_until(
        'postgres', qq{
        SELECT count(*) FILTER (WHERE endpoint_id = '$flaky_id' AND status = 'pending'
                                  AND attempts = 1 AND last_status_code = 500) = 2
           AND count(*) FILTER (WHERE endpoint_id <> '$flaky_id' AND status = 'succeeded') = 7
          FROM webhook.deliveries}),
    'node A: deliveries recorded, the failed ones pending a retry');

# The history as node A has it, and the dump of it, taken while A runs.
my %history_queries = (
    events => 'SELECT id, event_type, payload, created_at FROM webhook.events ORDER BY id',
    deliveries => 'SELECT event_id, endpoint_id, event_type, status, attempts,
                          last_status_code, last_error, next_attempt_at, succeeded_at,
                          created_at
                     FROM webhook.deliveries ORDER BY event_id, endpoint_id',
    attempts => 'SELECT event_id, endpoint_id, attempt, started_at, duration_ms,
                        status_code, error, response_body, manual
                   FROM webhook.attempts ORDER BY event_id, endpoint_id, attempt',
);
my %history_a = map { $_ => $node->safe_psql('postgres', $history_queries{$_}) }
  keys %history_queries;
my $archive = PostgreSQL::Test::Utils::tempdir() . '/outbox.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $archive, 'postgres' ],
    'node A: pg_dump -Fc while the worker runs');
$node->stop;
my %requests_a = map { $_ => $receiver->count(qr{^\Q$_\E$}) } keys %from_a;
is_deeply(\%requests_a, \%from_a, 'node A sent nothing more before it stopped');

my $node_b = new_node('restore', no_extension => 1,
    conf => ["webhook.poll_interval = '100ms'"]);
$node_b->command_ok(
    [ 'pg_restore', '--no-owner', '--exit-on-error', '-d', 'postgres', $archive ],
    'node B: pg_restore runs without errors');

# Read right away: nothing of the history is due for several seconds.
foreach my $what (sort keys %history_queries)
{
    is($node_b->safe_psql('postgres', $history_queries{$what}), $history_a{$what},
        "node B: $what identical after restore");
}

# What was pending on A is delivered by B, signed with the restored secret.
ok($receiver->wait_for_count(4, qr{^/fail/2/flaky$}, 40),
    'node B: the deliveries pending on A are retried');
ok( $node_b->poll_query_until(
        'postgres', qq{
        SELECT count(*) = 2 FROM webhook.deliveries
         WHERE endpoint_id = '$flaky_id' AND status = 'succeeded' AND attempts = 2}),
    '... and succeed at their second attempt');
my @flaky = $receiver->requests(qr{^/fail/2/flaky$});
is_deeply([ sort map { $_->{headers}{'webhook-id'} } @flaky[ 2, 3 ] ],
    [ sort map { $_->{headers}{'webhook-id'} } @flaky[ 0, 1 ] ],
    '... the same two events as on A');
is(scalar(grep { verify_delivery($_, $flaky_secret) } @flaky[ 2, 3 ]), 2,
    '... signed with the endpoint\'s secret');

# A new event on B: emit may refuse (55000) until B's worker has taken the
# restored outbox over.
my ($new_event, $refusal);
my $deadline = time + 20;
while (time < $deadline)
{
    my ($ret, $stdout, $stderr) = $node_b->psql('postgres',
        q{SELECT webhook.emit('account.updated', '{"on": "B"}')},
        extra_params => [ '-v', 'VERBOSITY=verbose' ]);
    if ($ret == 0) { $new_event = $stdout; last; }
    $refusal = $stderr;
    last unless $stderr =~ /ERROR:  55000:/;
    usleep(200_000);
}
ok(defined $new_event, 'node B: emit works after the restore')
  or diag("last refusal: $refusal");
$new_event //= 'none';

ok($receiver->wait_for_count(3, qr{^/ok$}, 20), 'node B: the new event reaches /ok');
ok($receiver->wait_for_count(5, qr{^/config/all$}, 20), '... and /config/all');
ok(wait_until_settled($node_b), 'node B: nothing left pending');
sleep 1;    # a duplicate's chance to arrive

# Each path received each event once (the flaky one: once from A, once
# from B); nothing delivered by A was sent again.
my %expected = (
    '/ok' => [ @old_events[ 0, 1 ], $new_event ],
    '/config/hook' => [ $old_events[0] ],
    '/config/all' => [ @old_events, $new_event ],
    '/fail/2/flaky' => [ map { ($_, $_) } @old_events[ 2, 3 ] ],
);
foreach my $path (sort keys %expected)
{
    is_deeply([ sort map { $_->{headers}{'webhook-id'} } $receiver->requests(qr{^\Q$path\E$}) ],
        [ sort @{ $expected{$path} } ], "$path received what it should, once");
}
my ($ok_new) = grep { ($_->{headers}{'webhook-id'} // '') eq $new_event }
  $receiver->requests(qr{^/ok$});
ok($ok_new && verify_delivery($ok_new, $ok_secret), 'node B signs the new event');

# History of the old events is as A had it, B's retries added.
my $old_list = join(', ', map { "'$_'" } @old_events);
is( $node_b->safe_psql('postgres', qq{
        SELECT string_agg(d.status || ':' || d.attempts, ' ' ORDER BY d.event_id)
          FROM webhook.deliveries d
         WHERE d.endpoint_id = '$ok_id' AND d.event_id IN ($old_list)}),
    'succeeded:1 succeeded:1', 'node B: one delivery per old event to /ok, succeeded');
my @final_a = grep { !/\|pending\|/ } split /\n/, $history_a{deliveries};
my %deliveries_b = map { $_ => 1 } split /\n/,
  $node_b->safe_psql('postgres', $history_queries{deliveries});
is(join("\n", grep { !$deliveries_b{$_} } @final_a), '',
    'node B: the deliveries final on A are unchanged');
my %attempts_b = map { $_ => 1 } split /\n/,
  $node_b->safe_psql('postgres', $history_queries{attempts});
is(join("\n", grep { !$attempts_b{$_} } split /\n/, $history_a{attempts}), '',
    'node B: every attempt of A is in its history');
is( $node_b->safe_psql('postgres', qq{
        SELECT count(*) FROM webhook.attempts
         WHERE event_id IN ($old_list) AND NOT (endpoint_id = '$flaky_id' AND attempt = 2)}),
    scalar(my @a = split /\n/, $history_a{attempts}),
    '... and nothing but the retries was added for the old events');

$node_b->stop;
$receiver->stop;
done_testing();
