# test/t/220_standby.pl: durable before delivered; standbys and failover.
#
# - An emitter with synchronous_commit = off: once its event has arrived,
#   a crash cannot take the event back (the worker flushed its commit
#   before sending).
# - A hot standby with the library preloaded runs no worker, and emit
#   there fails as any write does.
# - With synchronous_standby_names set and the standby down, an event whose
#   transaction committed with synchronous_commit = local is not delivered
#   until the standby is back and has it.
# - Promotion with a backlog in flight: the new primary starts delivering
#   without a restart, and every event goes out.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WebhookTest;

my $receiver = start_receiver();

# ---------------------------------------------------------------------------
# synchronous_commit = off: delivered means durable
# ---------------------------------------------------------------------------

# The WAL writer flushes an asynchronous commit only every 10 s here: a
# crash within that time loses it, unless the worker flushed it.
my $single = new_node('single', conf => [ "wal_writer_delay = '10s'", "wal_writer_flush_after = 0" ]);
create_endpoint($single, $receiver->url('/single'));
foreach my $n (1 .. 3)
{
    my $id = $single->safe_psql('postgres',
        "SET synchronous_commit = off; SELECT webhook.emit('account.created', '{\"n\": $n}')");
    ok($receiver->wait_for_count($n, qr{^/single}, 10), "async commit $n: delivered");
    $single->stop('immediate');
    $single->start;
    is($single->safe_psql('postgres', "SELECT count(*) FROM webhook.events WHERE id = '$id'"),
        '1', "async commit $n: after a crash just after its delivery, the event is still there");
}
$single->stop;

# ---------------------------------------------------------------------------
# A primary and its hot standby
# ---------------------------------------------------------------------------

my $primary = new_node('primary', allows_streaming => 1,
    conf => [ "webhook.poll_interval = '200ms'" ]);
create_endpoint($primary, $receiver->url('/primary'), event_types => "ARRAY['account.*']");
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

$primary->safe_psql('postgres',
    "SELECT webhook.emit('account.created', jsonb_build_object('n', n)) FROM generate_series(1, 5) n");
ok($receiver->wait_for_count(5, qr{^/primary}), 'the primary delivers');
$primary->wait_for_catchup($standby);
sleep 2;
is( $standby->safe_psql('postgres',
        q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'webhook_outbox%'}),
    '0', 'the standby runs no launcher and no worker');
is($receiver->count(qr{^/primary}), 5, 'nothing was sent twice from the standby');
my ($rc, $out, $err) = $standby->psql('postgres', q{SELECT webhook.emit('account.created', '{}')});
isnt($rc, 0, 'emit on the standby fails');
like($err, qr/read-only transaction/, '... as any write does');

# ---------------------------------------------------------------------------
# A synchronous standby: not delivered before the standby has it
# ---------------------------------------------------------------------------

$primary->safe_psql('postgres', q{ALTER SYSTEM SET synchronous_standby_names = 'standby'});
$primary->reload;
$primary->poll_query_until('postgres',
    q{SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'standby'})
  or die 'the standby did not become synchronous';
$standby->stop;
my $local = $primary->safe_psql('postgres',
    q{SET synchronous_commit = local; SELECT webhook.emit('account.created', '{"n": "local"}')});
like($local, qr/^[0-9a-f-]{36}$/, 'with the standby down, a synchronous_commit = local emit commits');
sleep 3;
is(scalar(grep { $_->{headers}{'webhook-id'} eq $local } $receiver->requests(qr{^/primary})),
    0, '... but is not delivered while the standby has not confirmed it');
$standby->start;
ok($receiver->wait_for_count(6, qr{^/primary}, 30), 'once the standby is back, it is delivered');
is(scalar(grep { $_->{headers}{'webhook-id'} eq $local } $receiver->requests(qr{^/primary})),
    1, '... that very event, once');
$primary->safe_psql('postgres', q{ALTER SYSTEM RESET synchronous_standby_names});
$primary->reload;

# ---------------------------------------------------------------------------
# Failover with a backlog in flight
# ---------------------------------------------------------------------------

# A slow receiver: the primary dies with requests in flight and a backlog.
my ($failover) = create_endpoint($primary, $receiver->url('/slow/1000/failover'),
    event_types => "ARRAY['period.*']");
my @ids = split /\n/, $primary->safe_psql('postgres',
    "SELECT webhook.emit('period.closed', jsonb_build_object('n', n)) FROM generate_series(1, 40) n");
is(scalar @ids, 40, '40 events emitted on the primary');
$primary->wait_for_catchup($standby);
ok($receiver->wait_for_count(3, qr{^/slow/1000/failover}), 'some are under way');
$primary->stop('immediate');
my $promoted_at = time;
$standby->promote;
ok($standby->poll_query_until('postgres',
        q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'webhook_outbox worker'}),
    'after promotion, the new primary runs a worker, without a restart');
note(sprintf('the worker ran %.1f s after promotion', time - $promoted_at));
ok($standby->poll_query_until('postgres',
        "SELECT count(*) = 40 FROM webhook.deliveries
          WHERE endpoint_id = '$failover' AND status = 'succeeded'"),
    'every event of the backlog is recorded as delivered on the new primary');
my %arrived = map { $_->{headers}{'webhook-id'} => 1 } $receiver->requests(qr{^/slow/1000/failover});
is(scalar(grep { $arrived{$_} } @ids), 40, 'the receiver got every one of them');
my $requests = $receiver->count(qr{^/slow/1000/failover});
cmp_ok($requests - 40, '<=', 64, "duplicates only around the failover ($requests requests for 40 events)");

$standby->stop;
$receiver->stop;
done_testing();
