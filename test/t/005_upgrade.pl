# test/t/005_upgrade.pl: ALTER EXTENSION webhook_outbox UPDATE takes a 0.1
# installation, with its data and its users' grants, to exactly the schema a
# fresh 0.2 install creates.
#
# One node runs the new library.  Database "postgres" is installed as 0.1
# and filled as a 0.1 user would have: endpoints (one failing, one disabled,
# one with headers and a description), a registered event type, history
# (written into the base tables: the new library's worker idles on the 0.1
# schema, so it cannot make any), events emitted and still undispatched, and
# the grants the README's "Privileges" section describes.  While on 0.1 the
# worker says once that it waits for the update, and sends nothing; emit
# keeps working.  After the update: every row and grant is still there,
# history is not sent again, what was pending is delivered, signed, and the
# application role emits with 0.2's new arguments.  The updated schema's
# catalog is compared with a fresh 0.2 install's in database "fresh", and
# pg_dump of the updated database still dumps the users' grants.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use WebhookTest;

my $node = new_node('upgrade', no_extension => 1,
    conf => ["webhook.poll_interval = '100ms'"]);
my $receiver = start_receiver();

# Run $sql in "postgres" (or $db), as $role if given.
sub sql
{
    my ($sql, %opts) = @_;
    $sql = "SET ROLE $opts{role};\n$sql" if $opts{role};
    return $node->safe_psql($opts{db} // 'postgres', $sql);
}

# The same, but a failure is no reason to stop the test: returns the
# output, or the error.
sub try_sql
{
    my ($sql, %opts) = @_;
    $sql = "SET ROLE $opts{role};\n$sql" if $opts{role};
    my ($ret, $stdout, $stderr) = $node->psql($opts{db} // 'postgres', $sql);
    return $ret == 0 ? $stdout : $stderr;
}

# Run several named queries in one session ($prefix and $suffix around
# them) and return { name => output }.
sub snapshot
{
    my ($queries, $prefix, $suffix) = @_;
    my $script = join("\n",
        $prefix // '',
        (map { "SELECT '\@\@$_->[0]';\n$_->[1];" } @$queries),
        $suffix // '');
    my (%out, $current);
    foreach my $line (split /\n/, sql($script))
    {
        if ($line =~ /^\@\@(.*)$/) { $current = $1; $out{$current} = ''; next; }
        $out{$current} .= "$line\n";
    }
    return \%out;
}

# ---------------------------------------------------------------------------
# a. A 0.1 installation, used as 0.1 users use it
# ---------------------------------------------------------------------------

my $log_offset = -s $node->logfile;
sql(q{CREATE EXTENSION webhook_outbox VERSION '0.1'});
is(sql(q{SELECT extversion FROM pg_extension WHERE extname = 'webhook_outbox'}),
    '0.1', 'installed as 0.1 with the new library');

sql(q{SELECT webhook.register_event_type('invoice.paid', 'An invoice was paid')});
my ($ok_id, $ok_secret) = create_endpoint($node, $receiver->url('/ok'),
    event_types => "ARRAY['account.*', 'journal_entry.*', 'invoice.*']");
# Fails its next request, then succeeds: history already holds its first.
my ($fail_id, $fail_secret) = create_endpoint($node,
    $receiver->url('/fail/1/upgrade'),
    event_types => "ARRAY['journal_entry.reversed']",
    secret => "'a-plain-secret-of-the-0.1-days'");
my ($off_id) = create_endpoint($node, $receiver->url('/off'), enabled => 'false');
my ($custom_id, $custom_secret) = create_endpoint($node, $receiver->url('/custom'),
    event_types => "ARRAY['invoice.*']",
    description => "'invoice sink'",
    headers => q{'{"X-Tenant": "acme", "Authorization": "Bearer t0ken"}'});
my $deleted_id = '0190a000-0000-7000-8000-00000000dead';    # a deleted endpoint

# The grants of the README's "Privileges" section, as 0.1 documents them.
sql(q{
    CREATE ROLE app LOGIN;
    CREATE ROLE reader LOGIN;
    CREATE ROLE ops LOGIN;
    GRANT USAGE ON SCHEMA webhook TO app, reader, ops;
    GRANT EXECUTE ON FUNCTION webhook.emit(text, jsonb) TO app;
    GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts TO reader;
    GRANT EXECUTE ON FUNCTION webhook.list_webhooks() TO ops;
});
# A ledger table whose trigger emits, written to by the application role.
sql(q{
    CREATE TABLE public.accounts (id integer PRIMARY KEY, name text);
    GRANT INSERT ON public.accounts TO app;
    CREATE TRIGGER account_created AFTER INSERT ON public.accounts
        FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created');
});

# History as 0.1's worker would have left it: three dispatched events with
# deliveries that succeeded, failed, are pending a retry, are parked for a
# disabled endpoint, or were cancelled by a delete; and their attempts.
my ($h1, $h2, $h3) = split /\n/, sql(
    'SELECT webhook.uuid_v7() FROM generate_series(1, 3)');
sql(qq{
    BEGIN;
    INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid) VALUES
      ('$h1', 'journal_entry.reversed', '{"entry": 1}', now() - interval '50 min', pg_current_xact_id()),
      ('$h2', 'account.created', '{"account": "4000"}', now() - interval '40 min', pg_current_xact_id()),
      ('$h3', 'invoice.paid', '{"invoice": 7}', now() - interval '30 min', pg_current_xact_id());
    INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts,
            last_status_code, last_error, next_attempt_at, succeeded_at, created_at) VALUES
      ('$h1', '$ok_id', 'journal_entry.reversed', 'succeeded', 1, 200, NULL, NULL,
       now() - interval '50 min' + interval '1 s', now() - interval '50 min'),
      ('$h1', '$fail_id', 'journal_entry.reversed', 'pending', 1, 500, NULL, now(),
       NULL, now() - interval '50 min'),
      ('$h2', '$ok_id', 'account.created', 'failed', 4, 500, NULL, NULL,
       NULL, now() - interval '40 min'),
      ('$h2', '$off_id', 'account.created', 'pending', 0, NULL, NULL, 'infinity',
       NULL, now() - interval '40 min'),
      ('$h2', '$deleted_id', 'account.created', 'cancelled', 1, NULL,
       'endpoint deleted', NULL, NULL, now() - interval '40 min'),
      ('$h3', '$ok_id', 'invoice.paid', 'succeeded', 1, 200, NULL, NULL,
       now() - interval '30 min' + interval '1 s', now() - interval '30 min'),
      ('$h3', '$custom_id', 'invoice.paid', 'succeeded', 2, 200, NULL, NULL,
       now() - interval '30 min' + interval '1 s', now() - interval '30 min');
    INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at,
            duration_ms, status_code, error, response_body, manual)
    SELECT '$h1'::uuid, '$ok_id'::uuid, 1, now() - interval '50 min', 12.5, 200, NULL, 'ok', false
    UNION ALL
    SELECT '$h1', '$fail_id', 1, now() - interval '50 min', 8.25, 500, NULL, 'fail', false
    UNION ALL
    SELECT '$h2', '$ok_id', n, now() - interval '40 min' + n * interval '1 s', 3, 500,
           NULL, 'status 500', false FROM generate_series(1, 4) n
    UNION ALL
    SELECT '$h2', '$deleted_id', 1, now() - interval '40 min', 15000, NULL,
           'Timeout was reached', NULL, false
    UNION ALL
    SELECT '$h3', '$ok_id', 1, now() - interval '30 min', 4, 200, NULL, 'ok', false
    UNION ALL
    SELECT '$h3', '$custom_id', 1, now() - interval '30 min', 4, 200, NULL, 'ok', false
    UNION ALL
    SELECT '$h3', '$custom_id', 2, now() - interval '29 min', 5, 200, NULL, 'ok', true;
    UPDATE webhook.endpoints SET failing_since = now() - interval '50 min',
           last_failure_at = now() - interval '50 min' WHERE id = '$fail_id';
    COMMIT;
});
# A dispatch pass of 0.1: the cursor moves past those events.
sql('UPDATE webhook.dispatch_cursor SET snapshot = pg_current_snapshot()');

