# test/t/030_retries.pl: outcomes other than a first-time 2xx.
#
# A failing endpoint is retried on webhook.retry_schedule (same webhook-id,
# one history row per try) until it succeeds or the schedule is exhausted;
# 3xx is a failure and is not followed; 429/503 Retry-After is honoured up
# to webhook.retry_after_max; a timeout is an error and does not hold back
# a healthy endpoint; 410 disables the endpoint and parks its pending
# deliveries until it is enabled again; webhook.disable_after disables an
# endpoint that keeps failing; retry_delivery and replay send again by hand
# and are recorded as manual.
#
# Each scenario has an endpoint and an event type of its own, so they run
# side by side.  webhook.endpoint_concurrency = 1 makes the 410 scenario
# deterministic: one request at a time, the others stay pending.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WebhookTest;

my $node = new_node(
    'retries',
    conf => [
        "webhook.poll_interval = '100ms'", "webhook.timeout = '1s'",
        "webhook.endpoint_concurrency = 1", "webhook.retry_after_max = '5s'",
    ]);
my $receiver = start_receiver();
my $test_start = $node->safe_psql('postgres', 'SELECT now()');

# An endpoint at $path subscribed to the event type test.$name (registered
# here); returns its id.
sub scenario
{
    my ($name, $path) = @_;
    $node->safe_psql('postgres', "SELECT webhook.register_event_type('test.$name')");
    my ($id) = create_endpoint($node, $receiver->url($path),
        event_types => "ARRAY['test.$name']");
    return $id;
}

# Emit test.$name events (as many as @payloads) in one transaction; returns
# their ids.
sub emit
{
    my ($name, @payloads) = @_;
    @payloads = ('{}') unless @payloads;
    my $sql = join(' UNION ALL ',
        map { "SELECT webhook.emit('test.$name', '$_')" } @payloads);
    return split /\n/, $node->safe_psql('postgres', $sql);
}

sub query { return $node->safe_psql('postgres', $_[0]); }

# Seconds between the arrivals of consecutive requests to $path.
sub gaps
{
    my ($path) = @_;
    my @at = map { $_->{received_at} } $receiver->requests(qr{^\Q$path\E$});
    return map { $at[$_] - $at[ $_ - 1 ] } 1 .. $#at;
}

my %endpoint = (
    fail2 => scenario('fail2', '/fail/2/a'),
    exhaust => scenario('exhaust', '/status/500/x'),
    redirect => scenario('redirect', '/status/302/r'),
    throttled => scenario('throttled', '/retry-after/3/1/k'),
    unavailable => scenario('unavailable', '/retry-after/2/1/u?status=503'),
    capped => scenario('capped', '/retry-after/60/1/c'),
);
my %event;
$event{$_} = (emit($_))[0] foreach sort keys %endpoint;

# ---------------------------------------------------------------------------
# Retries on the schedule ('1s,1s,1s': four tries in all)
# ---------------------------------------------------------------------------

ok($receiver->wait_for_count(3, qr{^/fail/2/a$}), '/fail/2: tried three times');
ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'succeeded' FROM webhook.deliveries WHERE event_id = '$event{fail2}'"),
    '... and succeeded');
is( query(
        "SELECT attempts, last_status_code, succeeded_at IS NOT NULL, next_attempt_at IS NULL
           FROM webhook.deliveries WHERE event_id = '$event{fail2}'"),
    '3|200|t|t',
    'delivery: attempts = 3 (two failures + the success)');
is( query(
        "SELECT string_agg(attempt || ':' || coalesce(status_code::text, '-') || ':' || manual,
                           ' ' ORDER BY attempt)
           FROM webhook.attempts WHERE event_id = '$event{fail2}'"),
    '1:500:false 2:500:false 3:200:false',
    'attempts: one history row per try');
my @fail2 = $receiver->requests(qr{^/fail/2/a$});
is(scalar(grep { $_->{headers}{'webhook-id'} eq $event{fail2} } @fail2),
    3, 'every try carries the same webhook-id');
my ($fail2_secret) = query(
    "SELECT secret FROM webhook.endpoints WHERE id = '$endpoint{fail2}'");
is(scalar(grep { verify_delivery($_, $fail2_secret) } @fail2),
    3, 'every try is signed afresh');
my @gaps = gaps('/fail/2/a');
ok((grep { $_ >= 0.8 && $_ < 5 } @gaps) == 2,
    'retries follow the 1s schedule with jitter (gaps: '
      . join(', ', map { sprintf '%.2fs', $_ } @gaps) . ')');

ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'failed' FROM webhook.deliveries WHERE event_id = '$event{exhaust}'"),
    'schedule exhausted: failed');
