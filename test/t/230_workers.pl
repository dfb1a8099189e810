# test/t/230_workers.pl: several delivery workers per database
# (webhook.workers).
#
# - With webhook.workers = 3, a database runs three workers sharing its
#   endpoints: a backlog across many endpoints is delivered, every
#   (event, endpoint) exactly once.
# - Changing webhook.workers on reload, mid-backlog: the workers finish
#   what they have in flight and leave, the new number starts, and still
#   nothing is lost or sent twice.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('workers',
    conf => [ 'webhook.workers = 3', "webhook.poll_interval = '200ms'" ]);
my $receiver = start_receiver();

sub workers
{
    return $node->safe_psql('postgres',
        q{SELECT count(*) FROM pg_stat_activity
           WHERE backend_type = 'webhook_outbox worker' AND datname = 'postgres'});
}

# Every (path, webhook-id) under $prefix received exactly once: the number
# of requests and of distinct pairs.
sub receipts
{
    my ($prefix) = @_;
    my @requests = $receiver->requests(qr{^\Q$prefix\E});
    my %pairs = map { ("$_->{path} $_->{headers}{'webhook-id'}" => 1) } @requests;
    return (scalar @requests, scalar keys %pairs);
}

ok($node->poll_query_until('postgres',
        q{SELECT count(*) = 3 FROM pg_stat_activity
           WHERE backend_type = 'webhook_outbox worker' AND datname = 'postgres'}),
    'webhook.workers = 3: three workers serve the database');

create_endpoint($node, $receiver->url("/three/$_"), event_types => "ARRAY['account.*']")
  foreach 1 .. 12;
$node->safe_psql('postgres',
    "SELECT webhook.emit('account.created', jsonb_build_object('n', n)) FROM generate_series(1, 200) n");
ok($receiver->wait_for_count(2400, qr{^/three/}, 60), '2,400 deliveries arrived');
ok(wait_until_settled($node), '... and were recorded');
my ($requests, $distinct) = receipts('/three/');
is($requests, 2400, 'every (event, endpoint) was sent once, not more');
is($distinct, 2400, '... each of them');
is( $node->safe_psql('postgres',
        "SELECT count(*) FROM webhook.deliveries WHERE status = 'succeeded' AND attempts = 1"),
    '2400', 'every delivery succeeded at its first attempt');

# Mid-backlog: a slow receiver, then three workers become two.
create_endpoint($node, $receiver->url("/slow/200/change/$_"), event_types => "ARRAY['period.*']")
  foreach 1 .. 12;
$node->safe_psql('postgres',
    "SELECT webhook.emit('period.closed', jsonb_build_object('n', n)) FROM generate_series(1, 40) n");
ok($receiver->wait_for_count(20, qr{^/slow/200/change/}), 'the slow backlog is under way');
$node->safe_psql('postgres', 'ALTER SYSTEM SET webhook.workers = 2');
$node->reload;
ok($node->poll_query_until('postgres',
        q{SELECT count(*) = 2 FROM pg_stat_activity
           WHERE backend_type = 'webhook_outbox worker' AND datname = 'postgres'}),
    'after the reload, two workers serve the database');
ok($receiver->wait_for_count(480, qr{^/slow/200/change/}, 120), 'the 480 slow deliveries arrived');
ok(wait_until_settled($node), '... and were recorded');
($requests, $distinct) = receipts('/slow/200/change/');
is($distinct, 480, 'none was lost when the number of workers changed');
is($requests, 480, '... and none was sent twice');
unlike(slurp_file($node->logfile), qr/FATAL|PANIC|terminated by signal/, 'no FATAL or crash in the log');

$receiver->stop;
$node->stop;
done_testing();