# Events emitted while on 0.1, with the new library: the application role
# can, and nothing is dispatched or sent until the update.
my $p1 = sql(q{SELECT webhook.emit('account.created', '{"by": "app before the update"}')},
    role => 'app');
like($p1, qr/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/, 'app emits on 0.1 with the new library');
my $p2 = sql(q{SELECT webhook.emit('journal_entry.posted', '{"entry": 2}')});
my $p3 = sql(q{SELECT webhook.emit('invoice.paid', '{"invoice": 8}')});
sql(q{INSERT INTO public.accounts VALUES (1, 'before the update')}, role => 'app');
my $p4 = sql(q{SELECT id FROM webhook.events WHERE payload->>'name' = 'before the update'});
like($p4, qr/^[0-9a-f-]{36}$/, '... and through webhook.emit_trigger');

# The messages of the server log since the extension was installed (each
# with its DETAIL and HINT lines, never a logged statement) in which the
# worker says that it waits for the schema update.
sub waiting_messages
{
    my @messages;
    foreach my $line (split /\n/, slurp_file($node->logfile, $log_offset))
    {
        if ($line =~ /\[\d+\] .*?(?:LOG|WARNING|NOTICE|INFO):  (?!statement:)/)
        {
            push @messages, $line;
        }
        elsif ($line =~ /\[\d+\] .*?(?:DETAIL|HINT):  / && @messages)
        {
            $messages[-1] .= " $line";
        }
    }
    return grep { /\b0\.1\b/ && /schema|version|ALTER EXTENSION/i } @messages;
}
my $deadline = time + 10;
usleep(100_000) until waiting_messages() || time > $deadline;
sleep 3;    # the worker's chance to misbehave: send, or repeat itself
my @waiting = waiting_messages();
is(scalar @waiting, 1, 'the worker says once, in the log, that it waits for the update')
  or diag("matching log lines:\n" . join("\n", @waiting));
