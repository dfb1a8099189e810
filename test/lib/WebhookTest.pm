# test/lib/WebhookTest.pm: helpers shared by the TAP tests in test/t.
#
#   my $node = new_node('main', conf => ["webhook.timeout = '2s'"]);
#   my $receiver = start_receiver();
#   $node->safe_psql('postgres', "... webhook.create_webhook('" . $receiver->url('/ok') . "') ...");
#   ok($receiver->wait_for_count(1, qr{^/ok}), 'delivered');
#   ok(verify_delivery(($receiver->requests(qr{^/ok}))[0], $secret), 'signed');
#
# A node preloads the library, lets the worker deliver to loopback and
# retries every second; the receiver is test/receiver.py on a free port.

package WebhookTest;

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256 hmac_sha256_hex);
use Exporter 'import';
use MIME::Base64 qw(encode_base64 decode_base64);
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(new_node start_receiver standard_signature hex_signature
  verify_delivery create_endpoint wait_until_settled);

# Start a node that preloads webhook_outbox, with CREATE EXTENSION done in
# "postgres" unless no_extension is set.  conf: extra postgresql.conf lines;
# allows_streaming: ready to have a streaming standby (see
# PostgreSQL::Test::Cluster).
sub new_node
{
    my ($name, %opts) = @_;
    my $node = PostgreSQL::Test::Cluster->new($name);
    # UTF-8 whatever the runner's locale: payloads carry non-ASCII text.
    $node->init(extra => [ '--encoding=UTF8', '--locale=C' ],
        allows_streaming => $opts{allows_streaming} // 0);
    $node->append_conf(
        'postgresql.conf', join("\n",
            "shared_preload_libraries = 'webhook_outbox'",
            "webhook.allow_private_networks = on",
            "webhook.retry_schedule = '1s,1s,1s'",
            "max_prepared_transactions = 10",
            @{ $opts{conf} // [] }) . "\n");
    $node->start;
    $node->safe_psql('postgres', 'CREATE EXTENSION webhook_outbox')
      unless $opts{no_extension};
    return $node;
}

# Register an endpoint in "postgres" with webhook.create_webhook and return
# (id, secret).  %args are further arguments as SQL expressions, quoted by
# the caller: create_endpoint($node, $url, event_types => "ARRAY['period.*']").
sub create_endpoint
{
    my ($node, $url, %args) = @_;
    my $more = join('', map { ", $_ => $args{$_}" } sort keys %args);
    my $row = $node->safe_psql('postgres',
        "SELECT id, secret FROM webhook.create_webhook('$url'$more)");
    return split /\|/, $row;
}

# Wait until every event in $dbname (default "postgres") has been
# dispatched and every delivery tried and its outcome recorded: none is
# pending except those parked for a disabled endpoint.  True if that
# happened within the default timeout.
sub wait_until_settled
{
    my ($node, $dbname) = @_;
    return $node->poll_query_until($dbname // 'postgres',
        "SELECT count(*) = 0 FROM webhook.deliveries
          WHERE status = 'pending' AND next_attempt_at < 'infinity'
         HAVING (SELECT undispatched_events FROM webhook.queue_status) = 0");
}

# Start test/receiver.py on a free loopback port; see WebhookTest::Receiver.
# Options: port (default: any free one), tls => [cert file, key file] (serve
# https), script (another server with receiver.py's options, e.g.
# test/servers/broken.py), args (more arguments for it).
sub start_receiver
{
    return WebhookTest::Receiver->start(@_);
}

# The Standard Webhooks signature: "v1," + base64 HMAC-SHA256 of
# "$id.$timestamp.$body", keyed by the base64-decoded part after "whsec_"
# when the secret has that form, else by the secret's bytes.
sub standard_signature
{
    my ($secret, $id, $timestamp, $body) = @_;
    my $key = $secret =~ /^whsec_(.*)$/s ? decode_base64($1) : $secret;
    return 'v1,' . encode_base64(hmac_sha256("$id.$timestamp.$body", $key), '');
}

# The ledger API's signature: "sha256=" + hex HMAC-SHA256 of the body, keyed
# by the secret exactly as stored.
sub hex_signature
{
    my ($secret, $body) = @_;
    return 'sha256=' . hmac_sha256_hex($body, $secret);
}

# True when a request (from $receiver->requests) is signed with $secret:
# X-Webhook-Signature matches, and so does one of the "v1," entries of
# webhook-signature (there are several while a secret is rotated).
sub verify_delivery
{
    my ($request, $secret) = @_;
    my $headers = $request->{headers};
    my $body = $request->{body};
    utf8::encode($body);    # sign the bytes that went over the wire

    return 0
      unless ($headers->{'x-webhook-signature'} // '') eq
      hex_signature($secret, $body);

    my $expected =
      standard_signature($secret, $headers->{'webhook-id'} // '',
        $headers->{'webhook-timestamp'} // '', $body);
    return scalar grep { $_ eq $expected }
      split ' ', $headers->{'webhook-signature'} // '';
}


# A running test/receiver.py; stopped by stop() or when it goes out of scope.
package WebhookTest::Receiver;

use strict;
use warnings;

use File::Basename qw(dirname);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Scalar::Util qw(weaken);
use Test::More;
use Time::HiRes qw(usleep);

my $script = dirname(__FILE__) . '/../receiver.py';

# Every receiver started, held weakly. A receiver a test keeps in a
# file-scoped variable lives until global destruction, where DESTROY may
# find IPC::Run's parts already gone and leave the process running (each
# suite run left one or two behind); END comes before that.
my @started;

END
{
    local ($@, $?);    # do not disturb the test's exit status
    $_->stop for grep { defined } @started;
}

sub start
{
    my ($class, %opts) = @_;
    my $dir = PostgreSQL::Test::Utils::tempdir('receiver');
    my $self = bless {
        port_file => "$dir/port",
        log => "$dir/requests.jsonl",
        stderr => "$dir/stderr",
        scheme => $opts{tls} ? 'https' : 'http',
    }, $class;

    $self->{harness} = IPC::Run::start(
        [
            'python3', $opts{script} // $script,
            '--port' => $opts{port} // 0,
            '--port-file' => $self->{port_file},
            '--log' => $self->{log},
            $opts{tls}
            ? ('--tls-cert' => $opts{tls}[0], '--tls-key' => $opts{tls}[1])
            : (),
            @{ $opts{args} // [] }
        ],
        '<', \undef, '>&', $self->{stderr});

    my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
    until (-s $self->{port_file})
    {
        BAIL_OUT('receiver did not start: ' . slurp_file($self->{stderr}))
          if time > $deadline || !$self->{harness}->pumpable;
        usleep(50_000);
    }
    chomp($self->{port} = slurp_file($self->{port_file}));
    note("receiver listening on port $self->{port}");
    push @started, $self;
    weaken($started[-1]);
    return $self;
}

sub port { return $_[0]->{port}; }

# The URL of $path on this receiver.
sub url
{
    my ($self, $path) = @_;
    return "$self->{scheme}://127.0.0.1:$self->{port}" . ($path // '/');
}

# Every request so far, oldest first, as hashes (method, path, headers with
# lowercased names, body, received_at); only those whose path matches
# $path_regex when given.
sub requests
{
    my ($self, $path_regex) = @_;
    return () unless -e $self->{log};
    my $json = JSON::PP->new->utf8;
    my @requests;
    open(my $fh, '<', $self->{log}) or die "could not open $self->{log}: $!";
    while (my $line = <$fh>)
    {
        last unless $line =~ /\n$/;    # a line still being written
        push @requests, $json->decode($line);
    }
    close($fh);
    return grep { !defined $path_regex || $_->{path} =~ $path_regex }
      @requests;
}

# How many requests (matching $path_regex, if given) have arrived.
sub count
{
    my ($self, $path_regex) = @_;
    return scalar(my @r = $self->requests($path_regex));
}

# Wait until at least $n requests (matching $path_regex, if given) have
# arrived; true if they did within $timeout seconds.
sub wait_for_count
{
    my ($self, $n, $path_regex, $timeout) = @_;
    my $deadline = time + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
    while ($self->count($path_regex) < $n)
    {
        return 0 if time > $deadline;
        usleep(100_000);
    }
    return 1;
}

sub stop
{
    my ($self) = @_;
    my $harness = delete $self->{harness} or return;
    $harness->kill_kill(grace => 5);
    my $stderr = -s $self->{stderr} ? slurp_file($self->{stderr}) : '';
    diag("receiver stderr:\n$stderr") if $stderr ne '';
}

sub DESTROY
{
    my ($self) = @_;
    local ($@, $?);    # do not disturb the test's exit status
    $self->stop;
}

1;
