-- demo/summary.sql: the demo's summary, from SQL, after demo/story.sql.
--
-- Variable receiver_stats: the receiver's counts per path, as JSON
-- ({"/accounting": {"requests": 16, "signatures_verified": 32, ...}, ...}).
-- Ends with one line, "demo: N events, ...", and fails unless every
-- delivery succeeded, the receiver saw every attempt, and every signature
-- verified.

\set ON_ERROR_STOP 1
\set QUIET 1
\set SHOW_CONTEXT never
\pset footer off

CREATE TEMPORARY TABLE receiver AS
SELECT r.key AS path,
       coalesce((r.value ->> 'requests')::bigint, 0) AS requests,
       coalesce((r.value ->> 'signatures_verified')::bigint, 0) AS verified,
       coalesce((r.value ->> 'signatures_rejected')::bigint, 0) AS rejected
  FROM jsonb_each(:'receiver_stats'::jsonb) AS r;

-- Per endpoint: what the database says, next to what the receiver saw.
CREATE TEMPORARY VIEW per_endpoint AS
SELECT ep.description AS endpoint,
       coalesce(array_to_string(ep.event_types, ', '), 'every event') AS subscribed_to,
       (SELECT count(*) FROM webhook.deliveries d WHERE d.endpoint_id = ep.id) AS deliveries,
       (SELECT count(*) FROM webhook.deliveries d
         WHERE d.endpoint_id = ep.id AND d.status = 'succeeded') AS succeeded,
       (SELECT count(*) FROM webhook.attempts a WHERE a.endpoint_id = ep.id) AS attempts,
       coalesce(r.requests, 0) AS received,
       coalesce(r.verified, 0) AS verified,
       coalesce(r.rejected, 0) AS rejected
  FROM webhook.list_webhooks() ep
  LEFT JOIN receiver r ON r.path = substring(ep.url FROM '^https?://[^/]+(/.*)$');

\echo 'Events recorded (webhook.events):'
SELECT event_type AS "event type", count(*) AS events
  FROM webhook.events
 GROUP BY event_type
 ORDER BY min(created_at);

\echo 'Deliveries per endpoint (webhook.deliveries and webhook.attempts; the receiver''s own counts):'
SELECT endpoint, subscribed_to AS "subscribed to", deliveries, succeeded,
       attempts, attempts - deliveries AS retries,
       received AS "received", format('%s of %s', verified, verified + rejected) AS "signatures verified"
  FROM per_endpoint
 ORDER BY endpoint;

-- The line the TAP test reads.
\pset tuples_only on
\pset format unaligned
SELECT format('demo: %s events, %s deliveries (%s succeeded), %s retries, %s of %s signatures verified',
              (SELECT count(*) FROM webhook.events),
              sum(deliveries), sum(succeeded), sum(attempts - deliveries),
              sum(verified), sum(verified + rejected))
  FROM per_endpoint;

-- Stop with an error unless all went as it should.
DO $$
DECLARE
    problem text;
BEGIN
    SELECT string_agg(format('%s: %s', endpoint, what), '; ') INTO problem
      FROM (SELECT endpoint, 'not every delivery succeeded' AS what
              FROM per_endpoint WHERE succeeded <> deliveries
            UNION ALL
            SELECT endpoint, format('%s attempts recorded but %s requests received', attempts, received)
              FROM per_endpoint WHERE attempts <> received
            UNION ALL
            SELECT endpoint, format('%s signatures did not verify', rejected)
              FROM per_endpoint WHERE rejected > 0 OR verified <> 2 * received
            UNION ALL
            SELECT 'queue', 'deliveries are still pending'
              FROM webhook.queue_status WHERE pending_due + pending_scheduled + pending_parked > 0) AS p;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'demo: %', problem;
    END IF;
END
$$;
