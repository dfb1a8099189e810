# test/t/080_operations.pl: what an operator does with a running outbox.
#
# After a small real delivery run, webhook.endpoint_health and
# webhook.queue_status agree with the history they summarise; the README's
# cookbook queries find the failed deliveries and the failing endpoint, and
# send them again (retry_delivery from a view, replay after an outage).
# Then retention: history older than webhook.retention, written here 40
# days in the past, is removed by the worker when it starts (in batches,
# with its deliveries and attempts), while recent history and old events
# still pending somewhere are kept.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('operations', conf => ["webhook.poll_interval = '100ms'"]);
my $receiver = start_receiver();

sub query { return $node->safe_psql('postgres', $_[0]); }

query("SELECT webhook.register_event_type('test.ops'), webhook.register_event_type('test.flaky')");
my ($ok_id) = create_endpoint($node, $receiver->url('/ok/ops'), description => "'ok'");
# Fails 4 times: the first try and the 3 retries of the schedule (1s,1s,1s).
my ($flaky_id) = create_endpoint($node, $receiver->url('/fail/4/ops'),
    event_types => "'{test.flaky}'", description => "'flaky'");

# ---------------------------------------------------------------------------
# The views after a real delivery run
# ---------------------------------------------------------------------------

query("SELECT webhook.emit('test.ops', jsonb_build_object('n', n)) FROM generate_series(1, 5) n");
query("SELECT webhook.emit('test.flaky', '{}')");
ok(wait_until_settled($node), 'the deliveries settled');
is($receiver->count(qr{^/ok/ops$}), 6, 'the healthy endpoint received 6 events');
is($receiver->count(qr{^/fail/4/ops$}), 4, 'the flaky one was tried 4 times');

is( query(
        "SELECT concat_ws(' ', pending, succeeded, failed, success_rate, consecutive_failures,
                          failing_since IS NULL, last_success_at IS NOT NULL, last_failure_at IS NULL,
                          p50_ms > 0, p99_ms >= p50_ms)
           FROM webhook.endpoint_health WHERE id = '$ok_id'"),
    '0 6 0 1.0000 0 t t t t t',
    'endpoint_health: the healthy endpoint');
is( query(
        "SELECT concat_ws(' ', pending, succeeded, failed, success_rate, consecutive_failures,
                          failing_since IS NOT NULL, last_success_at IS NULL, last_failure_at IS NOT NULL)
           FROM webhook.endpoint_health WHERE id = '$flaky_id'"),
    '0 0 4 0.0000 4 t t t',
    'endpoint_health: the flaky endpoint, 4 failures in a row');

