--
-- Tenants (since 0.2): endpoints of a tenant, sessions scoped by
-- webhook.tenant, and what each relation and function shows in them.
--
-- An event of tenant T goes to the endpoints of T and to those without a
-- tenant (internal consumers); an event without a tenant goes to the
-- latter only. SET webhook.tenant = 'T' scopes a session: it creates
-- endpoints of T, and sees T's endpoints and history rows alone; another
-- tenant's endpoint, or one without a tenant, "does not exist" there.
--
-- The worker does not serve the regression database: events are
-- dispatched by hand (webhook.dispatch_new_events takes committed events),
-- and nothing is sent. Ids and times differ on every run: errors are shown
-- with them replaced by <id> and <time>.
--
\set SHOW_CONTEXT never
SET datestyle = ISO;

-- Runs a statement and reports how it ended: 00000, or the SQLSTATE,
-- message, detail and hint of its error, ids and times masked.
CREATE FUNCTION pg_temp.attempt(statement text,
                                OUT code text, OUT message text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    code := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    message := regexp_replace(regexp_replace(message,
                   '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<id>', 'g'),
                   '\d{4}-\d\d-\d\d [0-9:.+-]+( [A-Z]+)?', '<time>', 'g');
    detail := nullif(detail, '');
    hint := nullif(hint, '');
END
$$;

-- Events emitted by the files before this one are dispatched now, before
-- this file's endpoints exist; the history below is this file's.
SELECT FROM webhook.dispatch_new_events(1000000);
SELECT clock_timestamp() AS mark \gset

--
-- create_webhook(..., tenant, ordered, rate_limit, expires_at): the new
-- columns come after secret, and after updated_at in list_webhooks and
-- get_webhook.
--
-- (LIMIT 0: the columns alone; the function does not even run.)
SELECT * FROM webhook.create_webhook('https://example.com/columns') LIMIT 0;
SELECT * FROM webhook.list_webhooks() LIMIT 0;

-- A tenant given ...
SELECT url, tenant, ordered, rate_limit, expires_at
  FROM webhook.create_webhook('https://example.com/northwind/1', tenant => 'northwind');
SELECT id AS n1 FROM webhook.endpoints WHERE url = 'https://example.com/northwind/1' \gset
-- ... or the session's (webhook.tenant), when none is given; given, it
-- must be the session's: a scoped session creates endpoints of its own
-- tenant only.
SET webhook.tenant = 'contoso';
SELECT url, tenant FROM webhook.create_webhook('https://example.com/contoso/1');
SELECT url, tenant, ordered, rate_limit
  FROM webhook.create_webhook('https://example.com/contoso/2', tenant => 'contoso',
                              ordered => false, rate_limit => 50);
SELECT a.* FROM pg_temp.attempt($$SELECT webhook.create_webhook('https://example.com/x',
                                                                tenant => 'northwind')$$) a;
SELECT a.* FROM pg_temp.attempt($$SELECT webhook.create_webhook('https://example.com/x',
                                                                tenant => '')$$) a;
RESET webhook.tenant;
SELECT id AS c1 FROM webhook.endpoints WHERE url = 'https://example.com/contoso/1' \gset
SELECT id AS c2 FROM webhook.endpoints WHERE url = 'https://example.com/contoso/2' \gset
-- The empty string is no tenant, given or as webhook.tenant: an internal
-- endpoint, which receives every tenant's events.
SELECT url, tenant FROM webhook.create_webhook('https://example.com/internal', tenant => '');
SELECT id AS internal FROM webhook.endpoints WHERE url = 'https://example.com/internal' \gset
SET webhook.tenant = '';
SELECT url, tenant FROM webhook.create_webhook('https://example.com/audit');
RESET webhook.tenant;
SELECT webhook.delete_webhook(id) AS deleted FROM webhook.endpoints
 WHERE url = 'https://example.com/audit';

-- Checks: a tenant of at most 255 characters; ordered not NULL; a rate
-- limit of 1 to 100000 requests per second (NULL: none); an expiry time
-- still to come ('infinity' and NULL: none). Nothing is created.
BEGIN;
SELECT label, a.*
  FROM (VALUES ('tenant of 255',     format('SELECT webhook.create_webhook(%L, tenant => %L)',
                                            'https://example.com/x', repeat('t', 255))),
               ('tenant of 256',     format('SELECT webhook.create_webhook(%L, tenant => %L)',
                                            'https://example.com/x', repeat('t', 256))),
               ('ordered NULL',      $$SELECT webhook.create_webhook('https://example.com/x', ordered => NULL)$$),
               ('ordered',            $$SELECT webhook.create_webhook('https://example.com/x', ordered => true)$$),
               ('rate_limit 1',      $$SELECT webhook.create_webhook('https://example.com/x', rate_limit => 1)$$),
               ('rate_limit 100000', $$SELECT webhook.create_webhook('https://example.com/x', rate_limit => 100000)$$),
               ('rate_limit 0',      $$SELECT webhook.create_webhook('https://example.com/x', rate_limit => 0)$$),
               ('rate_limit -5',     $$SELECT webhook.create_webhook('https://example.com/x', rate_limit => -5)$$),
               ('rate_limit 100001', $$SELECT webhook.create_webhook('https://example.com/x', rate_limit => 100001)$$),
               ('expires tomorrow',  $$SELECT webhook.create_webhook('https://example.com/x',
                                                                     expires_at => now() + interval '1 day')$$),
               ('expires infinity',  $$SELECT webhook.create_webhook('https://example.com/x', expires_at => 'infinity')$$),
               ('expires now',       $$SELECT webhook.create_webhook('https://example.com/x', expires_at => now())$$),
               ('expired',           $$SELECT webhook.create_webhook('https://example.com/x',
                                                                     expires_at => now() - interval '1 hour')$$),
               ('expires -infinity', $$SELECT webhook.create_webhook('https://example.com/x', expires_at => '-infinity')$$)
       ) AS t(label, statement),
       pg_temp.attempt(statement) AS a;
SELECT count(*) AS created, count(*) FILTER (WHERE expires_at IS NULL) AS without_expiry,
       count(*) FILTER (WHERE expires_at = now() + interval '1 day') AS expiring_tomorrow
  FROM webhook.endpoints WHERE url = 'https://example.com/x';
ROLLBACK;

--
-- A scoped session sees its tenant's endpoints alone.
--
SET webhook.tenant = 'northwind';
SELECT url, tenant FROM webhook.list_webhooks();
SELECT url, tenant FROM webhook.get_webhook(:'n1');
-- Another tenant's endpoint, and one without a tenant, do not exist here:
-- each function refuses them with the error of an unknown id.
SELECT fn, target, a.code, a.message
  FROM (VALUES ('get_webhook',    'SELECT webhook.get_webhook(%L)'),
               ('update_webhook', 'SELECT webhook.update_webhook(%L, description => ''mine now'')'),
               ('rotate_secret',  'SELECT webhook.rotate_secret(%L)'),
               ('replay',         'SELECT webhook.replay(%L, ''-infinity'')'),
               ('retry_delivery', 'SELECT webhook.retry_delivery(webhook.uuid_v7(), %L)')) AS f(fn, statement),
       (VALUES ('contoso', :'c1'::uuid), ('internal', :'internal'),
               ('unknown', '00000000-0000-7000-8000-000000000000')) AS e(target, id),
       pg_temp.attempt(format(statement, id)) AS a
 ORDER BY fn, target;
SELECT webhook.delete_webhook(:'c1') AS deleted_contoso,
       webhook.delete_webhook(:'internal') AS deleted_internal;
RESET webhook.tenant;
-- Untouched.
SELECT url, tenant, description, previous_secret IS NULL AS never_rotated
  FROM webhook.endpoints WHERE id IN (:'c1', :'internal') ORDER BY url;
-- Unscoped, every endpoint is seen.
SELECT url, tenant FROM webhook.list_webhooks() WHERE created_at >= :'mark' ORDER BY url;

--
-- update_webhook(..., ordered, rate_limit, expires_at): PATCH semantics, a
-- NULL argument leaves the field as it is. rate_limit 0 removes the limit;
-- expires_at 'infinity' removes the expiry. The tenant never changes: it
-- is no argument.
--
SET webhook.tenant = 'northwind';
SELECT ordered FROM webhook.update_webhook(:'n1', ordered => true);
SELECT ordered, rate_limit, expires_at FROM webhook.update_webhook(:'n1', ordered => false);
SELECT ordered, rate_limit FROM webhook.update_webhook(:'n1', rate_limit => 10);
SELECT ordered, rate_limit, description
  FROM webhook.update_webhook(:'n1', description => 'Northwind ERP');
BEGIN;
SELECT expires_at = now() + interval '30 days' AS expires_in_30_days
  FROM webhook.update_webhook(:'n1', expires_at => now() + interval '30 days');
COMMIT;
SELECT ordered, rate_limit, expires_at IS NOT NULL AS expires, tenant
  FROM webhook.update_webhook(:'n1');
SELECT ordered, rate_limit, expires_at
  FROM webhook.update_webhook(:'n1', ordered => false, rate_limit => 0, expires_at => 'infinity');
SELECT label, a.*
  FROM (VALUES ('rate_limit -1',     'SELECT webhook.update_webhook(%L, rate_limit => -1)'),
               ('rate_limit 100001', 'SELECT webhook.update_webhook(%L, rate_limit => 100001)'),
               ('expired',           'SELECT webhook.update_webhook(%L, expires_at => now() - interval ''1 second'')'),
               ('expires -infinity', 'SELECT webhook.update_webhook(%L, expires_at => ''-infinity'')'),
               ('tenant',            'SELECT webhook.update_webhook(%L, tenant => ''contoso'')')
       ) AS t(label, statement),
       pg_temp.attempt(format(statement, :'n1')) AS a;
RESET webhook.tenant;

-- An endpoint past its expiry time receives nothing more, and the worker
-- disables it (reason 'expired'; done here by hand, as the worker does at
-- each poll). It is not enabled again unless its expiry time moves.
UPDATE webhook.endpoints SET expires_at = now() - interval '1 minute' WHERE id = :'c2';
SELECT count(*) AS disabled FROM webhook.disable_expired_endpoints() AS d(id) WHERE d.id = :'c2';
SELECT enabled, disabled_reason FROM webhook.get_webhook(:'c2');
SELECT a.* FROM pg_temp.attempt(format('SELECT webhook.update_webhook(%L, enabled => true)', :'c2')) a;
SELECT a.* FROM pg_temp.attempt(format('SELECT webhook.update_webhook(%L, expires_at => %L)',
                                       :'c2', 'infinity')) a;
SELECT enabled, disabled_reason, expires_at FROM webhook.get_webhook(:'c2');
SELECT enabled, disabled_reason, expires_at FROM webhook.update_webhook(:'c2', enabled => true);

--
-- Routing. Three events, committed: one of each tenant, one without.
-- Dispatch sends northwind's to n1 and the internal endpoint, contoso's to
-- c1, c2 and the internal endpoint, and the one without a tenant to the
-- internal endpoint only.
--
SELECT webhook.emit('journal_entry.posted', '{"entry": "N-1"}', tenant => 'northwind') AS en \gset
SELECT webhook.emit('journal_entry.posted', '{"entry": "C-1"}', tenant => 'contoso') AS ec \gset
SELECT webhook.emit('period.closed', '{"period": "2026-10"}') AS e0 \gset
SELECT events FROM webhook.dispatch_new_events(1000000);
CREATE TEMP VIEW names (id, name) AS
    VALUES (:'en'::uuid, 'en'), (:'ec', 'ec'), (:'e0', 'e0'),
           (:'n1', 'n1'), (:'c1', 'c1'), (:'c2', 'c2'), (:'internal', 'internal');
SELECT e.name AS event, p.name AS endpoint, d.tenant, d.status
  FROM webhook.deliveries d
  JOIN names e ON e.id = d.event_id
  JOIN names p ON p.id = d.endpoint_id
 ORDER BY 1, 2;

-- retry_delivery sends an event only where dispatch could have, whatever
-- the session: an endpoint of a tenant receives that tenant's events alone.
SELECT e.name AS event, p.name AS endpoint, a.code, a.message, a.detail
  FROM names e, names p,
       pg_temp.attempt(format('SELECT webhook.retry_delivery(%L, %L)', e.id, p.id)) AS a
 WHERE e.name LIKE 'e%' AND p.name IN ('n1', 'internal')
 ORDER BY 1, 2;
-- A scoped session also sees its tenant's events alone: another tenant's
-- event, or one without a tenant, does not exist there.
SET webhook.tenant = 'northwind';
SELECT e.name AS event, p.name AS endpoint, a.code, a.message
  FROM names e, names p,
       pg_temp.attempt(format('SELECT webhook.retry_delivery(%L, %L)', e.id, p.id)) AS a
 WHERE e.name LIKE 'e%' AND p.name IN ('n1', 'c1', 'internal')
 ORDER BY 1, 2;
RESET webhook.tenant;
-- A delivery queued by hand is its endpoint's tenant's, as dispatch's are.
SELECT e.name AS event, p.name AS endpoint, d.tenant, d.status
  FROM webhook.deliveries d
  JOIN names e ON e.id = d.event_id
  JOIN names p ON p.id = d.endpoint_id
 ORDER BY 1, 2;

-- replay chooses the events dispatch could have sent to the endpoint: for
-- an endpoint of a tenant, that tenant's; for one without, all of them.
-- (Endpoints created after the dispatch, so that they have none yet.)
SELECT id AS n2 FROM webhook.create_webhook('https://example.com/northwind/2', tenant => 'northwind') \gset
SELECT id AS internal2 FROM webhook.create_webhook('https://example.com/internal/2') \gset
SELECT webhook.replay(:'n2', :'mark') AS queued_for_n2,
       webhook.replay(:'internal2', :'mark') AS queued_for_internal2;
SELECT e.name AS event, d.endpoint_id = :'n2' AS to_n2, d.tenant
  FROM webhook.deliveries d JOIN names e ON e.id = d.event_id
 WHERE d.endpoint_id IN (:'n2', :'internal2')
 ORDER BY 2 DESC, 1;
-- In a scoped session likewise (an endpoint of another tenant does not
-- exist there, see above).
SET webhook.tenant = 'northwind';
UPDATE webhook.delivery_log SET status = 'failed', next_attempt_at = NULL
 WHERE endpoint_id = :'n2';
SELECT webhook.replay(:'n2', :'mark') AS queued_again_for_n2;
RESET webhook.tenant;

--
-- The history relations are scoped. Attempts as the worker records them
-- (written here by hand): each is its delivery's tenant's.
--
INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at, duration_ms,
                                 status_code, error, response_body, manual, tenant)
