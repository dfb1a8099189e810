-- demo/story.sql: the ledger demo's story, run by demo/run with psql.
--
-- Variables: receiver (the receiver's base URL) and secrets_file (where to
-- write each endpoint's secret for the receiver). Expects demo/ledger.sql
-- loaded into an empty database. After each step it waits until the worker
-- has delivered everything, so the receiver's lines appear under the step
-- that caused them.

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
\echo '== 1. Three systems subscribe to the ledger'
\echo '   accounting gets every event; reporting only period.*; the archive only'
\echo '   journal_entry.reversed, and it is down: it will fail twice, then recover.'
\echo '   The extension generates whsec_ secrets; the archive brings its own.'
-- ---------------------------------------------------------------------------

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

SELECT description AS endpoint, url, coalesce(array_to_string(event_types, ', '), 'every event') AS events
  FROM webhook.list_webhooks();

-- The receiver checks every signature with the endpoint's secret.
\pset tuples_only on
\pset format unaligned
SELECT jsonb_build_object(
           '/accounting', jsonb_build_object('name', 'accounting', 'secret', :'accounting_secret'),
           '/reporting',  jsonb_build_object('name', 'reporting',  'secret', :'reporting_secret'),
           '/archive',    jsonb_build_object('name', 'archive',    'secret', :'archive_secret'))
\g :secrets_file
\pset tuples_only off
\pset format aligned
\unset accounting_secret
\unset reporting_secret
\unset archive_secret

-- ---------------------------------------------------------------------------
\echo
\echo '== 2. A chart of accounts: five account.created events'
-- ---------------------------------------------------------------------------

INSERT INTO ledger.accounts (code, name, type) VALUES
    ('1000', 'Cash at bank',        'asset'),
    ('1200', 'Accounts receivable', 'asset'),
    ('4000', 'Revenue',             'revenue'),
    ('6100', 'Rent',                'expense'),
    ('6200', 'Office supplies',     'expense');
CALL pg_temp.settle();

\echo
\echo '== 3. An account renamed: account.updated'
UPDATE ledger.accounts SET name = 'Consulting revenue' WHERE code = '4000';
CALL pg_temp.settle();

-- ---------------------------------------------------------------------------
\echo
\echo '== 4. This month is open; entry 1 is drafted (journal_entry.created), then'
\echo '      posted (journal_entry.posted, with its lines and totals)'
-- ---------------------------------------------------------------------------

INSERT INTO ledger.periods (period, starts_on, ends_on)
SELECT to_char(m, 'YYYY-MM'), m::date, (m + interval '1 month - 1 day')::date
  FROM date_trunc('month', current_date) AS m
RETURNING period AS period \gset

BEGIN;
INSERT INTO ledger.journal_entries (entry_date, description)
VALUES (current_date, 'Invoice 2026-041 paid by Northwind')
RETURNING id AS invoice_entry \gset
INSERT INTO ledger.journal_lines (entry_id, account_id, debit, credit, memo)
SELECT :invoice_entry, a.id, l.debit, l.credit, l.memo
  FROM (VALUES ('1000', 1200.00, 0, 'bank transfer'),
               ('4000', 0, 1200.00, 'November consulting')) AS l(code, debit, credit, memo)
  JOIN ledger.accounts a ON a.code = l.code;
COMMIT;
CALL pg_temp.settle();

CALL ledger.post_entry(:invoice_entry);
CALL pg_temp.settle();

\echo
\echo '   What the accounting system received for the posting (webhook.events):'
SELECT jsonb_pretty(payload) AS "journal_entry.posted"
  FROM webhook.events
 WHERE event_type = 'journal_entry.posted' AND (payload ->> 'entry_id')::bigint = :invoice_entry;

-- ---------------------------------------------------------------------------
\echo
\echo '== 5. Entry 2 does not balance: posting it fails, and no event leaves'
-- ---------------------------------------------------------------------------

BEGIN;
INSERT INTO ledger.journal_entries (entry_date, description)
VALUES (current_date, 'November rent')
RETURNING id AS rent_entry \gset
INSERT INTO ledger.journal_lines (entry_id, account_id, debit, credit)
SELECT :rent_entry, a.id, l.debit, l.credit
  FROM (VALUES ('6100', 950.00, 0), ('1000', 0, 590.00)) AS l(code, debit, credit)
  JOIN ledger.accounts a ON a.code = l.code;
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
INSERT INTO ledger.journal_entries (entry_date, description)
VALUES (current_date, 'Printer paper')
RETURNING id AS paper_entry \gset
INSERT INTO ledger.journal_lines (entry_id, account_id, debit, credit)
SELECT :paper_entry, a.id, l.debit, l.credit
  FROM (VALUES ('6200', 45.90, 0), ('1000', 0, 45.90)) AS l(code, debit, credit)
  JOIN ledger.accounts a ON a.code = l.code;
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
\echo '== 8. The month is closed, then reopened for a late invoice: reporting'
\echo '      receives both period events'
-- ---------------------------------------------------------------------------

CALL ledger.close_period(:'period');
CALL pg_temp.settle();
CALL ledger.reopen_period(:'period', 'late supplier invoice');
CALL pg_temp.settle();

\echo
\echo '   Endpoint health (webhook.endpoint_health, last hour):'
SELECT h.description AS endpoint, h.enabled, h.pending, h.succeeded, h.failed,
       h.success_rate, h.p50_ms, h.consecutive_failures,
       h.failing_since IS NULL AS "last try succeeded"
  FROM webhook.endpoint_health h
 ORDER BY h.description;
