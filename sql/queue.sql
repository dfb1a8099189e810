--
-- The worker's queue functions: webhook.due_deliveries (what to send next:
-- oldest first, per-endpoint limits, the worker's position in each queue,
-- the endpoints the worker's breaker blocks or probes) and
-- webhook.record_attempts (outcomes and endpoint health).
--
-- The worker does not serve the regression database; these run by hand,
-- inside one transaction (now() stays put; ROLLBACK leaves no trace).
--
\set SHOW_CONTEXT never

BEGIN;
DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;

SELECT id AS a FROM webhook.create_webhook('https://example.com/a') \gset
SELECT id AS b FROM webhook.create_webhook('https://example.com/b') \gset

-- Four events; each is due for both endpoints, event n since n minutes
-- ago (so the oldest due is event 4). Events 2 and 3 are due at the same
-- moment: event_id breaks the tie.
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, 'journal_entry.posted',
       jsonb_build_object('n', n), now() - interval '1 hour', pg_current_xact_id()
  FROM generate_series(1, 4) AS n;
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
SELECT e.id, ep.id, e.event_type,
       now() - make_interval(mins => CASE (e.payload->>'n')::int WHEN 3 THEN 2
                                                          ELSE (e.payload->>'n')::int END)
  FROM webhook.event_log e CROSS JOIN webhook.endpoints ep;

-- Everything due, oldest first, ties in event_id order; the body's parts
-- come along.
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint, (payload::jsonb)->>'n' AS n,
       now() - next_attempt_at AS waited
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}');
SELECT event_type, payload, now() - created_at AS emitted,
       url, secret LIKE 'whsec_%' AS secret, previous_secret, headers
  FROM webhook.due_deliveries('{}', '{}', 10, 1, '{}', '{}', '{}');

-- per_endpoint caps each endpoint; max_rows the whole; neither takes an
-- endpoint's later rows before its earlier ones.
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (payload::jsonb)->>'n' AS n
  FROM webhook.due_deliveries('{}', '{}', 2, 100, '{}', '{}', '{}');
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (payload::jsonb)->>'n' AS n
  FROM webhook.due_deliveries('{}', '{}', 10, 3, '{}', '{}', '{}');

-- What the worker holds (busy) is not fetched again, and counts against
-- per_endpoint.
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (payload::jsonb)->>'n' AS n
  FROM webhook.due_deliveries(
           ARRAY['00000000-0000-7000-8000-000000000004']::uuid[],
           ARRAY[:'a']::uuid[], 2, 100, '{}', '{}', '{}');

-- A position: endpoint a's queue is read after event 3 (whose tie with
-- event 2 is broken by the id, so event 2 is behind it); b's from the
-- start.
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (payload::jsonb)->>'n' AS n
  FROM webhook.due_deliveries('{}', '{}', 10, 100,
           ARRAY[:'a']::uuid[], ARRAY[now() - interval '2 minutes'],
           ARRAY['00000000-0000-7000-8000-000000000003']::uuid[]);

-- Outcomes. Endpoint a: event 4 succeeds, event 3 is to be retried in an
-- hour. Endpoint b: event 4 fails for good (retry schedule exhausted).
SELECT webhook.record_attempts(
    ARRAY['00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000003',
          '00000000-0000-7000-8000-000000000004']::uuid[],
    ARRAY[:'a', :'a', :'b']::uuid[],
    ARRAY[1, 1, 9],
    ARRAY[now() - interval '10 seconds', now() - interval '5 seconds',
          now() - interval '3 seconds'],
    ARRAY[12.5, 30, 1000],
    ARRAY[200, 500, NULL],
    ARRAY[NULL, NULL, 'connection refused'],
    ARRAY['ok', 'oops', NULL],
    ARRAY[false, false, false],
    ARRAY['succeeded', 'retry', 'failed'],
    ARRAY[NULL, now() + interval '1 hour', NULL]::timestamptz[],
    ARRAY[0, 0, 0], ARRAY[NULL, NULL, NULL]::text[], interval '5 days');

SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (SELECT payload->>'n' FROM webhook.event_log e WHERE e.id = d.event_id) AS n,
       status, attempts, last_status_code, last_error,
       next_attempt_at - now() AS next_in, succeeded_at IS NOT NULL AS succeeded_at
  FROM webhook.delivery_log d
 ORDER BY endpoint, n;
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       attempt, now() - started_at AS ago, duration_ms, status_code, error, response_body
  FROM webhook.attempt_log
 ORDER BY endpoint, started_at;

-- A batch with a success keeps endpoint a healthy; b is failing since its
-- failure, and that failure is its latest.
SELECT CASE id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint, enabled,
       now() - failing_since AS failing_for, now() - last_failure_at AS last_failure
  FROM webhook.endpoints ORDER BY endpoint;

-- A failure of one message does not slow the endpoint's others: b,
-- failing since its last failure, still gets every due delivery ...
SELECT CASE endpoint_id WHEN :'a' THEN 'a' ELSE 'b' END AS endpoint,
       (payload::jsonb)->>'n' AS n
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}');
-- ... unless the worker's breaker (src/scheduler.c) says otherwise: a
-- blocked endpoint gets nothing, a probing one a single delivery.
SELECT count(*) AS blocked
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}', ARRAY[:'b']::uuid[], '{}')
 WHERE endpoint_id = :'b';