SELECT d.event_id, d.endpoint_id, 1, now(), 10, code, NULL, 'body', false, d.tenant
  FROM webhook.delivery_log d,
       (VALUES (:'en'::uuid, :'n1'::uuid, 200), (:'en', :'internal', 500),
               (:'ec', :'c1', 503), (:'e0', :'internal', 200)) AS a(event_id, endpoint_id, code)
 WHERE (d.event_id, d.endpoint_id) = (a.event_id, a.endpoint_id);
UPDATE webhook.endpoints SET failing_since = now() WHERE id IN (:'c1', :'internal');

-- Unscoped: everything.
SELECT (SELECT count(*) FROM webhook.events WHERE created_at >= :'mark') AS events,
       (SELECT count(*) FROM webhook.deliveries WHERE created_at >= :'mark') AS deliveries,
       (SELECT count(*) FROM webhook.attempts WHERE started_at >= :'mark') AS attempts;
-- Scoped to northwind: its events, and the deliveries and attempts to its
-- endpoints -- not those of its events to the internal endpoint.
SET webhook.tenant = 'northwind';
SELECT e.name AS event, v.tenant FROM webhook.events v JOIN names e ON e.id = v.id;
SELECT e.name AS event, coalesce(p.name, 'n2') AS endpoint, d.tenant
  FROM webhook.deliveries d JOIN names e ON e.id = d.event_id
  LEFT JOIN names p ON p.id = d.endpoint_id
 ORDER BY 1, 2;
