--
-- The Citus functions and views on a server without Citus (make test-citus
-- runs them on a cluster): the catalog trigger does nothing, the cluster
-- views and sync_catalog_to_nodes say Citus is needed, and what a worker
-- node applies from the coordinator (apply_catalog_change) works here as
-- there: an endpoint's configuration becomes the coordinator's, its
-- delivery state stays, its pending deliveries follow.
--
\set SHOW_CONTEXT never
SET datestyle = ISO;

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;

-- Without Citus, managing endpoints is as ever (the trigger is a no-op).
SELECT id AS ep FROM webhook.create_webhook('https://example.com/a') \gset
SELECT count(*) AS endpoints FROM webhook.endpoints;

SELECT * FROM outcome('SELECT webhook.sync_catalog_to_nodes()');
SELECT * FROM outcome('SELECT * FROM webhook.cluster_deliveries');
SELECT * FROM outcome('SELECT * FROM webhook.cluster_endpoint_health');

-- node_rows: one of the history or operator views as JSON, in a tenant's
-- scope; never another relation (webhook.endpoints holds the secrets).
SELECT webhook.emit('period.closed', '{"n": 1}', tenant => 'acme') IS NOT NULL AS emitted;
SELECT webhook.emit('period.closed', '{"n": 2}', tenant => 'other') IS NOT NULL AS emitted;
SELECT json_array_length(webhook.node_rows('events', NULL)) AS every_tenant,
       json_array_length(webhook.node_rows('events', 'acme')) AS acme;
SELECT r.tenant FROM json_populate_recordset(NULL::webhook.events,
                                             webhook.node_rows('events', 'acme')) r;
SELECT * FROM outcome($$SELECT webhook.node_rows('endpoints', NULL)$$);
SELECT * FROM outcome($$SELECT webhook.node_rows(NULL, NULL)$$);

-- apply_catalog_change, as a worker node runs it. A new endpoint, as the
-- coordinator's row:
SELECT to_jsonb(e) || '{"id": "01a2244c-0000-7000-8000-000000000001", "url": "https://example.com/b"}'
       AS row FROM webhook.endpoints e WHERE e.id = :'ep' \gset
SELECT webhook.apply_catalog_change('endpoints', 'UPSERT', :'row');
SELECT url, enabled, secret = (SELECT secret FROM webhook.endpoints WHERE id = :'ep') AS same_secret
  FROM webhook.endpoints WHERE id = '01a2244c-0000-7000-8000-000000000001';

-- A pending delivery of it, failing here since a while:
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, attempts, next_attempt_at)
SELECT e.id, '01a2244c-0000-7000-8000-000000000001', e.event_type, 1, now() + interval '1 hour'
  FROM webhook.event_log e WHERE e.tenant = 'acme';
UPDATE webhook.endpoints SET failing_since = '2026-01-01 00:00+00'
 WHERE id = '01a2244c-0000-7000-8000-000000000001';

-- Disabled on the coordinator: disabled here, its delivery parked, its
-- failing_since (this node's delivery state) kept.
SELECT webhook.apply_catalog_change('endpoints', 'UPSERT',
       jsonb_set(:'row', '{enabled}', 'false'));
SELECT e.enabled, e.failing_since, d.next_attempt_at
  FROM webhook.endpoints e JOIN webhook.delivery_log d ON d.endpoint_id = e.id
 WHERE e.id = '01a2244c-0000-7000-8000-000000000001';

-- Enabled again at another URL: due now, its failures forgiven.
SELECT webhook.apply_catalog_change('endpoints', 'UPSERT',
       jsonb_set(:'row', '{url}', '"https://example.com/c"'));
SELECT e.url, e.enabled, e.failing_since, d.next_attempt_at <= now() AS due
  FROM webhook.endpoints e JOIN webhook.delivery_log d ON d.endpoint_id = e.id
 WHERE e.id = '01a2244c-0000-7000-8000-000000000001';

-- Deleted on the coordinator: gone here, its pending delivery cancelled.
SELECT webhook.apply_catalog_change('endpoints', 'DELETE', :'row');
SELECT count(*) AS left FROM webhook.endpoints WHERE id = '01a2244c-0000-7000-8000-000000000001';
SELECT status, last_error FROM webhook.delivery_log
 WHERE endpoint_id = '01a2244c-0000-7000-8000-000000000001';

-- Event types; the whole catalog at once (webhook.sync_catalog_to_nodes):
-- what the coordinator has not is removed, what it has is added.
SELECT webhook.apply_catalog_change('event_types', 'UPSERT',
       '{"name": "invoice.paid", "description": "An invoice was paid"}');
SELECT name, description FROM webhook.event_types WHERE name = 'invoice.paid';
SELECT webhook.catalog_snapshot() AS snapshot \gset
SELECT webhook.apply_catalog_change('event_types', 'DELETE', '{"name": "invoice.paid"}');
SELECT id IS NOT NULL AS stray FROM webhook.create_webhook('https://example.com/stray');
SELECT webhook.apply_catalog_change('catalog', 'REPLACE', :'snapshot');
SELECT url FROM webhook.endpoints ORDER BY url;
SELECT count(*) AS invoice_paid FROM webhook.event_types WHERE name = 'invoice.paid';
DELETE FROM webhook.event_types WHERE name = 'invoice.paid';

SELECT * FROM outcome($$SELECT webhook.apply_catalog_change('tables', 'UPSERT', '{}')$$);
SELECT * FROM outcome($$SELECT webhook.apply_catalog_change('endpoints', NULL, '{}')$$);

-- Superuser only (it writes endpoints with their secrets).
SELECT has_function_privilege('public', 'webhook.apply_catalog_change(text, text, jsonb)', 'EXECUTE')
       AS public_may_apply;

DELETE FROM webhook.delivery_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
