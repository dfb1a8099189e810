# test/t/003_no_preload.pl: the library refuses, cleanly, to work unpreloaded.
#
# On a server without shared_preload_libraries = 'webhook_outbox', CREATE
# EXTENSION (which loads the library when it creates the first C function)
# and LOAD fail with an ERROR that says how to fix it; the session goes on,
# nothing of the extension remains, and a second attempt fails the same way.
# No FATAL reaches the log.  In binary-upgrade mode, as pg_upgrade runs the
# new cluster, loading only warns.  Once preloaded, CREATE EXTENSION works.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $message = qr/ERROR:  55000: webhook_outbox must be loaded via shared_preload_libraries/;
my $hint = qr/HINT:  Add "webhook_outbox" to shared_preload_libraries in postgresql\.conf and restart the server\./;

# Not WebhookTest::new_node: that one always preloads.
my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

# Every line of the server log since byte $offset that reports a crash or
# an ended session.
sub log_fatals
{
    my ($offset) = @_;
    my $log = slurp_file($node->logfile, $offset);
    return join("\n",
        grep { /FATAL|PANIC|terminated by signal|server process .* exited/ }
          split /\n/, $log);
}

# Run $sql in one psql session that goes on after errors; return its exit
# code, standard output and standard error (with SQLSTATEs).
sub session
{
    my ($sql) = @_;
    my ($ret, $stdout, $stderr) = $node->psql(
        'postgres', "\\set VERBOSITY verbose\n$sql",
        on_error_stop => 0);
    return ($ret, $stdout, $stderr);
}

# ---------------------------------------------------------------------------
# CREATE EXTENSION, twice, then LOAD, all in one session
# ---------------------------------------------------------------------------

my $offset = -s $node->logfile;
my ($ret, $stdout, $stderr) = session(q{
SELECT 'pid:' || pg_backend_pid();
CREATE EXTENSION webhook_outbox;
SELECT 'extension:' || count(*) FROM pg_extension WHERE extname = 'webhook_outbox';
SELECT 'schema:' || count(*) FROM pg_namespace WHERE nspname = 'webhook';
CREATE EXTENSION webhook_outbox;
LOAD 'webhook_outbox';
SELECT 'pid:' || pg_backend_pid();
SELECT 'alive:' || 1;
});

is($ret, 0, 'psql ends normally: the server never closed the connection');
my @errors = $stderr =~ /$message/g;
is(scalar @errors, 3,
    'both CREATE EXTENSIONs and the LOAD fail with the same ERROR and SQLSTATE 55000'
) or diag($stderr);
my @hints = $stderr =~ /$hint/g;
is(scalar @hints, 3, 'each ERROR carries the hint that fixes it') or diag($stderr);
unlike($stderr, qr/FATAL|server closed the connection|connection to server was lost/,
    'the session is never ended');
like($stdout, qr/^extension:0$/m, 'no extension remains after the failed CREATE EXTENSION');
like($stdout, qr/^schema:0$/m, 'no schema "webhook" remains either');
like($stdout, qr/^alive:1$/m, 'the session runs queries afterwards');
my @pids = $stdout =~ /^pid:(\d+)$/mg;
ok(@pids == 2 && $pids[0] == $pids[1], 'all of it ran in one backend')
  or diag($stdout);

# ---------------------------------------------------------------------------
# LOAD alone, in a fresh session
# ---------------------------------------------------------------------------

($ret, $stdout, $stderr) = session(q{
LOAD 'webhook_outbox';
SELECT 'alive:' || 1;
});
like($stderr, $message, 'LOAD alone fails with the same ERROR');
like($stderr, $hint, 'and the same hint');
like($stdout, qr/^alive:1$/m, 'the session goes on after the failed LOAD');

# The ERRORs are logged, nothing worse.
ok($node->log_contains('ERROR:  webhook_outbox must be loaded via shared_preload_libraries', $offset),
    'the server log has the ERROR');
is(log_fatals($offset), '', 'no FATAL, crash or ended session in the server log');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server still accepts connections');

# ---------------------------------------------------------------------------
# Binary-upgrade mode: pg_upgrade loads every library into the new cluster
# ---------------------------------------------------------------------------

$node->stop;
$offset = -s $node->logfile;
# pg_ctl by hand: the harness's start takes no server options, -b included.
$node->command_ok(
    [ 'pg_ctl', '-w', '-D', $node->data_dir, '-l', $node->logfile, '-o', '-b', 'start' ],
    'the server starts in binary-upgrade mode');
$node->_update_pid(1);

($ret, $stdout, $stderr) = session(q{
LOAD 'webhook_outbox';
SELECT 'alive:' || 1;
});
like($stderr,
    qr/WARNING:  55000: webhook_outbox must be loaded via shared_preload_libraries/,
    'in binary-upgrade mode, LOAD only warns');
unlike($stderr, qr/ERROR|FATAL/, 'and fails nothing');
like($stdout, qr/^alive:1$/m, 'the session goes on');
is(log_fatals($offset), '', 'no FATAL in the server log in binary-upgrade mode');
$node->stop;

# ---------------------------------------------------------------------------
# The hint's fix works
# ---------------------------------------------------------------------------

$node->append_conf('postgresql.conf', "shared_preload_libraries = 'webhook_outbox'\n");
$node->start;
($ret, $stdout, $stderr) = session(q{
CREATE EXTENSION webhook_outbox;
SELECT 'extension:' || count(*) FROM pg_extension WHERE extname = 'webhook_outbox';
});
is($ret, 0, 'preloaded, CREATE EXTENSION succeeds') or diag($stderr);
like($stdout, qr/^extension:1$/m, 'and the extension exists');
unlike($stderr, qr/shared_preload_libraries/, 'without any warning');

$node->stop;
done_testing();
