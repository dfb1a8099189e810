--
-- Ordered endpoints (the contract's "Ordering"): each sequence (ordering
-- key and tenant) has at most one delivery under way; the others wait
-- (next_attempt_at NULL) in the order dispatch took their events, and the
-- next starts when the one under way ends. The worker does not serve the
-- regression database: dispatch and outcomes run by hand, as the worker
-- runs them, and each statement sees what the previous one committed.
--
\set SHOW_CONTEXT never
SET datestyle = ISO;

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
SELECT id AS o FROM webhook.create_webhook('https://example.com/ordered', ordered => true) \gset
SELECT id AS u FROM webhook.create_webhook('https://example.com/unordered') \gset

-- One outcome, recorded as the worker records it (having taken the
-- delivery after any manual request so far).
CREATE FUNCTION pg_temp.record(event uuid, endpoint uuid, outcome text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook.record_attempts(
        ARRAY[event], ARRAY[endpoint], ARRAY[1], ARRAY[now()], ARRAY[5.0::float8],
        ARRAY[CASE outcome WHEN 'succeeded' THEN 200 ELSE 500 END], ARRAY[NULL::text],
        ARRAY['body'], ARRAY[false], ARRAY[outcome],
        ARRAY[CASE WHEN outcome = 'retry' THEN now() + interval '1 minute' END],
        ARRAY[(SELECT d.manual_requests FROM webhook.delivery_log d
                WHERE d.event_id = event AND d.endpoint_id = endpoint)],
        ARRAY[NULL::text], interval '5 days');
END
$$;
-- The ordered endpoint's pending deliveries: which are under way (due,
-- scheduled or parked) and which wait, in each sequence's order.
CREATE FUNCTION pg_temp.sequences()
RETURNS TABLE (event text, sequence text, place bigint, state text)
LANGUAGE sql AS $$
    SELECT e.payload ->> 'n', d.order_key,
           rank() OVER (PARTITION BY d.order_key ORDER BY d.order_position),
           CASE WHEN d.next_attempt_at IS NULL THEN 'waiting'
                WHEN d.next_attempt_at = 'infinity' THEN 'parked'
                WHEN d.next_attempt_at <= now() THEN 'due'
                ELSE 'scheduled' END
      FROM webhook.delivery_log d JOIN webhook.event_log e ON e.id = d.event_id
     WHERE d.endpoint_id = (SELECT id FROM webhook.endpoints WHERE url LIKE '%/ordered')
       AND d.status = 'pending'
     ORDER BY d.order_key, d.order_position
$$;
CREATE FUNCTION pg_temp.event(n text) RETURNS uuid
LANGUAGE sql AS $$ SELECT id FROM webhook.event_log WHERE payload ->> 'n' = n $$;

--
-- 1. Dispatch: the first delivery of each sequence is due, the rest wait.
-- Events without a key form one sequence; the unordered endpoint gets
-- every delivery due at once.
--
BEGIN;
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'a1'), ordering_key => 'acct-1'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'a2'), ordering_key => 'acct-1'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'b1'), ordering_key => 'acct-2'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'x1')));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'x2')));
COMMIT;
SELECT * FROM webhook.dispatch_new_events(1000);
SELECT * FROM pg_temp.sequences();
SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS unordered_due,
       count(*) FILTER (WHERE order_key IS NOT NULL) AS unordered_with_sequence
  FROM webhook.delivery_log WHERE endpoint_id = :'u';
-- A later commit goes after them, in a later dispatch pass.
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'a3'), ordering_key => 'acct-1'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'b2'), ordering_key => 'acct-2'));
SELECT * FROM webhook.dispatch_new_events(1000);
SELECT * FROM pg_temp.sequences();
SELECT pending_in_order FROM webhook.queue_status;
SELECT tenant, pending_due, pending_in_order FROM webhook.queue_status_by_tenant;

--
-- 2. The next starts when the one under way ends: succeeded, or failed
-- (schedule exhausted). A retry keeps the sequence waiting.
--
SELECT pg_temp.record(pg_temp.event('a1'), :'o', 'succeeded');
SELECT pg_temp.record(pg_temp.event('b1'), :'o', 'retry');
SELECT * FROM pg_temp.sequences();
SELECT pg_temp.record(pg_temp.event('b1'), :'o', 'failed');
SELECT pg_temp.record(pg_temp.event('x1'), :'o', 'succeeded');
SELECT * FROM pg_temp.sequences();
-- An outcome for the unordered endpoint starts nothing.
SELECT pg_temp.record(pg_temp.event('a2'), :'u', 'succeeded');
SELECT * FROM pg_temp.sequences();

