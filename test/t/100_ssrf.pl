# test/t/100_ssrf.pl: deliveries cannot be aimed at internal addresses.
#
# With webhook.allow_private_networks = off (the default), no request
# reaches a loopback address, however the URL spells it: each attempt is
# recorded with "address blocked: ..." naming the address actually about to
# be connected to (the check runs in curl's open-socket callback, after
# curl's own lookup, so there is no second lookup to fool), and no TCP
# connection is even opened. webhook.allowed_networks opens chosen ranges
# again; a malformed list is refused. Redirects are never followed. Proxy
# variables in the server's environment are ignored; webhook.proxy is used.
# Connections kept alive under laxer settings are not reused after a
# reload makes them stricter.
#
# The range table itself (every blocked IPv4 and IPv6 range, IPv4-mapped
# and NAT64 forms) is unit-tested by test/fuzz/address_test.c, compiled and
# run here.

use strict;
use warnings;

use File::Basename qw(dirname);
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $root = dirname(__FILE__) . '/../..';
my $node;

# Emit an event of type account.created and wait until its $n deliveries
# have all been tried and settled; returns the event id.
sub emit_and_settle
{
    my ($n, $probe) = @_;
    my $event = $node->safe_psql('postgres',
        "SELECT webhook.emit('account.created', '{\"probe\": \"$probe\"}')");
    ok( $node->poll_query_until(
            'postgres',
            "SELECT count(*) FILTER (WHERE status <> 'pending') = $n
               FROM webhook.deliveries WHERE event_id = '$event'"),
        "$probe: all $n deliveries settled");
    return $event;
}

# ---------------------------------------------------------------------------
# The range table of src/address.c, through its unit test
# ---------------------------------------------------------------------------

my $bin = PostgreSQL::Test::Utils::tempdir() . '/address_test';
my ($out, $err) = run_command(
    [
        $ENV{CC} // 'cc', '-DWEBHOOK_ADDRESS_STANDALONE', "-I$root/src",
        "$root/src/address.c", "$root/test/fuzz/address_test.c", '-o', $bin
    ]);
ok(-x $bin, 'address_test compiles') or diag($err);
($out, $err) = run_command([$bin]);
my @results = grep { /^(not )?ok / } split /\n/, $out;
cmp_ok(scalar(@results), '>=', 140, 'address_test ran its checks');
foreach my $line (@results)
{
    my ($not, $what) = $line =~ /^(not )?ok \d+ - (.*)$/;
    ok(!$not, "address.c: $what");
}

# ---------------------------------------------------------------------------
# A node with the guard on, whose environment names a proxy
# ---------------------------------------------------------------------------

my $receiver = start_receiver();
my $proxy = start_receiver(script => "$root/test/servers/proxy.py");
my $port = $receiver->port;

# A listener that never accepts: a connection attempt would wait in its
# backlog, so an empty backlog shows no TCP connection was opened at all.
my $canary = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1',
    LocalPort => 0,
    Listen => 128,
    Proto => 'tcp') or die "canary listener: $!";
my $canary_port = $canary->sockport;

# Proxy variables as a server's environment may carry them: curl would
# use them, webhook_outbox must not.
local $ENV{http_proxy} = $proxy->url('');
local $ENV{HTTPS_PROXY} = $proxy->url('');
local $ENV{ALL_PROXY} = $proxy->url('');
local $ENV{no_proxy} = '';
$node = new_node(
    'ssrf',
    conf => [
        # new_node allows private networks for the other tests; the last
        # setting in postgresql.conf wins
        "webhook.allow_private_networks = off",
        "webhook.retry_schedule = '1s'",
        "webhook.poll_interval = '100ms'",
        "webhook.timeout = '5s'",
    ]);
is($node->safe_psql('postgres', 'SHOW webhook.allow_private_networks'),
    'off', 'the guard is on');

# Every spelling of a loopback address we know of.
my @spellings = (
    [ 'localhost', 'localhost' ],
    [ 'dotted', '127.0.0.1' ],
    [ 'short', '127.1' ],
    [ 'three-part', '127.0.1' ],
    [ 'decimal', '2130706433' ],
    [ 'hex-octet', '0x7f.0.0.1' ],
    [ 'hex-whole', '0x7f000001' ],
    [ 'octal', '0177.0.0.1' ],
    [ 'other-loopback', '127.45.67.89' ],
    [ 'this-host', '0.0.0.0' ],
    [ 'ipv6', '[::1]' ],
    [ 'ipv4-mapped', '[::ffff:127.0.0.1]' ],
    [ 'ipv4-mapped-hex', '[::ffff:7f00:1]' ],
    [ 'userinfo-decoy', 'example.com@127.0.0.1' ],
);

