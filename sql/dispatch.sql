--
-- Dispatch in chunks, manual requests during an attempt, and deliveries
-- that cannot outlive their event. The worker does not serve the
-- regression database; these run by hand, statement by statement (dispatch
-- takes committed events only), and clean up after themselves.
--
\set SHOW_CONTEXT never

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
SELECT id AS a FROM webhook.create_webhook('https://example.com/a') \gset
SELECT id AS b FROM webhook.create_webhook('https://example.com/b',
                                           event_types => ARRAY['period.*']) \gset

-- Five events: a pass of chunks of two takes them in three transactions'
-- worth of calls, each event once; the chunk that comes back short ends
-- the pass and moves the cursor.
SELECT count(webhook.emit('journal_entry.posted', jsonb_build_object('n', n)))
  FROM generate_series(1, 4) AS n;
SELECT count(webhook.emit('period.closed', '{}'));
SELECT * FROM webhook.dispatch_new_events(2);
SELECT target IS NOT NULL AS pass_under_way FROM webhook.dispatch_cursor;
SELECT * FROM webhook.dispatch_new_events(2);
SELECT * FROM webhook.dispatch_new_events(2);
SELECT target IS NULL AS pass_done FROM webhook.dispatch_cursor;
SELECT * FROM webhook.dispatch_new_events(2);
SELECT endpoint_id = :'a' AS to_a, count(*) FROM webhook.delivery_log GROUP BY 1 ORDER BY 1;

-- retry_delivery while the attempt is in flight: the worker took the
-- delivery with manual_requests 0; the request makes it 1, so the outcome
-- recorded afterwards leaves it pending and due, as the request asked.
SELECT event_id AS e FROM webhook.delivery_log WHERE endpoint_id = :'b' \gset
SELECT manual_requests FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}')
 WHERE endpoint_id = :'b';
SELECT webhook.retry_delivery(:'e', :'b');
SELECT * FROM webhook.record_attempts(
    ARRAY[:'e']::uuid[], ARRAY[:'b']::uuid[], ARRAY[1], ARRAY[now()], ARRAY[5.0],
    ARRAY[200], ARRAY[NULL], ARRAY['ok'], ARRAY[false], ARRAY['succeeded'],
    ARRAY[NULL]::timestamptz[], ARRAY[0], ARRAY[NULL]::text[], interval '5 days');
SELECT status, attempts, last_status_code, next_attempt_at <= now() AS due,
       next_attempt_manual, manual_requests
  FROM webhook.delivery_log WHERE endpoint_id = :'b';
-- The manual attempt's own outcome then stands.
SELECT * FROM webhook.record_attempts(
    ARRAY[:'e']::uuid[], ARRAY[:'b']::uuid[], ARRAY[2], ARRAY[now()], ARRAY[5.0],
    ARRAY[200], ARRAY[NULL], ARRAY['ok'], ARRAY[true], ARRAY['succeeded'],
    ARRAY[NULL]::timestamptz[], ARRAY[1], ARRAY[NULL]::text[], interval '5 days');
SELECT status, attempts, next_attempt_manual FROM webhook.delivery_log WHERE endpoint_id = :'b';
SELECT attempt, status_code, manual FROM webhook.attempts WHERE endpoint_id = :'b' ORDER BY attempt;

-- An outcome without its history row (the worker's last resort).
SELECT event_id AS e2 FROM webhook.delivery_log WHERE endpoint_id = :'a' LIMIT 1 \gset
SELECT * FROM webhook.record_attempts(
    ARRAY[:'e2']::uuid[], ARRAY[:'a']::uuid[], ARRAY[1], ARRAY[now()], ARRAY[5.0],
    ARRAY[200], ARRAY[NULL], ARRAY['ok'], ARRAY[false], ARRAY['succeeded'],
    ARRAY[NULL]::timestamptz[], ARRAY[0], ARRAY[NULL]::text[], interval '5 days', history => false);
SELECT status FROM webhook.delivery_log WHERE event_id = :'e2' AND endpoint_id = :'a';
SELECT count(*) AS attempts_kept FROM webhook.attempt_log WHERE event_id = :'e2';

-- A delivery cannot outlive its event: deleting the event (a purge by
-- hand) deletes its deliveries, so none can hold an endpoint's slot.
DELETE FROM webhook.event_log WHERE id = :'e2';
SELECT count(*) AS orphans FROM webhook.delivery_log WHERE event_id = :'e2';
SELECT count(*) AS due_for_a
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}') WHERE endpoint_id = :'a';

-- Manual sends act on dispatched events only.
SELECT webhook.emit('period.closed', '{}') AS fresh \gset
SET regress.endpoint = :'b';
SET regress.event = :'fresh';
DO $$
BEGIN
    PERFORM webhook.retry_delivery(current_setting('regress.event')::uuid,
                                   current_setting('regress.endpoint')::uuid);
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RAISE NOTICE 'retry_delivery refused (%): %', SQLSTATE,
        regexp_replace(SQLERRM, '"[^"]*"', '"<id>"');
END $$;
SELECT webhook.replay(:'b', now() - interval '1 hour', now() + interval '1 hour') AS replayed;
SELECT * FROM webhook.dispatch_new_events(10);

-- A pass whose cursor saw a transaction in progress (in its snapshot's
-- xip) looks that transaction's events up through (txid, id), whatever
-- the statistics say: after one big transaction (a period closed, here
-- 130,000 events, written directly and taken as dispatched) ANALYZE finds
-- few distinct txids, and the planner read the event log in id order for
-- each such transaction, to its end. The event log's txid column declares
-- its own n_distinct for that.
DELETE FROM webhook.endpoints;
DELETE FROM webhook.attempt_log;
DELETE FROM webhook.event_log;
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT webhook.uuid_v7(), 'journal_entry.posted', '{}', now(), pg_current_xact_id()
  FROM generate_series(1, 130000);
SELECT webhook.emit('journal_entry.posted', '{}') AS late \gset
SELECT txid::text AS late_txid FROM webhook.event_log WHERE id = :'late' \gset
ANALYZE webhook.event_log;
-- The cursor as a pass that saw the late one in progress leaves it (and
-- the big one done).
UPDATE webhook.dispatch_cursor
   SET snapshot = format('%1$s:%2$s:%1$s', :'late_txid', :'late_txid'::bigint + 1)::pg_snapshot;
BEGIN;
SELECT pg_stat_get_xact_tuples_returned('webhook.event_log_pkey'::regclass) AS by_id,
       pg_stat_get_xact_tuples_returned('webhook.event_log_txid_idx'::regclass) AS by_txid \gset
SELECT * FROM webhook.dispatch_new_events(64);
-- Index entries the pass read: the late event's, not the log's.
SELECT pg_stat_get_xact_tuples_returned('webhook.event_log_pkey'::regclass) - :by_id
           AS read_in_id_order,
       pg_stat_get_xact_tuples_returned('webhook.event_log_txid_idx'::regclass) - :by_txid
           AS read_by_txid;
COMMIT;

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
