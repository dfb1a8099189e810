# test/t/020_delivery.pl: what reaches which endpoint, and what it looks like.
#
# A committed event reaches every subscribed, enabled endpoint exactly once
# (filters: every event, 'prefix.*', exact names; disabled endpoints get
# nothing); the body and headers are those of the contract and both
# signatures verify, also with two secrets during a rotation; custom headers
# arrive; a deleted endpoint gets nothing more and its pending deliveries
# are cancelled while their history stays; rolled-back and two-phase
# transactions are delivered if and only if they commit.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('delivery', conf => ["webhook.poll_interval = '100ms'"]);
# The User-Agent names the library's version, which is the schema's.
my $version = $node->safe_psql('postgres',
    "SELECT extversion FROM pg_extension WHERE extname = 'webhook_outbox'");
my $receiver = start_receiver();
my $json = JSON::PP->new->utf8->canonical;

# Register an endpoint at $path of the receiver; returns (id, secret).
sub endpoint
{
    my ($path, %args) = @_;
    return create_endpoint($node, $receiver->url($path), %args);
}

# Wait until no delivery is pending (the worker has recorded every outcome).
sub settled
{
    my ($what) = @_;
    ok(wait_until_settled($node), "$what: no delivery left pending");
}

# ---------------------------------------------------------------------------
# Fan-out and filters
# ---------------------------------------------------------------------------

my $plain_secret = 'a-plain-secret-not-whsec-form';
my ($all_id, $all_secret) = endpoint('/all');
my ($journal_id, $journal_secret) =
  endpoint('/journal', event_types => "ARRAY['journal_entry.*']");
my ($exact_id, $exact_secret) = endpoint('/exact',
    event_types => "ARRAY['period.closed']", secret => "'$plain_secret'");
my ($off_id) = endpoint('/disabled', enabled => 'false');
my ($custom_id, $custom_secret) = endpoint('/custom',
    event_types => "ARRAY['account.*', 'period.closed']",
    headers => q{'{"X-Tenant": "acme", "Authorization": "Bearer t0ken"}'});

like($all_secret, qr/^whsec_[A-Za-z0-9+\/]{43}=$/, 'generated secret has the whsec_ form');

my %events;    # event id => [type, payload]
my @emits = (
    [ 'journal_entry.posted', '{"entry": 1, "amount": "12.50", "memo": "caf\u00e9"}' ],
    [ 'period.closed', '{"period": "2026-01"}' ],
    [ 'account.created', '{"account": {"code": "4000", "tags": ["a", "b"]}}' ],
);
my $before = time;
foreach my $e (@emits)
{
    my $id = $node->safe_psql('postgres',
        "SELECT webhook.emit('$e->[0]', '$e->[1]')");
    $events{$id} = $e;
}
# Three events in one transaction count as three.
$node->safe_psql(
    'postgres', q{
    BEGIN;
    SELECT webhook.emit('journal_entry.created', '{"batch": 1}');
    SELECT webhook.emit('journal_entry.created', '{"batch": 2}');
    SELECT webhook.emit('account.updated', '{"batch": 3}');
    COMMIT;
});
foreach my $row (split /\n/, $node->safe_psql('postgres',
    "SELECT id, event_type, payload FROM webhook.events WHERE payload ? 'batch'"))
{
    my ($id, $type, $payload) = split /\|/, $row;
    $events{$id} = [ $type, $payload ];
}
is(scalar keys %events, 6, 'six events emitted');

# Expected number of requests per endpoint.
my %expected = (
    '/all' => 6,
    '/journal' => 3,    # journal_entry.posted and two journal_entry.created
    '/exact' => 1,      # period.closed
    '/custom' => 3,     # period.closed, account.created, account.updated
);
foreach my $path (sort keys %expected)
{
    ok($receiver->wait_for_count($expected{$path}, qr{^\Q$path\E$}),
        "$path received its events");
}
settled('fan-out');

