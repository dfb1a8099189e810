# test/citus/t/320_two_phase.pl: a worker node killed during a distributed
# transaction that emitted; after Citus's recovery the event is delivered
# if and only if the transaction committed.
#
# Citus commits a transaction that wrote on several nodes with two-phase
# commit: each worker node prepares its part, the coordinator commits and
# records its decision in pg_dist_transaction, then the worker nodes commit
# their prepared parts.  A worker node that dies in between keeps its
# prepared part, and recover_prepared_transactions() on the coordinator
# later commits it (a decision was recorded) or rolls it back (none was).
#
# First both outcomes are set up exactly: parts prepared on a worker node
# under Citus's transaction names, one with the coordinator's commit record
# and one without, the node killed and restarted, then recovered.  Then a
# worker node is killed in the middle of a stream of two-node transactions,
# wherever that falls, and the events delivered must be exactly those of
# the rows that exist.

use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;
use CitusTest;

my ($coordinator, $worker1, $worker2) = start_citus_cluster('twophase');
my @nodes = ($coordinator, $worker1, $worker2);
citus_ledger($coordinator);
my $receiver = start_receiver();
my $json = JSON::PP->new->utf8;
create_endpoint($coordinator, $receiver->url('/all'));

# The decoded bodies of the requests received so far.
sub bodies
{
    return map { $json->decode(do { my $b = $_->{body}; utf8::encode($b); $b }) }
      $receiver->requests(qr{^/all$});
}

# ---------------------------------------------------------------------------
# Prepared parts, recovered as committed and as aborted
# ---------------------------------------------------------------------------

my $group1 = $coordinator->safe_psql('postgres',
    'SELECT groupid FROM pg_dist_node WHERE nodeport = ' . $worker1->port);
# Citus's name for a part: citus_<coordinator group>_<pid>_<transaction>_<connection>
my %gid = (committed => 'citus_0_4000001_901_1', aborted => 'citus_0_4000001_902_1');
for my $case (sort keys %gid)
{
    $worker1->safe_psql('postgres', qq{
        BEGIN;
        SELECT webhook.emit('period.closed', '{"case": "$case"}');
        PREPARE TRANSACTION '$gid{$case}';
    });
}
# The coordinator decided to commit the first: its record says so.
$coordinator->safe_psql('postgres',
    "INSERT INTO pg_dist_transaction (groupid, gid) VALUES ($group1, '$gid{committed}')");

$worker1->stop('immediate');
$worker1->start;
is($worker1->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '2',
    'the killed worker node keeps both prepared parts');
$coordinator->safe_psql('postgres', q{SELECT webhook.emit('period.closed', '{"case": "marker"}')});
ok($receiver->wait_for_count(1), 'an event after them is delivered');
sleep(1);
is(scalar(grep { ($_->{data}{case} // '') ne 'marker' } bodies()), 0,
    'nothing of a prepared part is sent before recovery decides');

is($coordinator->safe_psql('postgres', 'SELECT recover_prepared_transactions()'), '2',
    "Citus's recovery settles both parts");
is($worker1->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
    'no prepared part is left');
ok($receiver->wait_for_count(2), 'the part recovered as committed is delivered');
ok(wait_until_settled($worker1), 'the worker node settled');
$worker1->safe_psql('postgres', q{SELECT webhook.emit('period.closed', '{"case": "marker2"}')});
ok($receiver->wait_for_count(3), 'a later event on that node is delivered');
is(join(',', sort map { $_->{data}{case} } bodies()), 'committed,marker,marker2',
    'the part recovered as aborted never is');

# ---------------------------------------------------------------------------
# A worker node killed amid two-node transactions
# ---------------------------------------------------------------------------

# One tenant whose shard is on each worker node.
my %tenant_on;
for my $i (1 .. 50)
{
    my $port = $coordinator->safe_psql('postgres', qq{
        SELECT p.nodeport FROM pg_dist_shard_placement p
         WHERE p.shardid = get_shard_id_for_distribution_column('public.journal_entries', 'k$i')});
    $tenant_on{$port} //= "k$i";
}
my ($tenant1, $tenant2) = ($tenant_on{ $worker1->port }, $tenant_on{ $worker2->port });
ok($tenant1 && $tenant2, 'a tenant on each worker node');

my $statements = 1500;
my $script = PostgreSQL::Test::Utils::tempdir() . '/stream.sql';
open(my $fh, '>', $script) or die "could not write $script: $!";
print $fh "INSERT INTO public.journal_entries VALUES ('$tenant1', $_, 1), ('$tenant2', $_, 1);\n"
  for 1 .. $statements;
close($fh);

my ($stdout, $stderr) = ('', '');
my $stream = IPC::Run::start(
    [ 'psql', '-X', '-q', '-d', $coordinator->connstr('postgres'), '-f', $script ],
    '<', \undef, '>', \$stdout, '2>', \$stderr);
$coordinator->poll_query_until('postgres',
    "SELECT count(*) >= 100 FROM public.journal_entries WHERE tenant = '$tenant1'")
  or die 'the stream did not start';
$worker1->stop('immediate');
sleep(1);
$worker1->start;
$stream->finish;
my $failed = () = $stderr =~ /ERROR/g;
note("$failed of $statements transactions failed while the node was down");

$coordinator->safe_psql('postgres', 'SELECT recover_prepared_transactions()');
is($_->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
    $_->name . ': no prepared part is left after recovery') for $worker1, $worker2;

my $committed = $coordinator->safe_psql('postgres', qq{
    SELECT count(*) FROM public.journal_entries WHERE tenant IN ('$tenant1', '$tenant2')});
ok($committed > 0 && $committed < 2 * $statements + 1, "$committed rows committed");
ok($receiver->wait_for_count(3 + $committed), 'as many events delivered at least');
ok(!grep({ !wait_until_settled($_) } @nodes), 'every node settled');

my %rows = map { $_ => 1 } split /\n/, $coordinator->safe_psql('postgres', qq{
    SELECT tenant || ':' || entry FROM public.journal_entries
     WHERE tenant IN ('$tenant1', '$tenant2')});
my (%delivered, %ids);
for my $body (bodies())
{
    my $row = $body->{data}{new} // $body->{data};
    next unless defined $row->{entry};
    $delivered{"$row->{tenant}:$row->{entry}"}++;
    $ids{ $body->{id} }++;
}
is(scalar(grep { !$delivered{$_} } keys %rows), 0,
    'every row committed, on either node, had its event delivered');
is(scalar(grep { !$rows{$_} } keys %delivered), 0,
    'no event was delivered for a row that does not exist');
is(scalar(keys %ids), scalar(keys %delivered),
    'a repeat (the killed node sent it, then died before recording it) has the same webhook id');

done_testing();