is($receiver->count, 0, 'nothing is sent while the schema is 0.1')
  or diag(join("\n", map { "$_->{path} $_->{headers}{'webhook-id'}" } $receiver->requests));
is(sql('SELECT count(*) FROM webhook.delivery_log'), '7',
    'nothing is dispatched while the schema is 0.1');

# ---------------------------------------------------------------------------
# b, c. Before and after ALTER EXTENSION UPDATE (read in the update's own
# transaction: what the update made of the data, before the worker acts)
# ---------------------------------------------------------------------------

my @data_queries = (
    [ endpoints => 'SELECT id, url, secret, headers, enabled, disabled_reason, event_types,
                           description, disabled_at, created_at, updated_at
                      FROM webhook.endpoints ORDER BY id' ],
    [ events => 'SELECT id, event_type, payload, created_at FROM webhook.events ORDER BY id' ],
    [ deliveries => 'SELECT event_id, endpoint_id, event_type, status, attempts,
                            last_status_code, last_error, next_attempt_at, succeeded_at,
                            created_at
                       FROM webhook.deliveries ORDER BY event_id, endpoint_id' ],
    [ attempts => 'SELECT event_id, endpoint_id, attempt, started_at, duration_ms,
                          status_code, error, response_body, manual
                     FROM webhook.attempts ORDER BY event_id, endpoint_id, attempt' ],
    [ event_types => q{SELECT name, description FROM webhook.event_types
                        WHERE name NOT LIKE 'webhook.%' ORDER BY name} ],
);

# Every privilege on the schema and its relations, functions and types, one
# line each; the owner is "OWNER", whoever that is.
my $acl_query = q{
    WITH owner AS (SELECT extowner AS oid FROM pg_extension WHERE extname = 'webhook_outbox'),
    objects AS (
        SELECT 'schema webhook' AS object, coalesce(n.nspacl, acldefault('n'::"char", n.nspowner)) AS acl
          FROM pg_namespace n WHERE n.nspname = 'webhook'
        UNION ALL
        SELECT 'relation webhook.' || c.relname,
               coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))
          FROM pg_class c
         WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')
        UNION ALL
        SELECT format('function webhook.%s(%s)', p.proname, pg_get_function_identity_arguments(p.oid)),
               coalesce(p.proacl, acldefault('f'::"char", p.proowner))
          FROM pg_proc p WHERE p.pronamespace = 'webhook'::regnamespace
        UNION ALL
        SELECT 'type webhook.' || t.typname, coalesce(t.typacl, acldefault('T'::"char", t.typowner))
          FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
         WHERE t.typnamespace = 'webhook'::regnamespace AND t.typcategory <> 'A'
           AND (t.typrelid = 0 OR c.relkind = 'c')
    )
    SELECT format('%s: %s %s%s (by %s)', o.object,
                  CASE a.grantee WHEN 0 THEN 'PUBLIC' WHEN owner.oid THEN 'OWNER'
                       ELSE pg_get_userbyid(a.grantee) END,
                  a.privilege_type, CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                  CASE a.grantor WHEN owner.oid THEN 'OWNER' ELSE pg_get_userbyid(a.grantor) END)
      FROM objects o CROSS JOIN owner CROSS JOIN LATERAL aclexplode(o.acl) a
     ORDER BY 1
};

# The grants of step a, as ACL lines (emit's, on the emit of $emit_args).
sub user_grants
{
    my ($emit_args) = @_;
    return join("\n", sort(
        "function webhook.emit($emit_args): app EXECUTE (by OWNER)",
        'function webhook.list_webhooks(): ops EXECUTE (by OWNER)',
        'relation webhook.attempts: reader SELECT (by OWNER)',
        'relation webhook.deliveries: reader SELECT (by OWNER)',
        'relation webhook.events: reader SELECT (by OWNER)',
        'schema webhook: app USAGE (by OWNER)',
        'schema webhook: ops USAGE (by OWNER)',
        'schema webhook: reader USAGE (by OWNER)'));
}

# Split ACL lines into the users' grants (to app, reader, ops) and the rest.
sub split_acl
{
    my ($lines) = @_;
    my @all = grep { $_ ne '' } split /\n/, $lines;
    return (join("\n", grep { /: (?:app|reader|ops) / } @all),
        join("\n", grep { !/: (?:app|reader|ops) / } @all));
}

my $before = snapshot([ @data_queries, [ acl => $acl_query ] ]);
my ($before_users, $before_rest) = split_acl($before->{acl});
is($before_users, user_grants('event_type text, payload jsonb'),
    'before: the users\' grants are in place');

my $after = snapshot(
    [
        @data_queries,
        [ acl => $acl_query ],
        [ version => q{SELECT extversion FROM pg_extension WHERE extname = 'webhook_outbox'} ],
    ],
    'BEGIN; ALTER EXTENSION webhook_outbox UPDATE;', 'COMMIT;');
is($after->{version}, "0.2\n", 'ALTER EXTENSION UPDATE takes it to 0.2');

foreach my $what (map { $_->[0] } @data_queries)
{
    is($after->{$what}, $before->{$what}, "$what unchanged by the update");
}

my ($after_users, $after_rest) = split_acl($after->{acl});
is($after_users,
    user_grants('event_type text, payload jsonb, tenant text, ordering_key text, idempotency_key text'),
    'the users\' grants survive the update (emit\'s move to the new emit)');
is(join("\n", grep { /: PUBLIC / } split /\n/, $after->{acl}), '',
    'nothing is granted to PUBLIC after the update');

# The other privileges of the objects that exist before and after, as they
# were.
sub acl_by_object
{
    my %by_object;
    $by_object{ (split /: /, $_)[0] } .= "$_\n" foreach split /\n/, $_[0];
    return \%by_object;
}
my ($acl_before, $acl_after) = (acl_by_object($before_rest), acl_by_object($after_rest));
my @kept = sort grep { exists $acl_after->{$_} } keys %$acl_before;
is(join('', map { $acl_after->{$_} } @kept), join('', map { $acl_before->{$_} } @kept),
    'the other privileges of the objects kept are unchanged');

# The application role, the reader and the operator work as before.
my $u1 = try_sql(q{SELECT webhook.emit('account.created', '{"by": "app after the update"}')},
    role => 'app');
like($u1, qr/^[0-9a-f-]{36}$/, 'app emits after the update');
my $emit_keyed = q{SELECT webhook.emit('account.created', '{"by": "app, tenant t1"}',
                                        tenant => 't1', idempotency_key => 'k')};
my $u2 = try_sql($emit_keyed, role => 'app');
like($u2, qr/^[0-9a-f-]{36}$/, '... and with the new arguments (tenant, idempotency_key)');
is(try_sql($emit_keyed, role => 'app'), $u2, '... the same key again returns the first event');
is(try_sql("SELECT tenant FROM webhook.events WHERE id = '$u2'"), 't1',
    '... of that tenant');
try_sql(q{INSERT INTO public.accounts VALUES (2, 'after the update')}, role => 'app');
my $u3 = sql(q{SELECT id FROM webhook.events WHERE payload->>'name' = 'after the update'});
like($u3, qr/^[0-9a-f-]{36}$/, '... and through webhook.emit_trigger');
is(try_sql('SELECT count(*) FROM webhook.list_webhooks()', role => 'ops'), '4',
    'ops lists the endpoints');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
    'SET ROLE app; SELECT count(*) FROM webhook.list_webhooks()');
