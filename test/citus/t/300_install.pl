# test/citus/t/300_install.pl: installing on a Citus cluster.
#
# CREATE EXTENSION webhook_outbox on the coordinator is propagated by Citus
# to the worker nodes.  Where a worker node does not preload the library,
# it fails with the message a single server gives, naming that node, and
# nothing of the extension is left on any node.  Preloaded everywhere (Citus
# first), the extension is on every node with every node's delivery worker
# running, and the management functions refuse to run on a worker node.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CitusTest;

my ($coordinator, $worker1, $worker2) = start_citus_cluster('install',
    no_extension => 1, preload_on_workers => 'citus');

my ($ret, $stdout, $stderr) = $coordinator->psql('postgres',
    "\\set VERBOSITY verbose\nCREATE EXTENSION webhook_outbox");
isnt($ret, 0, 'CREATE EXTENSION fails when a worker node does not preload the library');
like($stderr, qr/webhook_outbox must be loaded via shared_preload_libraries/,
    'with the message of a single server');
like($stderr, qr/127\.0\.0\.1:(${\ $worker1->port}|${\ $worker2->port})/,
    'naming the worker node');
for my $node ($coordinator, $worker1, $worker2)
{
    is($node->safe_psql('postgres',
        "SELECT count(*) FROM pg_extension WHERE extname = 'webhook_outbox'"),
        '0', $node->name . ': nothing of the extension is left');
}

# Preloaded on every node, Citus first: the extension reaches every node,
# whose launcher starts a delivery worker once the propagated (two-phase)
# CREATE EXTENSION commits there.
for my $node ($worker1, $worker2)
{
    $node->append_conf('postgresql.conf',
        "shared_preload_libraries = 'citus,webhook_outbox'");
    $node->restart;
}
$coordinator->safe_psql('postgres', 'CREATE EXTENSION webhook_outbox');
for my $node ($coordinator, $worker1, $worker2)
{
    ok($node->poll_query_until('postgres',
        "SELECT count(*) = 1 FROM pg_stat_activity
          WHERE backend_type = 'webhook_outbox worker' AND datname = 'postgres'"),
        $node->name . ': the extension is there and its delivery worker runs');
}

# A node added later without the library preloaded: citus_add_node, which
# creates the extension there, fails the same way.
my $late = PostgreSQL::Test::Cluster->new('install-late');
$late->init;
$late->append_conf('postgresql.conf', join("\n",
    "shared_preload_libraries = 'citus'", "listen_addresses = '127.0.0.1'", ''));
$late->start;
$late->safe_psql('postgres', 'CREATE EXTENSION citus');
($ret, $stdout, $stderr) = $coordinator->psql('postgres',
    "SELECT citus_add_node('127.0.0.1', " . $late->port . ')');
isnt($ret, 0, 'adding a node that does not preload the library fails');
like($stderr, qr/webhook_outbox must be loaded via shared_preload_libraries/,
    'with the same message');
like($stderr, qr/127\.0\.0\.1:${\ $late->port}/, 'naming that node');

# On a worker node, the management functions refuse: a change made there
# would reach that node alone.
($ret, $stdout, $stderr) = $worker1->psql('postgres',
    "\\set VERBOSITY verbose\nSELECT webhook.create_webhook('https://example.com/hook')");
like($stderr, qr/ERROR:  55000: webhook endpoints and event types are managed on the Citus coordinator/,
    'create_webhook on a worker node is refused');
($ret, $stdout, $stderr) = $worker1->psql('postgres',
    "SELECT webhook.register_event_type('invoice.paid')");
like($stderr, qr/managed on the Citus coordinator/, 'and so is register_event_type');

done_testing();