SELECT e.name AS event, p.name AS endpoint, a.status_code, a.tenant
  FROM webhook.attempts a JOIN names e ON e.id = a.event_id JOIN names p ON p.id = a.endpoint_id;
-- Scoped to contoso.
SET webhook.tenant = 'contoso';
SELECT e.name AS event, v.tenant FROM webhook.events v JOIN names e ON e.id = v.id;
SELECT e.name AS event, p.name AS endpoint, d.tenant
  FROM webhook.deliveries d JOIN names e ON e.id = d.event_id JOIN names p ON p.id = d.endpoint_id
 ORDER BY 1, 2;
SELECT e.name AS event, p.name AS endpoint, a.status_code, a.tenant
  FROM webhook.attempts a JOIN names e ON e.id = a.event_id JOIN names p ON p.id = a.endpoint_id;
-- A tenant with nothing sees nothing.
SET webhook.tenant = 'nobody';
SELECT (SELECT count(*) FROM webhook.events) AS events,
       (SELECT count(*) FROM webhook.deliveries) AS deliveries,
       (SELECT count(*) FROM webhook.attempts) AS attempts;
RESET webhook.tenant;

--
-- The operator's views. endpoint_health has the endpoint's tenant and is
-- scoped like the history.
--
SET webhook.tenant = 'contoso';
SELECT url, tenant, enabled, failing_since IS NOT NULL AS failing, pending, succeeded, failed
  FROM webhook.endpoint_health ORDER BY url;