# Its latency figures are those of the attempts.
is( query(
        "SELECT h.p50_ms = round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
            AND h.p99_ms = round(percentile_cont(0.99) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
            AND h.last_success_at = max(a.started_at)
           FROM webhook.endpoint_health h
           JOIN webhook.attempts a ON a.endpoint_id = h.id
          WHERE h.id = '$ok_id'
          GROUP BY h.p50_ms, h.p99_ms, h.last_success_at"),
    't', 'endpoint_health: latency percentiles and last success match webhook.attempts');

is( query(
        "SELECT concat_ws(' ', pending_due, pending_scheduled, pending_parked,
                          oldest_pending_age IS NULL, undispatched_events, events_last_minute,
                          attempts_last_minute, delivered_last_minute, deliveries_per_second)
           FROM webhook.queue_status"),
    # 7 events: the 6 emitted and the webhook.delivery.failed the extension
    # recorded when the flaky endpoint's delivery ran out of tries.
    '0 0 0 t 0 7 10 6 0.10',
    'queue_status: nothing pending, the last minute counted');
is( query(
        "SELECT q.worker_pid = a.pid AND q.worker_activity LIKE 'delivering:%'
           FROM webhook.queue_status q, pg_stat_activity a
          WHERE a.backend_type = 'webhook_outbox worker'"),
    't', 'queue_status: the worker and what it is doing');

# Cookbook: which endpoints are failing now.
my $failing_now = "SELECT description FROM webhook.endpoint_health
                    WHERE failing_since IS NOT NULL OR NOT enabled ORDER BY failing_since";
is(query($failing_now), 'flaky', 'cookbook: the failing endpoint is found');

# Cookbook: failed deliveries of the last day with their response bodies.
is( query(
        "SELECT string_agg(concat_ws(' ', d.event_type, ep.description, a.attempt, a.status_code,
                                     a.response_body), ', ' ORDER BY a.attempt)
           FROM webhook.deliveries d
           JOIN webhook.list_webhooks() ep ON ep.id = d.endpoint_id
           JOIN webhook.attempts a ON a.event_id = d.event_id AND a.endpoint_id = d.endpoint_id
          WHERE d.status = 'failed' AND d.created_at > now() - interval '1 day'"),
    'test.flaky flaky 1 500 fail, test.flaky flaky 2 500 fail, '
      . 'test.flaky flaky 3 500 fail, test.flaky flaky 4 500 fail',
    'cookbook: failed deliveries with their response bodies');

# Send the failed ones again, straight from the view; the 5th request succeeds.
is(query("SELECT count(webhook.retry_delivery(event_id, endpoint_id)::text)
            FROM webhook.deliveries WHERE status = 'failed'"),
    '1', 'retry_delivery from webhook.deliveries');
ok(wait_until_settled($node), 'the retry settled');
is( query(
        "SELECT string_agg(concat_ws(' ', attempt, status_code, manual), ', ' ORDER BY attempt)
           FROM webhook.attempts WHERE endpoint_id = '$flaky_id'"),
    '1 500 f, 2 500 f, 3 500 f, 4 500 f, 5 200 t',
    'the retry is a fifth, manual attempt, and it succeeded');
is( query(
        "SELECT concat_ws(' ', succeeded, failed, success_rate, consecutive_failures, failing_since IS NULL)
           FROM webhook.endpoint_health WHERE id = '$flaky_id'"),
    '1 4 0.2000 0 t',
    'endpoint_health: the flaky endpoint has recovered');
is(query($failing_now), '', 'cookbook: no endpoint is failing now');

# Cookbook: replay everything an endpoint missed during an outage (here it
# was disabled: the events of that time were not even queued for it).
query("SELECT FROM webhook.update_webhook('$ok_id', enabled => false)");
my $outage_start = query("SELECT clock_timestamp()");
query("SELECT webhook.emit('test.ops', jsonb_build_object('missed', n)) FROM generate_series(1, 3) n");
ok(wait_until_settled($node), 'events of the outage settled');
my $outage_end = query("SELECT clock_timestamp()");
is(query("SELECT count(*) FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
           WHERE d.endpoint_id = '$ok_id' AND e.payload ? 'missed'"),
    '0', 'nothing was queued for the disabled endpoint');
query("SELECT FROM webhook.update_webhook('$ok_id', enabled => true)");
is( query(
        "SELECT webhook.replay(id, '$outage_start', '$outage_end')
           FROM webhook.endpoint_health WHERE description = 'ok'"),
    '3', 'replay queues the 3 missed events');
ok($receiver->wait_for_count(9, qr{^/ok/ops$}), 'and they arrive');
ok(wait_until_settled($node), 'the replay settled');
is(query("SELECT count(*) FILTER (WHERE manual) FROM webhook.attempts WHERE endpoint_id = '$ok_id'"),
    '3', 'history records them as manual');

# ---------------------------------------------------------------------------
# Retention: the worker removes old history when it starts
# ---------------------------------------------------------------------------

# History written as it would be 40 days later. The txid is older than any
# snapshot, so the worker sees these events as dispatched long ago.
my ($parked_id) = create_endpoint($node, $receiver->url('/ok/parked'), enabled => 'false');
query(
    "CREATE TEMP TABLE old AS
     SELECT webhook.uuid_v7() AS id, n,
            CASE WHEN n = 1 THEN 'pending' WHEN n % 2 = 0 THEN 'succeeded' ELSE 'failed' END AS status
       FROM generate_series(1, 2500) n;
     INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
     SELECT id, 'test.ops', jsonb_build_object('old', n), now() - interval '40 days', '3'
       FROM old;
     INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts,
                                       next_attempt_at, created_at)
     SELECT id, CASE WHEN status = 'pending' THEN '$parked_id' ELSE '$ok_id' END::uuid, 'test.ops',
            status, 1, CASE WHEN status = 'pending' THEN 'infinity'::timestamptz END,
            now() - interval '40 days'
       FROM old;
     INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at, duration_ms,
                                      status_code, response_body)
     SELECT id, '$ok_id', 1, now() - interval '40 days', 12.5,
            CASE WHEN status = 'succeeded' THEN 200 ELSE 500 END, 'x'
       FROM old WHERE status <> 'pending';");

my $recent = query("SELECT count(*) FROM webhook.events WHERE created_at > now() - interval '1 day'");
my $recent_attempts =
  query("SELECT count(*) FROM webhook.attempts WHERE started_at > now() - interval '1 day'");
# 9 emitted, and 2 operational events (a delivery failed, an endpoint
# disabled by hand).
is($recent, '11', 'recent history: 11 events');
is(query("SELECT count(*) FROM webhook.events WHERE created_at < now() - interval '30 days'"),
    '2500', 'old history: 2500 events');
is( query(
        "SELECT concat_ws(' ', pending_parked, undispatched_events) FROM webhook.queue_status"),
    '1 0', 'the old pending delivery is parked, the old events count as dispatched');

$node->restart;
ok( $node->poll_query_until('postgres',
        "SELECT count(*) = 1 FROM webhook.events WHERE created_at < now() - interval '30 days'"),
    'after a restart, the worker removes old history (more than one batch of 1000)');
is(query("SELECT count(*) FROM webhook.events WHERE created_at > now() - interval '1 day'"),
    $recent, 'recent events are kept');
is(query("SELECT count(*) FROM webhook.attempts WHERE started_at > now() - interval '1 day'"),
    $recent_attempts, 'recent attempts are kept');
is( query(
        "SELECT concat_ws(' ', d.status, d.endpoint_id = '$parked_id', e.payload ->> 'old')
           FROM webhook.events e JOIN webhook.deliveries d ON d.event_id = e.id
          WHERE e.created_at < now() - interval '30 days'"),
    'pending t 1', 'the old event still pending for the disabled endpoint is kept');
is( query(
        "SELECT (SELECT count(*) FROM webhook.deliveries d
                  WHERE NOT EXISTS (SELECT 1 FROM webhook.events e WHERE e.id = d.event_id))
              + (SELECT count(*) FROM webhook.attempts a
                  WHERE NOT EXISTS (SELECT 1 FROM webhook.events e WHERE e.id = a.event_id))"),
    '0', 'no delivery or attempt outlives its event');

$node->stop;
done_testing();
