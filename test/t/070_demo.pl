# test/t/070_demo.pl: the ledger demo (`make demo`) runs end to end.
#
# Runs demo/run --no-build (the demo without the install and build steps,
# as this user) and checks what it reports: every event type of the ledger
# emitted, each endpoint's deliveries, the archive's two failures and its
# retries, the refused and the rolled-back postings, every signature
# verified by the receiver, and each of the two customers' endpoints
# receiving its own events alone while the internal ones receive both;
# then that it stopped what it started. A second
# run with a timeout too short to finish fails with a clear message and
# also cleans up.

use strict;
use warnings;

use Encode qw(decode);
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

# Run demo/run --no-build with the given environment; returns its exit
# status and its output (stdout and stderr, decoded).
sub run_demo
{
    my (%env) = @_;
    local @ENV{ keys %env } = values %env;
    my $output = '';
    my $harness = IPC::Run::start([ './demo/run', '--no-build' ],
        '<', \undef, '>&', \$output,
        IPC::Run::timeout(150));
    $harness->finish;
    return ($harness->result(0), decode('UTF-8', $output));
}

my ($status, $output) = run_demo();
note($output);
is($status, 0, 'demo/run exits 0');

# Every part of the story happened.
like($output, qr/^\s+7 triggers emit 7 event types$/m, 'the ledger wires 7 event types');
like($output,
    qr/ERROR:  journal entry 2 does not balance \(SQLSTATE 23514\)\n\s+DETAIL:  Debits total 950\.00, credits total 590\.00\./,
    'posting an unbalanced entry fails with check_violation and says why');
like($output, qr/posted events after ROLLBACK \| entry 3 is\s*\n-+\+-+\n\s+0 \| draft/,
    'a rolled-back posting records no event');

# What the receiver printed: one line per request (endpoint, the event's
# org, event type, webhook-id, both signatures checked, the answer).
my @lines = $output =~ /^  (accounting|reporting|archive|northwind|contoso) +(\S+) +(\S+) +([0-9a-f-]{36})  (.) sha256 (.) v1  (.*)$/mg;
my @requests;
push @requests, [ splice(@lines, 0, 7) ] while @lines;
is(scalar @requests, 48, 'the receiver printed 48 requests');
is(scalar(grep { $_->[4] eq "\x{2713}" && $_->[5] eq "\x{2713}" } @requests),
    48, 'every request carried two valid signatures');
my %types = map { $_->[2] => 1 } grep { $_->[0] eq 'accounting' } @requests;
is_deeply(
    [ sort keys %types ],
    [
        qw(account.created account.updated journal_entry.created
          journal_entry.posted journal_entry.reversed period.closed period.reopened)
    ],
    'the accounting endpoint received all seven event types');
is_deeply([ sort map { $_->[2] } grep { $_->[0] eq 'reporting' } @requests ],
    [qw(period.closed period.closed period.reopened)],
    'the reporting endpoint received only period.*');
my @archive = grep { $_->[0] eq 'archive' } @requests;
is_deeply([ map { $_->[2] } @archive ], [ ('journal_entry.reversed') x 3 ],
    'the archive received journal_entry.reversed three times');
my %archive_ids = map { $_->[3] => 1 } @archive;
is(scalar keys %archive_ids, 1, '... with the same webhook-id');
like($archive[0][6], qr/^500/, '... the first try failed');
like($archive[1][6], qr/^500/, '... the second too');
like($archive[2][6], qr/^200/, '... the third succeeded');

# Two customers: each one's endpoint received its own events alone; the
# internal endpoints (accounting, reporting) received both customers'.
foreach my $customer ([ 'northwind', 16 ], [ 'contoso', 5 ])
{
    my ($name, $count) = @$customer;
    my @own = grep { $_->[0] eq $name } @requests;
    is(scalar @own, $count, "${name}'s endpoint received $count requests");
    is_deeply([ grep { $_->[1] ne $name } @own ], [], "... all of them events of $name");
    is_deeply([ sort map { $_->[3] } @own ],
        [ sort map { $_->[3] } grep { $_->[0] eq 'accounting' && $_->[1] eq $name } @requests ],
        "... every event of $name, the same webhook-ids as accounting's");
}
my %accounting_orgs = map { $_->[1] => 1 } grep { $_->[0] eq 'accounting' } @requests;
is_deeply([ sort keys %accounting_orgs ], [qw(contoso northwind)],
    'the accounting endpoint received the events of both customers');
my %reporting_orgs = map { $_->[1] => 1 } grep { $_->[0] eq 'reporting' } @requests;
is_deeply([ sort keys %reporting_orgs ], [qw(contoso northwind)],
    '... and so did reporting');

# The summary, from SQL.
like($output, qr/^ accounting \| every event\s+\|\s+21 \|\s+21 \|\s+21 \|\s+0 \|\s+21 \| 42 of 42$/m,
    'summary: accounting got 21 deliveries, no retry');
like($output, qr/^ archive\s+\| journal_entry\.reversed \|\s+1 \|\s+1 \|\s+3 \|\s+2 \|\s+3 \| 6 of 6$/m,
    'summary: archive got 1 delivery after 2 retries');
like($output, qr/^ reporting\s+\| period\.\*\s+\|\s+3 \|\s+3 \|\s+3 \|\s+0 \|\s+3 \| 6 of 6$/m,
    'summary: reporting got 3 deliveries');
like($output, qr/^ northwind\s+\| every event\s+\|\s+16 \|\s+16 \|\s+16 \|\s+0 \|\s+16 \| 32 of 32$/m,
    'summary: northwind got 16 deliveries');
like($output, qr/^ contoso\s+\| every event\s+\|\s+5 \|\s+5 \|\s+5 \|\s+0 \|\s+5 \| 10 of 10$/m,
    'summary: contoso got 5 deliveries');
like($output,
    qr/^demo: 21 events, 46 deliveries \(46 succeeded\), 2 retries, 96 of 96 signatures verified$/m,
    'summary line');
like($output,
    qr/^demo: each customer's endpoint received its own events alone \(contoso 5, northwind 16\); the internal endpoints received events of contoso and northwind$/m,
    'summary: each customer received its own events alone, the internal endpoints both');

# It cleaned up after itself.
my ($tmp) = $output =~ m{data in (\S+)/data,};
ok(defined $tmp, 'the demo said where its server lived');
like($output, qr/^Stopped the server and the receiver; removed \Q$tmp\E\.$/m, 'it says it stopped');
ok(!-e $tmp, 'its temporary directory is gone');

# Bounded time: too short a timeout fails clearly, and still cleans up.
($status, $output) = run_demo(DEMO_TIMEOUT => 2);
isnt($status, 0, 'with DEMO_TIMEOUT=2 the demo fails');
like($output, qr/^demo: the story did not finish within 2 s \(DEMO_TIMEOUT\)$/m,
    '... saying why');
($tmp) = $output =~ m{data in (\S+)/data,};
ok(defined $tmp && !-e $tmp, '... and removes its temporary directory');

done_testing();
