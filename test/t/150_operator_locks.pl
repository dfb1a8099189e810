# test/t/150_operator_locks.pl: the worker never waits on a lock a user
# can hold.
#
# An operator who leaves a transaction open after rotate_secret or
# update_webhook holds the endpoint's row; one who leaves retry_delivery
# open holds a delivery's row. In 0.1 the worker then waited on that lock
# (recording outcomes updates endpoint health) while curl went unserviced:
# a healthy endpoint received 1 event in 20 meanwhile. Now the worker
# skips what is locked and records it once the lock is gone.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $node = new_node(
    'locks',
    conf => [
        "webhook.retry_schedule = '1s,1s,1s,1s,1s,1s,1s,1s'",
        "webhook.poll_interval = '200ms'",
    ]);
my $receiver = start_receiver();
my ($healthy) = create_endpoint($node, $receiver->url('/ok'),
    event_types => "ARRAY['account.*']");
my ($failing) = create_endpoint($node, $receiver->url('/status/500'),
    event_types => "ARRAY['period.*']");

# The failing endpoint keeps failing: its outcomes change its health.
$node->safe_psql('postgres', "SELECT webhook.emit('period.closed', '{}')");
ok($receiver->wait_for_count(1, qr{^/status/500}), 'the failing endpoint was tried');

# Each of these holds a lock the worker's recording would want, for 6 s.
foreach my $hold (
    [ 'rotate_secret', "SELECT webhook.rotate_secret('$failing')" ],
    [ 'update_webhook', "SELECT FROM webhook.update_webhook('$failing', description => 'held')" ],
    [   'retry_delivery',
        "SELECT webhook.retry_delivery(event_id, '$failing') FROM webhook.deliveries
          WHERE endpoint_id = '$failing' LIMIT 1"
    ])
{
    my ($what, $sql) = @$hold;
    # Counted before the lock is taken: an attempt made just after it
    # cannot be recorded while it is held, and the next waits for that.
    my $failing_before = $receiver->count(qr{^/status/500});
    my $session = $node->background_psql('postgres');
    $session->query_safe("BEGIN; $sql;");

    my $before = $receiver->count(qr{^/ok});
    $node->safe_psql('postgres',
        "SELECT webhook.emit('account.updated', jsonb_build_object('n', n))
           FROM generate_series(1, 20) AS n");
    ok($receiver->wait_for_count($before + 20, qr{^/ok}, 5),
        "with $what held open, a healthy endpoint receives all 20 events at once");

    # Meanwhile the failing endpoint's attempts go on and are recorded as
    # far as they can be.
    usleep(1_500_000);
    cmp_ok($receiver->count(qr{^/status/500}), '>', $failing_before,
        "with $what held open, the failing endpoint is still tried");

    $session->query_safe('ROLLBACK');
    $session->quit;
}

# Once the locks are gone, every outcome is recorded: the healthy
# deliveries all succeeded, and the failing endpoint's history is whole
# (one attempt row per request it received).
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 60 FROM webhook.deliveries
                      WHERE endpoint_id = '$healthy' AND status = 'succeeded'"),
    'every healthy delivery is recorded as succeeded');
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) >= 1 FROM webhook.attempts WHERE endpoint_id = '$failing'"),
    'the failing endpoint has its history');
unlike(slurp_file($node->logfile), qr/lock timeout|canceling statement due to lock/,
    'the worker never waited on a lock until its backstop');

$receiver->stop;
$node->stop;
done_testing();
