# test/lib/CitusTest.pm: a Citus cluster for the tests in test/citus/t.
#
#   my ($coordinator, @workers) = start_citus_cluster('c', workers => 2);
#   citus_ledger($coordinator);   # a ledger table distributed by tenant
#
# Each node preloads citus and webhook_outbox (Citus first), listens on
# 127.0.0.1 (Citus connects to the nodes over TCP) and has the citus
# extension; the worker nodes are added to the coordinator, which is in
# Citus's node list too, and webhook_outbox is created on the coordinator,
# from where Citus propagates it.  Citus's own recovery of prepared
# transactions runs only when a test calls recover_prepared_transactions().

package CitusTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Utils;
use WebhookTest;

our @EXPORT = qw(start_citus_cluster citus_ledger citus_node_name);

# Start a coordinator and $opts{workers} worker nodes (default 2), named
# "$name-coordinator", "$name-worker1", ...  preload_on_workers: what the
# worker nodes preload (default 'citus,webhook_outbox'); no_extension:
# leave webhook_outbox uncreated; conf: more postgresql.conf lines.
sub start_citus_cluster
{
    my ($name, %opts) = @_;
    my @conf = (
        "listen_addresses = '127.0.0.1'",
        "citus.local_hostname = '127.0.0.1'",
        "citus.recover_2pc_interval = -1",
        "max_prepared_transactions = 20",
        "webhook.poll_interval = '100ms'",
        @{ $opts{conf} // [] });
    my $worker_preload = $opts{preload_on_workers} // 'citus,webhook_outbox';

    my $coordinator = new_node("$name-coordinator", no_extension => 1,
        conf => [ "shared_preload_libraries = 'citus,webhook_outbox'", @conf ]);
    my @workers = map {
        new_node("$name-worker$_", no_extension => 1,
            conf => [ "shared_preload_libraries = '$worker_preload'", @conf ])
    } 1 .. ($opts{workers} // 2);

    $_->safe_psql('postgres', 'CREATE EXTENSION citus') for $coordinator, @workers;
    $coordinator->safe_psql('postgres',
        "SELECT citus_set_coordinator_host('127.0.0.1', " . $coordinator->port . ')');
    $coordinator->safe_psql('postgres',
        "SELECT citus_add_node('127.0.0.1', " . $_->port . ')') for @workers;
    $coordinator->safe_psql('postgres', 'CREATE EXTENSION webhook_outbox')
      unless $opts{no_extension};
    return ($coordinator, @workers);
}

# The name Citus knows a node by, as the webhook.cluster_* views show it.
sub citus_node_name
{
    my ($node) = @_;
    return '127.0.0.1:' . $node->port;
}

# Create public.journal_entries, distributed by tenant, whose inserts emit
# journal_entry.posted for the row's tenant (webhook.emit_trigger) on the
# node that holds the row's shard.
sub citus_ledger
{
    my ($coordinator) = @_;
    $coordinator->safe_psql('postgres', q{
        CREATE TABLE public.journal_entries (
            tenant text NOT NULL,
            entry  bigint NOT NULL,
            amount numeric NOT NULL,
            PRIMARY KEY (tenant, entry));
        SET citus.enable_unsafe_triggers = on;
        SELECT create_distributed_table('public.journal_entries', 'tenant');
        CREATE TRIGGER journal_entries_emit
            AFTER INSERT ON public.journal_entries
            FOR EACH ROW EXECUTE FUNCTION
            webhook.emit_trigger('journal_entry.posted', 'tenant=tenant', 'ordering_key=tenant');
    });
}

1;
