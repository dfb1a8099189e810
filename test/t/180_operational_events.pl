# test/t/180_operational_events.pl: the extension's own events, delivered.
#
# An endpoint answering 410 is disabled, and an operations endpoint
# subscribed to 'webhook.*' receives webhook.endpoint.disabled naming it,
# its URL's password masked; a delivery that exhausts its schedule
# ('1s,1s,1s': four tries) produces webhook.delivery.failed there; an
# endpoint that subscribes to operational events never receives one about
# itself, and one subscribed to every event receives none; operations
# endpoints that fail themselves do not make the failures of their own
# deliveries into further events (no loop); expiry and disabling by hand
# are reported too. No body carries a secret or a URL's password.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('operational',
    conf => [ "webhook.poll_interval = '100ms'", "webhook.timeout = '1s'" ]);
my $receiver = start_receiver();
my $json = JSON::PP->new->utf8;

sub query { return $node->safe_psql('postgres', $_[0]); }

# Register an endpoint at $path of the receiver; returns (id, secret).
sub endpoint
{
    my ($path, %args) = @_;
    return create_endpoint($node, $receiver->url($path), %args);
}

# The requests to $path_regex, decoded: [event type, body as a hash, request].
sub received
{
    my ($path_regex) = @_;
    return map { [ $_->{headers}{'x-webhook-event'}, $json->decode(do { my $b = $_->{body}; utf8::encode($b); $b }), $_ ] }
      $receiver->requests($path_regex);
}

# The operational events received at $path_regex, of $type.
sub received_of
{
    my ($path_regex, $type) = @_;
    return grep { $_->[0] eq $type } received($path_regex);
}

query("SELECT webhook.register_event_type('test.gone')");
query("SELECT webhook.register_event_type('test.exhaust')");

# ops: every operational event. all: every event (which is not naming
# operational events). gone: answers 410, has a password in its URL, and
# subscribes to operational events too. exhaust: fails its own event type
# (500), answers 200 to everything else, and subscribes to operational
# events too.
my ($ops, $ops_secret) = endpoint('/ops', event_types => "ARRAY['webhook.*']",
    description => "'operations'");
my ($all) = endpoint('/all');
my $port = $receiver->port;
my ($gone, $gone_secret) = create_endpoint($node,
    "http://hook-user:pa55-w0rd\@127.0.0.1:$port/status/410/g",
    event_types => "ARRAY['test.gone', 'webhook.*']",
    description => "'gone soon'");
my ($exhaust, $exhaust_secret) = endpoint('/fail-type/test.exhaust/x',
    event_types => "ARRAY['test.exhaust', 'webhook.*']");

# ---------------------------------------------------------------------------
# 410 Gone: webhook.endpoint.disabled
# ---------------------------------------------------------------------------

my $gone_event = query("SELECT webhook.emit('test.gone', '{}')");
ok( $node->poll_query_until('postgres',
        "SELECT NOT enabled FROM webhook.endpoints WHERE id = '$gone'"),
    '410: the endpoint is disabled');
ok($receiver->wait_for_count(1, qr{^/ops$}), 'the operations endpoint receives an event');
my ($disabled) = received_of(qr{^/ops$}, 'webhook.endpoint.disabled');
ok($disabled, '... webhook.endpoint.disabled');
is($disabled->[1]{type}, 'webhook.endpoint.disabled', '... of that type in the body');
is($disabled->[1]{data}{endpoint}{id}, $gone, '... naming the endpoint');
is( $disabled->[1]{data}{endpoint}{url},
    "http://hook-user:********\@127.0.0.1:$port/status/410/g",
    '... with its URL, password masked');
is($disabled->[1]{data}{endpoint}{description}, 'gone soon', '... and description');
is($disabled->[1]{data}{reason}, 'gone', '... reason gone');
is( $disabled->[1]{data}{detail},
    query("SELECT disabled_reason FROM webhook.endpoints WHERE id = '$gone'"),
    '... detail: its disabled_reason');
