--
-- Operating the outbox: the views webhook.endpoint_health and
-- webhook.queue_status, and the removal of old history.
--
-- The worker does not serve the regression database, so the history below
-- is written by hand, inside one transaction (now() stays put, and the
-- history that earlier files left is out of the way until ROLLBACK).
--
\set SHOW_CONTEXT never
-- An error below (a permission check) must not end the transaction.
\set ON_ERROR_ROLLBACK on

-- The columns.
SELECT table_name, column_name, data_type
  FROM information_schema.columns
 WHERE table_schema = 'webhook'
   AND table_name IN ('endpoint_health', 'queue_status')
 ORDER BY table_name, ordinal_position;

BEGIN;
DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;

-- Three endpoints: one healthy, one failing for half an hour, one disabled.
SELECT id AS healthy FROM webhook.create_webhook('https://example.com/healthy',
                                                 description => 'healthy') \gset
SELECT id AS failing FROM webhook.create_webhook('https://example.com/failing',
                                                 description => 'failing') \gset
SELECT id AS disabled FROM webhook.create_webhook('https://example.com/disabled',
                                                  description => 'disabled', enabled => false) \gset
UPDATE webhook.endpoints SET failing_since = now() - interval '30 minutes' WHERE id = :'failing';

-- Four events of the last half hour, one of the last minute. The first
-- three were dispatched long ago (txid 3: a transaction every snapshot sees
-- as committed); the last is this transaction's, not dispatched yet.
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, 'journal_entry.posted',
       jsonb_build_object('entry_id', n), now() - age,
       CASE WHEN n < 4 THEN '3'::xid8 ELSE pg_current_xact_id() END
  FROM (VALUES (1, interval '30 minutes'), (2, interval '20 minutes'),
               (3, interval '10 minutes'), (4, interval '30 seconds')) AS e(n, age);

-- Deliveries: all of the healthy endpoint's succeeded; the failing one has
-- one due now and one retry scheduled; the disabled one has one parked.
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts,
                                  next_attempt_at, succeeded_at, created_at)
SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, ep, 'journal_entry.posted',
       status, attempts, next_at, CASE WHEN status = 'succeeded' THEN now() END, now() - age
  FROM (VALUES (1, :'healthy'::uuid, 'succeeded', 2, NULL::timestamptz, interval '30 minutes'),
               (2, :'healthy', 'succeeded', 1, NULL, interval '20 minutes'),
               (3, :'healthy', 'succeeded', 1, NULL, interval '10 minutes'),
               (4, :'healthy', 'succeeded', 1, NULL, interval '30 seconds'),
               (1, :'failing', 'succeeded', 1, NULL, interval '30 minutes'),
               (2, :'failing', 'pending', 2, now(), interval '20 minutes'),
               (3, :'failing', 'pending', 1, now() + interval '5 minutes', interval '10 minutes'),
               (3, :'disabled', 'pending', 0, 'infinity', interval '10 minutes'))
       AS d(n, ep, status, attempts, next_at, age);

-- Attempts. The healthy endpoint: one failure (100 ms) 50 minutes ago, then
-- four successes of 10 to 40 ms; one more failure two hours ago, outside
-- the hour. The failing endpoint: a success 40 minutes ago, then a 500, a
-- timeout (no status) and a 503.
INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at, duration_ms,
                                 status_code, error, response_body)
SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, ep, attempt, now() - age, ms,
       code, CASE WHEN code IS NULL THEN 'timeout' END, 'body'
  FROM (VALUES (1, :'healthy'::uuid, 1, interval '2 hours', 900.0, 500),
               (1, :'healthy', 1, interval '50 minutes', 100.0, 500),
               (1, :'healthy', 2, interval '45 minutes', 10.0, 200),
               (2, :'healthy', 1, interval '20 minutes', 20.0, 204),
               (3, :'healthy', 1, interval '10 minutes', 30.0, 200),
               (4, :'healthy', 1, interval '30 seconds', 40.0, 200),
               (1, :'failing', 1, interval '40 minutes', 5.0, 200),
               (2, :'failing', 1, interval '20 minutes', 7.0, 500),
               (2, :'failing', 2, interval '15 minutes', 15000.0, NULL),
               (3, :'failing', 1, interval '10 seconds', 9.0, 503))
       AS a(n, ep, attempt, age, ms, code);

--
-- webhook.endpoint_health: one row per endpoint. Counts, rate and latency
-- are over the attempts of the last hour; pending is the whole backlog.
--
SELECT description, enabled, disabled_reason IS NOT NULL AS has_reason, failing_since = now() - interval '30 minutes' AS failing_30_min,
       pending, succeeded, failed, success_rate, p50_ms, p99_ms,
       now() - last_success_at AS last_success_ago, now() - last_failure_at AS last_failure_ago,
       consecutive_failures
  FROM webhook.endpoint_health
 ORDER BY description;

--
-- webhook.queue_status: one row. Due, scheduled and parked deliveries; the
-- oldest one not parked; events the worker has not dispatched yet (the one
-- of this transaction: nothing serves this database); the last minute's
-- rates; the worker (none here).
--
SELECT * FROM webhook.queue_status;

