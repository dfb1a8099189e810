-- demo/story.sql: the ledger demo's story, run by demo/run with psql.
--
-- Variables: receiver (the receiver's base URL) and secrets_file (where to
-- write each endpoint's secret and tenant for the receiver). Expects
-- demo/ledger.sql loaded into an empty database. After each step it waits
-- until the worker has delivered everything, so the receiver's lines appear
-- under the step that caused them.
--
-- Two customers (orgs) share the ledger: northwind, whose story this
-- mostly is, and contoso. Each registers an endpoint of its own (its
-- tenant) and receives its own events alone; the internal systems
-- (accounting, reporting, the archive: endpoints without a tenant) receive
-- both customers' events.

\set ON_ERROR_STOP 1
\set QUIET 1
\set SHOW_CONTEXT never
\pset footer off
\pset null '-'

-- ---------------------------------------------------------------------------
-- Helpers of the demo (temporary: they vanish with this session)
-- ---------------------------------------------------------------------------

-- Waits until the worker has turned every committed event into deliveries
-- and none of them is pending any more (retries included); gives up after
-- timeout seconds.
CREATE PROCEDURE pg_temp.settle(timeout_s integer DEFAULT 60)
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
BEGIN
    LOOP
        EXIT WHEN (SELECT undispatched_events = 0 AND pending_due = 0 AND pending_scheduled = 0
                     FROM webhook.queue_status);
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'demo: deliveries did not settle within % seconds', timeout_s
                USING DETAIL = (SELECT format('%s undispatched events, %s pending deliveries due, %s scheduled.',
                                              undispatched_events, pending_due, pending_scheduled)
                                  FROM webhook.queue_status);
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

-- Runs a statement that must fail with the given SQLSTATE and returns the
-- error as psql prints it; any other outcome stops the demo.
CREATE FUNCTION pg_temp.refused(statement text, sqlstate text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state   text;
    v_message text;
    v_detail  text;
BEGIN
    BEGIN
        EXECUTE statement;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        IF v_state <> refused.sqlstate THEN
            RAISE;
        END IF;
        RETURN format('ERROR:  %s (SQLSTATE %s)', v_message, v_state) ||
               CASE WHEN v_detail <> '' THEN E'\n   DETAIL:  ' || v_detail ELSE '' END;
    END;
    RAISE EXCEPTION 'demo: "%" succeeded; it should have failed with %', statement, sqlstate;
END
$$;

-- Stops the demo if a journal_entry.posted event exists for the entry.
CREATE PROCEDURE pg_temp.expect_no_posting(entry_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook.events e
                WHERE e.event_type = 'journal_entry.posted'
                  AND (e.payload ->> 'entry_id')::bigint = expect_no_posting.entry_id) THEN
        RAISE EXCEPTION 'demo: entry % was not posted, yet journal_entry.posted was recorded', entry_id;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
\echo
\echo '== 1. Two customers of the ledger, northwind and contoso, each subscribe to'
\echo '   their own events (an endpoint of their tenant); three internal systems'
\echo '   (no tenant) subscribe to both customers'' events: accounting to every'
\echo '   event; reporting only to period.*; the archive only to'
\echo '   journal_entry.reversed, and it is down: it will fail twice, then recover.'
\echo '   The extension generates whsec_ secrets; the archive brings its own.'
\echo '   The receiver prints: endpoint, the event''s org (its tenant), event type,'
\echo '   webhook-id, both signatures checked, its answer.'
-- ---------------------------------------------------------------------------

SELECT id AS northwind_id, secret AS northwind_secret
  FROM webhook.create_webhook(:'receiver' || '/northwind',
                              tenant => 'northwind',
                              description => 'northwind') \gset
SELECT id AS contoso_id, secret AS contoso_secret
  FROM webhook.create_webhook(:'receiver' || '/contoso',
                              tenant => 'contoso',
                              description => 'contoso') \gset
SELECT id AS accounting_id, secret AS accounting_secret
  FROM webhook.create_webhook(:'receiver' || '/accounting',
                              description => 'accounting') \gset
SELECT id AS reporting_id, secret AS reporting_secret
  FROM webhook.create_webhook(:'receiver' || '/reporting',
                              event_types => '{period.*}',
                              description => 'reporting') \gset
SELECT id AS archive_id, secret AS archive_secret
  FROM webhook.create_webhook(:'receiver' || '/archive',
                              event_types => '{journal_entry.reversed}',
                              secret => 'archive-' || replace(gen_random_uuid()::text, '-', ''),
                              description => 'archive') \gset

SELECT description AS endpoint, coalesce(tenant, '(internal)') AS tenant, url,
       coalesce(array_to_string(event_types, ', '), 'every event') AS events
  FROM webhook.list_webhooks()
 ORDER BY created_at;

-- The receiver checks every signature with the endpoint's secret, and that
-- an endpoint of a tenant receives events of its org alone.
\pset tuples_only on
\pset format unaligned
SELECT jsonb_build_object(
           '/northwind',  jsonb_build_object('name', 'northwind',  'secret', :'northwind_secret',
                                             'tenant', 'northwind'),
           '/contoso',    jsonb_build_object('name', 'contoso',    'secret', :'contoso_secret',
                                             'tenant', 'contoso'),
           '/accounting', jsonb_build_object('name', 'accounting', 'secret', :'accounting_secret'),
           '/reporting',  jsonb_build_object('name', 'reporting',  'secret', :'reporting_secret'),
           '/archive',    jsonb_build_object('name', 'archive',    'secret', :'archive_secret'))
\g :secrets_file
\pset tuples_only off
\pset format aligned
\unset northwind_secret
\unset contoso_secret
\unset accounting_secret
\unset reporting_secret
\unset archive_secret

-- ---------------------------------------------------------------------------
\echo
\echo '== 2. A chart of accounts for each customer: five account.created events'
\echo '      of northwind, two of contoso'
-- ---------------------------------------------------------------------------

INSERT INTO ledger.accounts (org, code, name, type) VALUES
    ('northwind', '1000', 'Cash at bank',        'asset'),
    ('northwind', '1200', 'Accounts receivable', 'asset'),
    ('northwind', '4000', 'Revenue',             'revenue'),
    ('northwind', '6100', 'Rent',                'expense'),
    ('northwind', '6200', 'Office supplies',     'expense');
CALL pg_temp.settle();
INSERT INTO ledger.accounts (org, code, name, type) VALUES
    ('contoso', '1000', 'Bank',  'asset'),
    ('contoso', '4000', 'Sales', 'revenue');
CALL pg_temp.settle();

\echo
\echo '== 3. A northwind account renamed: account.updated'
UPDATE ledger.accounts SET name = 'Consulting revenue' WHERE org = 'northwind' AND code = '4000';
CALL pg_temp.settle();

-- ---------------------------------------------------------------------------
\echo
\echo '== 4. Northwind''s month is open; entry 1 is drafted (journal_entry.created),'
\echo '      then posted (journal_entry.posted, with its lines and totals)'
-- ---------------------------------------------------------------------------

INSERT INTO ledger.periods (org, period, starts_on, ends_on)
SELECT 'northwind', to_char(m, 'YYYY-MM'), m::date, (m + interval '1 month - 1 day')::date
  FROM date_trunc('month', current_date) AS m
RETURNING period AS period \gset

BEGIN;
INSERT INTO ledger.journal_entries (org, entry_date, description)
VALUES ('northwind', current_date, 'Invoice 2026-041 paid by Fabrikam')
RETURNING id AS invoice_entry \gset
INSERT INTO ledger.journal_lines (org, entry_id, account_id, debit, credit, memo)
SELECT a.org, :invoice_entry, a.id, l.debit, l.credit, l.memo
  FROM (VALUES ('1000', 1200.00, 0, 'bank transfer'),
               ('4000', 0, 1200.00, 'November consulting')) AS l(code, debit, credit, memo)
  JOIN ledger.accounts a ON a.org = 'northwind' AND a.code = l.code;
COMMIT;
CALL pg_temp.settle();

CALL ledger.post_entry(:invoice_entry);
CALL pg_temp.settle();

\echo
\echo '   What northwind and the accounting system received for the posting (webhook.events):'
SELECT jsonb_pretty(payload) AS "journal_entry.posted"
  FROM webhook.events
 WHERE event_type = 'journal_entry.posted' AND (payload ->> 'entry_id')::bigint = :invoice_entry;

-- ---------------------------------------------------------------------------
\echo
\echo '== 5. Entry 2 does not balance: posting it fails, and no event leaves'
-- ---------------------------------------------------------------------------

BEGIN;
INSERT INTO ledger.journal_entries (org, entry_date, description)
VALUES ('northwind', current_date, 'November rent')
RETURNING id AS rent_entry \gset
INSERT INTO ledger.journal_lines (org, entry_id, account_id, debit, credit)
SELECT a.org, :rent_entry, a.id, l.debit, l.credit
  FROM (VALUES ('6100', 950.00, 0), ('1000', 0, 590.00)) AS l(code, debit, credit)
  JOIN ledger.accounts a ON a.org = 'northwind' AND a.code = l.code;
COMMIT;
CALL pg_temp.settle();

SELECT format('CALL ledger.post_entry(%s)', :rent_entry) AS statement \gset
SELECT pg_temp.refused(:'statement', '23514') AS refusal \gset
\echo '  ' :statement
\echo '  ' :refusal
\echo
CALL pg_temp.expect_no_posting(:rent_entry);

\echo '   The typo fixed (590.00 -> 950.00), it posts:'
UPDATE ledger.journal_lines SET credit = 950.00 WHERE entry_id = :rent_entry AND credit = 590.00;
CALL ledger.post_entry(:rent_entry);
CALL pg_temp.settle();

-- ---------------------------------------------------------------------------
\echo
\echo '== 6. Entry 3 is drafted; its posting is rolled back: nothing is delivered'
-- ---------------------------------------------------------------------------

BEGIN;
INSERT INTO ledger.journal_entries (org, entry_date, description)
VALUES ('northwind', current_date, 'Printer paper')
RETURNING id AS paper_entry \gset
INSERT INTO ledger.journal_lines (org, entry_id, account_id, debit, credit)
SELECT a.org, :paper_entry, a.id, l.debit, l.credit
  FROM (VALUES ('6200', 45.90, 0), ('1000', 0, 45.90)) AS l(code, debit, credit)
  JOIN ledger.accounts a ON a.org = 'northwind' AND a.code = l.code;
COMMIT;
CALL pg_temp.settle();

BEGIN;
CALL ledger.post_entry(:paper_entry);
SELECT count(*) AS "posted events inside the transaction"
  FROM webhook.events
 WHERE event_type = 'journal_entry.posted' AND (payload ->> 'entry_id')::bigint = :paper_entry;
ROLLBACK;
CALL pg_temp.settle();
SELECT count(*) AS "posted events after ROLLBACK",
       (SELECT status FROM ledger.journal_entries WHERE id = :paper_entry) AS "entry 3 is"
  FROM webhook.events
 WHERE event_type = 'journal_entry.posted' AND (payload ->> 'entry_id')::bigint = :paper_entry;
CALL pg_temp.expect_no_posting(:paper_entry);

-- ---------------------------------------------------------------------------
\echo
\echo '== 7. Entry 1 is reversed: one transaction, three events (the reversing'
\echo '      entry created and posted, entry 1 reversed). The archive fails twice;'
\echo '      the worker retries on its schedule (2s, 2s, 2s here) until it answers.'
-- ---------------------------------------------------------------------------

SELECT ledger.reverse_entry(:invoice_entry) AS reversal_entry \gset
CALL pg_temp.settle();

\echo
\echo '   The archive delivery, try by try (webhook.attempts):'
SELECT a.attempt,
       round(extract(epoch FROM a.started_at - lag(a.started_at) OVER (ORDER BY a.started_at)), 1)
           AS "seconds after the previous",
       a.status_code, a.response_body AS response, a.manual
  FROM webhook.attempts a
 WHERE a.endpoint_id = :'archive_id'
 ORDER BY a.started_at;

-- ---------------------------------------------------------------------------
\echo
\echo '== 8. Northwind''s month is closed, then reopened for a late invoice:'
\echo '      reporting receives both period events'
-- ---------------------------------------------------------------------------

CALL ledger.close_period('northwind', :'period');
CALL pg_temp.settle();
CALL ledger.reopen_period('northwind', :'period', 'late supplier invoice');
CALL pg_temp.settle();

-- ---------------------------------------------------------------------------
\echo
\echo '== 9. Contoso, the other customer, books an invoice and closes its month:'
\echo '      its endpoint and the internal ones receive these events, northwind''s'
\echo '      none (the rows'' org is the events'' tenant)'
-- ---------------------------------------------------------------------------

INSERT INTO ledger.periods (org, period, starts_on, ends_on)
SELECT 'contoso', to_char(m, 'YYYY-MM'), m::date, (m + interval '1 month - 1 day')::date
  FROM date_trunc('month', current_date) AS m;
BEGIN;
INSERT INTO ledger.journal_entries (org, entry_date, description)
VALUES ('contoso', current_date, 'Invoice C-7 paid by Litware')
RETURNING id AS contoso_entry \gset
INSERT INTO ledger.journal_lines (org, entry_id, account_id, debit, credit)
SELECT a.org, :contoso_entry, a.id, l.debit, l.credit
  FROM (VALUES ('1000', 300.00, 0), ('4000', 0, 300.00)) AS l(code, debit, credit)
  JOIN ledger.accounts a ON a.org = 'contoso' AND a.code = l.code;
COMMIT;
CALL pg_temp.settle();
CALL ledger.post_entry(:contoso_entry);
CALL pg_temp.settle();
CALL ledger.close_period('contoso', :'period');
CALL pg_temp.settle();

\echo
\echo '   The ledger''s API, serving contoso, scopes its session to it'
\echo '   (SET webhook.tenant = ''contoso''): its endpoints and deliveries alone.'
SET webhook.tenant = 'contoso';
SELECT description AS endpoint, tenant, url FROM webhook.list_webhooks();
SELECT d.event_type, count(*) AS deliveries, string_agg(DISTINCT d.status, ', ') AS status,
       string_agg(DISTINCT coalesce(d.tenant, '-'), ', ') AS tenant
  FROM webhook.deliveries d
 GROUP BY d.event_type
 ORDER BY min(d.created_at);
RESET webhook.tenant;

-- ---------------------------------------------------------------------------
\echo
\echo '== Endpoint health (webhook.endpoint_health, last hour):'
-- ---------------------------------------------------------------------------
SELECT h.description AS endpoint, coalesce(h.tenant, '(internal)') AS tenant, h.enabled,
       h.pending, h.succeeded, h.failed, h.success_rate, h.p50_ms, h.consecutive_failures,
       h.failing_since IS NULL AS "last try succeeded"
  FROM webhook.endpoint_health h
 ORDER BY h.description;