isnt($ret, 0, 'app still cannot list endpoints');

# What was pending is delivered, signed; history is not sent again.
my %expected_ok = map { $_ => 1 } ($p1, $p2, $p3, $p4, $u1, $u2, $u3);
ok($receiver->wait_for_count(7, qr{^/ok$}, 30),
    'events emitted before and after the update reach /ok');
ok($receiver->wait_for_count(2, qr{^/fail/1/upgrade$}, 30),
    'the pending retry is tried again, until it succeeds');
ok($receiver->wait_for_count(1, qr{^/custom$}, 30), 'the invoice reaches /custom');
ok( $node->poll_query_until('postgres', qq{
        SELECT status = 'succeeded' AND attempts = 3 FROM webhook.deliveries
         WHERE event_id = '$h1' AND endpoint_id = '$fail_id'}),
    '... and its delivery succeeds at attempt 3');
ok(wait_until_settled($node), 'nothing left pending but the parked delivery');
sleep 1;    # a duplicate's chance to arrive

my @ok = $receiver->requests(qr{^/ok$});
is_deeply([ sort map { $_->{headers}{'webhook-id'} } @ok ], [ sort keys %expected_ok ],
    '/ok received each pending event once, and no event of the history');
is(scalar(grep { verify_delivery($_, $ok_secret) } @ok), scalar @ok, '... each signed');