-- A manual retry of a delivery found through the views is due at once.
SELECT count(*) AS retried
  FROM webhook.deliveries d
  JOIN webhook.endpoint_health h ON h.id = d.endpoint_id
 CROSS JOIN LATERAL webhook.retry_delivery(d.event_id, d.endpoint_id)
 WHERE h.consecutive_failures > 0 AND d.next_attempt_at > now();
SELECT pending_due, pending_scheduled FROM webhook.queue_status;

--
-- Privileges: neither view is readable by default; granted, they show no
-- secret.
--
CREATE ROLE webhook_regress_operator;
SET ROLE webhook_regress_operator;
SELECT count(*) FROM webhook.endpoint_health;
RESET ROLE;
GRANT USAGE ON SCHEMA webhook TO webhook_regress_operator;
SET ROLE webhook_regress_operator;
SELECT count(*) FROM webhook.endpoint_health;
SELECT count(*) FROM webhook.queue_status;
RESET ROLE;
GRANT SELECT ON webhook.endpoint_health, webhook.queue_status TO webhook_regress_operator;
SET ROLE webhook_regress_operator;
SELECT count(*) AS endpoints FROM webhook.endpoint_health;
SELECT pending_due FROM webhook.queue_status;
RESET ROLE;
SELECT count(*) AS columns_holding_a_secret
  FROM information_schema.columns c
 WHERE c.table_schema = 'webhook'
   AND c.table_name IN ('endpoint_health', 'queue_status')
   AND (c.column_name LIKE '%secret%' OR c.column_name = 'headers');

--
-- webhook.remove_old_history(retention, batch): what the worker runs every
-- minute with webhook.retention. Events older than retention go with their
-- deliveries and attempts, at most batch events per call; an event with a
-- pending delivery stays whatever its age.
--
UPDATE webhook.event_log SET created_at = created_at - interval '40 days'
 WHERE id IN ('00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002',
              '00000000-0000-7000-8000-000000000003');
-- Event 1 is old and delivered; 2 and 3 are old but still pending somewhere;
-- 4 is recent.
SELECT webhook.remove_old_history(interval '30 days', 1000) AS removed;
SELECT e.id, (SELECT count(*) FROM webhook.deliveries d WHERE d.event_id = e.id) AS deliveries,
       (SELECT count(*) FROM webhook.attempts a WHERE a.event_id = e.id) AS attempts
  FROM webhook.events e ORDER BY e.id;
SELECT count(*) AS orphan_attempts FROM webhook.attempt_log a
 WHERE NOT EXISTS (SELECT 1 FROM webhook.event_log e WHERE e.id = a.event_id);

-- Once their deliveries are over, old events go, a batch at a time.
UPDATE webhook.delivery_log SET status = 'failed', next_attempt_at = NULL WHERE status = 'pending';
SELECT webhook.remove_old_history(interval '30 days', 1) AS first_batch;
SELECT webhook.remove_old_history(interval '30 days', 1) AS second_batch;
SELECT webhook.remove_old_history(interval '30 days', 1) AS nothing_left;
SELECT e.id FROM webhook.events e ORDER BY e.id;

-- The worker walks the old history a step at a time
-- (remove_old_history_step), carrying the position from step to step:
-- events kept because a delivery is still pending are read once a walk,
-- not again at every step. 30 old events still pending (parked) come
-- before 5 old events done with; steps of 10 read 10 index entries each
-- (the first also the three events removed above, gone but still indexed).
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT ('00000000-0000-7000-8001-' || lpad(n::text, 12, '0'))::uuid, 'journal_entry.posted', '{}',
       now() - interval '40 days' + n * interval '1 minute', pg_current_xact_id()
  FROM generate_series(1, 35) AS n;
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
SELECT e.id, (SELECT ep.id FROM webhook.endpoints ep ORDER BY ep.id LIMIT 1), e.event_type, 'infinity'
  FROM webhook.event_log e
 WHERE e.id BETWEEN '00000000-0000-7000-8001-000000000001' AND '00000000-0000-7000-8001-000000000030';
DO $$
DECLARE
    v_step  record;
    v_at    timestamptz;
    v_id    uuid;
    v_read  bigint;
BEGIN
    FOR n IN 1..10 LOOP
        v_read := pg_stat_get_xact_tuples_returned('webhook.event_log_created_at_idx'::regclass);
        SELECT * INTO v_step FROM webhook.remove_old_history_step('30 days', 10, v_at, v_id);
        RAISE NOTICE 'step %: removed %, index entries read %, more to look at: %', n, v_step.removed,
            pg_stat_get_xact_tuples_returned('webhook.event_log_created_at_idx'::regclass) - v_read,
            v_step.last_at IS NOT NULL;
        EXIT WHEN v_step.last_at IS NULL;
        v_at := v_step.last_at;
        v_id := v_step.last_id;
    END LOOP;
END
$$;
SELECT count(*) AS kept_pending, count(*) FILTER (WHERE e.id > '00000000-0000-7000-8001-000000000030')
           AS done_with_left
  FROM webhook.event_log e WHERE e.id::text LIKE '00000000-0000-7000-8001-%';
SELECT webhook.remove_old_history(interval '30 days', -1);
ROLLBACK;
