# test/t/110_broken_receivers.pl: receivers that fail in every way we know.
#
# A refused connection, a reset mid-response, a reply that is not HTTP, a
# response dripped too slowly to finish within webhook.timeout, a receiver
# that never answers, a name that cannot resolve: each attempt is recorded
# as failed, without a status code and with an error saying what happened,
# and retried on the schedule until the delivery fails. Endless and huge
# bodies are cut: the worker keeps webhook.max_response_body bytes and
# hangs up after 1 MB (the status decides the outcome). All the while, a
# healthy endpoint is delivered to without delay.

use strict;
use warnings;

use File::Basename qw(dirname);
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $root = dirname(__FILE__) . '/../..';
my $max_body = 4096;

my $node = new_node(
    'broken',
    conf => [
        "webhook.timeout = '2s'",
        "webhook.retry_schedule = '1s,1s'",    # three attempts
        "webhook.poll_interval = '100ms'",
        "webhook.max_response_body = $max_body",
    ]);
my $healthy = start_receiver();
my $broken = start_receiver(script => "$root/test/servers/broken.py");

# A port where nothing listens: bind one, then close it.
my $closed = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
    Listen => 1) or die "socket: $!";
my $closed_port = $closed->sockport;
close($closed);

# A host name that fails to resolve without a DNS query leaving the
# machine: a label longer than 63 octets (RFC 1035) is refused by the
# resolver library itself -- glibc's res_mkquery will not encode it, so
# nothing is sent (checked with strace -f -e trace=network on curl: no
# socket but curl's own socketpair, no sendto/connect to a name server) --
# and .invalid (RFC 6761) could never resolve anyway.
my $unresolvable = ('a' x 64) . '.invalid';

my %broken = (
    refused => "http://127.0.0.1:$closed_port/refused",
    reset => $broken->url('/reset'),
    garbage => $broken->url('/garbage'),
    drip => $broken->url('/drip'),
    hang => $broken->url('/hang'),
    dns => "http://$unresolvable/dns",
    endless_500 => $broken->url('/endless/500'),
    huge_503 => $broken->url('/huge/503/52428800'),
    endless_200 => $broken->url('/endless/200'),
    huge_200 => $broken->url('/huge/200/52428800'),
);
my %id_of;
foreach my $name (sort keys %broken)
{
    ($id_of{$name}) = create_endpoint($node, $broken{$name},
        event_types => "ARRAY['period.closed']");
}
my ($healthy_id) = create_endpoint($node, $healthy->url('/ok'),
    event_types => "ARRAY['journal_entry.posted']");

# The broken deliveries, then healthy events every 300 ms while they fail.
my $event = $node->safe_psql('postgres',
    q{SELECT webhook.emit('period.closed', '{"period": "2026-01"}')});