is( query(
        "SELECT attempts, last_status_code, next_attempt_at IS NULL, succeeded_at IS NULL
           FROM webhook.deliveries WHERE event_id = '$event{exhaust}'"),
    '4|500|t|t',
    '... after four tries');
is( query(
        "SELECT string_agg(attempt || ':' || status_code || ':' || response_body, ' ' ORDER BY attempt)
           FROM webhook.attempts WHERE event_id = '$event{exhaust}'"),
    '1:500:status 500 2:500:status 500 3:500:status 500 4:500:status 500',
    '... each with its status and response body in history');
is($receiver->count(qr{^/status/500/x$}), 4, '... and four requests');

# 3xx: a failure, retried, never followed.
ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'failed' FROM webhook.deliveries WHERE event_id = '$event{redirect}'"),
    '302: retried until the schedule is exhausted');
is( query(
        "SELECT count(*), count(*) FILTER (WHERE status_code = 302 AND error ~* 'redirect')
           FROM webhook.attempts WHERE event_id = '$event{redirect}'"),
    '4|4',
    '... each try recorded as a 302 that was not followed');
is($receiver->count(qr{^/ok}), 0, 'the Location was never requested');

# Retry-After: the next try waits at least that long, up to retry_after_max.
ok($receiver->wait_for_count(2, qr{^/retry-after/3/1/k$}), '429: retried');
my ($throttle_gap) = gaps('/retry-after/3/1/k');
cmp_ok($throttle_gap, '>=', 3, sprintf('... after Retry-After: 3 (%.2fs, schedule says 1s)', $throttle_gap));
ok($receiver->wait_for_count(2, qr{^/retry-after/2/1/u}), '503: retried');
my ($unavailable_gap) = gaps('/retry-after/2/1/u?status=503');
cmp_ok($unavailable_gap, '>=', 2, sprintf('... after Retry-After: 2 (%.2fs)', $unavailable_gap));
ok($receiver->wait_for_count(2, qr{^/retry-after/60/1/c$}), 'Retry-After: 60: retried');
my ($capped_gap) = gaps('/retry-after/60/1/c');
ok($capped_gap >= 5 && $capped_gap < 30,
    sprintf('... after webhook.retry_after_max = 5s (%.2fs)', $capped_gap));
ok(wait_until_settled($node), 'all settled');
is( query(
        "SELECT string_agg(d.status || ':' || d.attempts || ':' || a.codes, ' ' ORDER BY d.event_type)
           FROM webhook.deliveries d,
                LATERAL (SELECT string_agg(status_code::text, ',' ORDER BY attempt) AS codes
                           FROM webhook.attempts a
                          WHERE a.event_id = d.event_id AND a.endpoint_id = d.endpoint_id) a
          WHERE d.event_type IN ('test.throttled', 'test.unavailable', 'test.capped')"),
    'succeeded:2:429,200 succeeded:2:429,200 succeeded:2:503,200',
    'throttled deliveries: one throttled try each, then success');

# ---------------------------------------------------------------------------
# Timeout: an endpoint that never answers fails with a timeout; a healthy
# one keeps receiving at once meanwhile.
# ---------------------------------------------------------------------------

my $hang = scenario('hang', '/hang/t');
scenario('healthy', '/healthy');
my ($hang_event) = emit('hang');
ok($receiver->wait_for_count(1, qr{^/hang/t$}), 'the hanging endpoint has a request');
my $emitted = time;
emit('healthy');
my $committed = time;
ok($receiver->wait_for_count(1, qr{^/healthy$}, 10), 'a healthy endpoint receives meanwhile');
my ($healthy) = $receiver->requests(qr{^/healthy$});
my ($hanging) = $receiver->requests(qr{^/hang/t$});
# The commit happened between $emitted and $committed.
my $latency = $healthy->{received_at} - $emitted;
note(sprintf('healthy delivery %.1f..%.1f ms after commit during the hang',
    1000 * ($healthy->{received_at} - $committed), 1000 * $latency));
cmp_ok($latency, '<', 0.5, '... promptly (under 500 ms after commit)');
cmp_ok($healthy->{received_at}, '<', $hanging->{received_at} + 1,
    '... while the first request to the hanging endpoint was still open');
ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) >= 1 FROM webhook.attempts WHERE event_id = '$hang_event'"),
    'the hanging request ends');
my ($hang_error, $hang_code, $hang_ms) = split /\|/, query(
    "SELECT error, coalesce(status_code::text, 'none'), duration_ms
       FROM webhook.attempts WHERE event_id = '$hang_event' AND attempt = 1");
like($hang_error, qr/tim(ed )?out|timeout/i, "... with a timeout error ($hang_error)");
is($hang_code, 'none', '... and no status code');
ok($hang_ms >= 900 && $hang_ms < 5000, "... after about webhook.timeout = 1s ($hang_ms ms)");
is( query(
        "SELECT status, last_status_code IS NULL, last_error ~* 'time' FROM webhook.deliveries
          WHERE event_id = '$hang_event'"),
    'pending|t|t',
    '... and is pending a retry');
# No need to wait for its three retries: the endpoint goes away.
query("SELECT webhook.delete_webhook('$hang')");

# ---------------------------------------------------------------------------
# 410 Gone: the endpoint is disabled, its pending deliveries parked; enabled
# again (here at a fixed URL), they resume.  retry_delivery and replay then
# send by hand what it missed.
# ---------------------------------------------------------------------------

my $gone = scenario('gone', '/status/410/g');
my @gone_events = emit('gone', '{"n": 1}', '{"n": 2}', '{"n": 3}');
ok( $node->poll_query_until(
        'postgres', "SELECT NOT enabled FROM webhook.endpoints WHERE id = '$gone'"),
    '410: endpoint disabled');
is( query(
        "SELECT enabled, disabled_at IS NOT NULL, disabled_reason ~ '410'
           FROM webhook.get_webhook('$gone')"),
    'f|t|t',
    '... with disabled_at and disabled_reason set');
is($receiver->count(qr{^/status/410/g$}), 1, '... after one request');
my ($gone_sent) = map { $_->{headers}{'webhook-id'} } $receiver->requests(qr{^/status/410/g$});
is( query(
        "SELECT status || ':' || attempts || ':' || last_status_code FROM webhook.deliveries
          WHERE event_id = '$gone_sent' AND endpoint_id = '$gone'"),
    'failed:1:410',
    'the delivery that got 410 failed');
is( query(
        "SELECT count(*) FROM webhook.deliveries
          WHERE endpoint_id = '$gone' AND status = 'pending' AND attempts = 0
            AND next_attempt_at = 'infinity'"),
    '2',
    'the other two are parked (pending, next_attempt_at = infinity)');

# While disabled: an event is not dispatched to it.
my ($while_disabled) = emit('gone', '{"n": 4}');
scenario('barrier', '/barrier');
emit('barrier');
ok($receiver->wait_for_count(1, qr{^/barrier$}), 'a later event elsewhere is delivered');
is( query("SELECT count(*) FROM webhook.deliveries WHERE event_id = '$while_disabled'"),
    '0', 'an event emitted while the endpoint is disabled is not queued for it');
is($receiver->count(qr{^/status/410/g$}), 1, 'nothing more sent to the disabled endpoint');

my $fixed_url = $receiver->url('/fixed');
is( query(
        "SELECT enabled, disabled_at IS NULL, disabled_reason IS NULL
           FROM webhook.update_webhook('$gone', url => '$fixed_url', enabled => true)"),
    't|t|t',
    'update_webhook(enabled => true) clears disabled_at and disabled_reason');
ok($receiver->wait_for_count(2, qr{^/fixed$}), 'the parked deliveries resume');
ok(wait_until_settled($node), '... and settle');
is( query(
        "SELECT string_agg(status, ',' ORDER BY status) FROM webhook.deliveries
          WHERE endpoint_id = '$gone'"),
    'failed,succeeded,succeeded',
    '... and succeed; the 410 one stays failed');

# replay: the failed delivery and the event missed while disabled.
is(query("SELECT webhook.replay('$gone', '$test_start')"),
    '2', 'replay queues the failed delivery and the missed event');
ok($receiver->wait_for_count(4, qr{^/fixed$}), '... which are sent');
ok(wait_until_settled($node), '... and settle');
is( query(
        "SELECT count(*) FROM webhook.deliveries WHERE endpoint_id = '$gone' AND status = 'succeeded'"),
    '4', 'every event of the endpoint delivered');
is( query(
        "SELECT string_agg(a.event_id::text || ':' || a.attempt || ':' || a.status_code, ' '
                           ORDER BY a.event_id)
           FROM webhook.attempts a WHERE a.endpoint_id = '$gone' AND a.manual"),
    join(' ', sort("$gone_sent:2:200", "$while_disabled:1:200")),
    'their attempts are recorded as manual');
is(query("SELECT webhook.replay('$gone', '$test_start')"),
    '0', 'replaying again queues nothing (all succeeded)');

# retry_delivery: send one that succeeded once more, by hand.
my $fixed_before = $receiver->count(qr{^/fixed$});
query("SELECT webhook.retry_delivery('$event{fail2}', '$endpoint{fail2}')");
ok($receiver->wait_for_count(4, qr{^/fail/2/a$}), 'retry_delivery sends again');
ok(wait_until_settled($node), '... and settles');
is(($receiver->requests(qr{^/fail/2/a$}))[3]{headers}{'webhook-id'},
    $event{fail2}, '... with the same webhook-id');
is( query(
        "SELECT attempt || ':' || status_code || ':' || manual FROM webhook.attempts
          WHERE event_id = '$event{fail2}' ORDER BY attempt DESC LIMIT 1"),
    '4:200:true',
    '... recorded as manual attempt 4');
is( query(
        "SELECT status, attempts FROM webhook.deliveries WHERE event_id = '$event{fail2}'"),
    'succeeded|4', '... delivery succeeded with 4 attempts');
is($receiver->count(qr{^/fixed$}), $fixed_before, 'no other endpoint was sent anything');

# ---------------------------------------------------------------------------
# webhook.disable_after: continuous failure disables the endpoint.
# ---------------------------------------------------------------------------

query(q{ALTER SYSTEM SET webhook.disable_after = '3s'});
query(q{ALTER SYSTEM SET webhook.retry_schedule = '1s,1s,1s,1s,1s,1s,1s,1s,1s,1s'});
query('SELECT pg_reload_conf()');
ok( $node->poll_query_until(
        'postgres', q{SELECT current_setting('webhook.disable_after') = '3s'}),
    'disable_after = 3s reloaded');
my $failing = scenario('failing', '/status/500/failing');
my @failing_events = emit('failing', '{"n": 1}', '{"n": 2}');
ok( $node->poll_query_until(
        'postgres', "SELECT NOT enabled FROM webhook.endpoints WHERE id = '$failing'"),
    'an endpoint failing continuously is disabled');
my ($reason, $failed_for, $tries) = split /\|/, query(
    "SELECT e.disabled_reason,
            extract(epoch FROM e.disabled_at - (SELECT min(started_at) FROM webhook.attempts a
                                                 WHERE a.endpoint_id = e.id)),
            (SELECT count(*) FROM webhook.attempts a WHERE a.endpoint_id = e.id)
       FROM webhook.endpoints e WHERE e.id = '$failing'");
like($reason, qr/failing continuously since/, "... with a reason ($reason)");
cmp_ok($failed_for, '>=', 3, "... no sooner than disable_after ($failed_for s)");
cmp_ok($tries, '<', 11, "... before its schedule ran out ($tries tries)");
is( query(
        "SELECT count(*) FROM webhook.deliveries
          WHERE endpoint_id = '$failing' AND status = 'pending' AND next_attempt_at = 'infinity'"),
    '2', '... and its pending deliveries parked');
my $failing_count = $receiver->count(qr{^/status/500/failing$});
sleep 2;    # several retry delays: nothing may be sent meanwhile
is($receiver->count(qr{^/status/500/failing$}), $failing_count,
    'nothing more is sent to it');

$node->stop;
$receiver->stop;
done_testing();