foreach my $path (sort keys %expected)
{
    my @requests = $receiver->requests(qr{^\Q$path\E$});
    is(scalar @requests, $expected{$path}, "$path received each event once");
    my %ids = map { $_->{headers}{'webhook-id'} => 1 } @requests;
    is(scalar keys %ids, $expected{$path}, "$path: distinct webhook-ids");
}
is($receiver->count(qr{^/disabled}), 0, 'a disabled endpoint receives nothing');

is( $node->safe_psql(
        'postgres', "SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$off_id'"),
    '0',
    '... and has no deliveries');
is( $node->safe_psql(
        'postgres', q{
        SELECT string_agg(format('%s:%s', e.url, d.n), ' ' ORDER BY e.url)
          FROM (SELECT endpoint_id, count(*) AS n FROM webhook.deliveries
                 WHERE status = 'succeeded' AND attempts = 1 AND succeeded_at IS NOT NULL
                   AND last_status_code = 200 AND last_error IS NULL
                 GROUP BY endpoint_id) d
          JOIN webhook.endpoints e ON e.id = d.endpoint_id}),
    join(' ', map { $receiver->url($_) . ":$expected{$_}" } sort keys %expected),
    'deliveries: each succeeded at the first attempt, one row per (event, endpoint)');
is( $node->safe_psql(
        'postgres', q{
        SELECT count(*), count(*) FILTER (WHERE a.attempt = 1 AND a.status_code = 200
                                            AND a.error IS NULL AND a.response_body = 'ok'
                                            AND NOT a.manual AND a.duration_ms >= 0)
          FROM webhook.attempts a}),
    '13|13',
    'attempts: one row per request, with status, body and duration');