my @fail = $receiver->requests(qr{^/fail/1/upgrade$});
is_deeply([ map { $_->{headers}{'webhook-id'} } @fail ], [ $h1, $h1 ],
    'the failing endpoint got its pending event, twice (500, then 200)');
is(scalar(grep { verify_delivery($_, $fail_secret) } @fail), 2, '... signed with its secret');
is(sql(qq{SELECT string_agg(attempt || ':' || coalesce(status_code::text, '-'), ' ' ORDER BY attempt)
            FROM webhook.attempts WHERE event_id = '$h1' AND endpoint_id = '$fail_id'}),
    '1:500 2:500 3:200', '... its attempts continue the 0.1 history');

my @custom = $receiver->requests(qr{^/custom$});
is_deeply([ map { $_->{headers}{'webhook-id'} } @custom ], [$p3],
    '/custom received the pending invoice only');
ok(@custom && verify_delivery($custom[0], $custom_secret)
      && ($custom[0]{headers}{'x-tenant'} // '') eq 'acme',
    '... signed, with its own headers');

is($receiver->count(qr{^/off$}), 0, 'the disabled endpoint received nothing');
is(sql(qq{SELECT status, attempts, next_attempt_at FROM webhook.deliveries
           WHERE endpoint_id = '$off_id'}),
    'pending|0|infinity', '... and its delivery is still parked');
is(sql(qq{SELECT count(*) FROM webhook.deliveries
           WHERE event_id IN ('$h1', '$h2', '$h3') AND endpoint_id = '$ok_id'}),
    '3', 'no delivery was added for the history');
my $counts = 'SELECT (SELECT count(*) FROM webhook.events) || \',\' ||
                     (SELECT count(*) FROM webhook.deliveries) || \',\' ||
                     (SELECT count(*) FROM webhook.attempts)';
is(try_sql($counts, role => 'reader'), sql($counts), 'the reader reads the history views, all of it');

# ---------------------------------------------------------------------------
# d. The updated schema is the schema of a fresh 0.2 install
# ---------------------------------------------------------------------------

sql('CREATE DATABASE fresh');
sql('CREATE EXTENSION webhook_outbox', db => 'fresh');
is(sql(q{SELECT extversion FROM pg_extension WHERE extname = 'webhook_outbox'}, db => 'fresh'),
    '0.2', 'a fresh install is 0.2');

# Everything of schema webhook and of the extension that the catalogs
# record, one sorted line per fact.  Names of the owner are "OWNER".
my $fingerprint_query = q{
    WITH ns AS (SELECT 'webhook'::regnamespace::oid AS oid),
    ext AS (SELECT e.* FROM pg_extension e WHERE e.extname = 'webhook_outbox'),
    members AS (
        SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
         WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
           AND d.deptype = 'e'
    ),
    rels AS (SELECT c.* FROM pg_class c, ns WHERE c.relnamespace = ns.oid),
    lines(line) AS (
        SELECT format('extension version=%s schema=%s relocatable=%s',
                      ext.extversion, ext.extnamespace::regnamespace, ext.extrelocatable)
          FROM ext
        UNION ALL
        SELECT format('relation %s kind=%s persistence=%s options=%s rls=%s/%s',
                      c.relname, c.relkind, c.relpersistence, c.reloptions,
                      c.relrowsecurity, c.relforcerowsecurity)
          FROM rels c
        UNION ALL
        SELECT format('column %s.%s %s %s notnull=%s default=%s dropped=%s identity=%s generated=%s collation=%s',
                      c.relname, lpad(a.attnum::text, 3, '0'), a.attname,
                      format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(ad.adbin, ad.adrelid), a.attisdropped, a.attidentity,
                      a.attgenerated, a.attcollation::regcollation)
          FROM rels c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
          LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
         WHERE c.relkind <> 'i'
        UNION ALL
        SELECT format('index %s valid=%s %s', c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid))
          FROM rels c JOIN pg_index i ON i.indexrelid = c.oid
        UNION ALL
        SELECT format('constraint %s.%s %s deferrable=%s', coalesce(r.relname, t.typname),
                      co.conname, pg_get_constraintdef(co.oid), co.condeferrable)
          FROM pg_constraint co CROSS JOIN ns
          LEFT JOIN pg_class r ON r.oid = co.conrelid
          LEFT JOIN pg_type t ON t.oid = co.contypid
         WHERE co.connamespace = ns.oid
        UNION ALL
        SELECT format('view %s %s', c.relname,
                      regexp_replace(pg_get_viewdef(c.oid), '\s+', ' ', 'g'))
          FROM rels c WHERE c.relkind IN ('v', 'm')
        UNION ALL
        SELECT format('rule %s %s', c.relname,
                      regexp_replace(pg_get_ruledef(r.oid), '\s+', ' ', 'g'))
          FROM rels c JOIN pg_rewrite r ON r.ev_class = c.oid WHERE r.rulename <> '_RETURN'
        UNION ALL
        SELECT format('trigger %s %s enabled=%s', c.relname, pg_get_triggerdef(t.oid), t.tgenabled)
          FROM rels c JOIN pg_trigger t ON t.tgrelid = c.oid WHERE NOT t.tgisinternal
        UNION ALL
        SELECT format('policy %s %s cmd=%s permissive=%s roles=%s using=%s check=%s',
                      c.relname, p.polname, p.polcmd, p.polpermissive, p.polroles::regrole[],
                      pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
          FROM rels c JOIN pg_policy p ON p.polrelid = c.oid
        UNION ALL
        SELECT format('function %s(%s) returns %s kind=%s secdef=%s config=%s volatile=%s strict=%s parallel=%s leakproof=%s cost=%s rows=%s language=%s bin=%s src=%s def=%s',
                      p.proname, pg_get_function_identity_arguments(p.oid),
                      pg_get_function_result(p.oid), p.prokind, p.prosecdef, p.proconfig,
                      p.provolatile, p.proisstrict, p.proparallel, p.proleakproof,
                      p.procost, p.prorows, l.lanname, p.probin, md5(p.prosrc),
                      CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_get_functiondef(p.oid)) END)
          FROM pg_proc p CROSS JOIN ns JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = ns.oid
        UNION ALL
        SELECT format('type %s type=%s category=%s relation=%s element=%s base=%s notnull=%s default=%s labels=%s',
                      t.typname, t.typtype, t.typcategory, t.typrelid::regclass,
                      t.typelem::regtype, format_type(t.typbasetype, t.typtypmod),
                      t.typnotnull, t.typdefault,
                      (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid))
          FROM pg_type t CROSS JOIN ns WHERE t.typnamespace = ns.oid
        UNION ALL
        SELECT format('config_dump %s %s', u.cfg::regclass, u.cond)
          FROM ext CROSS JOIN LATERAL unnest(ext.extconfig, ext.extcondition) AS u(cfg, cond)
        UNION ALL
        SELECT format('member %s', pg_describe_object(m.classid, m.objid, m.objsubid))
          FROM members m
        UNION ALL
        SELECT format('comment %s %s', pg_describe_object(d.classoid, d.objoid, d.objsubid),
                      d.description)
          FROM pg_description d JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid
        UNION ALL
        SELECT format('init_privs %s %s %s', pg_describe_object(i.classoid, i.objoid, i.objsubid),
                      i.privtype,
                      (SELECT string_agg(format('%s=%s%s/%s',
                                  CASE a.grantee WHEN 0 THEN 'PUBLIC' WHEN ext.extowner THEN 'OWNER'
                                       ELSE pg_get_userbyid(a.grantee) END,
                                  a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END,
                                  CASE a.grantor WHEN ext.extowner THEN 'OWNER'
                                       ELSE pg_get_userbyid(a.grantor) END),
                                  ' ' ORDER BY a.grantee, a.privilege_type)
                         FROM aclexplode(i.initprivs) a))
          FROM pg_init_privs i CROSS JOIN ext
         WHERE EXISTS (SELECT 1 FROM members m
                        WHERE m.classid = i.classoid AND m.objid = i.objoid)
    )
    SELECT line FROM lines ORDER BY line COLLATE "C"
};