my %blocked_ids;
foreach my $s (@spellings)
{
    my ($label, $host) = @$s;
    foreach my $target ([ $port, 'receiver' ], [ $canary_port, 'canary' ])
    {
        my ($id) = create_endpoint($node,
            "http://$host:$target->[0]/ssrf/$label",
            event_types => "ARRAY['account.created']");
        $blocked_ids{$id} = "$label ($target->[1])";
    }
}
emit_and_settle(scalar(keys %blocked_ids), 'ssrf');

my %outcome = map { my ($id, @rest) = split /\|/; ($id => \@rest) } split /\n/,
  $node->safe_psql(
    'postgres', q{
    SELECT d.endpoint_id, d.status, d.attempts, count(a.*),
           count(a.*) FILTER (WHERE a.status_code IS NULL),
           min(a.error), max(a.error)
      FROM webhook.deliveries d
      JOIN webhook.attempts a USING (event_id, endpoint_id)
     GROUP BY 1, 2, 3});
foreach my $id (sort { $blocked_ids{$a} cmp $blocked_ids{$b} } keys %blocked_ids)
{
    my ($status, $attempts, $rows, $no_status, $error, $max_error) =
      @{ $outcome{$id} // [] };
    my $what = $blocked_ids{$id};
    is("$status/$attempts/$rows/$no_status", 'failed/2/2/2',
        "$what: two attempts, no response, then failed");
    like($error,
        qr/^address blocked: (127\.\d+\.\d+\.\d+|0\.0\.0\.0|::1|::ffff:127\.0\.0\.1) is in (127\.0\.0\.0\/8 \(loopback\)|0\.0\.0\.0\/8 \("this" network\)|::1\/128 \(loopback\)); allow it with webhook\.allowed_networks or webhook\.allow_private_networks$/,
        "$what: refused with the resolved address and its range");
    is($max_error, $error, "$what: the same reason each time");
}
like($outcome{ (grep { $blocked_ids{$_} eq 'ipv4-mapped (receiver)' } keys %blocked_ids)[0] }[4],
    qr/^address blocked: ::ffff:127\.0\.0\.1 is in 127\.0\.0\.0\/8 \(loopback\); allow it with webhook\.allowed_networks or webhook\.allow_private_networks$/,
    'an IPv4-mapped address is judged by its IPv4 address');
like($outcome{ (grep { $blocked_ids{$_} eq 'decimal (receiver)' } keys %blocked_ids)[0] }[4],
    qr/^address blocked: 127\.0\.0\.1 is in /,
    'a decimal host is checked as the address it means');
is($receiver->count, 0, 'the receiver recorded nothing');
$canary->blocking(0);
ok(!defined $canary->accept, 'no TCP connection was even opened');
is($proxy->count, 0, 'the proxy of the environment was not used');

# ---------------------------------------------------------------------------
# webhook.allowed_networks
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');

# A malformed list is an error when set, and changes nothing.
my ($rc, $stdout, $stderr) = $node->psql('postgres',
    "ALTER SYSTEM SET webhook.allowed_networks = '127.0.0.0/8, 10.0.0.0/33'");
isnt($rc, 0, 'a malformed allowed_networks is refused');
like($stderr,
    qr/invalid value for parameter "webhook.allowed_networks".*\n.*"10\.0\.0\.0\/33" is not an address range/,
    '... saying which entry is wrong');

# Registering a literal blocked address warns at once; opening its range
# with webhook.allowed_networks silences the warning for that range only.
sub create_warnings
{
    my ($url) = @_;
    my ($rc, $out, $err) = $node->psql('postgres',
        "BEGIN; SELECT webhook.create_webhook('$url'); ROLLBACK;");
    is($rc, 0, "$url is registered");
    return $err;
}
like(create_warnings("http://127.0.0.1:$port/warned"),
    qr/WARNING:  webhook URL "http:\/\/127\.0\.0\.1:\d+\/warned" points at a blocked address\n.*127\.0\.0\.1 is in 127\.0\.0\.0\/8 \(loopback\).*\n.*webhook\.allowed_networks/,
    'a literal loopback address warns when registered, naming the parameters');

$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.allowed_networks = '127.0.0.0/8'");
$node->reload;
$node->poll_query_until('postgres',
    "SELECT current_setting('webhook.allowed_networks') = '127.0.0.0/8'")
  or die 'the reload did not reach new sessions';
is(create_warnings("http://127.0.0.1:$port/allowed"), '',
    'no warning for an address webhook.allowed_networks opens');
like(create_warnings("http://[::1]:$port/still-blocked"),
    qr/WARNING:  .*points at a blocked address\n.*::1 is in ::1\/128 \(loopback\)/,
    '... but still one for an address it does not hold');

my %allowed_ids;
foreach my $s (@spellings)
{
    my ($label, $host) = @$s;
    # not in 127.0.0.0/8, or not where the receiver listens
    next if $label =~ /^(ipv6|this-host|other-loopback)$/;
    my ($id) = create_endpoint($node, "http://$host:$port/allowed/$label",
        event_types => "ARRAY['account.created']");
    $allowed_ids{$id} = $label;
}
my ($still_blocked) = create_endpoint($node, "http://[::1]:$port/allowed/ipv6",
    event_types => "ARRAY['account.created']");
my $allowed_event = emit_and_settle(scalar(keys %allowed_ids) + 1, 'allowed');
is($receiver->count(qr{^/allowed/}), scalar(keys %allowed_ids),
    'with 127.0.0.0/8 allowed, every spelling of a loopback IPv4 address is delivered to');
is( $node->safe_psql(
        'postgres',
        "SELECT string_agg(e.url || ': ' || d.last_error, E'\\n')
           FROM webhook.deliveries d JOIN webhook.endpoints e ON e.id = d.endpoint_id
          WHERE d.event_id = '$allowed_event' AND d.endpoint_id <> '$still_blocked'
            AND d.status <> 'succeeded'"),
    '',
    '... and succeeds');
like(
    $node->safe_psql(
        'postgres',
        "SELECT status || ': ' || last_error FROM webhook.deliveries
          WHERE endpoint_id = '$still_blocked'"),
    qr/^failed: address blocked: ::1 is in ::1\/128 \(loopback\); allow it with webhook\.allowed_networks or webhook\.allow_private_networks$/,
    '::1 stays blocked: 127.0.0.0/8 does not hold it');
is($receiver->count(qr{^/allowed/ipv6}), 0, '... and nothing arrived from it');
is($proxy->count, 0,
    'the proxy of the environment was not used for the deliveries that went through');

# ---------------------------------------------------------------------------
# Redirects are not followed
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');
foreach my $code (301, 302, 303, 307, 308)
{
    create_endpoint($node, "http://127.0.0.1:$port/status/$code/redirect",
        event_types => "ARRAY['account.created']");
}
my $redirected = emit_and_settle(5, 'redirect');
is( $node->safe_psql(
        'postgres', "
    SELECT string_agg(DISTINCT a.status_code || ' ' || a.error, ', ')
      FROM webhook.attempts a JOIN webhook.deliveries d USING (event_id, endpoint_id)
     WHERE d.status = 'failed' AND d.event_id = '$redirected'"),
    join(', ', map { "$_ redirects are not followed" } 301, 302, 303, 307, 308),
    'a 3xx is a failed attempt: "redirects are not followed"');
is($receiver->count(qr{^/status/30\d/redirect$}), 10, 'each was tried twice');
is($receiver->count(qr{^/ok}), 0, 'the Location was never requested');

# ---------------------------------------------------------------------------
# webhook.proxy: requests go through it
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');
$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.proxy = '" . $proxy->url('') . "'");
$node->reload;
create_endpoint($node, "http://127.0.0.1:$port/proxied",
    event_types => "ARRAY['account.created']");
my $proxied = emit_and_settle(1, 'proxy');
is($proxy->count(qr{^http://127\.0\.0\.1:$port/proxied$}), 1,
    'with webhook.proxy set, the request goes to the proxy');
is($receiver->count(qr{^/proxied$}), 1, '... which passes it on');
is( $node->safe_psql(
        'postgres', "SELECT status FROM webhook.deliveries WHERE event_id = '$proxied'"),
    'succeeded',
    '... and the delivery succeeds');
my ($via_proxy) = $receiver->requests(qr{^/proxied$});
ok(verify_delivery($via_proxy,
        $node->safe_psql('postgres', 'SELECT secret FROM webhook.endpoints')),
    '... signed as ever');

# ---------------------------------------------------------------------------
# Stricter settings after a reload: kept-alive connections are not reused
# ---------------------------------------------------------------------------

# The allowed deliveries above left connections to the receiver alive in
# curl's pool. Back to the defaults, a delivery to the same address must be
# refused at connect time, not slip through on one of those.
$node->safe_psql('postgres', 'DELETE FROM webhook.endpoints');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET webhook.allowed_networks');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET webhook.proxy');
$node->reload;
# Nothing shows when the worker has read the new settings; it does so at
# once on SIGHUP, which the reload sends: two seconds are ample.
sleep 2;
my $before = $receiver->count;
create_endpoint($node, "http://127.0.0.1:$port/after-reload",
    event_types => "ARRAY['account.created']");
my $reloaded = emit_and_settle(1, 'reload');
like(
    $node->safe_psql(
        'postgres', "SELECT status || ': ' || last_error FROM webhook.deliveries
                      WHERE event_id = '$reloaded'"),
    qr/^failed: address blocked: 127\.0\.0\.1 is in 127\.0\.0\.0\/8 \(loopback\); allow it with webhook\.allowed_networks or webhook\.allow_private_networks$/,
    'after the reload, loopback is blocked again');
is($receiver->count, $before, '... and nothing more reached the receiver');

$receiver->stop;
$proxy->stop;
$node->stop;
done_testing();
