# test/t/200_ordered.pl: ordered endpoints (the contract's "Ordering").
#
# - Each ordering key's events arrive one at a time, in order: the next is
#   sent only after the previous one succeeded, also when every event
#   needs a retry; different keys go in parallel.
# - A failing event holds back only its own key, and once its schedule is
#   exhausted (failed) the next event of the key goes.
# - Commit order, not emit order: of two interleaved transactions, the one
#   that commits first is delivered first.
# - A delivery sent again by hand waits its turn and is started by the
#   worker.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('ordered',
    conf => [ "webhook.retry_schedule = '300ms,300ms'", "webhook.poll_interval = '1s'" ]);
my $receiver = start_receiver();

sub query { return $node->safe_psql('postgres', $_[0]); }

# The requests that reached $path_regex, as [key, n, event type, received
# at], oldest first.
sub arrivals
{
    my ($path_regex) = @_;
    my $json = JSON::PP->new->utf8;
    return [ map {
        my $body = $json->decode($_->{body});
        [ $body->{data}{key}, $body->{data}{n}, $body->{type}, $_->{received_at} ]
    } $receiver->requests($path_regex) ];
}

# The n of each request of one key, in the order they arrived.
sub sequence_of
{
    my ($arrivals, $key) = @_;
    return join(',', map { $_->[1] } grep { $_->[0] eq $key } @$arrivals);
}

# ---------------------------------------------------------------------------
# Every event fails its first try: still one at a time, in order, per key
# ---------------------------------------------------------------------------

my ($flaky) = create_endpoint($node, $receiver->url('/fail-each/1/flaky'),
    event_types => "ARRAY['account.*']", ordered => 'true');
# Six events for each of three keys, in one transaction (emit order) and
# then one transaction each (commit order).
query(q{
    SELECT webhook.emit('account.created', jsonb_build_object('key', 'k' || (n % 3), 'n', n),
                        ordering_key => 'k' || (n % 3))
      FROM generate_series(1, 9) AS n});
foreach my $n (10 .. 18)
{
    my $key = 'k' . ($n % 3);
    query("SELECT webhook.emit('account.created', '{\"key\": \"$key\", \"n\": $n}',
                               ordering_key => '$key')");
}
ok($node->poll_query_until('postgres',
        "SELECT count(*) = 18 FROM webhook.deliveries
          WHERE endpoint_id = '$flaky' AND status = 'succeeded'"),
    'every event of the ordered endpoint was delivered');
my $flaky_arrivals = arrivals(qr{^/fail-each/1/flaky});
foreach my $key (qw(k0 k1 k2))
{
    my @ns = grep { "k" . ($_ % 3) eq $key } 1 .. 18;
    is(sequence_of($flaky_arrivals, $key), join(',', map { ($_, $_) } @ns),
        "$key: each event twice (a 500, then a 200), the next only after the previous succeeded, in order");
}
# The keys went in parallel: requests of other keys arrived between the
# first and the last of k0.
my @k0_times = map { $_->[3] } grep { $_->[0] eq 'k0' } @$flaky_arrivals;
my $between = grep { $_->[0] ne 'k0' && $_->[3] > $k0_times[0] && $_->[3] < $k0_times[-1] }
  @$flaky_arrivals;
cmp_ok($between, '>=', 12, 'the other keys were delivered meanwhile, not after');
is(query("SELECT count(*) FROM webhook.delivery_log
           WHERE endpoint_id = '$flaky' AND order_key IS NULL"),
    '0', 'every delivery to the ordered endpoint had a sequence');

# ---------------------------------------------------------------------------
# A failing event holds back its key alone, until its schedule ends
# ---------------------------------------------------------------------------

my ($typed) = create_endpoint($node, $receiver->url('/fail-type/period.reopened/typed'),
    event_types => "ARRAY['period.*']", ordered => 'true');
query(q{
    SELECT webhook.emit(CASE WHEN key = 'a' AND n = 2 THEN 'period.reopened' ELSE 'period.closed' END,
                        jsonb_build_object('key', key, 'n', n), ordering_key => key)
      FROM (VALUES ('a'), ('b')) AS k(key), generate_series(1, 3) AS n
     ORDER BY n, key});
ok($node->poll_query_until('postgres',
        "SELECT count(*) = 6 FROM webhook.deliveries
          WHERE endpoint_id = '$typed' AND status <> 'pending'"),
    'the second endpoint settled');
my $typed_arrivals = arrivals(qr{^/fail-type/period\.reopened/typed});
is(sequence_of($typed_arrivals, 'a'), '1,2,2,2,3',
    'key a: its failing event was tried to the end of its schedule, and only then the next');
is(sequence_of($typed_arrivals, 'b'), '1,2,3', 'key b: all three, in order');
my ($b3) = grep { $_->[0] eq 'b' && $_->[1] == 3 } @$typed_arrivals;
my ($a2_last) = (grep { $_->[0] eq 'a' && $_->[1] == 2 } @$typed_arrivals)[-1];
cmp_ok($b3->[3], '<', $a2_last->[3], '... key b was not held back by key a');
is(query("SELECT string_agg(status, ',' ORDER BY (e.payload->>'n')::int)
            FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
           WHERE d.endpoint_id = '$typed' AND e.payload->>'key' = 'a'"),
    'succeeded,failed,succeeded', "key a's deliveries: the failed one between two successes");

# ---------------------------------------------------------------------------
# Commit order: interleaved transactions
# ---------------------------------------------------------------------------

my ($interleaved) = create_endpoint($node, $receiver->url('/interleaved'),
    event_types => "ARRAY['journal_entry.*']", ordered => 'true');
my $emit = sub {
    my ($n) = @_;
    return "SELECT webhook.emit('journal_entry.posted', '{\"key\": \"i\", \"n\": $n}',
                                ordering_key => 'i');";
};
my $first = $node->background_psql('postgres', timeout => 20);
$first->query_safe('BEGIN');
$first->query_safe($emit->(1));    # emitted first ...
query($emit->(2));                 # ... but this one commits first
ok($receiver->wait_for_count(1, qr{^/interleaved}), 'the event committed first arrived');
$first->query_safe($emit->(3));
$first->query_safe('COMMIT');
$first->quit;
ok($receiver->wait_for_count(3, qr{^/interleaved}), 'the other transaction\'s two arrived');
is(sequence_of(arrivals(qr{^/interleaved}), 'i'), '2,1,3',
    'delivered in the commit order of their transactions, then emit order within one');

# ---------------------------------------------------------------------------
# Sent again by hand: the worker starts it
# ---------------------------------------------------------------------------

my ($again) = split /\|/, query("SELECT e.id FROM webhook.events e
                                  WHERE e.payload->>'key' = 'i' AND e.payload->>'n' = '2'");
query("SELECT webhook.retry_delivery('$again', '$interleaved')");
ok($receiver->wait_for_count(4, qr{^/interleaved}, 10), 'a manual retry on an ordered endpoint is sent');
is(sequence_of(arrivals(qr{^/interleaved}), 'i'), '2,1,3,2', '... after the rest of its key');
ok($node->poll_query_until('postgres',
        "SELECT status = 'succeeded' FROM webhook.deliveries
          WHERE event_id = '$again' AND endpoint_id = '$interleaved'"),
    '... and recorded');

done_testing();
