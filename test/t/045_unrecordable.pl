# test/t/045_unrecordable.pl: an outcome that cannot be recorded is never
# sent again in a loop, and does not hold back the rest of its batch.
#
# A trigger on webhook.attempt_log refuses the attempts of one event. The
# worker's batch of outcomes then fails as a whole; it records the others
# one by one, and the refused one as its last resort without its history
# row: the delivery's state says it succeeded, so it is never sent again,
# not even after a restart. A trigger on webhook.delivery_log then refuses
# even that for another event: that one is kept out of fetches (in memory)
# instead of being re-sent on every pass.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $node = new_node(
    'unrecordable',
    conf => [
        "webhook.retry_schedule = '1s,1s,1s'",
        "webhook.poll_interval = '100ms'",
    ]);
my $receiver = start_receiver();
my ($endpoint) = create_endpoint($node, $receiver->url('/ok'));

$node->safe_psql(
    'postgres', q{
    CREATE TABLE poison (event_id uuid);
    CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM public.poison p WHERE p.event_id = NEW.event_id) THEN
            RAISE EXCEPTION 'refusing to record an attempt of the poison event';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook.attempt_log
        FOR EACH ROW EXECUTE FUNCTION refuse_poison();
});

# One transaction: the poison event among five others, so that their
# outcomes are likely to share a batch.
$node->safe_psql(
    'postgres', q{
    BEGIN;
    SELECT webhook.emit('account.created', jsonb_build_object('n', n))
      FROM generate_series(1, 2) AS n;
    INSERT INTO poison
         SELECT webhook.emit('account.updated', '{"poison": true}') RETURNING event_id;
    SELECT webhook.emit('account.created', jsonb_build_object('n', n))
      FROM generate_series(3, 5) AS n;
    COMMIT;
});
my $poison = $node->safe_psql('postgres', 'SELECT event_id FROM poison');
like($poison, qr/^[0-9a-f-]{36}$/, 'the poison event was emitted');

ok( $node->poll_query_until(
        'postgres', q{
        SELECT count(*) = 5 FROM webhook.deliveries
         WHERE event_type = 'account.created' AND status = 'succeeded'}),
    'the other five deliveries were recorded as succeeded');

# Give a looping worker every chance: 50 passes at the 100 ms poll, and a
# 1 s retry schedule.
usleep(5_000_000);
my @poisoned = grep { $_->{headers}{'webhook-id'} eq $poison } $receiver->requests;
is(scalar(@poisoned), 1, 'the poison event was sent once, not again and again');
my @others = grep { $_->{headers}{'webhook-id'} ne $poison } $receiver->requests;
is(scalar(@others), 5, 'the other five were sent once each: the batch was not re-sent');
is( $node->safe_psql(
        'postgres', "SELECT status FROM webhook.deliveries WHERE event_id = '$poison'"),
    'succeeded',
    'the delivery whose history row was refused is recorded as succeeded');
is( $node->safe_psql(
        'postgres', "SELECT count(*) FROM webhook.attempts WHERE event_id = '$poison'"),
    '0',
    'without its history row');
like(
    slurp_file($node->logfile),
    qr/recorded an attempt of event \Q$poison\E without its history row/,
    'the server log says which attempt lost its history row');

# A restart does not send it again.
$node->restart;
usleep(3_000_000);
@poisoned = grep { $_->{headers}{'webhook-id'} eq $poison } $receiver->requests;
is(scalar(@poisoned), 1, 'after a restart, the poison event is still sent once');

# Now refuse even the delivery's own state, for another event: its outcome
# cannot be recorded at all. It stays pending (nothing is lost) and is kept
# out of fetches rather than sent again on every pass.
$node->safe_psql(
    'postgres', q{
    CREATE TABLE poison_state (event_id uuid);
    CREATE FUNCTION refuse_state() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM public.poison_state p WHERE p.event_id = NEW.event_id)
           AND NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'refusing to record the state of the poison event';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER refuse_state BEFORE UPDATE ON webhook.delivery_log
        FOR EACH ROW EXECUTE FUNCTION refuse_state();
});
my $stuck = $node->safe_psql(
    'postgres', q{
    WITH e AS (SELECT webhook.emit('account.updated', '{"stuck": true}') AS id)
    INSERT INTO poison_state SELECT id FROM e RETURNING event_id});
ok( $node->poll_query_until(
        'postgres', "SELECT count(*) = 1 FROM webhook.deliveries WHERE event_id = '$stuck'"),
    'the stuck event was dispatched');
usleep(5_000_000);
my @stuck = grep { $_->{headers}{'webhook-id'} eq $stuck } $receiver->requests;
is(scalar(@stuck), 1, 'an outcome that cannot be recorded at all is not sent in a loop');
is( $node->safe_psql(
        'postgres', "SELECT status FROM webhook.deliveries WHERE event_id = '$stuck'"),
    'pending',
    'it is still pending, so nothing is lost');
like(
    slurp_file($node->logfile),
    qr/could not record an attempt of event \Q$stuck\E/,
    'the server log says which attempt could not be recorded');

$receiver->stop;
$node->stop;
done_testing();
