# test/t/190_tenants.pl: tenants, end to end, with a running worker.
#
# Proves, against real receivers:
#  - routing: three tenants (acme, globex, initech) each with an endpoint,
#    plus an internal endpoint without a tenant. Events recorded every way
#    a tenant can be given -- emit(..., tenant => ...), SET LOCAL
#    webhook.tenant, emit_trigger with 'tenant=org' -- and events without a
#    tenant: each tenant's receiver gets exactly its own events, once each,
#    and nothing of another's; the internal receiver gets every event;
#    events without a tenant reach the internal receiver alone. Every
#    request is signed with its endpoint's secret.
#  - scoping: a session scoped to acme cannot read, change, delete, rotate,
#    retry or replay globex's endpoint or the internal one (42704, or false
#    from delete_webhook), and nothing changed; it lists acme's endpoint
#    alone, and webhook.events/deliveries/attempts show it acme's rows
#    alone, also to a role with nothing but SELECT on those views.
#  - racing idempotent emits: a second emit with the same tenant and key
#    waits for the first transaction; if that commits, it returns the same
#    id and one event is delivered once; if that rolls back, the second
#    records its own event.
#  - expiry: an endpoint receives what was emitted before its expires_at,
#    nothing emitted after, and the worker disables it (reason 'expired')
#    within about a poll interval.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('tenants', conf => ["webhook.poll_interval = '200ms'"]);
my $receiver = start_receiver();
my $json = JSON::PP->new->utf8;

sub query { return $node->safe_psql('postgres', $_[0]); }

# The body of a request as a hash.
sub body_of
{
    my ($request) = @_;
    my $body = $request->{body};
    utf8::encode($body);
    return $json->decode($body);
}

# The webhook-ids received at exactly $path, sorted (duplicates kept).
sub ids_at
{
    my ($path) = @_;
    return [ sort map { $_->{headers}{'webhook-id'} } $receiver->requests(qr{^\Q$path\E$}) ];
}

# The ids of the events whose tenant is $tenant (undef: none), sorted.
sub events_of
{
    my ($tenant) = @_;
    my $condition = defined $tenant ? "tenant = '$tenant'" : 'tenant IS NULL';
    return [ sort split /\n/, query("SELECT id FROM webhook.events WHERE $condition") ];
}

# Endpoints: one per tenant at /<tenant>, one internal at /internal.
my (%id, %secret);
foreach my $tenant (qw(acme globex initech))
{
    ($id{$tenant}, $secret{"/$tenant"}) =
      create_endpoint($node, $receiver->url("/$tenant"), tenant => "'$tenant'");
}
($id{internal}, $secret{'/internal'}) = create_endpoint($node, $receiver->url('/internal'));
is( query("SELECT string_agg(coalesce(tenant, '-'), ',' ORDER BY url) FROM webhook.list_webhooks()"),
    'acme,globex,initech,-', 'four endpoints: three tenants and an internal one');

# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------

# acme: the tenant as emit's argument.
query("SELECT webhook.emit('journal_entry.posted', jsonb_build_object('org', 'acme', 'n', n),
                           tenant => 'acme')
         FROM generate_series(1, 3) AS n");
