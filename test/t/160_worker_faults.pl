# test/t/160_worker_faults.pl: faults inside the worker's own machinery.
#
# - A big commit is dispatched in chunks, each its own transaction, with
#   deliveries going out between them; a dispatch that keeps failing does
#   not keep outcomes from being recorded.
# - A launcher that dies by FATAL leaves its worker running; its successor
#   starts no second worker beside it (two would send everything twice).
# - An ERROR while a request is being started (outside any transaction)
#   is that delivery's failed attempt, not the worker's death.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $node = new_node(
    'faults',
    conf => [
        "webhook.retry_schedule = '2s,2s,2s,2s,2s,2s'",
        "webhook.poll_interval = '200ms'",
    ]);
my $receiver = start_receiver();
my ($bulk) = create_endpoint($node, $receiver->url('/bulk'),
    event_types => "ARRAY['journal_entry.*']");
my ($other) = create_endpoint($node, $receiver->url('/other'),
    event_types => "ARRAY['account.*']");

sub worker_pids
{
    return $node->safe_psql('postgres',
        "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
          WHERE backend_type = 'webhook_outbox worker'");
}

# --- A big commit goes out in chunks.
$node->safe_psql('postgres',
    "SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', n)))
       FROM generate_series(1, 5000) AS n");
ok($receiver->wait_for_count(5000, qr{^/bulk}, 120), 'all 5,000 are delivered');
ok(wait_until_settled($node), 'and recorded');
# A delivery's created_at is its dispatch transaction's start: the first
# attempt started before the last chunk was dispatched.
is( $node->safe_psql('postgres',
        "SELECT count(DISTINCT d.created_at) > 1
            AND (SELECT min(a.started_at) FROM webhook.attempts a
                  WHERE a.endpoint_id = '$bulk') < max(d.created_at)
           FROM webhook.deliveries d WHERE d.endpoint_id = '$bulk'"),
    't',
    'it was dispatched in chunks, and deliveries started before the last one');
is( $node->safe_psql('postgres',
        "SELECT count(*), count(DISTINCT event_id) FROM webhook.deliveries
          WHERE endpoint_id = '$bulk' AND status = 'succeeded'"),
    '5000|5000',
    'each exactly once');

# --- A dispatch that keeps failing does not hold back recording.
# Deliveries to /fail/... are pending with retries due; then a trigger
# makes every dispatch fail.
$node->safe_psql('postgres', "SELECT webhook.update_webhook('$other', url => '"
      . $receiver->url('/fail/1/other') . "')");
$node->safe_psql('postgres',
    "SELECT webhook.emit('account.created', jsonb_build_object('n', n))
       FROM generate_series(1, 3) AS n");
ok($receiver->wait_for_count(3, qr{^/fail/1/other}), 'first tries of /other were made');
$node->safe_psql(
    'postgres', q{
    CREATE FUNCTION refuse_dispatch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'dispatch refused';
    END $$;
    CREATE TRIGGER refuse_dispatch BEFORE INSERT ON webhook.delivery_log
        FOR EACH ROW EXECUTE FUNCTION refuse_dispatch();
});
$node->safe_psql('postgres', "SELECT webhook.emit('journal_entry.created', '{}')");
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 3 FROM webhook.deliveries
                      WHERE endpoint_id = '$other' AND status = 'succeeded'"),
    'with dispatch failing, retries are still sent and recorded');
like(slurp_file($node->logfile), qr/could not dispatch new events: dispatch refused/,
    'the dispatch failure is logged');
$node->safe_psql('postgres', 'DROP TRIGGER refuse_dispatch ON webhook.delivery_log');
ok($receiver->wait_for_count(5001, qr{^/bulk}), 'once it works again, the event is dispatched');

# --- A launcher that dies by FATAL.
my $worker = worker_pids();
like($worker, qr/^\d+$/, 'one worker serves the database');
my $launcher = $node->safe_psql('postgres',
    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook_outbox launcher'");
# A cancel makes the launcher's loop raise an ERROR outside any
# transaction: a background worker dies of it by FATAL, and the postmaster
# starts it again a second later. Its worker, unlike in 0.1, stays alone.
$node->safe_psql('postgres', "SELECT pg_cancel_backend($launcher)");
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'webhook_outbox launcher' AND pid <> $launcher"),
    'a new launcher took over');
usleep(3_000_000);
is(worker_pids(), $worker, 'the same single worker still serves the database');
my $before = $receiver->count(qr{/other});
$node->safe_psql('postgres', "SELECT webhook.emit('account.updated', '{}')");
ok($receiver->wait_for_count($before + 1, qr{/other}), 'and delivers');
usleep(1_000_000);
is($receiver->count(qr{/other}), $before + 1, 'once, not twice');

# When that worker goes, the new launcher starts one.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'webhook_outbox worker' AND pid <> $worker"),
    'after the old worker ends, the new launcher starts one');

# --- An ERROR while a request starts.
$node->append_conf('postgresql.conf', "webhook.test_fail_start_url = '/broken'");
$node->reload;
my ($broken) = create_endpoint($node, $receiver->url('/broken'),
    event_types => "ARRAY['period.*']");
$worker = worker_pids();
$node->safe_psql('postgres', "SELECT webhook.emit('period.closed', '{}')");
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 1 FROM webhook.attempts
                      WHERE endpoint_id = '$broken' AND error LIKE '%injected fault%'"),
    'a failed start is recorded as that delivery\'s failed attempt');
is($node->safe_psql('postgres',
        "SELECT status FROM webhook.deliveries WHERE endpoint_id = '$broken'"),
    'pending', 'to be tried again on its schedule');
is(worker_pids(), $worker, 'the worker did not die of it');
$before = $receiver->count(qr{/other});
$node->safe_psql('postgres', "SELECT webhook.emit('account.updated', '{}')");
ok($receiver->wait_for_count($before + 1, qr{/other}), 'and other endpoints are served');
$node->append_conf('postgresql.conf', "webhook.test_fail_start_url = ''");
$node->reload;
ok( $node->poll_query_until(
        'postgres', "SELECT status = 'succeeded' FROM webhook.deliveries
                      WHERE endpoint_id = '$broken'"),
    'without the fault, its retry succeeds');
is($receiver->count(qr{^/broken}), 1, 'sent once, by the retry');

$receiver->stop;
$node->stop;
done_testing();