# Every request matches the event it carries, body and headers.
my $secrets = {
    '/all' => $all_secret,
    '/journal' => $journal_secret,
    '/exact' => $exact_secret,
    '/custom' => $custom_secret,
};
my ($body_ok, $header_ok, $signed_ok, $timestamp_ok) = (0, 0, 0, 0);
my @all_requests = grep { $_->{path} ne '/disabled' } $receiver->requests;
foreach my $r (@all_requests)
{
    my $h = $r->{headers};
    my $id = $h->{'webhook-id'} // '';
    my $event = $events{$id};
    unless ($event)
    {
        diag("request for an unknown event: $id");
        next;
    }
    my $body = $r->{body};
    my $decoded = eval { JSON::PP->new->decode($body) };
    if (   $decoded
        && $body =~ /^\{"id":"[^"]+","type":"[^"]+","timestamp":"[^"]+","data":\{.*\}\}$/s
        && join(',', sort keys %$decoded) eq 'data,id,timestamp,type'
        && $decoded->{id} eq $id
        && $decoded->{type} eq $event->[0]
        && $decoded->{timestamp} =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/
        && $json->encode($decoded->{data}) eq
        $json->encode($json->decode($node->safe_psql('postgres',
            "SELECT payload FROM webhook.events WHERE id = '$id'")))
        && $node->safe_psql('postgres',
            "SELECT created_at = '$decoded->{timestamp}'::timestamptz FROM webhook.events WHERE id = '$id'"
        ) eq 't')
    {
        $body_ok++;
    }
    else
    {
        diag("unexpected body: $body");
    }

    if (   ($h->{'content-type'} // '') eq 'application/json'
        && ($h->{'user-agent'} // '') eq "webhook_outbox/$version"
        && ($h->{'x-webhook-event'} // '') eq $event->[0]
        && ($h->{'x-webhook-signature'} // '') =~ /^sha256=[0-9a-f]{64}$/
        && ($h->{'webhook-signature'} // '') =~ m{^v1,[A-Za-z0-9+/]{43}=$}
        && ($h->{'webhook-timestamp'} // '') =~ /^\d+$/)
    {
        $header_ok++;
    }
    else
    {
        diag('unexpected headers: ' . $json->encode($h));
    }
    $timestamp_ok++
      if abs(($h->{'webhook-timestamp'} // 0) - $r->{received_at}) <= 5
      && $h->{'webhook-timestamp'} >= $before - 1;
    $signed_ok++ if verify_delivery($r, $secrets->{ $r->{path} });
}
is($body_ok, 13, 'every body is exactly {"id","type","timestamp","data"} of its event');
is($header_ok, 13, 'every request carries the contract headers');
is($timestamp_ok, 13, 'webhook-timestamp is the time of the attempt');
is($signed_ok, 13, 'both signatures verify with the endpoint secret');

my ($exact_request) = $receiver->requests(qr{^/exact$});
ok(!verify_delivery($exact_request, $all_secret), 'another secret does not verify');
is( $exact_request->{headers}{'webhook-signature'},
    standard_signature(
        $plain_secret, $exact_request->{headers}{'webhook-id'},
        $exact_request->{headers}{'webhook-timestamp'},
        $exact_request->{body}),
    'a secret not of the whsec_ form signs with its bytes');

my @custom = $receiver->requests(qr{^/custom$});
is(scalar(grep { ($_->{headers}{'x-tenant'} // '') eq 'acme'
          && ($_->{headers}{authorization} // '') eq 'Bearer t0ken' } @custom),
    3, 'custom endpoint headers arrive on every request');
is(scalar(grep { exists $_->{headers}{'x-tenant'} } $receiver->requests(qr{^/all$})),
    0, '... and only to that endpoint');

# A filter changed by update_webhook applies to events dispatched afterwards.
$node->safe_psql('postgres',
    "SELECT 1 FROM webhook.update_webhook('$exact_id', event_types => ARRAY['period.*'])");
$node->safe_psql('postgres', q{SELECT webhook.emit('period.reopened', '{}')});
ok($receiver->wait_for_count(2, qr{^/exact$}), 'an updated filter applies at once');
settled('updated filter');

# ---------------------------------------------------------------------------
# Secret rotation: during the grace period, two signatures
# ---------------------------------------------------------------------------

my ($rot_id, $old_secret) = endpoint('/rotated', event_types => "ARRAY['period.closed']");
my $new_secret = $node->safe_psql('postgres',
    "SELECT webhook.rotate_secret('$rot_id', '1 hour')");
isnt($new_secret, $old_secret, 'rotate_secret returns a new secret');
$node->safe_psql('postgres', q{SELECT webhook.emit('period.closed', '{"rotated": true}')});
ok($receiver->wait_for_count(1, qr{^/rotated$}), 'delivered during the grace period');
my ($rotated) = $receiver->requests(qr{^/rotated$});
my @signatures = split ' ', $rotated->{headers}{'webhook-signature'};
is(scalar @signatures, 2, 'two signatures in webhook-signature');
ok((grep { /^v1,/ } @signatures) == 2, '... both v1');
my $body_bytes = $rotated->{body};
utf8::encode($body_bytes);
my @args = ($rotated->{headers}{'webhook-id'}, $rotated->{headers}{'webhook-timestamp'}, $body_bytes);
is_deeply(
    [ sort @signatures ],
    [ sort(standard_signature($new_secret, @args), standard_signature($old_secret, @args)) ],
    '... one made with the new secret, one with the old');
ok(verify_delivery($rotated, $new_secret), 'X-Webhook-Signature uses the new secret');

# Grace over (rotated again with none): the old secrets no longer sign.
my $newest = $node->safe_psql('postgres', "SELECT webhook.rotate_secret('$rot_id', '0')");
$node->safe_psql('postgres', q{SELECT webhook.emit('period.closed', '{"rotated": 2}')});
ok($receiver->wait_for_count(2, qr{^/rotated$}), 'delivered after a rotation without grace');
my $second = ($receiver->requests(qr{^/rotated$}))[1];
my @one = split ' ', $second->{headers}{'webhook-signature'};
is(scalar @one, 1, '... with one signature');
ok(verify_delivery($second, $newest), '... made with the newest secret');
ok(!verify_delivery($second, $new_secret), '... and not with the previous one');
settled('rotation');

# ---------------------------------------------------------------------------
# Deleting an endpoint: nothing more is sent, pending deliveries are
# cancelled, history stays.  A long retry delay keeps its failed delivery
# pending while we delete it.
# ---------------------------------------------------------------------------

$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.retry_schedule = '60s'; SELECT pg_reload_conf()");
my ($doomed_id) = endpoint('/status/500/doomed', event_types => "ARRAY['account.updated']");
my $doomed_event = $node->safe_psql('postgres',
    q{SELECT webhook.emit('account.updated', '{"doomed": true}')});
ok($receiver->wait_for_count(1, qr{^/status/500/doomed$}), 'failing endpoint tried once');
ok( $node->poll_query_until(
        'postgres', qq{
        SELECT status = 'pending' AND attempts = 1 AND last_status_code = 500
               AND next_attempt_at > now() + interval '30 seconds'
          FROM webhook.deliveries WHERE endpoint_id = '$doomed_id'}),
    '... its delivery is pending a retry');
is($node->safe_psql('postgres', "SELECT webhook.delete_webhook('$doomed_id')"),
    't', 'delete_webhook');
is( $node->safe_psql(
        'postgres', qq{
        SELECT status, attempts, last_status_code, next_attempt_at IS NULL
          FROM webhook.deliveries WHERE endpoint_id = '$doomed_id'}),
    'cancelled|1|500|t',
    'its pending delivery is cancelled, its history kept');
is( $node->safe_psql(
        'postgres',
        "SELECT count(*) FROM webhook.attempts WHERE endpoint_id = '$doomed_id' AND status_code = 500"
    ),
    '1',
    '... with its attempts');
is($node->safe_psql('postgres', "SELECT webhook.delete_webhook('$doomed_id')"),
    'f', 'deleting it again returns false');

# Events after the delete: the others get them, it does not.
my $all_before = $receiver->count(qr{^/all$});
$node->safe_psql('postgres', q{SELECT webhook.emit('account.updated', '{"after_delete": true}')});
ok($receiver->wait_for_count($all_before + 1, qr{^/all$}), 'an event after the delete is delivered');
settled('after delete');
is($receiver->count(qr{^/status/500/doomed$}), 1, 'the deleted endpoint received nothing more');
is( $node->safe_psql(
        'postgres', "SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$doomed_id'"),
    '1',
    '... and no delivery was queued for it');
$node->safe_psql('postgres',
    "ALTER SYSTEM RESET webhook.retry_schedule; SELECT pg_reload_conf()");

# ---------------------------------------------------------------------------
# Delivered if and only if committed: ROLLBACK and two-phase commit
# ---------------------------------------------------------------------------

my ($tx_id) = endpoint('/tx', event_types => "ARRAY['journal_entry.reversed']");
$node->safe_psql(
    'postgres', q{
    BEGIN;
    SELECT webhook.emit('journal_entry.reversed', '{"tx": "rolled back"}');
    ROLLBACK;
    BEGIN;
    SELECT webhook.emit('journal_entry.reversed', '{"tx": "prepared, rolled back"}');
    PREPARE TRANSACTION 'rolled_back';
    BEGIN;
    SELECT webhook.emit('journal_entry.reversed', '{"tx": "prepared, committed"}');
    PREPARE TRANSACTION 'committed';
});
is( $node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'),
    '2', 'two transactions prepared');
$node->safe_psql('postgres', "ROLLBACK PREPARED 'rolled_back'");
$node->safe_psql('postgres', "COMMIT PREPARED 'committed'");
ok($receiver->wait_for_count(1, qr{^/tx$}), 'COMMIT PREPARED: delivered (found by the poll)');

# A plain commit after them is delivered too; waiting for it shows the
# rolled-back ones had every chance to arrive.
$node->safe_psql('postgres',
    q{SELECT webhook.emit('journal_entry.reversed', '{"tx": "committed"}')});
ok($receiver->wait_for_count(2, qr{^/tx$}), 'a plain commit is delivered');
settled('transactions');
my @tx = map { JSON::PP->new->decode($_->{body})->{data}{tx} } $receiver->requests(qr{^/tx$});
is_deeply([ sort @tx ], [ 'committed', 'prepared, committed' ],
    'rolled-back and prepared-then-rolled-back events are never delivered');
is( $node->safe_psql(
        'postgres', q{SELECT string_agg(payload->>'tx', ',' ORDER BY payload->>'tx')
                        FROM webhook.events WHERE payload ? 'tx'}),
    'committed,prepared, committed',
    '... nor recorded');

$node->stop;
$receiver->stop;
done_testing();
