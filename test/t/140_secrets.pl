# test/t/140_secrets.pl: secrets and credentials stay out of sight.
#
# Endpoints are created with known secrets, credential-carrying headers
# (Authorization, X-Api-Key, ...) and a password in a URL; deliveries
# succeed, fail with a status, a refused connection and a timeout; a secret
# is rotated; invalid calls raise errors. Then none of those values appears
# in the server log (every message down to DEBUG1, with DETAIL, HINT and
# CONTEXT), in any error a client saw, in pg_stat_activity (sampled while
# deliveries are in flight) or in the recorded attempts. list_webhooks and
# get_webhook mask the values of credential-carrying headers, and reading
# them back into update_webhook keeps the real values on the wire.
#
# PostgreSQL itself logs the text of statements as log_statement and
# log_min_error_statement say, whatever they contain; they are turned off
# here, as the README advises for servers whose statements carry secrets.

use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $node = new_node(
    'secrets',
    conf => [
        "webhook.retry_schedule = '1s,1s'",
        "webhook.poll_interval = '100ms'",
        "webhook.timeout = '1s'",
        "log_statement = none",
        "log_min_error_statement = panic",
        "log_min_messages = debug1",
        "log_error_verbosity = verbose",
    ]);
my $receiver = start_receiver();
my $port = $receiver->port;
my $closed = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
    Listen => 1) or die "socket: $!";
my $closed_port = $closed->sockport;
close($closed);

my %secret = (
    ok => 'sekrit-ok-7c1f0e2a9b',
    failing => 'sekrit-failing-55d0c3e1',
    refused => 'whsec_c2VrcmV0LXJlZnVzZWQtYnl0ZXMtMTIzNDU2Nzg=',
    hanging => 'sekrit-hanging-0a9f3b7d',
);
my %credential = (
    authorization => 'Bearer tok-3f9a1c77e0d4',
    api_key => 'apikey-8e2b4d6f1a3c',
    session => 'sess-token-5b7d9f1e',
    url_password => 'urlpass-c4e6a8b0',
);
my $headers = qq{'{"Authorization": "$credential{authorization}",
                   "X-Api-Key": "$credential{api_key}",
                   "X-Session-Token": "$credential{session}",
                   "X-Tenant": "acme"}'};

my %id;
($id{ok}) = create_endpoint($node, $receiver->url('/ok'),
    secret => "'$secret{ok}'", headers => $headers);
($id{failing}) = create_endpoint($node, $receiver->url('/status/500'),
    secret => "'$secret{failing}'", headers => $headers);
($id{refused}) = create_endpoint($node, "http://127.0.0.1:$closed_port/refused",
    secret => "'$secret{refused}'", headers => $headers);
($id{hanging}) = create_endpoint($node, $receiver->url('/hang'),
    secret => "'$secret{hanging}'", headers => $headers);
my $generated;
($id{generated}, $generated) = create_endpoint($node,
    "http://webhook:$credential{url_password}\@127.0.0.1:$port/userinfo");
$secret{generated} = $generated;
like($generated, qr/^whsec_/, 'a secret was generated');

# Errors from invalid calls: none may echo a secret or a credential.
my @client_errors;
foreach my $call (
    "webhook.create_webhook('http://127.0.0.1/x', secret => 'long-$secret{ok}'::text || repeat('x', 300))",
    "webhook.create_webhook('http://127.0.0.1/x', secret => 'tiny')",
    "webhook.create_webhook('http://webhook:$credential{url_password}\@exa mple.com/')",
    "webhook.create_webhook('ftp://webhook:$credential{url_password}\@example.com/')",
    "webhook.create_webhook('http://127.0.0.1/x', headers => '{\"Authorization\": \"$credential{authorization}\\r\\nX-Evil: 1\"}')",
    "webhook.create_webhook('http://127.0.0.1/x', headers => '{\"Authorization\": \"$credential{authorization}\", \"Host\": \"x\"}')",
    "webhook.create_webhook('http://127.0.0.1/x', headers => '{\"Authorization\": [\"$credential{authorization}\"]}')",
    "webhook.update_webhook('$id{ok}', url => 'gopher://webhook:$credential{url_password}\@example.com/')",
    "webhook.rotate_secret('$id{ok}', grace => '-1 hour')")
{
    my ($rc, $stdout, $stderr) = $node->psql('postgres', "SELECT $call");
    isnt($rc, 0, "invalid call fails: " . substr($call, 0, 60));
    push @client_errors, $stderr;
}