RESET webhook.tenant;
SELECT url, tenant, pending, succeeded, failed
  FROM webhook.endpoint_health WHERE id IN (:'n1', :'internal') ORDER BY url;

-- queue_status, scoped, counts the tenant's deliveries (those to its
-- endpoints) and attempts, and the events emitted for it: of those,
-- undispatched_events are the tenant's events that the worker has not yet
-- turned into deliveries.
SELECT webhook.emit('account.created', '{"account": "C-4000"}', tenant => 'contoso') AS ec2 \gset
SET webhook.tenant = 'contoso';
SELECT pending_due, pending_scheduled, pending_parked, oldest_pending_age IS NOT NULL AS has_oldest,
       undispatched_events, events_last_minute, attempts_last_minute, delivered_last_minute
  FROM webhook.queue_status;
SET webhook.tenant = 'nobody';
SELECT pending_due, pending_scheduled, pending_parked, oldest_pending_age,
       undispatched_events, events_last_minute, attempts_last_minute, delivered_last_minute
  FROM webhook.queue_status;
RESET webhook.tenant;
SELECT events FROM webhook.dispatch_new_events(1000000);

-- queue_status_by_tenant: a row per tenant (NULL: the endpoints without a
-- tenant), so that an operator sees whose endpoints fail. It reads the
-- endpoints, the pending deliveries and the last minute's attempts only.
SELECT tenant, endpoints, failing_endpoints, disabled_endpoints, pending_due,
       pending_scheduled, pending_parked, oldest_pending_age IS NOT NULL AS has_oldest,
       attempts_last_minute, failed_last_minute
  FROM webhook.queue_status_by_tenant
 WHERE tenant IN ('northwind', 'contoso')
 ORDER BY tenant;