SELECT count(*) AS probed
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}', '{}', ARRAY[:'b']::uuid[])
 WHERE endpoint_id = :'b';
SELECT count(*) AS others_unaffected
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}', ARRAY[:'b']::uuid[], '{}')
 WHERE endpoint_id = :'a';

-- Its next failure moves last_failure_at (the start of the run stays);
-- a success clears both.
SELECT webhook.record_attempts(
    ARRAY['00000000-0000-7000-8000-000000000003']::uuid[], ARRAY[:'b']::uuid[], ARRAY[1],
    ARRAY[now()], ARRAY[5.0], ARRAY[503], ARRAY[NULL], ARRAY[''], ARRAY[false],
    ARRAY['retry'], ARRAY[now() + interval '1 minute'], ARRAY[0], ARRAY[NULL]::text[], interval '5 days');
SELECT now() - failing_since AS failing_for, now() - last_failure_at AS last_failure
  FROM webhook.endpoints WHERE id = :'b';
SELECT webhook.record_attempts(
    ARRAY['00000000-0000-7000-8000-000000000002']::uuid[], ARRAY[:'b']::uuid[], ARRAY[1],
    ARRAY[now()], ARRAY[5.0], ARRAY[204], ARRAY[NULL], ARRAY[''], ARRAY[false],
    ARRAY['succeeded'], ARRAY[NULL]::timestamptz[], ARRAY[0], ARRAY[NULL]::text[], interval '5 days');
SELECT failing_since, last_failure_at FROM webhook.endpoints WHERE id = :'b';

-- Re-enabling clears the failure clock too.
UPDATE webhook.endpoints SET failing_since = now(), last_failure_at = now() WHERE id = :'b';
SELECT FROM webhook.update_webhook(:'b', enabled => false);
SELECT FROM webhook.update_webhook(:'b', enabled => true);
SELECT failing_since, last_failure_at FROM webhook.endpoints WHERE id = :'b';

-- 410 Gone disables the endpoint and parks its pending deliveries.
SELECT webhook.record_attempts(
    ARRAY['00000000-0000-7000-8000-000000000001']::uuid[], ARRAY[:'a']::uuid[], ARRAY[1],
    ARRAY[now()], ARRAY[5.0], ARRAY[410], ARRAY['endpoint answered 410 Gone: disabled'],
    ARRAY[''], ARRAY[false], ARRAY['gone'], ARRAY[NULL]::timestamptz[], ARRAY[0], ARRAY[NULL]::text[], interval '5 days');
SELECT enabled, disabled_reason FROM webhook.endpoints WHERE id = :'a';
SELECT (SELECT payload->>'n' FROM webhook.event_log e WHERE e.id = d.event_id) AS n,
       status, next_attempt_at
  FROM webhook.delivery_log d WHERE endpoint_id = :'a' ORDER BY n;
SELECT count(*) AS due_for_a
  FROM webhook.due_deliveries('{}', '{}', 10, 100, '{}', '{}', '{}') WHERE endpoint_id = :'a';

ROLLBACK;

-- Many endpoints due at once, max_rows fewer than them: the max_rows
-- earliest in the total order (next_attempt_at, event_id, endpoint_id),
-- and each endpoint's queue read only as far as its rank and share allow.
-- Ten endpoints with 200 deliveries each, all due at the same moment (as
-- a dispatch or a replay leaves them): a fetch of 6 once read all 2,000
-- index entries (an upper bound the index scan could not stop at).
BEGIN;
DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
SELECT count(*) AS endpoints
  FROM generate_series(1, 10) AS n,
       webhook.create_webhook('https://example.com/' || n) AS ep;
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT ('00000000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid, 'journal_entry.posted',
       jsonb_build_object('n', n), now() - interval '1 hour', pg_current_xact_id()
  FROM generate_series(1, 200) AS n;
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
SELECT e.id, ep.id, e.event_type, now() - interval '1 minute'
  FROM webhook.event_log e CROSS JOIN webhook.endpoints ep;
SELECT pg_stat_get_xact_tuples_returned('webhook.delivery_log_pending_idx'::regclass)
       AS read_before \gset
SELECT (payload::jsonb)->>'n' AS n,
       endpoint_id = (SELECT id FROM webhook.endpoints ORDER BY id LIMIT 1 OFFSET rank - 1) AS in_id_order
  FROM (SELECT d.*, row_number() OVER () AS rank
          FROM webhook.due_deliveries('{}', '{}', 16, 6, '{}', '{}', '{}') AS d) AS f;
-- Read: each endpoint's first (10), then the first six endpoints' rows, at
-- most twice an even share of 6 each and at most 6 - rank (2 + 2 + 2 + 2 +
-- 2 + 1).
SELECT pg_stat_get_xact_tuples_returned('webhook.delivery_log_pending_idx'::regclass)
       - :read_before AS index_entries_read;
ROLLBACK;