# Deliveries: one succeeds, the others fail and are retried.
my $event = $node->safe_psql('postgres',
    q{SELECT webhook.emit('journal_entry.posted', '{"entry": 1}')});

# While they run, sample what every session shows in pg_stat_activity.
my @activity;
my $settled = "SELECT count(*) FILTER (WHERE status <> 'pending') = 5
                 FROM webhook.deliveries WHERE event_id = '$event'";
my $deadline = time + 60;
while (time < $deadline)
{
    push @activity, $node->safe_psql('postgres',
        q{SELECT concat_ws(' ', backend_type, application_name, state, wait_event, query)
            FROM pg_stat_activity WHERE pid <> pg_backend_pid()});
    last if $node->safe_psql('postgres', $settled) eq 't';
    usleep(100_000);
}
ok($node->safe_psql('postgres', $settled) eq 't', 'all deliveries settled');
ok((grep { /webhook_outbox worker/ } @activity), 'the worker was sampled');
ok((grep { /delivering: [1-9]/ } @activity), '... while deliveries were in flight');

is( $node->safe_psql(
        'postgres',
        "SELECT string_agg((e.url ~ 'userinfo' OR d.status = 'succeeded' AND e.id = '$id{ok}'
                            OR d.status = 'failed' AND e.id <> '$id{ok}')::text, ',')
           FROM webhook.deliveries d JOIN webhook.endpoints e ON e.id = d.endpoint_id
          WHERE d.event_id = '$event'"),
    'true,true,true,true,true',
    'the delivery to /ok succeeded, the failing ones failed');

# What went over the wire is real: the credentials, and signatures that
# verify with the secret.
my ($wire) = $receiver->requests(qr{^/ok$});
is($wire->{headers}{authorization}, $credential{authorization}, 'Authorization sent as registered');
is($wire->{headers}{'x-api-key'}, $credential{api_key}, 'X-Api-Key sent as registered');
ok(verify_delivery($wire, $secret{ok}), 'signed with the secret');
my ($userinfo) = $receiver->requests(qr{^/userinfo$});
ok($userinfo, 'the URL with a password was delivered to');

# A rotation returns the new secret once; it too must stay out of sight.
$secret{rotated} = $node->safe_psql('postgres',
    "SELECT webhook.rotate_secret('$id{ok}', grace => '1 hour')");
like($secret{rotated}, qr/^whsec_/, 'secret rotated');
my $after_rotation = $node->safe_psql('postgres',
    q{SELECT webhook.emit('journal_entry.posted', '{"entry": 2}')});