SET webhook.tenant = 'northwind';
SELECT tenant, endpoints, pending_due FROM webhook.queue_status_by_tenant;
RESET webhook.tenant;

--
-- A role granted SELECT on the views (never on the tables) sees the same
-- scoped rows: every view calls only functions any role may call.
--
CREATE ROLE regress_tenants_reader;
GRANT USAGE ON SCHEMA webhook TO regress_tenants_reader;
GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts, webhook.endpoint_health,
                webhook.queue_status, webhook.queue_status_by_tenant TO regress_tenants_reader;
GRANT SELECT ON names TO regress_tenants_reader;
SET ROLE regress_tenants_reader;
SET webhook.tenant = 'northwind';
SELECT (SELECT string_agg(e.name, ',' ORDER BY e.name) FROM webhook.events v
          JOIN names e ON e.id = v.id) AS events,
       (SELECT count(*) FROM webhook.deliveries WHERE created_at >= :'mark') AS deliveries,
       (SELECT count(*) FROM webhook.attempts WHERE started_at >= :'mark') AS attempts,
       (SELECT string_agg(url, ',' ORDER BY url) FROM webhook.endpoint_health) AS endpoints,
       (SELECT pending_due FROM webhook.queue_status) AS pending_due,
       (SELECT string_agg(tenant, ',') FROM webhook.queue_status_by_tenant) AS tenants;
RESET webhook.tenant;
SELECT (SELECT count(*) FROM webhook.events WHERE created_at >= :'mark') AS events,
       (SELECT count(*) FROM webhook.deliveries WHERE created_at >= :'mark') AS deliveries,
       (SELECT count(*) FROM webhook.attempts WHERE started_at >= :'mark') AS attempts;
SELECT a.code, a.message FROM pg_temp.attempt('SELECT * FROM webhook.delivery_log') a;
RESET ROLE;

-- Clean up.
DROP VIEW names;
DROP OWNED BY regress_tenants_reader;
DROP ROLE regress_tenants_reader;
SELECT count(*) AS deleted FROM webhook.endpoints e
 WHERE e.created_at >= :'mark' AND webhook.delete_webhook(e.id);
DELETE FROM webhook.attempt_log WHERE event_id IN (:'en', :'ec', :'e0', :'ec2');
DELETE FROM webhook.event_log WHERE id IN (:'en', :'ec', :'e0', :'ec2');
