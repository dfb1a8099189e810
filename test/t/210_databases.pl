# test/t/210_databases.pl: every database of the server (webhook.databases).
#
# - With the default '*', each database where the extension is installed
#   gets its own worker and delivers its own events, including a database
#   created after the server started (the worker starts at CREATE
#   EXTENSION, without a restart).
# - No worker stays connected to a database without the extension.
# - A database left out of webhook.databases loses its worker on reload,
#   and emit there is an error that says how to serve it.
# - DROP DATABASE of a served database does not wait on its worker, nor
#   does DROP EXTENSION leave a worker behind.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WebhookTest;

my $node = new_node('databases', conf => [ "webhook.poll_interval = '200ms'" ]);
my $receiver = start_receiver();

# The workers in pg_stat_activity, as "datname,datname,...".
sub workers
{
    return $node->safe_psql('postgres',
        q{SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '')
            FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'});
}

# Wait until "beta" has $n workers; true if it did in time.
sub beta_workers_become
{
    my ($n) = @_;
    return $node->poll_query_until('postgres',
        "SELECT count(*) = $n FROM pg_stat_activity
          WHERE backend_type = 'webhook_outbox worker' AND datname = 'beta'");
}

sub serve
{
    my ($db) = @_;
    $node->safe_psql($db, 'CREATE EXTENSION IF NOT EXISTS webhook_outbox');
    $node->safe_psql($db,
        "SELECT webhook.create_webhook('" . $receiver->url("/$db") . "')");
}

sub emit
{
    my ($db, $n) = @_;
    return $node->safe_psql($db,
        "SELECT webhook.emit('account.created', '{\"db\": \"$db\", \"n\": $n}')");
}

# ---------------------------------------------------------------------------
# Three databases, one created after start, each delivering its own events
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', 'CREATE DATABASE alpha');
$node->safe_psql('postgres', 'CREATE DATABASE plain');    # never gets the extension
serve('postgres');
serve('alpha');
ok($node->poll_query_until('postgres',
        q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'}),
    'a worker for each database with the extension');

$node->safe_psql('postgres', 'CREATE DATABASE beta');
my $created = time;
serve('beta');
ok(beta_workers_become(1),
    'a database created after start: its worker starts at CREATE EXTENSION');
cmp_ok(time - $created, '<', 4, '... at once, without a restart');
is(workers(), 'alpha,beta,postgres', 'one worker per database, none for the one without the extension');

my %ids;
foreach my $db (qw(postgres alpha beta))
{
    $ids{$db} = [ map { emit($db, $_) } 1 .. 5 ];
}
foreach my $db (qw(postgres alpha beta))
{
    ok($receiver->wait_for_count(5, qr{^/$db$}), "$db: its 5 events arrived at its endpoint");
    ok(wait_until_settled($node, $db), "$db: ... and were recorded");
    is( $node->safe_psql($db, "SELECT count(*) FROM webhook.deliveries WHERE status = 'succeeded'"),
        '5', "$db: 5 deliveries succeeded, none of another database's");
    my %arrived = map { $_->{headers}{'webhook-id'} => 1 } $receiver->requests(qr{^/$db$});
    is(scalar(grep { $arrived{$_} } @{ $ids{$db} }), 5, "$db: ... the very events emitted there");
}
is(workers(), 'alpha,beta,postgres', 'still no worker for the database without the extension');

# ---------------------------------------------------------------------------
# A database no longer served: its worker goes, emit there is refused
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', q{ALTER SYSTEM SET webhook.databases = 'postgres, alpha'});
$node->reload;
ok(beta_workers_become(0),
    'left out of webhook.databases: its worker stops on reload');
$node->poll_query_until('beta', q{SELECT current_setting('webhook.databases') = 'postgres, alpha'})
  or die 'reload not seen';
my ($rc, $out, $err) = $node->psql('beta',
    q{SELECT webhook.emit('account.created', '{}')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($rc, 0, 'emit in a database that is not served fails');
like($err, qr/ERROR:  55000: database "beta" is not served by webhook_outbox/,
    '... with 55000 naming the database');
like($err, qr/DETAIL:  webhook.databases is 'postgres, alpha'.*\n.*HINT:  Add the database to webhook.databases/,
    '... saying what is served and how to serve it');

$node->safe_psql('postgres', 'ALTER SYSTEM RESET webhook.databases');
$node->reload;
ok(beta_workers_become(1),
    'served again: its worker is back');
$node->poll_query_until('beta', q{SELECT current_setting('webhook.databases') = '*'})
  or die 'reload not seen';
emit('beta', 6);
ok($receiver->wait_for_count(6, qr{^/beta$}), '... and delivers');

# ---------------------------------------------------------------------------
# DROP DATABASE with a worker attached; DROP EXTENSION
# ---------------------------------------------------------------------------

my $start = time;
($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE alpha', timeout => 30);
my $took = time - $start;
is($rc, 0, 'DROP DATABASE of a served database succeeds') or diag($err);
cmp_ok($took, '<', 3, sprintf('... without waiting on its worker (%.2f s)', $took));
sleep 2;
is(workers(), 'beta,postgres', 'its worker is gone, and not started again');

$node->safe_psql('beta', 'DROP EXTENSION webhook_outbox');
ok(beta_workers_become(0),
    'DROP EXTENSION: the worker leaves its database');
$node->safe_psql('beta', 'CREATE EXTENSION webhook_outbox');
ok(beta_workers_become(1),
    '... and CREATE EXTENSION brings it back');

my $log = slurp_file($node->logfile);
unlike($log, qr/FATAL|PANIC|terminated by signal/, 'no FATAL, PANIC or crash in the log');

$receiver->stop;
$node->stop;
done_testing();
