# test/t/050_visibility.pl: commit order is not id order.
#
# Transactions commit in an order unrelated to their transaction ids (and
# to their events' ids and timestamps): a transaction that started first
# and commits last, several long ones committing in reverse order with
# short ones in between, many open at once.  Every committed event is
# delivered exactly once, and a short transaction is not held back by a
# long one still open.  Events emitted in a subtransaction are delivered
# if and only if the subtransaction and its parent commit.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use WebhookTest;

my $node = new_node('visibility', conf => ["webhook.poll_interval = '100ms'"]);
my $receiver = start_receiver();
create_endpoint($node, $receiver->url('/all'));

# Emit one event with payload {"tag": $tag} in $session (or a new one).
sub emit
{
    my ($tag, $session) = @_;
    my $sql = "SELECT webhook.emit('journal_entry.posted', '{\"tag\": \"$tag\"}')";
    return $session ? $session->query_safe($sql) : $node->safe_psql('postgres', $sql);
}

# The tags delivered so far, sorted.
sub delivered_tags
{
    return sort map { $_->{body} =~ /"tag": "([^"]+)"/ ? $1 : '?' } $receiver->requests;
}

# A session with an open transaction that has emitted $tag.
sub open_transaction
{
    my ($tag) = @_;
    my $session = $node->background_psql('postgres');
    $session->query_safe('BEGIN');
    emit($tag, $session);
    return $session;
}

sub commit
{
    my ($session) = @_;
    $session->query_safe('COMMIT');
    $session->quit;
}

# ---------------------------------------------------------------------------
# The first transaction commits last.
# ---------------------------------------------------------------------------

my $a = open_transaction('A');
my $a_xid = $a->query_safe('SELECT pg_current_xact_id()');
my $b = open_transaction('B');
my $b_xid = $b->query_safe('SELECT pg_current_xact_id()');
cmp_ok($a_xid, '<', $b_xid, "A has the lower transaction id ($a_xid < $b_xid)");
commit($b);
ok($receiver->wait_for_count(1), 'B, committed first, is delivered while A is still open');
emit("short$_") foreach 1 .. 20;
ok($receiver->wait_for_count(21), '... and so are 20 short transactions after it');
sleep 1;    # several dispatch passes with A in progress
commit($a);
ok($receiver->wait_for_count(22), 'A, committed last, is delivered');
ok(wait_until_settled($node), 'settled');
is_deeply([ delivered_tags() ], [ sort('A', 'B', map { "short$_" } 1 .. 20) ],
    'every event delivered exactly once');

# ---------------------------------------------------------------------------
# Three long transactions opened in order, committed in reverse, with short
# ones in between; five more open at once, committed in a shuffled order.
# ---------------------------------------------------------------------------

my @long = map { open_transaction("long$_") } 1 .. 3;
emit('between1');
commit($long[2]);
emit('between2');
commit($long[1]);
emit('between3');
commit($long[0]);

my @many = map { open_transaction("many$_") } 1 .. 5;
foreach my $i (3, 0, 4, 1, 2)
{
    commit($many[$i]);
    emit("after_many$i");
}
my @expected = sort(
    'A', 'B', (map { "short$_" } 1 .. 20),
    (map { "long$_" } 1 .. 3),
    (map { "between$_" } 1 .. 3),
    (map { "many$_" } 1 .. 5),
    (map { "after_many$_" } 0 .. 4));
ok($receiver->wait_for_count(scalar @expected), 'interleaved commits all delivered');
ok(wait_until_settled($node), 'settled');
is_deeply([ delivered_tags() ], \@expected, '... each exactly once');

# ---------------------------------------------------------------------------
# Subtransactions
# ---------------------------------------------------------------------------

$node->safe_psql(
    'postgres', q{
    BEGIN;
    SAVEPOINT s1;
    SELECT webhook.emit('journal_entry.posted', '{"tag": "savepoint rolled back"}');
    ROLLBACK TO SAVEPOINT s1;
    SAVEPOINT s2;
    SELECT webhook.emit('journal_entry.posted', '{"tag": "savepoint released"}');
    RELEASE SAVEPOINT s2;
    SELECT webhook.emit('journal_entry.posted', '{"tag": "top level"}');
    COMMIT;
});
# Only a subtransaction wrote: the top-level id is assigned there.
$node->safe_psql(
    'postgres', q{
    BEGIN;
    SAVEPOINT s;
    SELECT webhook.emit('journal_entry.posted', '{"tag": "only in a savepoint"}');
    RELEASE SAVEPOINT s;
    COMMIT;
});
# A PL/pgSQL exception block is a subtransaction too.
$node->safe_psql(
    'postgres', q{
    DO $$
    BEGIN
        BEGIN
            PERFORM webhook.emit('journal_entry.posted', '{"tag": "exception block"}');
            RAISE division_by_zero;
        EXCEPTION WHEN division_by_zero THEN
            NULL;
        END;
        PERFORM webhook.emit('journal_entry.posted', '{"tag": "after exception block"}');
    END
    $$;
});
# Rolled back as a whole, the released savepoint goes too.
$node->safe_psql(
    'postgres', q{
    BEGIN;
    SAVEPOINT s;
    SELECT webhook.emit('journal_entry.posted', '{"tag": "released, then rolled back"}');
    RELEASE SAVEPOINT s;
    ROLLBACK;
});
emit('marker');
push @expected, 'savepoint released', 'top level', 'only in a savepoint',
  'after exception block', 'marker';
@expected = sort @expected;
ok($receiver->wait_for_count(scalar @expected), 'subtransaction events delivered');
ok(wait_until_settled($node), 'settled');
is_deeply([ delivered_tags() ], \@expected,
    'events of rolled-back subtransactions (and of a rolled-back parent) are never delivered');
is( $node->safe_psql('postgres', 'SELECT count(*) FROM webhook.events'),
    scalar @expected, '... nor recorded');

$node->stop;
$receiver->stop;
done_testing();