my $healthy_count = 0;
my $deadline = time + 60;
while (time < $deadline)
{
    $node->safe_psql('postgres',
        "SELECT webhook.emit('journal_entry.posted', '{\"n\": $healthy_count}')");
    $healthy_count++;
    last
      if $healthy_count >= 20
      && $node->safe_psql(
        'postgres',
        "SELECT count(*) FILTER (WHERE status = 'pending') = 0 AND count(*) > 0
           FROM webhook.deliveries WHERE event_id = '$event'") eq 't';
    usleep(300_000);
}

ok( $node->poll_query_until(
        'postgres',
        "SELECT count(*) = $healthy_count FROM webhook.deliveries
          WHERE endpoint_id = '$healthy_id' AND status = 'succeeded'"),
    "all $healthy_count healthy deliveries succeeded");
my ($healthy_attempts, $slowest) = split /\|/,
  $node->safe_psql(
    'postgres', qq{
    SELECT count(*), max(extract(epoch FROM d.succeeded_at - e.created_at))
      FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
     WHERE d.endpoint_id = '$healthy_id'});
note("slowest healthy delivery: ${slowest}s after its event");
is($healthy_attempts, $healthy_count, '... each at the first attempt');
cmp_ok($slowest, '<', 1.5,
    '... none held up by the broken receivers (all sent within 1.5 s)');
is($healthy->count(qr{^/ok$}), $healthy_count, 'the healthy receiver got each once');

# Each broken delivery: attempts as scheduled, each with its error.
my %expected = (
    refused => qr/^Couldn't connect to server: Failed to connect to 127\.0\.0\.1 port $closed_port\b.*Connection refused/,
    reset => qr/^Failure when receiving data from the peer: .*Connection reset by peer/,
    garbage => qr/^(Weird server reply|Unsupported protocol): .*HTTP/,
    drip => qr/^Timeout was reached: Operation timed out after \d+ milliseconds with \d+ bytes? received$/,
    hang => qr/^Timeout was reached: Operation timed out after \d+ milliseconds with 0 bytes received$/,
    dns => qr/^Couldn't resolve host name: Could not resolve host: $unresolvable$/,
);
my $delivery = sub {
    my ($name) = @_;
    return $node->safe_psql(
        'postgres', qq{
        SELECT d.status, d.attempts, count(a.*),
               string_agg(coalesce(a.status_code::text, 'none'), ',' ORDER BY a.attempt),
               string_agg(DISTINCT a.error, ' / '),
               min(length(a.response_body)), max(length(a.response_body)),
               min(extract(epoch FROM a2.started_at - a.started_at) - a.duration_ms / 1000)
          FROM webhook.deliveries d
          JOIN webhook.attempts a USING (event_id, endpoint_id)
          LEFT JOIN webhook.attempts a2
            ON a2.event_id = a.event_id AND a2.endpoint_id = a.endpoint_id
           AND a2.attempt = a.attempt + 1
         WHERE d.event_id = '$event' AND d.endpoint_id = '$id_of{$name}'
         GROUP BY 1, 2});
};
foreach my $name (sort keys %expected)
{
    my ($status, $attempts, $rows, $codes, $errors, undef, undef, $gap) =
      split /\|/, $delivery->($name);
    is("$status/$attempts/$rows/$codes", 'failed/3/3/none,none,none',
        "$name: three attempts without a response, then failed");
    my @errors = split m{ / }, $errors;
    note("$name: $errors[0]");
    like($errors[0], $expected{$name}, "$name: the error says what happened");
    my %distinct = map { (s/\d+ (ms|milliseconds)/N $1/gr) => 1 } @errors;
    is(scalar(keys %distinct), 1, "$name: the same error each time");
    cmp_ok($gap, '>=', 0.75, "$name: retried on the schedule (1 s, jittered)");
}

# Endless and huge bodies: the status counts, the body is cut.
foreach my $name (qw(endless_500 huge_503))
{
    my ($status, $attempts, $rows, $codes, $errors, $min_body, $max_body_seen) =
      split /\|/, $delivery->($name);
    my ($code) = $name =~ /_(\d+)$/;
    is("$status/$attempts/$rows/$codes", "failed/3/3/$code,$code,$code",
        "$name: three attempts answered $code, then failed");
    is("$min_body/$max_body_seen", "$max_body/$max_body",
        "$name: each response body kept to webhook.max_response_body");
}
foreach my $name (qw(endless_200 huge_200))
{
    my ($status, $attempts, $rows, $codes, $errors, $min_body) =
      split /\|/, $delivery->($name);
    is("$status/$attempts/$rows/$codes", 'succeeded/1/1/200',
        "$name: a 2xx status is a success, however long the body");
    is($min_body, $max_body, "$name: the body kept is webhook.max_response_body long");
}

# The worker hung up on each endless or huge body after about 1 MB (plus
# what the sockets' buffers held), long before the 50 MB of a huge one.
foreach my $kind ('endless', 'huge')
{
    ok($broken->wait_for_count(4, qr{^done:/$kind/}, 30),
        "every $kind response has ended");
    foreach my $done ($broken->requests(qr{^done:/$kind/}))
    {
        ok($done->{client_closed}, "$done->{path}: the worker hung up");
        cmp_ok($done->{bytes_sent}, '<', 20 * 1024 * 1024,
            "$done->{path}: ... after $done->{bytes_sent} bytes");
    }
}
like(
    $node->safe_psql(
        'postgres',
        "SELECT response_body FROM webhook.attempts WHERE endpoint_id = '$id_of{endless_200}'"),
    qr/^x{$max_body}$/,
    'the body kept is the beginning of the response');

# Three attempts each for reset, garbage, drip, hang and the two failing
# bodies; one for each body that succeeded.
is($broken->count(qr{^/}), 6 * 3 + 2,
    'the broken receiver saw every attempt meant for it, and no more') or
  diag(join "\n", map { $_->{path} } $broken->requests(qr{^/}));

$healthy->stop;
$broken->stop;
$node->stop;
done_testing();
