-- demo/summary.sql: the demo's summary, from SQL, after demo/story.sql.
--
-- Variable receiver_stats: the receiver's counts per path, as JSON
-- ({"/accounting": {"requests": 16, "signatures_verified": 32, ...,
--   "events_by_org": {"northwind": 16, ...}}, ...}).
-- Ends with two lines, "demo: N events, ..." and "demo: each customer's
-- endpoint ...", and fails unless every delivery succeeded, the receiver
-- saw every attempt, every signature verified, and each customer's
-- endpoint received its own customer's events alone (by the events' tenant
-- in SQL, and by the org in their data at the receiver).

\set ON_ERROR_STOP 1
\set QUIET 1
\set SHOW_CONTEXT never
\pset footer off

CREATE TEMPORARY TABLE receiver AS
SELECT r.key AS path,
       coalesce((r.value ->> 'requests')::bigint, 0) AS requests,
       coalesce((r.value ->> 'signatures_verified')::bigint, 0) AS verified,
       coalesce((r.value ->> 'signatures_rejected')::bigint, 0) AS rejected,
       coalesce((r.value ->> 'other_customers')::bigint, 0) AS other_customers
  FROM jsonb_each(:'receiver_stats'::jsonb) AS r;

-- The distinct events the receiver saw per path and org ('-': none).
CREATE TEMPORARY TABLE receiver_orgs AS
SELECT r.key AS path, o.key AS org, o.value::bigint AS events
  FROM jsonb_each(:'receiver_stats'::jsonb) AS r,
       jsonb_each_text(coalesce(r.value -> 'events_by_org', '{}')) AS o;

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
       coalesce(r.rejected, 0) AS rejected,
       coalesce(r.other_customers, 0) AS other_customers
  FROM webhook.list_webhooks() ep
  LEFT JOIN receiver r ON r.path = substring(ep.url FROM '^https?://[^/]+(/.*)$');

-- Per endpoint and customer: the events of each org ('-': none) it was
-- sent, by the events' tenant (webhook.deliveries, webhook.events), next to
-- the distinct events of that org the receiver saw there.
CREATE TEMPORARY VIEW per_endpoint_org AS
WITH ep AS (
    SELECT id, description, tenant, substring(url FROM '^https?://[^/]+(/.*)$') AS path
      FROM webhook.list_webhooks()),
sent AS (
    SELECT d.endpoint_id, coalesce(e.tenant, '-') AS org, count(*) AS deliveries
      FROM webhook.deliveries d JOIN webhook.events e ON e.id = d.event_id
     GROUP BY 1, 2)
SELECT ep.description AS endpoint, ep.tenant, o.org,
       coalesce((SELECT s.deliveries FROM sent s
                  WHERE s.endpoint_id = ep.id AND s.org = o.org), 0) AS deliveries,
       coalesce((SELECT r.events FROM receiver_orgs r
                  WHERE r.path = ep.path AND r.org = o.org), 0) AS received
  FROM ep,
       LATERAL (SELECT s.org FROM sent s WHERE s.endpoint_id = ep.id
                UNION
                SELECT r.org FROM receiver_orgs r WHERE r.path = ep.path) AS o;

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

\echo 'Events per endpoint and customer (by the event''s tenant in webhook.events; the receiver''s count of distinct events by the org in their data):'
SELECT endpoint, coalesce(tenant, '(internal)') AS "endpoint's tenant", org AS "events of",
       deliveries, received
  FROM per_endpoint_org
 ORDER BY tenant IS NULL, endpoint, org;

-- The line the TAP test reads.
\pset tuples_only on
\pset format unaligned
SELECT format('demo: %s events, %s deliveries (%s succeeded), %s retries, %s of %s signatures verified',
              (SELECT count(*) FROM webhook.events),
              sum(deliveries), sum(succeeded), sum(attempts - deliveries),
              sum(verified), sum(verified + rejected))
  FROM per_endpoint;
SELECT format('demo: each customer''s endpoint received its own events alone (%s); '
              'the internal endpoints received events of %s',
              (SELECT string_agg(format('%s %s', endpoint, received), ', ' ORDER BY endpoint)
                 FROM per_endpoint_org WHERE tenant IS NOT NULL),
              (SELECT string_agg(DISTINCT org, ' and ') FROM per_endpoint_org WHERE tenant IS NULL));

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
            SELECT endpoint, format('%s requests were events of another customer', other_customers)
              FROM per_endpoint WHERE other_customers > 0
            UNION ALL
            SELECT endpoint, format('an endpoint of %s was sent %s and received %s events of %s',
                                    tenant, deliveries, received, org)
              FROM per_endpoint_org WHERE tenant IS NOT NULL AND org <> tenant
            UNION ALL
            SELECT endpoint, format('%s events of %s sent but %s received', deliveries, org, received)
              FROM per_endpoint_org WHERE deliveries <> received
            UNION ALL
            SELECT 'queue', 'deliveries are still pending'
              FROM webhook.queue_status WHERE pending_due + pending_scheduled + pending_parked > 0) AS p;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'demo: %', problem;
    END IF;
END
$$;