my $updated = sql($fingerprint_query);
my $fresh = sql($fingerprint_query, db => 'fresh');
cmp_ok(scalar(my @lines = split /\n/, $fresh), '>', 100, 'the catalog fingerprint covers the schema');

# The lines only one of them has, for the test's output.
sub difference
{
    my ($left, $right) = @_;
    my %in_right = map { $_ => 1 } split /\n/, $right;
    return join("\n", grep { !$in_right{$_} } split /\n/, $left);
}
is($updated, $fresh, 'the updated schema is the schema of a fresh 0.2 install')
  or diag("only in the updated database:\n" . difference($updated, $fresh)
      . "\nonly in the fresh one:\n" . difference($fresh, $updated));
like($updated, qr/^init_privs /m, '... pg_init_privs included (and identical)');

# Privileges: the same, but for the users' own grants.
my ($fresh_users, $fresh_rest) = split_acl(sql($acl_query, db => 'fresh'));
is($fresh_users, '', 'a fresh install grants nothing to the users\' roles');
is($after_rest, $fresh_rest,
    'privileges of the updated schema are a fresh install\'s plus the users\' grants')
  or diag("only in the updated database:\n" . difference($after_rest, $fresh_rest)
      . "\nonly in the fresh one:\n" . difference($fresh_rest, $after_rest));
