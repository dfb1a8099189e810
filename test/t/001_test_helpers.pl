# test/t/001_test_helpers.pl: the test machinery itself is right.
#
# The signature helpers match the published test vectors, and
# test/receiver.py answers each kind of path as documented, so a failure in
# a later test is the extension's, not the harness's.  Needs no server.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

# The example of the Standard Webhooks (and Svix) documentation and libraries.
is( standard_signature(
        'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
        'msg_p5jXN8AQM9LWM0D4loKWxJek',
        '1614265330', '{"test": 2432232314}'),
    'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
    'standard_signature matches the Standard Webhooks test vector');

# RFC 4231, test case 2.
is(hex_signature('Jefe', 'what do ya want for nothing?'),
    'sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    'hex_signature matches RFC 4231 test case 2');

# verify_delivery accepts a correctly signed request, also among several
# webhook-signature entries, and rejects a wrong secret.
my $secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $body = '{"id":"msg_1","type":"period.closed","data":{"é":1}}';
my $signed = {
    body => $body,
    headers => {
        'webhook-id' => 'msg_1',
        'webhook-timestamp' => '1700000000',
        'webhook-signature' => 'v1,b3RoZXI= '
          . standard_signature($secret, 'msg_1', '1700000000', $body),
        'x-webhook-signature' => hex_signature($secret, $body),
    },
};
utf8::decode($signed->{body});    # as requests() returns it
ok(verify_delivery($signed, $secret), 'verify_delivery accepts a signed request');
ok(!verify_delivery($signed, 'whsec_b3RoZXI='), 'verify_delivery rejects another secret');

# The receiver: run curl against it and compare with its log.
my $receiver = start_receiver();

# POST $data to $path with curl; return the HTTP status and the response headers.
sub post
{
    my ($path, $data, @options) = @_;
    my ($stdout, $stderr) = run_command(
        [
            'curl', '-sS', '-D', '-', '-o', '/dev/null',
            '-H', 'Content-Type: application/json', '--data-binary', $data,
            @options, $receiver->url($path)
        ]);
    my ($code) = $stdout =~ m{^HTTP/\S+ (\d+)}m;
    return ($code // 0, $stdout);
}

my ($code) = post('/ok', '{"hello":"world"}', '-H', 'X-Test: yes');
is($code, 200, '/ok answers 200');
ok($receiver->wait_for_count(1, qr{^/ok$}, 10), 'the request is logged');
my ($logged) = $receiver->requests(qr{^/ok$});
is($logged->{method}, 'POST', 'method logged');
is($logged->{body}, '{"hello":"world"}', 'body logged as sent');
is($logged->{headers}{'x-test'}, 'yes', 'headers logged with lowercased names');
like($logged->{received_at}, qr/^\d+(\.\d+)?$/, 'arrival time logged');

is((post('/fail/1/x', '{}'))[0], 500, '/fail/1/x fails the first time');
is((post('/fail/1/x', '{}'))[0], 200, '... and succeeds the second time');
is((post('/fail/1/y', '{}'))[0], 500, '... counting each path on its own');

my ($status, $headers) = post('/retry-after/7/1/x', '{}');
is($status, 429, '/retry-after/7/1/x answers 429 first');
like($headers, qr/^Retry-After: 7\r?$/mi, '... with Retry-After');
is((post('/retry-after/7/1/x', '{}'))[0], 200, '... then 200');

($status, $headers) = post('/status/302/a', '{}');
is($status, 302, '/status/302 answers 302');
like($headers, qr{^Location: /ok\r?$}mi, '... with a Location');
is((post('/status/410', '{}'))[0], 410, '/status/410 answers 410');
like((post('/big/5000', '{}'))[1], qr/^Content-Length: 5000\r?$/mi,
    '/big/5000 sends 5000 bytes');

my $started = time;
is((post('/hang', '{}', '--max-time', '1'))[0], 0, '/hang never answers');
ok($receiver->wait_for_count(1, qr{^/hang$}, 10), '... but logs the request');
cmp_ok(time - $started, '<', 10, '... and the client can give up');

is($receiver->count, 10, 'count() without a pattern counts every request');
$receiver->stop;

done_testing();
