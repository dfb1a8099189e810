# test/citus/t/310_delivery.pl: every event delivered, wherever it is
# recorded, on a Citus cluster of a coordinator and two worker nodes.
#
# Endpoints and event types registered on the coordinator are on every node,
# changes included, in the same distributed transaction.  Events recorded on
# the coordinator (webhook.emit) and on the worker nodes (a trigger on a
# distributed table, a distributed function) are delivered once each by the
# node that holds them, signed with the endpoint's secret, in order per key
# and to their tenant's endpoints; nothing of a rolled-back distributed
# transaction is.  The coordinator reads every node's history through the
# webhook.cluster_* views, in the session's tenant scope.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;
use CitusTest;

# A failed attempt is retried an hour later: deliveries stay pending.
my ($coordinator, @workers) = start_citus_cluster('delivery',
    conf => ["webhook.retry_schedule = '1h'"]);
my @nodes = ($coordinator, @workers);
citus_ledger($coordinator);
my $receiver = start_receiver();
my $json = JSON::PP->new->utf8;

# The decoded bodies of the requests to $path.
sub bodies
{
    my ($path) = @_;
    return map { $json->decode(do { my $b = $_->{body}; utf8::encode($b); $b }) }
      $receiver->requests(qr{^\Q$path\E$});
}

# Wait until no delivery is pending on any node.
sub settled
{
    my ($what) = @_;
    ok(!grep({ !wait_until_settled($_) } @nodes), "$what: settled on every node");
}

# ---------------------------------------------------------------------------
# The catalog reaches every node
# ---------------------------------------------------------------------------

my ($all_id, $all_secret) = create_endpoint($coordinator, $receiver->url('/all'));
my ($acme_id, $acme_secret) = create_endpoint($coordinator, $receiver->url('/acme'),
    tenant => "'acme'", ordered => 'true', event_types => "ARRAY['journal_entry.*']");
$coordinator->safe_psql('postgres',
    "SELECT webhook.register_event_type('invoice.paid', 'An invoice was paid')");

my $catalog = q{SELECT string_agg(concat_ws('|', id, url, secret, tenant, ordered, enabled), ',' ORDER BY id)
                  FROM webhook.endpoints};
my $expected = $coordinator->safe_psql('postgres', $catalog);
for my $node (@workers)
{
    is($node->safe_psql('postgres', $catalog), $expected,
        $node->name . ': the same endpoints, secrets included');
    is($node->safe_psql('postgres',
        "SELECT description FROM webhook.event_types WHERE name = 'invoice.paid'"),
        'An invoice was paid', $node->name . ': the registered event type');
}

# ---------------------------------------------------------------------------
# Events from triggers on shards, from the coordinator, from a distributed
# function
# ---------------------------------------------------------------------------

# One distributed transaction writing rows on both worker nodes' shards and
# emitting on the coordinator too.
$coordinator->safe_psql('postgres', q{
    BEGIN;
    INSERT INTO public.journal_entries
    SELECT 't' || i, i, i * 10 FROM generate_series(1, 20) i;
    INSERT INTO public.journal_entries SELECT 'acme', i, i FROM generate_series(1, 10) i;
    SELECT webhook.emit('period.closed', '{"period": "2026-10"}');
    COMMIT;
});
my %recorded = map {
    my ($name, $count) = split /\|/;
    ($name => $count)
} split /\n/, $coordinator->safe_psql('postgres',
    'SELECT node, count(*) FROM webhook.cluster_events GROUP BY node');
is(scalar(grep { $recorded{ citus_node_name($_) } } @workers), 2,
    'the trigger recorded events on both worker nodes');
is($recorded{ citus_node_name($coordinator) }, 1, 'emit recorded one on the coordinator');

ok($receiver->wait_for_count(31, qr{^/all$}), 'every event reached the endpoint without tenant');
settled('first batch');
my @all = bodies('/all');
is(scalar(@all), 31, 'each exactly once');
my %seen;
$seen{ $_->{id} }++ for @all;
is(scalar(keys %seen), 31, 'no event twice');
ok(!grep({ !verify_delivery($_, $all_secret) } $receiver->requests(qr{^/all$})),
    'every request, from every node, signed with the secret made on the coordinator');