is(sql('SELECT name FROM webhook.event_types ORDER BY name COLLATE "C"'),
    join("\n", sort(split(/\n/, sql('SELECT name FROM webhook.event_types', db => 'fresh')),
        'invoice.paid')),
    'the event catalog is a fresh install\'s plus the registered type');

# ---------------------------------------------------------------------------
# e. pg_dump of the updated database dumps the users' grants (grants the
# update recorded as the extension's initial privileges would be left out)
# ---------------------------------------------------------------------------

my $dump_file = PostgreSQL::Test::Utils::tempdir() . '/updated.sql';
$node->command_ok([ 'pg_dump', '-f', $dump_file, 'postgres' ], 'pg_dump of the updated database');
my $dump = slurp_file($dump_file);
my @grants = grep { /^(?:GRANT|REVOKE) / } split /\n/, $dump;
# (pg_dump writes a function's EXECUTE as ALL: it is its only privilege.)
my @expected_grants = (
    [ qr/^GRANT (?:ALL|EXECUTE) ON FUNCTION webhook\.emit\(event_type text, payload jsonb, tenant text, ordering_key text, idempotency_key text\) TO app;$/,
      'the dump grants EXECUTE on the new emit to app' ],
    [ qr/^GRANT (?:ALL|EXECUTE) ON FUNCTION webhook\.list_webhooks\(\) TO ops;$/,
      '... EXECUTE on list_webhooks to ops' ],
    (map { [ qr/^GRANT SELECT ON TABLE webhook\.$_ TO reader;$/, "... SELECT on webhook.$_ to reader" ] }
      qw(events deliveries attempts)),
    [ qr/^GRANT USAGE ON SCHEMA webhook TO app;$/, '... USAGE on the schema to app' ],
);
foreach my $grant (@expected_grants)
{
    ok((grep { $_ =~ $grant->[0] } @grants), $grant->[1])
      or diag("the dump's grants:\n" . join("\n", @grants));
}
is(join("\n", grep { /webhook.* TO PUBLIC;$/ } @grants), '', '... and nothing to PUBLIC');

$node->stop;
$receiver->stop;
done_testing();
