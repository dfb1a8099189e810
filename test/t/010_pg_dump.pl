# test/t/010_pg_dump.pl: configuration survives pg_dump and restore.
#
# Endpoints (with their secrets) and user-registered event types are user
# configuration: pg_dump must keep them (pg_extension_config_dump), and a
# restore into a fresh database must recreate them exactly, with the
# built-in event types present once, not twice.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('dump');

$node->safe_psql(
    'postgres', q{
    SELECT secret FROM webhook.create_webhook('https://example.com/hook',
        ARRAY['journal_entry.*'], 'a-secret-of-16-chars-at-least',
        description => 'ledger sink', headers => '{"X-Tenant": "acme"}');
    SELECT secret FROM webhook.create_webhook('https://example.com/all');
    SELECT webhook.register_event_type('invoice.paid', 'desc');
});

my %queries = (
    endpoints => 'SELECT id, url, event_types, description, headers, enabled
                  FROM webhook.list_webhooks() ORDER BY id',
    secrets => 'SELECT id, secret FROM webhook.endpoints ORDER BY id',
    event_types => 'SELECT name FROM webhook.event_types ORDER BY 1',
);
my %before = map { $_ => $node->safe_psql('postgres', $queries{$_}) }
  keys %queries;

like($before{secrets}, qr/a-secret-of-16-chars-at-least/, 'secret stored');
like($before{event_types}, qr/^invoice\.paid$/m, 'event type registered');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/postgres.sql';
$node->command_ok([ 'pg_dump', '--no-owner', '-f', $dump, 'postgres' ],
    'pg_dump');
$node->command_ok([ 'createdb', 'restored' ], 'createdb');
$node->command_ok(
    [ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, 'restored' ],
    'restore runs without errors');

foreach my $what (sort keys %queries)
{
    is($node->safe_psql('restored', $queries{$what}),
        $before{$what}, "$what identical after restore");
}

is( $node->safe_psql(
        'restored', 'SELECT count(*) FROM webhook.event_types
                     WHERE name = \'journal_entry.posted\''),
    '1',
    'built-in event types appear once');

$node->stop;
done_testing();
