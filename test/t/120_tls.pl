# test/t/120_tls.pl: https deliveries verify the receiver's certificate.
#
# A receiver whose certificate comes from a CA the system does not trust is
# not delivered to: the attempt fails with the TLS error. Trusting that CA
# with webhook.ca_file makes deliveries succeed (also a manual retry of the
# one that failed); the host name is still checked against the
# certificate; a ca_file that cannot be read is a clear error. The CA and
# the certificate (subjectAltName IP:127.0.0.1) are made with openssl here.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $dir = PostgreSQL::Test::Utils::tempdir('tls');

# Run openssl; fail the test if it fails.
sub openssl
{
    my ($stdout, $stderr) = run_command([ 'openssl', @_ ]);
    BAIL_OUT("openssl @_[0..1] failed: $stderr") if $? != 0;
}

my @key = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');
openssl('req', '-x509', @key, '-days', '2',
    '-subj', '/CN=webhook_outbox test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout', "$dir/ca.key", '-out', "$dir/ca.crt");
openssl('req', @key, '-subj', '/CN=127.0.0.1',
    '-keyout', "$dir/server.key", '-out', "$dir/server.csr");
open(my $ext, '>', "$dir/server.ext") or die $!;
print $ext "subjectAltName = IP:127.0.0.1\n",
  "basicConstraints = CA:FALSE\n",
  "keyUsage = critical, digitalSignature\n",
  "extendedKeyUsage = serverAuth\n";
close($ext);
openssl('x509', '-req', '-in', "$dir/server.csr", '-days', '2',
    '-CA', "$dir/ca.crt", '-CAkey', "$dir/ca.key", '-CAcreateserial',
    '-extfile', "$dir/server.ext", '-out', "$dir/server.crt");
ok(-s "$dir/server.crt", 'test CA and server certificate made');

my $node = new_node(
    'tls',
    conf => [
        "webhook.retry_schedule = '1s'",    # two attempts
        "webhook.poll_interval = '100ms'",
        "webhook.timeout = '5s'",
    ]);
my $receiver = start_receiver(tls => [ "$dir/server.crt", "$dir/server.key" ]);
like($receiver->url('/x'), qr{^https://127\.0\.0\.1:\d+/x$}, 'the receiver serves https');

# Emit an event for endpoint $id and wait until its delivery settles;
# returns "status|attempts|last_status_code|last_error" and the event id.
sub deliver
{
    my ($event_type) = @_;
    my $event = $node->safe_psql('postgres',
        "SELECT webhook.emit('$event_type', '{\"tls\": true}')");
    $node->poll_query_until(
        'postgres',
        "SELECT count(*) = 1 AND bool_and(status <> 'pending')
           FROM webhook.deliveries WHERE event_id = '$event'")
      or diag("delivery of $event_type did not settle");
    return (
        $node->safe_psql(
            'postgres',
            "SELECT status, attempts, last_status_code, last_error
               FROM webhook.deliveries WHERE event_id = '$event'"),
        $event);
}

my ($id, $secret) = create_endpoint($node, $receiver->url('/tls'),
    event_types => "ARRAY['account.created', 'period.closed']");
my ($by_name) = create_endpoint($node,
    'https://localhost:' . $receiver->port . '/by-name',
    event_types => "ARRAY['account.updated']");

# Not trusted: the system's CAs do not include ours.
my ($untrusted, $failed_event) = deliver('account.created');
like($untrusted,
    qr/^failed\|2\|\|SSL peer certificate or SSH remote key was not OK: SSL certificate problem: (unable to get local issuer certificate|self[- ]signed certificate in certificate chain)$/,
    'an untrusted certificate fails the attempt with the TLS error, twice');
is($receiver->count, 0, 'nothing was sent over the untrusted connection');

# A ca_file that cannot be read.
$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.ca_file = '$dir/no-such-file.pem'");
$node->reload;
my ($unreadable) = deliver('period.closed');
like($unreadable,
    qr/^failed\|2\|\|Problem with the SSL CA cert \(path\? access rights\?\): error setting certificate (verify locations|file): .*no-such-file\.pem/,
    'an unreadable webhook.ca_file is a clear error');

# Trusted through webhook.ca_file.
$node->safe_psql('postgres', "ALTER SYSTEM SET webhook.ca_file = '$dir/ca.crt'");
$node->reload;
my ($trusted) = deliver('account.created');
# (a second attempt if the first came before the worker read the reload)
like($trusted, qr/^succeeded\|[12]\|200\|$/,
    'with webhook.ca_file trusting the CA, the delivery succeeds');
my ($request) = $receiver->requests(qr{^/tls$});
ok(verify_delivery($request, $secret), '... and arrives signed');

$node->safe_psql('postgres',
    "SELECT webhook.retry_delivery('$failed_event', '$id')");
ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'succeeded' FROM webhook.deliveries
          WHERE event_id = '$failed_event' AND endpoint_id = '$id'"),
    'the delivery that failed succeeds when retried by hand');

# The host name must match the certificate (it names IP 127.0.0.1 only).
my ($mismatch) = deliver('account.updated');
like($mismatch,
    qr/^failed\|2\|\|SSL peer certificate or SSH remote key was not OK: SSL: no alternative certificate subject name matches target host name 'localhost'$/,
    'a certificate for another name fails, even from a trusted CA');
is($receiver->count(qr{^/by-name}), 0, '... and nothing was sent');

$receiver->stop;
$node->stop;
done_testing();