# globex: the session's tenant, for one transaction.
query("BEGIN;
       SET LOCAL webhook.tenant = 'globex';
       SELECT webhook.emit('account.created', '{\"org\": \"globex\", \"n\": 1}');
       SELECT webhook.emit('account.updated', '{\"org\": \"globex\", \"n\": 2}');
       COMMIT;");
is(query('SHOW webhook.tenant'), '', 'SET LOCAL webhook.tenant ends with its transaction');
# initech: a trigger takes the tenant from the row's org column. One
# statement, rows of initech, of acme, and one without an org (no tenant).
query("CREATE TABLE invoices (id int PRIMARY KEY, org text, amount numeric);
       CREATE TRIGGER invoice_created AFTER INSERT ON invoices
           FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created', 'tenant=org');
       INSERT INTO invoices VALUES (1, 'initech', 100), (2, 'initech', 200), (3, 'acme', 300),
                                   (4, NULL, 400);");
# Without a tenant: no argument, no session tenant; or '' given.
query("SELECT webhook.emit('period.closed', '{\"org\": null, \"n\": 1}')");
query("SELECT webhook.emit('period.reopened', '{\"org\": null, \"n\": 2}', tenant => '')");

my %expected = (
    acme => events_of('acme'),
    globex => events_of('globex'),
    initech => events_of('initech'),
    none => events_of(undef));
is(scalar @{ $expected{acme} }, 4, 'acme has 4 events (3 emitted, 1 by the trigger)');
is(scalar @{ $expected{globex} }, 2, 'globex has 2 events (SET LOCAL webhook.tenant)');
is(scalar @{ $expected{initech} }, 2, 'initech has 2 events (emit_trigger, tenant=org)');
is(scalar @{ $expected{none} }, 3, '3 events have no tenant');
my @all = sort map { @$_ } values %expected;

# Every event goes to /internal, and those of a tenant to its endpoint too.
my $deliveries = scalar(@all) + 4 + 2 + 2;
ok( $node->poll_query_until('postgres',
        "SELECT count(*) = $deliveries FROM webhook.deliveries WHERE status = 'succeeded'"),
    "all $deliveries deliveries succeeded");
ok(wait_until_settled($node), 'settled');

foreach my $tenant (qw(acme globex initech))
{
    is_deeply(ids_at("/$tenant"), $expected{$tenant},
        "/$tenant received exactly ${tenant}'s events, once each");
    my @orgs = map { body_of($_)->{data}{org} // '(none)' } $receiver->requests(qr{^/$tenant$});
    is_deeply([ grep { $_ ne $tenant } @orgs ], [], "... every body is ${tenant}'s");
}
is_deeply(ids_at('/internal'), \@all, '/internal received every event, once each');
my %untenanted = map { $_ => 1 } @{ $expected{none} };
is_deeply(
    [ grep { $untenanted{ $_->{headers}{'webhook-id'} } && $_->{path} ne '/internal' }
          $receiver->requests ],
    [], 'events without a tenant reached /internal alone');

# Bodies: the event, as recorded.
my %payload = map { split /\|/, $_, 2 }
  split /\n/, query("SELECT id, payload FROM webhook.events");
my $bodies_ok = 1;
foreach my $request ($receiver->requests)
{
    my $body = body_of($request);
    my $id = $request->{headers}{'webhook-id'};
    $bodies_ok = 0
      unless $body->{id} eq $id
      && defined $payload{$id}
      && JSON::PP->new->canonical->encode($body->{data}) eq
      JSON::PP->new->canonical->encode($json->decode($payload{$id}));
}
ok($bodies_ok, 'every body carries its event (id and payload)');
my @unsigned = grep { !verify_delivery($_, $secret{ $_->{path} }) } $receiver->requests;
is(scalar @unsigned, 0, "every request is signed with its endpoint's secret");
is($receiver->count, $deliveries, '... one request each');

# ---------------------------------------------------------------------------
# Scoping: a session scoped to acme
# ---------------------------------------------------------------------------

# The SQLSTATE of $sql run in a session scoped to acme, or 'ok: <output>'.
sub as_acme
{
    my ($sql) = @_;
    my ($rc, $out, $err) = $node->psql('postgres',
        "SET webhook.tenant = 'acme';\n\\set VERBOSITY verbose\n$sql");
    return "ok: $out" if $rc == 0;
    return $err =~ /ERROR:  ([0-9A-Z]{5}):/ ? $1 : "failed: $err";
}

# Everything about the foreign endpoints, as the superuser sees it unscoped.
my $foreign = "'$id{globex}', '$id{internal}'";
my $state_sql = "SELECT (SELECT string_agg(e::text, E'\\n' ORDER BY e.id)
                           FROM webhook.endpoints e WHERE e.id IN ($foreign)),
                        (SELECT string_agg(d::text, E'\\n' ORDER BY d.event_id, d.endpoint_id)
                           FROM webhook.deliveries d WHERE d.endpoint_id IN ($foreign)),
                        (SELECT count(*) FROM webhook.attempts WHERE endpoint_id IN ($foreign))";
my $state_before = query($state_sql);
my $requests_before = $receiver->count;

# retry_delivery names an event of acme's, which the scoped session sees:
# only the endpoint does not exist for it.
my $event = $expected{acme}[0];
foreach my $target (qw(globex internal))
{
    my $id = $id{$target};
    foreach my $call (
        [ 'get_webhook', "SELECT * FROM webhook.get_webhook('$id')" ],
        [ 'update_webhook', "SELECT * FROM webhook.update_webhook('$id', description => 'mine now')" ],
        [ 'update_webhook (disable)', "SELECT * FROM webhook.update_webhook('$id', enabled => false)" ],
        [ 'update_webhook (url)',
            "SELECT * FROM webhook.update_webhook('$id', url => '" . $receiver->url('/stolen') . "')" ],
        [ 'rotate_secret', "SELECT webhook.rotate_secret('$id', grace => '0')" ],
        [ 'retry_delivery', "SELECT webhook.retry_delivery('$event', '$id')" ],
        [ 'replay', "SELECT webhook.replay('$id', '-infinity')" ])
    {
        is(as_acme($call->[1]), '42704', "scoped to acme, $call->[0] of the $target endpoint: 42704");
    }
    is(as_acme("SELECT webhook.delete_webhook('$id')"), 'ok: f',
        "scoped to acme, delete_webhook of the $target endpoint returns false");
}
# acme's own endpoint, though, is there.
is(as_acme("SELECT tenant FROM webhook.get_webhook('$id{acme}')"), 'ok: acme',
    "scoped to acme, get_webhook of acme's endpoint works");
is(as_acme("SELECT url FROM webhook.list_webhooks()"), 'ok: ' . $receiver->url('/acme'),
    "scoped to acme, list_webhooks shows acme's endpoint alone");

sleep 1;    # several polls: a retry or replay queued by mistake would go out
is(query($state_sql), $state_before,
    'unscoped afterwards: the foreign endpoints, their deliveries and attempts are unchanged');
is($receiver->count, $requests_before, '... and nothing more was sent');
is(query("SELECT count(*) FROM webhook.endpoints WHERE url LIKE '%/stolen'"), '0',
    '... and no endpoint points elsewhere');

# The history relations, scoped: acme's events, and the deliveries and
# attempts to acme's endpoint (not those of acme's events to /internal).
my $history_sql = "SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM webhook.events),
                          (SELECT count(*) FROM webhook.deliveries),
                          (SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$id{acme}'
                                                                    AND tenant = 'acme'),
                          (SELECT count(*) FROM webhook.attempts),
                          (SELECT count(*) FROM webhook.attempts WHERE endpoint_id = '$id{acme}'
                                                                  AND tenant = 'acme')";
my $acme_history = join(',', @{ $expected{acme} }) . '|4|4|4|4';
is(as_acme($history_sql), "ok: $acme_history",
    "scoped to acme, events/deliveries/attempts show acme's rows alone");

query("CREATE ROLE auditor LOGIN;
       GRANT USAGE ON SCHEMA webhook TO auditor;
       GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts TO auditor;");
is( $node->safe_psql('postgres', "SET webhook.tenant = 'acme'; $history_sql",
        extra_params => [ '-U', 'auditor' ]),
    $acme_history, '... also to a role granted only SELECT on them');
is( $node->safe_psql('postgres', "SELECT (SELECT count(*) FROM webhook.events),
                                         (SELECT count(*) FROM webhook.deliveries)",
        extra_params => [ '-U', 'auditor' ]),
    scalar(@all) . "|$deliveries", '... which, unscoped, sees everything');

# ---------------------------------------------------------------------------
# Racing idempotent emits
# ---------------------------------------------------------------------------

# Whether the backend $pid comes to wait for another transaction.
sub waits_for_transaction
{
    my ($pid) = @_;
    return $node->poll_query_until('postgres',
        "SELECT wait_event_type = 'Lock' AND wait_event = 'transactionid'
           FROM pg_stat_activity WHERE pid = $pid");
}

my $emit_k = sub {
    my ($key, $n) = @_;
    return "SELECT webhook.emit('journal_entry.posted', '{\"org\": \"acme\", \"race\": $n}',
                                tenant => 'acme', idempotency_key => '$key');";
};

foreach my $case ([ 'k1', 'COMMIT' ], [ 'k2', 'ROLLBACK' ])
{
    my ($key, $end) = @$case;
    my $first = $node->background_psql('postgres', timeout => 20);
    my $second = $node->background_psql('postgres', timeout => 20);
    my $second_pid = $second->query_safe('SELECT pg_backend_pid()');

    $first->query_safe('BEGIN');
    my $first_id = $first->query_safe($emit_k->($key, 1));
    # The second emit is sent, and does not return: it waits for the first.
    $second->query_until(qr/sent/, "\\echo sent\n" . $emit_k->($key, 2) . "\n");
    ok(waits_for_transaction($second_pid),
        "$key: a second emit with the same tenant and key waits for the first transaction");
    is(query("SELECT count(*) FROM webhook.event_log WHERE idempotency_key = '$key'"), '0',
        "$key: ... while nothing is committed");

    $first->query_safe($end);
    # The pending emit's result (query('') sends an empty statement after it).
    my ($second_id, $failed) = $second->query('');
    is($failed, 0, "$key: after $end, the second emit returns");
    if ($end eq 'COMMIT')
    {
        is($second_id, $first_id, "$key: ... the first event's id");
    }
    else
    {
        like($second_id, qr/^[0-9a-f-]{36}$/, "$key: ... an id");
        isnt($second_id, $first_id, "$key: ... of its own event");
    }
    is(query("SELECT string_agg(id::text || ':' || (payload->>'race'), ',')
                FROM webhook.event_log WHERE tenant = 'acme' AND idempotency_key = '$key'"),
        $end eq 'COMMIT' ? "$first_id:1" : "$second_id:2",
        "$key: exactly one event holds the key, " . ($end eq 'COMMIT' ? 'the first' : 'the second'));
    $first->quit;
    $second->quit;

    ok($node->poll_query_until('postgres',
            "SELECT count(*) = 2 FROM webhook.deliveries
              WHERE event_id = '$second_id' AND status = 'succeeded'"),
        "$key: delivered to acme's and the internal endpoint");
    is(scalar(grep { $_ eq $second_id } @{ ids_at('/acme') }), 1,
        "$key: acme's receiver got it exactly once");
    is(scalar(grep { $_ eq $second_id } @{ ids_at('/internal') }), 1,
        "$key: the internal receiver got it exactly once");
    is(scalar(grep { $_ eq $first_id } map { @{ ids_at($_) } } '/acme', '/internal'), 0,
        "$key: the rolled-back event reached nobody")
      if $end eq 'ROLLBACK';
}
# Not racing: the key still held, a later emit returns the first id.
is( query("SELECT webhook.emit('account.created', '{}', tenant => 'acme', idempotency_key => 'k1')"),
    query("SELECT id FROM webhook.event_log WHERE idempotency_key = 'k1'"),
    'a later emit with a held key returns the first event\'s id');

# ---------------------------------------------------------------------------
# Expiry
# ---------------------------------------------------------------------------

my ($expiring, $expiring_secret) = create_endpoint($node, $receiver->url('/expiring'),
    tenant => "'acme'", expires_at => "now() + interval '4 seconds'");
$secret{'/expiring'} = $expiring_secret;
my $before = query("SELECT webhook.emit('period.closed', '{\"org\": \"acme\", \"when\": \"before\"}',
                                        tenant => 'acme')");
ok($receiver->wait_for_count(1, qr{^/expiring$}), 'an event emitted before expiry is delivered');
is_deeply(ids_at('/expiring'), [$before], '... that event');

# The first event after expires_at: emitted as soon as it has passed (the
# worker may or may not have disabled the endpoint yet), then one once it
# has surely been.
query("SELECT pg_sleep(greatest(0, extract(epoch FROM expires_at - clock_timestamp())) + 0.01)
         FROM webhook.endpoints WHERE id = '$expiring'");
my $after = query("SELECT webhook.emit('period.closed', '{\"org\": \"acme\", \"when\": \"after\"}',
                                       tenant => 'acme')");
ok( $node->poll_query_until('postgres',
        "SELECT NOT enabled AND disabled_reason = 'expired'
           FROM webhook.endpoints WHERE id = '$expiring'"),
    'after expires_at, the worker disables the endpoint, reason expired');
my $lag = query("SELECT extract(epoch FROM disabled_at - expires_at) FROM webhook.endpoints
                  WHERE id = '$expiring'");
ok($lag >= 0 && $lag < 2, "... within about a poll interval of its expiry ($lag s)");
my $later = query("SELECT webhook.emit('period.closed', '{\"org\": \"acme\", \"when\": \"later\"}',
                                       tenant => 'acme')");
ok($node->poll_query_until('postgres',
        "SELECT count(*) = 4 FROM webhook.deliveries
          WHERE event_id IN ('$after', '$later') AND status = 'succeeded'"),
    'the events after expiry are delivered to acme\'s and the internal endpoint');
sleep 1;    # several polls
is_deeply(ids_at('/expiring'), [$before], '... and never to the expired endpoint');
is( query("SELECT count(*) FROM webhook.deliveries
            WHERE endpoint_id = '$expiring' AND event_id <> '$before' AND status <> 'cancelled'"),
    '0', '... which has no delivery of them waiting');

@unsigned = grep { !verify_delivery($_, $secret{ $_->{path} }) } $receiver->requests;
is(scalar @unsigned, 0, "in all, every request was signed with its endpoint's secret");

$node->stop;
$receiver->stop;
done_testing();