ok(verify_delivery($disabled->[2], $ops_secret), '... signed with the ops endpoint\'s secret');
is( query(
        "SELECT count(*) FROM webhook.events
          WHERE event_type = 'webhook.delivery.failed'
            AND payload->'delivery'->>'event_id' = '$gone_event'"),
    '0', 'the delivery that got the 410 is reported by that event alone');

# ---------------------------------------------------------------------------
# A schedule exhausted: webhook.delivery.failed
# ---------------------------------------------------------------------------

my $exhaust_event = query("SELECT webhook.emit('test.exhaust', '{}')");
ok( $node->poll_query_until('postgres',
        "SELECT status = 'failed' FROM webhook.deliveries
          WHERE event_id = '$exhaust_event' AND endpoint_id = '$exhaust'"),
    'a delivery exhausts its schedule');
ok( $node->poll_query_until('postgres',
        "SELECT count(*) > 0 FROM webhook.deliveries
          WHERE endpoint_id = '$ops' AND event_type = 'webhook.delivery.failed'
            AND status = 'succeeded'"),
    'the operations endpoint receives webhook.delivery.failed');
my ($failed) = received_of(qr{^/ops$}, 'webhook.delivery.failed');
is($failed->[1]{data}{endpoint}{id}, $exhaust, '... naming the endpoint');
is($failed->[1]{data}{delivery}{event_id}, $exhaust_event, '... and the event');
is($failed->[1]{data}{delivery}{event_type}, 'test.exhaust', '... its type');
is($failed->[1]{data}{delivery}{attempts}, 4, '... four attempts');
is($failed->[1]{data}{delivery}{last_status_code}, 500, '... the last status');

# The endpoint concerned is never sent its own operational event, though it
# subscribes to them: it got the one about the 410 endpoint, not its own.
ok(wait_until_settled($node), 'settled');
is(scalar(received_of(qr{^/fail-type/}, 'webhook.endpoint.disabled')),
    1, 'an endpoint subscribed to webhook.* receives the events about others');
is(scalar(received_of(qr{^/fail-type/}, 'webhook.delivery.failed')),
    0, '... never one about itself');
is( query(
        "SELECT count(*) FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
          WHERE e.event_type LIKE 'webhook.%'
            AND d.endpoint_id = (e.payload->'endpoint'->>'id')::uuid"),
    '0', '... and no delivery of one was ever queued');
# An endpoint subscribed to every event receives none of them.
is(scalar(grep { $_->[0] =~ /^webhook\./ } received(qr{^/all$})),
    0, 'an endpoint subscribed to every event receives no operational event');
is(scalar(received(qr{^/all$})), 2, '... and the others as usual');

# ---------------------------------------------------------------------------
# No loop: operations endpoints that fail everything. Each operational
# event is tried four times at each and fails; that failure is not an
# operational event again.
# ---------------------------------------------------------------------------

my ($ops1) = endpoint('/status/500/ops1', event_types => "ARRAY['webhook.*']");
my ($ops2) = endpoint('/status/500/ops2', event_types => "ARRAY['webhook.delivery.failed']");
my $loop_event = query("SELECT webhook.emit('test.exhaust', '{\"n\": 2}')");
ok( $node->poll_query_until('postgres',
        "SELECT count(*) = 2 FROM webhook.deliveries
          WHERE endpoint_id IN ('$ops1', '$ops2') AND status = 'failed'"),
    'the failing operations endpoints fail the webhook.delivery.failed event');
ok(wait_until_settled($node), 'settled');
is( query("SELECT count(*) FROM webhook.events WHERE event_type = 'webhook.delivery.failed'"),
    '2', 'exactly one webhook.delivery.failed per failed ordinary delivery');
my %before = map { $_ => $receiver->count(qr{^/status/500/$_$}) } qw(ops1 ops2);
is_deeply(\%before, { ops1 => 4, ops2 => 4 }, 'four tries each, then nothing');
sleep 3;    # several retry delays
is_deeply({ map { $_ => $receiver->count(qr{^/status/500/$_$}) } qw(ops1 ops2) },
    \%before, 'nothing more is sent: no loop');
is( query("SELECT count(*) FROM webhook.events WHERE event_type = 'webhook.delivery.failed'"),
    '2', '... and no further event is recorded');

# ---------------------------------------------------------------------------
# Expiry (the worker disables the endpoint) and disabling by hand.
# ---------------------------------------------------------------------------

my $ops_count = $receiver->count(qr{^/ops$});
my ($expiring) = endpoint('/expiring', expires_at => "now() + interval '1 second'");
ok($receiver->wait_for_count($ops_count + 1, qr{^/ops$}), 'expiry is reported');
my ($expired) = grep { $_->[1]{data}{endpoint}{id} eq $expiring }
  received_of(qr{^/ops$}, 'webhook.endpoint.disabled');
is($expired && $expired->[1]{data}{reason}, 'expired', '... reason expired');

my ($manual) = endpoint('/manual');
query("SELECT FROM webhook.update_webhook('$manual', enabled => false)");
ok($receiver->wait_for_count($ops_count + 2, qr{^/ops$}), 'disabling by hand is reported');
my ($by_hand) = grep { $_->[1]{data}{endpoint}{id} eq $manual }
  received_of(qr{^/ops$}, 'webhook.endpoint.disabled');
is($by_hand && $by_hand->[1]{data}{reason}, 'manual', '... reason manual');

# Deleting an endpoint is not disabling it.
query("SELECT webhook.delete_webhook('$expiring')");
query("SELECT webhook.emit('test.gone', '{}')");    # a barrier: dispatch has run
ok(wait_until_settled($node), 'settled');
is($receiver->count(qr{^/ops$}), $ops_count + 2, 'deleting an endpoint is not reported');

# ---------------------------------------------------------------------------
# What the operational events carried.
# ---------------------------------------------------------------------------

my @bodies = map { $_->{body} } $receiver->requests();
my @secrets = ($ops_secret, $gone_secret, $exhaust_secret);
is(scalar(grep { my $b = $_; grep { index($b, $_) >= 0 } @secrets, 'pa55-w0rd' } @bodies),
    0, 'no request body carries a secret or a URL password');

$node->stop;
$receiver->stop;
done_testing();
