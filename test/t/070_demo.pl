# test/t/070_demo.pl: the ledger demo (`make demo`) runs end to end.
#
# Runs demo/run --no-build (the demo without the install and build steps,
# as this user) and checks what it reports: every event type of the ledger
# emitted, each endpoint's deliveries, the archive's two failures and its
# retries, the refused and the rolled-back postings, and every signature
# verified by the receiver; then that it stopped what it started. A second
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

# What the receiver printed: one line per request, both signatures checked.
my @lines = $output =~ /^  (accounting|reporting|archive) +(\S+) +([0-9a-f-]{36})  (.) sha256 (.) v1  (.*)$/mg;
my @requests;
push @requests, [ splice(@lines, 0, 6) ] while @lines;
is(scalar @requests, 21, 'the receiver printed 21 requests');
is(scalar(grep { $_->[3] eq "\x{2713}" && $_->[4] eq "\x{2713}" } @requests),
    21, 'every request carried two valid signatures');
my %types = map { $_->[1] => 1 } grep { $_->[0] eq 'accounting' } @requests;
is_deeply(
    [ sort keys %types ],
    [
        qw(account.created account.updated journal_entry.created
          journal_entry.posted journal_entry.reversed period.closed period.reopened)
    ],
    'the accounting endpoint received all seven event types');
is_deeply([ sort map { $_->[1] } grep { $_->[0] eq 'reporting' } @requests ],
    [qw(period.closed period.reopened)], 'the reporting endpoint received only period.*');
my @archive = grep { $_->[0] eq 'archive' } @requests;
is_deeply([ map { $_->[1] } @archive ], [ ('journal_entry.reversed') x 3 ],
    'the archive received journal_entry.reversed three times');
my %archive_ids = map { $_->[2] => 1 } @archive;
is(scalar keys %archive_ids, 1, '... with the same webhook-id');
like($archive[0][5], qr/^500/, '... the first try failed');
like($archive[1][5], qr/^500/, '... the second too');
like($archive[2][5], qr/^200/, '... the third succeeded');

# The summary, from SQL.
like($output, qr/^ accounting \| every event\s+\|\s+16 \|\s+16 \|\s+16 \|\s+0 \|\s+16 \| 32 of 32$/m,
    'summary: accounting got 16 deliveries, no retry');
like($output, qr/^ archive\s+\| journal_entry\.reversed \|\s+1 \|\s+1 \|\s+3 \|\s+2 \|\s+3 \| 6 of 6$/m,
    'summary: archive got 1 delivery after 2 retries');
like($output, qr/^ reporting\s+\| period\.\*\s+\|\s+2 \|\s+2 \|\s+2 \|\s+0 \|\s+2 \| 4 of 4$/m,
    'summary: reporting got 2 deliveries');
like($output,
    qr/^demo: 16 events, 19 deliveries \(19 succeeded\), 2 retries, 42 of 42 signatures verified$/m,
    'summary line');

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