--
-- 3. Disabling parks the delivery under way; those waiting wait on.
-- Enabling resumes it alone.
--
SELECT enabled FROM webhook.update_webhook(:'o', enabled => false);
SELECT * FROM pg_temp.sequences();
SELECT pending_parked, pending_in_order FROM webhook.queue_status;
SELECT enabled FROM webhook.update_webhook(:'o', enabled => true);
SELECT * FROM pg_temp.sequences();

--
-- 4. retry_delivery and replay: a delivery sent again takes the end of its
-- sequence and waits; the worker's sweep (start_waiting_sequences) starts
-- it once nothing of its sequence is under way. A delivery under way asked
-- again is due now; one waiting keeps its place.
--
SELECT webhook.retry_delivery(pg_temp.event('b1'), :'o');
SELECT * FROM pg_temp.sequences();
SELECT webhook.start_waiting_sequences() AS started;
SELECT pg_temp.record(pg_temp.event('b2'), :'o', 'succeeded');
SELECT * FROM pg_temp.sequences();
-- Asked again: a3 (waiting) keeps its place, a2 (under way) stays due.
SELECT webhook.retry_delivery(pg_temp.event('a3'), :'o');
SELECT webhook.retry_delivery(pg_temp.event('a2'), :'o');
SELECT * FROM pg_temp.sequences();
SELECT webhook.start_waiting_sequences() AS started;
-- A replay: the failed and cancelled deliveries of the window, in order.
SELECT pg_temp.record(pg_temp.event('a2'), :'o', 'failed');
SELECT pg_temp.record(pg_temp.event('a3'), :'o', 'failed');
SELECT pg_temp.record(pg_temp.event('b1'), :'o', 'failed');
SELECT * FROM pg_temp.sequences();
SELECT webhook.replay(:'o', now() - interval '1 hour') AS replayed;
SELECT * FROM pg_temp.sequences();
SELECT webhook.start_waiting_sequences() AS started;
SELECT * FROM pg_temp.sequences();
-- The sweep starts nothing twice.
SELECT webhook.start_waiting_sequences() AS started;

--
-- 5. The sequence goes on to its end.
--
SELECT pg_temp.record(pg_temp.event('a2'), :'o', 'succeeded');
SELECT * FROM pg_temp.sequences();

--
-- 6. No longer ordered: what waited is due now; new deliveries carry no
-- sequence.
--
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'a4'), ordering_key => 'acct-1'));
SELECT * FROM webhook.dispatch_new_events(1000);
SELECT * FROM pg_temp.sequences();
SELECT ordered FROM webhook.update_webhook(:'o', ordered => false);
SELECT * FROM pg_temp.sequences();
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 'a5'), ordering_key => 'acct-1'));
SELECT * FROM webhook.dispatch_new_events(1000);
SELECT order_key, order_position, next_attempt_at <= now() AS due
  FROM webhook.delivery_log WHERE event_id = pg_temp.event('a5') AND endpoint_id = :'o';

--
-- 7. Tenants: an endpoint without a tenant keeps one sequence per tenant
-- for events without a key. The sequence names differ for every pair of
-- tenant and key.
--
SELECT webhook.order_key(NULL, NULL) AS none, webhook.order_key(NULL, 'k') AS key_only,
       webhook.order_key('acme', NULL) AS tenant_only, webhook.order_key('acme', 'k') AS both,
       webhook.order_key('a/', 'b') <> webhook.order_key('a', '/b') AS distinct_pairs;
SELECT ordered FROM webhook.update_webhook(:'o', ordered => true);
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 't1'), tenant => 'acme'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 't2'), tenant => 'acme'));
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', 't3'), tenant => 'globex'));
SELECT * FROM webhook.dispatch_new_events(1000);
SELECT * FROM pg_temp.sequences() WHERE event LIKE 't%';

-- Nothing is granted to PUBLIC.
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'webhook'::regnamespace
   AND p.proname IN ('order_key', 'start_order_heads', 'start_waiting_sequences')
 ORDER BY 1;

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