ok( $node->poll_query_until(
        'postgres',
        "SELECT status = 'succeeded' FROM webhook.deliveries
          WHERE event_id = '$after_rotation' AND endpoint_id = '$id{ok}'"),
    'delivered after the rotation');

# ---------------------------------------------------------------------------
# Masking in list_webhooks and get_webhook
# ---------------------------------------------------------------------------

# Every value is masked but those of a few standard headers that never
# carry a credential (Accept and its kin, Cache-Control, Content-Language).
my $masked = '{"X-Tenant": "********", "X-Api-Key": "********", "Authorization": "********", "X-Session-Token": "********"}';
is($node->safe_psql('postgres', "SELECT headers FROM webhook.get_webhook('$id{ok}')"),
    $masked, 'get_webhook masks the values of custom headers');
is( $node->safe_psql(
        'postgres',
        "SELECT count(*) FROM webhook.list_webhooks() WHERE headers::text = '$masked'"),
    4, 'list_webhooks masks them too');

# Reading the headers back and passing them to update_webhook, with one
# more added, must not replace the credentials with the mask.
$node->safe_psql(
    'postgres', qq{
    SELECT webhook.update_webhook('$id{ok}',
             headers => (SELECT headers || '{"X-Region": "eu"}'
                           FROM webhook.get_webhook('$id{ok}')))});
my $after_update = $node->safe_psql('postgres',
    q{SELECT webhook.emit('journal_entry.posted', '{"entry": 3}')});
ok($receiver->wait_for_count(3, qr{^/ok$}), 'delivered after the update');
my $last = ($receiver->requests(qr{^/ok$}))[-1];
is( join('|', map { $last->{headers}{$_} // 'missing' }
          qw(authorization x-api-key x-session-token x-region)),
    "$credential{authorization}|$credential{api_key}|$credential{session}|eu",
    'the real credentials are still sent after a masked read-back');

# ---------------------------------------------------------------------------
# Nowhere to be seen
# ---------------------------------------------------------------------------

my %hidden = (
    (map { ("secret $_" => $secret{$_}) } keys %secret),
    (map { ("credential $_" => $credential{$_}) } keys %credential));

# webhook.proxy may carry a password: only superusers (and members of
# pg_read_all_settings) may read it.
$node->safe_psql('postgres',
    "ALTER SYSTEM SET webhook.proxy = 'http://user:proxy-pass-9d1e\@127.0.0.1:3128'");
$node->reload;
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
my ($rc, $shown, $refusal) = $node->psql('postgres', 'SHOW webhook.proxy',
    extra_params => [ '-U', 'app' ]);
like($refusal, qr/must be superuser or have privileges of pg_read_all_settings to examine "webhook.proxy"/,
    'an ordinary role cannot SHOW webhook.proxy');
is( $node->safe_psql(
        'postgres', q{SELECT count(*) FROM pg_settings WHERE name = 'webhook.proxy'},
        extra_params => [ '-U', 'app' ]),
    0,
    '... nor find it in pg_settings');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET webhook.proxy');
$node->reload;

my $recorded = $node->safe_psql(
    'postgres', q{
    SELECT string_agg(concat_ws(' ', error, response_body), E'\n') FROM webhook.attempts});
my $deliveries = $node->safe_psql('postgres',
    q{SELECT string_agg(concat_ws(' ', last_error, status), E'\n') FROM webhook.deliveries});
my $listed = $node->safe_psql('postgres',
    q{SELECT string_agg(concat_ws(' ', headers, description), E'\n') FROM webhook.list_webhooks()});
$node->stop;    # the log is complete once the server is down
my $log = slurp_file($node->logfile);
like($log, qr/DEBUG:/, 'the server log holds messages down to DEBUG1');
like($log, qr/ERROR: .*invalid webhook header name "Host"/,
    'the log holds the errors of the invalid calls');

foreach my $what (sort keys %hidden)
{
    my $value = $hidden{$what};
    unlike($log, qr/\Q$value\E/, "$what is not in the server log");
    unlike(join("\n", @client_errors), qr/\Q$value\E/, "$what is not in any error a client saw");
    unlike(join("\n", @activity), qr/\Q$value\E/, "$what is not in pg_stat_activity");
    unlike("$recorded\n$deliveries", qr/\Q$value\E/, "$what is not in the recorded attempts");
    unlike($listed, qr/\Q$value\E/, "$what is not in list_webhooks' headers")
      unless $what eq 'credential url_password';
}
like(join("\n", @client_errors), qr{http://webhook:\*\*\*\*\*\*\*\*\@exa mple\.com/},
    'a URL in an error shows ******** for its password');

$receiver->stop;
done_testing();
