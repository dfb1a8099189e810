--
-- Operational events (since 0.2): the extension's own events, under the
-- reserved prefix webhook.: webhook.endpoint.disabled (410 Gone,
-- continuous failure, expiry, by hand) and webhook.delivery.failed (a
-- delivery's schedule exhausted). Each is recorded in the transaction of
-- the change it reports, with the tenant of the endpoint concerned, and is
-- delivered like any other event to the endpoints that name it in their
-- filter, never to the endpoint it is about.
--
-- The worker does not serve the regression database: outcomes are recorded
-- by hand with webhook.record_attempts, as the worker records them, and
-- events are dispatched by hand. Ids and times differ on every run: the
-- payloads are shown with the ids replaced by names, and the times by
-- <time>.
--
\set SHOW_CONTEXT never
SET datestyle = ISO;

-- Events emitted by the files before this one are dispatched now, before
-- this file's endpoints exist.
SELECT FROM webhook.dispatch_new_events(1000000);
DELETE FROM webhook.attempt_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;

--
-- The catalog: two shipped entries under webhook.
--
SELECT name, description FROM webhook.event_types WHERE name LIKE 'webhook.%' ORDER BY name;

-- The prefix is reserved: no user registers a name under it.
SELECT * FROM outcome($$SELECT webhook.register_event_type('webhook.endpoint.created')$$);
SELECT webhook.register_event_type('webhook.endpoint.disabled', 'mine');
\echo :LAST_ERROR_SQLSTATE
-- (a name merely starting with "webhook" is not under the prefix)
SELECT webhook.register_event_type('webhooks.received');
DELETE FROM webhook.event_types WHERE name = 'webhooks.received';

--
-- Subscribing. Operational events go to the endpoints that name them, by
-- type or by a pattern: an endpoint subscribed to every event (NULL or
-- '{}') does not receive them, so that existing catch-all consumers do not
-- suddenly get the extension's own events.
--
SELECT coalesce(f.filter::text, 'NULL') AS filter, t.event_type,
       webhook.filter_matches(f.filter, t.event_type) AS matches
  FROM (VALUES (NULL::text[]), ('{}'), ('{webhook.*}'), ('{webhook.endpoint.*}'),
               ('{webhook.delivery.failed}'), ('{journal_entry.*}')) AS f(filter),
       (VALUES ('journal_entry.posted'), ('webhook.endpoint.disabled'),
               ('webhook.delivery.failed')) AS t(event_type)
 ORDER BY 1, 2;
-- filter_matches is C; it answers as the SQL expression it replaced (0.1's
-- rule, which 0.2 changed only for operational events), NULLs included,
-- over filters and types that test each of its branches.
CREATE FUNCTION pg_temp.filter_matches_sql(event_types text[], event_type text)
RETURNS boolean LANGUAGE sql IMMUTABLE
RETURN CASE WHEN event_types IS NULL OR cardinality(event_types) = 0
            THEN NOT starts_with(event_type, 'webhook.')
            ELSE event_type = ANY (event_types)
                 OR EXISTS (SELECT 1 FROM unnest(event_types) AS p
                             WHERE p LIKE '%.*'
                               AND starts_with(event_type, left(p, -1)))
       END;
SELECT count(*) AS cases,
       count(*) FILTER (WHERE webhook.filter_matches(f.filter, t.event_type)
                              IS DISTINCT FROM pg_temp.filter_matches_sql(f.filter, t.event_type))
           AS disagreements,
       count(*) FILTER (WHERE webhook.filter_matches(f.filter, t.event_type)) AS matched,
       count(*) FILTER (WHERE webhook.filter_matches(f.filter, t.event_type) IS NULL) AS unknown
  FROM (VALUES (NULL::text[]), ('{}'), ('{a.b}'), ('{a.*}'), ('{a.b.*}'),
               ('{.*}'), ('{*}'), ('{a*}'), ('{a.}'), ('{x.y,a.*}'), ('{a.b.c}'),
               ('{NULL}'), ('{NULL,a.b}'), ('{NULL,a.*}'), ('{webhook.*}'),
               ('{journal_entry.*,webhook.endpoint.*}'), ('{é.*}'), ('{{a.b,x.*},{c.d,e.f}}'),
               ('[0:1]={q.r,a.b}')) AS f(filter),
       (VALUES (NULL::text), (''), ('a'), ('a.'), ('a.b'), ('a.b.c'), ('ab.c'), ('x.y'),
               ('webhook.'), ('webhook.endpoint.disabled'), ('webhooks.x'),
               ('journal_entry.posted'), ('é.x'), ('.x')) AS t(event_type);

-- The endpoints of this file:
--   ops      no tenant, every operational event: it hears about every tenant's endpoints
--   acme_ops tenant acme, webhook.endpoint.* only
--   globex_ops tenant globex, every operational event (of its tenant)
--   all      no tenant, every event (NULL filter): no operational event
--   ledger   tenant acme, journal entries and every operational event,
--            with credentials in its URL, a secret and a header
--   books    no tenant, journal entries
SELECT id AS ops FROM webhook.create_webhook('https://ops.example.com/hooks',
           event_types => ARRAY['webhook.*'], description => 'operations') \gset
SELECT id AS acme_ops FROM webhook.create_webhook('https://ops.acme.example.com/',
           event_types => ARRAY['webhook.endpoint.*'], tenant => 'acme') \gset
SELECT id AS globex_ops FROM webhook.create_webhook('https://ops.globex.example.com/',
           event_types => ARRAY['webhook.*'], tenant => 'globex') \gset
SELECT id AS all FROM webhook.create_webhook('https://all.example.com/') \gset
SELECT id AS ledger FROM webhook.create_webhook(
           'https://hook-user:s3cret-pa55@ledger.example.com/in',
           event_types => ARRAY['journal_entry.*', 'webhook.*'],
           secret => 'whsec_c2VjcmV0LXNpZ25pbmcta2V5LXZhbHVlIQ==',
           headers => '{"Authorization": "Bearer t0ken-value"}',
           description => 'ledger sync', tenant => 'acme') \gset
SELECT id AS books FROM webhook.create_webhook('https://books.example.com/',
           event_types => ARRAY['journal_entry.*']) \gset

CREATE TEMP TABLE names (id uuid PRIMARY KEY, name text);
INSERT INTO names VALUES (:'ops', 'ops'), (:'acme_ops', 'acme_ops'),
    (:'globex_ops', 'globex_ops'), (:'all', 'all'), (:'ledger', 'ledger'),
    (:'books', 'books');

-- A payload as shown here: known ids replaced by their names, times by
-- <time>, the name of the role that disabled an endpoint by <user>.
CREATE FUNCTION pg_temp.shown(payload jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_text text := jsonb_pretty(payload);
    v_name record;
BEGIN
    FOR v_name IN SELECT n.id, n.name FROM names n LOOP
        v_text := replace(v_text, v_name.id::text, '<' || v_name.name || '>');
    END LOOP;
    v_text := regexp_replace(v_text, '\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z', '<time>', 'g');
    RETURN regexp_replace(v_text, '"disabled by [^"]*"', '"disabled by <user>"');
END
$$;

-- One outcome recorded as the worker records it (webhook.record_attempts).
CREATE FUNCTION pg_temp.record(event uuid, endpoint uuid, attempt integer,
                               status_code integer, error text, outcome text,
                               started timestamptz DEFAULT now(),
                               disable_after interval DEFAULT '5 days')
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook.record_attempts(
        ARRAY[event], ARRAY[endpoint], ARRAY[attempt], ARRAY[started], ARRAY[5.0::float8],
        ARRAY[status_code], ARRAY[error], ARRAY['response'], ARRAY[false], ARRAY[outcome],
        ARRAY[CASE WHEN outcome = 'retry' THEN now() + interval '1 minute' END],
        ARRAY[0], ARRAY[(SELECT e.tenant FROM webhook.endpoints e WHERE e.id = endpoint)],
        disable_after);
END
$$;

-- The operational events recorded since the last call.
CREATE TEMP TABLE seen (id uuid PRIMARY KEY);
CREATE FUNCTION pg_temp.new_events(OUT event_type text, OUT tenant text, OUT about text,
                                   OUT payload text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
        SELECT e.event_type, e.tenant, n.name, pg_temp.shown(e.payload)
          FROM webhook.event_log e
          LEFT JOIN names n ON n.id = e.about_endpoint
         WHERE e.event_type LIKE 'webhook.%' AND e.id NOT IN (SELECT s.id FROM seen s)
         ORDER BY e.id;
    INSERT INTO seen SELECT e.id FROM webhook.event_log e WHERE e.event_type LIKE 'webhook.%'
        ON CONFLICT DO NOTHING;
END
$$;

-- Where dispatch sent the operational events recorded since the last call.
CREATE TEMP TABLE routed (id uuid PRIMARY KEY);
CREATE FUNCTION pg_temp.routed(OUT event_type text, OUT about text, OUT endpoint text,
                               OUT tenant text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
        SELECT d.event_type, a.name, n.name, d.tenant
          FROM webhook.delivery_log d
          JOIN webhook.event_log e ON e.id = d.event_id
          JOIN names n ON n.id = d.endpoint_id
          LEFT JOIN names a ON a.id = e.about_endpoint
         WHERE d.event_type LIKE 'webhook.%' AND e.id NOT IN (SELECT r.id FROM routed r)
         ORDER BY e.id, n.name;
    INSERT INTO routed SELECT e.id FROM webhook.event_log e WHERE e.event_type LIKE 'webhook.%'
        ON CONFLICT DO NOTHING;
END
$$;

-- Two journal entries of acme: they go to ledger, books and all.
SELECT webhook.emit('journal_entry.posted', '{"entry": "A-1"}', tenant => 'acme') AS a1 \gset
SELECT webhook.emit('journal_entry.posted', '{"entry": "A-2"}', tenant => 'acme') AS a2 \gset
INSERT INTO names VALUES (:'a1', 'a1'), (:'a2', 'a2');
SELECT * FROM webhook.dispatch_new_events(1000000);

--
-- webhook.delivery.failed: a delivery whose schedule is exhausted
-- (outcome 'failed'). Retries before it record nothing.
--
SELECT pg_temp.record(:'a1', :'ledger', 1, 500, NULL, 'retry');
SELECT * FROM pg_temp.new_events();
SELECT pg_temp.record(:'a1', :'ledger', 4, 502, 'upstream unavailable', 'failed');
SELECT * FROM pg_temp.new_events();
-- Dispatched like any other event, with the endpoint's tenant: to ops (no
-- tenant, webhook.*); not to ledger, which subscribes to webhook.* but is
-- the endpoint concerned; not to all (every event, which is not naming
-- it), acme_ops (webhook.endpoint.* only) or globex_ops (another tenant).
SELECT * FROM webhook.dispatch_new_events(1000000);
SELECT * FROM pg_temp.routed();

-- No loop: a delivery of an operational event that fails for good reports
-- nothing (else two failing operations endpoints would report each other's
-- failures without end).
SELECT d.event_id AS f1 FROM webhook.delivery_log d
 WHERE d.endpoint_id = :'ops' AND d.event_type = 'webhook.delivery.failed' \gset
SELECT pg_temp.record(:'f1', :'ops', 4, 500, NULL, 'failed');
SELECT status FROM webhook.delivery_log WHERE event_id = :'f1' AND endpoint_id = :'ops';
SELECT * FROM pg_temp.new_events();

--
-- webhook.endpoint.disabled, reason 'gone': the receiver answered 410. The
-- delivery that got it is failed, but reported by this event alone.
--
SELECT pg_temp.record(:'a2', :'ledger', 1, 410, 'endpoint answered 410 Gone: disabled', 'gone');
SELECT enabled, disabled_reason FROM webhook.endpoints WHERE id = :'ledger';
SELECT status FROM webhook.delivery_log WHERE event_id = :'a2' AND endpoint_id = :'ledger';
SELECT * FROM pg_temp.new_events();
-- disabled_at is the endpoint's, in UTC, as the wire's timestamps.
SELECT (e.payload->>'disabled_at')::timestamptz = ep.disabled_at AS disabled_at_matches,
       e.payload->>'disabled_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS utc
  FROM webhook.event_log e JOIN webhook.endpoints ep ON ep.id = e.about_endpoint
 WHERE e.event_type = 'webhook.endpoint.disabled' AND ep.id = :'ledger';
-- To ops and to acme's acme_ops.
SELECT * FROM webhook.dispatch_new_events(1000000);
SELECT * FROM pg_temp.routed();

--
-- Reason 'failing': failing continuously for webhook.disable_after (here 1
-- day; its first failure was long ago). Books' delivery of a2 fails, and
-- the endpoint is disabled.
--
SELECT pg_temp.record(:'a2', :'books', 1, NULL, 'connection refused', 'retry',
                      started => '2020-01-01 00:00:00+00', disable_after => '1 day');
SELECT enabled, disabled_reason FROM webhook.endpoints WHERE id = :'books';
SELECT * FROM pg_temp.new_events();
-- Its other delivery (a1) is parked with it. It was under way meanwhile:
-- its failure, recorded once the endpoint is disabled, leaves it parked,
-- not scheduled for a retry the worker would never make.
SELECT status, next_attempt_at FROM webhook.delivery_log WHERE event_id = :'a1' AND endpoint_id = :'books';
SELECT pg_temp.record(:'a1', :'books', 1, 503, NULL, 'retry');
SELECT status, attempts, next_attempt_at FROM webhook.delivery_log
 WHERE event_id = :'a1' AND endpoint_id = :'books';
SELECT * FROM pg_temp.new_events();

--
-- Reason 'expired': past its expires_at, the worker disables it.
--
UPDATE webhook.endpoints SET expires_at = now() - interval '1 minute' WHERE id = :'globex_ops';
SELECT count(*) AS disabled FROM webhook.disable_expired_endpoints();
SELECT * FROM pg_temp.new_events();

--
-- Reason 'manual': update_webhook(enabled => false) of an enabled
-- endpoint. In the caller's transaction: rolled back, nothing is recorded.
--
BEGIN;
SELECT enabled FROM webhook.update_webhook(:'all', enabled => false);
ROLLBACK;
SELECT * FROM pg_temp.new_events();
SELECT enabled FROM webhook.update_webhook(:'all', enabled => false);
SELECT * FROM pg_temp.new_events();
-- Disabling it again, enabling it, deleting it: none is an operational event.
SELECT enabled FROM webhook.update_webhook(:'all', enabled => false);
SELECT enabled FROM webhook.update_webhook(:'all', enabled => true);
SELECT webhook.delete_webhook(:'all');
SELECT * FROM pg_temp.new_events();

-- Dispatched: ops hears of everything; acme_ops of acme's endpoints only;
-- globex_ops was disabled before it could hear of itself (and would not).
SELECT * FROM webhook.dispatch_new_events(1000000);
SELECT * FROM pg_temp.routed();

-- No payload holds a secret, a header value or a URL's password.
SELECT count(*) AS leaks
  FROM webhook.event_log e
 WHERE e.event_type LIKE 'webhook.%'
   AND (e.payload::text LIKE '%s3cret-pa55%' OR e.payload::text LIKE '%t0ken-value%'
        OR e.payload::text LIKE '%whsec_%');
SELECT count(*) AS operational_events FROM webhook.event_log WHERE event_type LIKE 'webhook.%';

-- record_operational_event and record_endpoint_disabled are the
-- extension's: no one else may call them.
SELECT p.proname, p.proacl IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS not_public
  FROM pg_proc p
 WHERE p.pronamespace = 'webhook'::regnamespace
   AND p.proname IN ('record_operational_event', 'record_endpoint_disabled')
 ORDER BY 1;

-- No one forges an operational event (a 0.2 schema reserves the prefix) ...
SELECT webhook.emit('webhook.endpoint.disabled', '{}');
-- ... and none is sent by hand to the endpoint it is about.
SELECT e.id AS op_event, e.about_endpoint AS op_endpoint
  FROM webhook.event_log e WHERE e.about_endpoint IS NOT NULL ORDER BY e.id LIMIT 1 \gset
SET regress.op_event = :'op_event';
SET regress.op_endpoint = :'op_endpoint';
DO $$
BEGIN
    PERFORM webhook.retry_delivery(current_setting('regress.op_event')::uuid,
                                   current_setting('regress.op_endpoint')::uuid);
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE 'retry_delivery refused (%): %', SQLSTATE,
        regexp_replace(SQLERRM, '"[^"]*"', '"<id>"', 'g');
END $$;
SELECT webhook.replay(:'op_endpoint', '-infinity') >= 0 AS replayed;
SELECT count(*) AS sent_to_itself
  FROM webhook.delivery_log d JOIN webhook.event_log e ON e.id = d.event_id
 WHERE e.about_endpoint = d.endpoint_id;

DELETE FROM webhook.attempt_log;
DELETE FROM webhook.event_log;
DELETE FROM webhook.endpoints;