my @acme = bodies('/acme');
is(scalar(@acme), 10, "the tenant's endpoint got its tenant's events alone");
is(join(',', map { $_->{data}{entry} // $_->{data}{new}{entry} // '?' } @acme),
    join(',', 1 .. 10), 'in the order they were written (the key is on one node)');

# A distributed function, delegated to the worker node of its tenant's shard.
$coordinator->safe_psql('postgres', q{
    CREATE FUNCTION public.pay_invoice(p_tenant text, p_invoice bigint) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM webhook.emit('invoice.paid', jsonb_build_object('invoice', p_invoice),
                             tenant => p_tenant);
    END $$;
    SELECT create_distributed_function('public.pay_invoice(text, bigint)', 'p_tenant',
                                       colocate_with := 'public.journal_entries');
});
$coordinator->safe_psql('postgres', "SELECT public.pay_invoice('t3', 77)");
ok($receiver->wait_for_count(32, qr{^/all$}), "the distributed function's event is delivered");
my ($paid_node) = split /\n/, $coordinator->safe_psql('postgres',
    "SELECT node FROM webhook.cluster_events WHERE event_type = 'invoice.paid'");
ok((grep { citus_node_name($_) eq ($paid_node // '') } @workers),
    'recorded on a worker node');

# ---------------------------------------------------------------------------
# A rolled-back distributed transaction sends nothing
# ---------------------------------------------------------------------------

$coordinator->safe_psql('postgres', q{
    BEGIN;
    INSERT INTO public.journal_entries
    SELECT 'rolled' || i, i, 1 FROM generate_series(1, 20) i;
    SELECT webhook.emit('period.reopened', '{"rolled": "back"}');
    ROLLBACK;
});
$coordinator->safe_psql('postgres',
    "SELECT webhook.emit('period.closed', '{\"marker\": 1}')");
ok($receiver->wait_for_count(33, qr{^/all$}), 'the marker after the rollback arrived');
settled('after the rollback');
is(scalar(grep { ($_->{data}{tenant} // $_->{data}{new}{tenant} // '') =~ /^rolled/
                 || ($_->{data}{rolled} // '') } bodies('/all')),
    0, 'nothing of the rolled-back transaction was sent');

# ---------------------------------------------------------------------------
# Changes on the coordinator reach every node
# ---------------------------------------------------------------------------

# Failing, then disabled: the worker nodes park the pending deliveries ...
$coordinator->safe_psql('postgres',
    "SELECT webhook.update_webhook('$all_id', url => '" . $receiver->url('/status/503') . "')");
$coordinator->safe_psql('postgres',
    "INSERT INTO public.journal_entries SELECT 'p' || i, i, 1 FROM generate_series(1, 6) i");
ok($coordinator->poll_query_until('postgres',
    "SELECT count(*) = 6 FROM webhook.cluster_deliveries
      WHERE endpoint_id = '$all_id' AND status = 'pending' AND attempts = 1"),
    'deliveries to a failing URL wait for their retry on the worker nodes');
$coordinator->safe_psql('postgres',
    "SELECT webhook.update_webhook('$all_id', enabled => false)");
is($_->safe_psql('postgres', "SELECT enabled FROM webhook.endpoints WHERE id = '$all_id'"),
    'f', $_->name . ': disabled there too') for @workers;
is($coordinator->safe_psql('postgres',
    "SELECT count(*) FROM webhook.cluster_deliveries
      WHERE endpoint_id = '$all_id' AND status = 'pending' AND next_attempt_at = 'infinity'"),
    '6', 'disabling parks them where they are');

# ... and send them once it is enabled again, at its new URL, signed with
# its new secret.
$coordinator->safe_psql('postgres',
    "SELECT webhook.update_webhook('$all_id', url => '" . $receiver->url('/moved') . "')");
my $new_secret = $coordinator->safe_psql('postgres',
    "SELECT webhook.rotate_secret('$all_id', interval '0')");
$coordinator->safe_psql('postgres',
    "SELECT webhook.update_webhook('$all_id', enabled => true)");
ok($receiver->wait_for_count(6, qr{^/moved$}), 'enabled again: the parked events are sent');
ok(!grep({ !verify_delivery($_, $new_secret) } $receiver->requests(qr{^/moved$})),
    'to the new URL, with the new secret');
settled('after re-enabling');

# Deleted on the coordinator: gone everywhere, nothing more sent.
$coordinator->safe_psql('postgres', "SELECT webhook.delete_webhook('$acme_id')");
is($_->safe_psql('postgres', "SELECT count(*) FROM webhook.endpoints WHERE id = '$acme_id'"),
    '0', $_->name . ': the deleted endpoint is gone there too') for @workers;

# The breaker is each node's: a receiver that answers 410 to a worker
# node's delivery disables the endpoint there alone; re-enabled on the
# coordinator, it is enabled everywhere again.
my ($gone_id) = create_endpoint($coordinator, $receiver->url('/status/410'),
    event_types => "ARRAY['invoice.*']");
$coordinator->safe_psql('postgres', "SELECT public.pay_invoice('t3', 78)");
my ($gone_node) = grep { citus_node_name($_) eq $paid_node } @workers;
ok($gone_node->poll_query_until('postgres',
    "SELECT NOT enabled FROM webhook.endpoints WHERE id = '$gone_id'"),
    'a 410 disables the endpoint on the worker node that delivered');
is($coordinator->safe_psql('postgres',
    "SELECT enabled FROM webhook.endpoints WHERE id = '$gone_id'"),
    't', 'not on the coordinator');
is($coordinator->safe_psql('postgres', "SELECT string_agg(node || ' ' || enabled, ',' ORDER BY node)
      FROM webhook.cluster_endpoint_health WHERE id = '$gone_id' AND NOT enabled"),
    "$paid_node false", 'cluster_endpoint_health shows where it is disabled');
$coordinator->safe_psql('postgres',
    "SELECT webhook.update_webhook('$gone_id', enabled => true)");
is($gone_node->safe_psql('postgres',
    "SELECT enabled FROM webhook.endpoints WHERE id = '$gone_id'"),
    't', 'update_webhook on the coordinator enables it there again');
$coordinator->safe_psql('postgres', "SELECT webhook.delete_webhook('$gone_id')");

# A worker node whose copy went astray is repaired from the coordinator.
$workers[0]->safe_psql('postgres', qq{
    SET session_replication_role = replica;   -- past the trigger, as a stray edit
    UPDATE webhook.endpoints SET url = 'https://stray.example/' WHERE id = '$all_id';
    INSERT INTO webhook.event_types VALUES ('stray.event', NULL);
});
is($coordinator->safe_psql('postgres', 'SELECT webhook.sync_catalog_to_nodes()'), '2',
    'sync_catalog_to_nodes sends the catalog to both worker nodes');
is($workers[0]->safe_psql('postgres', $catalog),
    $coordinator->safe_psql('postgres', $catalog), 'the stray copy is the coordinator\'s again');
is($workers[0]->safe_psql('postgres',
    "SELECT count(*) FROM webhook.event_types WHERE name = 'stray.event'"),
    '0', 'and so are its event types');

# ---------------------------------------------------------------------------
# History from the coordinator
# ---------------------------------------------------------------------------

my %history = map {
    my ($node, $deliveries, $succeeded) = split /\|/;
    ($node => [ $deliveries, $succeeded ])
} split /\n/, $coordinator->safe_psql('postgres', q{
    SELECT node, count(*), count(*) FILTER (WHERE status = 'succeeded')
      FROM webhook.cluster_deliveries GROUP BY node});
my $total = 0;
$total += $_->[0] for values %history;
is(scalar(keys %history), 3, 'cluster_deliveries shows the deliveries of all three nodes');
is($coordinator->safe_psql('postgres', 'SELECT count(*) FROM webhook.cluster_attempts'),
    $total + 6, 'and cluster_attempts an attempt for each, and the 6 failed ones');
for my $node (@nodes)
{
    is($history{ citus_node_name($node) }[0],
        $node->safe_psql('postgres', 'SELECT count(*) FROM webhook.deliveries'),
        $node->name . ': as many as it holds');
}
is($coordinator->safe_psql('postgres',
    'SELECT count(*), sum(pending_due) FROM webhook.cluster_queue_status'),
    '3|0', 'cluster_queue_status: a row per node, nothing due');
is($coordinator->safe_psql('postgres', "SELECT count(DISTINCT node) FROM webhook.cluster_endpoint_health
      WHERE id = '$all_id'"), '3', 'cluster_endpoint_health: the endpoint on each node');
is($coordinator->safe_psql('postgres', q{
    SET webhook.tenant = 'acme';
    SELECT count(*), count(*) FILTER (WHERE tenant = 'acme') FROM webhook.cluster_events}),
    '10|10', "in a tenant's scope, the cluster views show that tenant's rows alone");

# A worker node that cannot be reached fails a change of the catalog, as it
# fails DDL: no node is left with a copy the others lack.
$workers[1]->stop('fast');
my ($ret, $stdout, $stderr) = $coordinator->psql('postgres',
    "SELECT webhook.create_webhook('https://example.com/while-down')");
isnt($ret, 0, 'create_webhook fails while a worker node is down');
like($stderr, qr/127\.0\.0\.1:${\ $workers[1]->port}/, 'naming that node');
$workers[1]->start;
is(join(',', map { $_->safe_psql('postgres',
        "SELECT count(*) FROM webhook.endpoints WHERE url LIKE '%while-down'") } @nodes),
    '0,0,0', 'and nothing of it is on any node');

# An operator role reads the cluster views with the grants of the README's
# "Running on Citus": Citus creates the role and carries the schema grant
# to every node; each node's own views and webhook.node_rows are granted on
# each node.
$coordinator->safe_psql('postgres', q{
    CREATE ROLE ledger_ops LOGIN;
    GRANT USAGE ON SCHEMA webhook TO ledger_ops;
    GRANT SELECT ON webhook.cluster_events, webhook.cluster_deliveries,
                    webhook.cluster_attempts, webhook.cluster_queue_status,
                    webhook.cluster_endpoint_health TO ledger_ops;
    GRANT EXECUTE ON FUNCTION webhook.cluster_rows(text) TO ledger_ops;
});
is($coordinator->safe_psql('postgres', q{
    SELECT string_agg(DISTINCT r.success::text, ',')
      FROM unnest(ARRAY[
          'GRANT EXECUTE ON FUNCTION webhook.node_rows(text, text) TO ledger_ops',
          'GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts,
                           webhook.queue_status, webhook.endpoint_health TO ledger_ops']) g,
           run_command_on_all_nodes(g) r}), 'true', 'granted on every node');
is($coordinator->safe_psql('postgres',
    'SET ROLE ledger_ops; SELECT count(DISTINCT node) FROM webhook.cluster_deliveries'),
    '3', 'an operator role reads every node\'s history');

done_testing();
