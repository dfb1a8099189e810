# test/t/040_crash.pl: at least once, whatever crashes when.
#
# A backlog of 3000 events (one transaction) is being delivered when the
# delivery worker is killed with SIGKILL, when a regular backend is (both
# force a crash-restart of the whole server), and when the server is
# stopped in immediate mode and started again.  Each time every event is
# delivered in the end: the receiver sees 3000 distinct webhook-ids and
# every delivery succeeded; a duplicate is allowed only as an exact repeat
# (same webhook-id, same body).  A retry that was pending at a restart
# still happens, and an event of a transaction killed before commit never
# arrives.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('crash',
    conf => [ "webhook.poll_interval = '100ms'", 'restart_after_crash = on' ]);
my $receiver = start_receiver();
my $backlog = 3000;

# An endpoint at $path for the event type crash.$name (registered here).
sub scenario
{
    my ($name, $path) = @_;
    $node->safe_psql('postgres', "SELECT webhook.register_event_type('crash.$name')");
    my ($id) = create_endpoint($node, $receiver->url($path),
        event_types => "ARRAY['crash.$name']");
    return $id;
}

# Emit the backlog for crash.$name in one transaction, wait until the drain
# is under way, run $crash, then check that everything arrives.
sub crash_mid_drain
{
    my ($name, $crash) = @_;
    my $path = "/crash/$name";
    my $endpoint = scenario($name, $path);
    my $pattern = qr{^\Q$path\E$};
    $node->safe_psql('postgres',
        "SELECT count(webhook.emit('crash.$name', jsonb_build_object('n', i)))
           FROM generate_series(1, $backlog) i");
    ok($receiver->wait_for_count(300, $pattern), "$name: the drain is under way");
    # $crash may return what the receiver had got when the server went down
    # (before it is started again); otherwise count now.
    my $at_crash = $crash->($pattern) // $receiver->count($pattern);
    cmp_ok($at_crash, '<', $backlog, "$name: crashed mid-drain ($at_crash requests so far)");

    ok( $node->poll_query_until(
            'postgres', "
            SELECT count(*) FILTER (WHERE status = 'succeeded') = $backlog
              FROM webhook.deliveries WHERE endpoint_id = '$endpoint'"),
        "$name: every delivery succeeded after the crash");

    my @requests = $receiver->requests($pattern);
    my %body_of;
    my $consistent = 1;
    foreach my $r (@requests)
    {
        my $id = $r->{headers}{'webhook-id'} // '';
        my $decoded = eval { decode_json(do { my $b = $r->{body}; utf8::encode($b); $b }) };
        $consistent = 0 unless $decoded && $decoded->{id} eq $id;
        if (exists $body_of{$id})
        {
            $consistent = 0 unless $body_of{$id} eq $r->{body};
        }
        $body_of{$id} = $r->{body};
    }
    is(scalar keys %body_of, $backlog, "$name: $backlog distinct webhook-ids received");
    is( $node->safe_psql(
            'postgres', "
            SELECT count(*) FROM webhook.events
             WHERE event_type = 'crash.$name' AND id::text = ANY ('{"
              . join(',', keys %body_of) . "}'::text[])"),
        $backlog,
        "$name: they are exactly the events emitted");
    ok($consistent, "$name: a repeated request repeats the same webhook-id and body");
    note(sprintf('%s: %d requests for %d events (%d duplicates)',
        $name, scalar @requests, $backlog, @requests - $backlog));
    return $endpoint;
}

# ---------------------------------------------------------------------------
# kill -9 of the delivery worker
# ---------------------------------------------------------------------------

crash_mid_drain(
    'worker',
    sub {
        my $pid = $node->safe_psql('postgres',
            q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'});
        like($pid, qr/^\d+$/, "the worker's pid ($pid)");
        kill 'KILL', $pid;
        return;
    });
ok( $node->log_contains(qr/webhook_outbox worker.*was terminated by signal 9/),
    'the server noticed the killed worker (crash-restart)');

# ---------------------------------------------------------------------------
# kill -9 of a regular backend (the whole server restarts); its open
# transaction had emitted an event, which must never arrive.
# ---------------------------------------------------------------------------

my $uncommitted;
crash_mid_drain(
    'backend',
    sub {
        my $session = $node->background_psql('postgres');
        my $pid = $session->query_safe('SELECT pg_backend_pid()');
        $session->query_safe('BEGIN');
        $uncommitted = $session->query_safe(
            q{SELECT webhook.emit('crash.backend', '{"uncommitted": true}')});
        kill 'KILL', $pid;
        eval { $session->quit };    # psql lost its server
        return;
    });
ok( $node->log_contains(qr/server process \(PID \d+\) was terminated by signal 9/),
    'the server noticed the killed backend (crash-restart)');
is( $node->safe_psql('postgres', "SELECT count(*) FROM webhook.events WHERE id = '$uncommitted'"),
    '0', 'the killed transaction left no event');
is(scalar(grep { ($_->{headers}{'webhook-id'} // '') eq $uncommitted } $receiver->requests),
    0, '... and nothing was sent for it');

# ---------------------------------------------------------------------------
# Immediate stop (no shutdown checkpoint) and start
# ---------------------------------------------------------------------------

crash_mid_drain(
    'immediate',
    sub {
        my ($pattern) = @_;
        $node->stop('immediate');
        my $at_crash = $receiver->count($pattern);
        $node->start;
        return $at_crash;
    });

# ---------------------------------------------------------------------------
# A retry pending at restart still happens.
# ---------------------------------------------------------------------------

$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.retry_schedule = '3s'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
    q{SELECT current_setting('webhook.retry_schedule') = '3s'});
my $retry_endpoint = scenario('retry', '/fail/1/retry');
my $retry_event = $node->safe_psql('postgres', q{SELECT webhook.emit('crash.retry', '{}')});
ok( $node->poll_query_until(
        'postgres', "
        SELECT status = 'pending' AND attempts = 1 AND last_status_code = 500
          FROM webhook.deliveries WHERE event_id = '$retry_event'"),
    'a failed delivery is pending a retry');
$node->restart;
ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'succeeded' FROM webhook.deliveries WHERE event_id = '$retry_event'"),
    'after restart the retry happens and succeeds');
is( $node->safe_psql(
        'postgres',
        "SELECT string_agg(attempt || ':' || status_code, ' ' ORDER BY attempt)
           FROM webhook.attempts WHERE event_id = '$retry_event'"),
    '1:500 2:200',
    '... as attempt 2');
my @retry = $receiver->requests(qr{^/fail/1/retry$});
is(scalar @retry, 2, '... two requests in all');
cmp_ok($retry[1]{received_at} - $retry[0]{received_at}, '>=', 2.4,
    '... the second on schedule, not at once after the restart');

$node->stop;
$receiver->stop;
done_testing();
