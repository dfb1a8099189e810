--
-- A newcomer's first hour: mistakes caught where they are made, not found
-- later as deliveries that never come.
--
\set SHOW_CONTEXT never

--
-- 1. A filter that can never match is refused. A 'prefix.*' pattern must
-- match an event type of the catalog; the error lists the catalog's
-- prefixes and names the closest.
--
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['journal_entries.*']);
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['journal.*']);
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['invoice.*']);
-- A name a few letters off names the one meant.
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['journal_entry.post']);
-- '*' and a bare word: the hint says how to write "every event" and "a prefix".
SELECT webhook.create_webhook('https://example.com/hooks', event_types => ARRAY['*']);
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['journal_entry']);
SELECT webhook.create_webhook('https://example.com/hooks',
                              event_types => ARRAY['journal_entry.post*']);
-- update_webhook checks the same.
SELECT id AS endpoint FROM webhook.create_webhook('https://example.com/hooks',
                                                  event_types => ARRAY['journal_entry.*']) \gset
SELECT webhook.update_webhook(:'endpoint', event_types => ARRAY['periods.*']);
-- Once the catalog has a matching type, the pattern is taken.
SELECT webhook.register_event_type('invoice.paid');
SELECT event_types FROM webhook.update_webhook(:'endpoint',
                                               event_types => ARRAY['invoice.*', 'webhook.endpoint.*']);
SELECT count(*) AS endpoints FROM webhook.endpoints;

--
-- 2. webhook.check_triggers(): every trigger using webhook.emit_trigger()
-- whose arguments it would refuse when fired, with the problem. Run it
-- after creating triggers (and in CI).
--
CREATE TABLE public.first_hour_entries (id int, org text, entry_key text);
CREATE TRIGGER a_good AFTER INSERT ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created',
                                                       'tenant=org', 'ordering_key=entry_key');
CREATE TRIGGER b_typo AFTER INSERT ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.postd');
CREATE TRIGGER c_columns AFTER UPDATE ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted',
                                                       'tenant=organisation', 'ordering_key');
CREATE TRIGGER d_twice AFTER DELETE ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.reversed',
                                                       'tenant=org', 'tenant=org');
CREATE TRIGGER e_statement AFTER INSERT ON public.first_hour_entries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook.emit_trigger('Journal Entry');
CREATE TRIGGER f_none AFTER INSERT ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger();
CREATE TRIGGER g_reserved AFTER INSERT ON public.first_hour_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('webhook.delivery.failed');
SELECT * FROM webhook.check_triggers();
-- What it reports is what the trigger would raise when the write fires it.
INSERT INTO public.first_hour_entries VALUES (1, 'acme', 'k1');
DROP TRIGGER b_typo ON public.first_hour_entries;
DROP TRIGGER c_columns ON public.first_hour_entries;
DROP TRIGGER d_twice ON public.first_hour_entries;
DROP TRIGGER e_statement ON public.first_hour_entries;
DROP TRIGGER f_none ON public.first_hour_entries;
DROP TRIGGER g_reserved ON public.first_hour_entries;
SELECT count(*) AS problems FROM webhook.check_triggers();
-- Nothing is granted to PUBLIC.
SELECT has_function_privilege('public', 'webhook.check_triggers()', 'EXECUTE') AS public_may_run;

--
-- 3. rotate_secret(id, grace, secret): the new secret may be the caller's,
-- so that a receiver checking X-Webhook-Signature is given it first. It is
-- checked as create_webhook's is; NULL generates one, as before.
--
SELECT secret AS old_secret FROM webhook.endpoints WHERE id = :'endpoint' \gset
SELECT webhook.rotate_secret(:'endpoint', secret => 'the receiver has this one already') AS returned;
SELECT secret = 'the receiver has this one already' AS new_secret_stored,
       previous_secret = :'old_secret' AS old_secret_kept,
       previous_secret_expires_at > now() + interval '23 hours' AS for_24_hours
  FROM webhook.endpoints WHERE id = :'endpoint';
-- X-Webhook-Signature is made with the new secret at once: the receiver can
-- check it with the secret it was given.
SELECT webhook.sign_hex('the receiver has this one already', '{"id":"x"}')
     = webhook.sign_hex(secret, '{"id":"x"}') AS receiver_verifies
  FROM webhook.endpoints WHERE id = :'endpoint';
SELECT webhook.rotate_secret(:'endpoint', secret => 'too short');
-- A lost secret: a new generated one, and the old one dropped at once.
SELECT webhook.rotate_secret(:'endpoint', grace => '0') LIKE 'whsec_%' AS generated;
SELECT previous_secret IS NULL AS old_secret_dropped FROM webhook.endpoints WHERE id = :'endpoint';
SELECT pg_get_function_arguments('webhook.rotate_secret'::regproc) AS arguments;

--
-- 4. Fixing an endpoint's URL (or headers) makes its scheduled retries due
-- now, and wakes the worker: the next try does not wait out a delay the
-- broken URL earned. Deliveries parked for a disabled endpoint stay parked.
-- (The worker does not serve the regression database: history by hand.)
--
BEGIN;
SELECT id AS broken FROM webhook.create_webhook('https://example.com/brokn') \gset
SELECT id AS parked FROM webhook.create_webhook('https://example.com/off', enabled => false) \gset
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, 'journal_entry.posted', '{}',
       now(), '3'::xid8
  FROM generate_series(1, 3) AS n;
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts,
                                  next_attempt_at)
VALUES ('00000000-0000-7000-8000-000000000001', :'broken', 'journal_entry.posted', 'pending', 3,
        now() + interval '2 hours'),
       ('00000000-0000-7000-8000-000000000002', :'broken', 'journal_entry.posted', 'failed', 8,
        NULL),
       ('00000000-0000-7000-8000-000000000003', :'parked', 'journal_entry.posted', 'pending', 2,
        'infinity');
SELECT url FROM webhook.update_webhook(:'broken', url => 'https://example.com/broken');
SELECT url FROM webhook.update_webhook(:'parked', url => 'https://example.com/on');
SELECT d.endpoint_id = :'broken' AS fixed_endpoint, d.status,
       CASE WHEN d.next_attempt_at = now() THEN 'now'
            ELSE coalesce(d.next_attempt_at::text, 'none') END AS next_attempt
  FROM webhook.delivery_log d
 ORDER BY d.event_id;
-- A description changes nothing of the schedule.
UPDATE webhook.delivery_log SET next_attempt_at = now() + interval '1 hour'
 WHERE endpoint_id = :'broken' AND status = 'pending';
SELECT count(*) FROM webhook.update_webhook(:'broken', description => 'fixed');
SELECT next_attempt_at > now() AS still_scheduled
  FROM webhook.delivery_log WHERE endpoint_id = :'broken' AND status = 'pending';
-- New headers, as a new URL, make it due.
SELECT count(*) FROM webhook.update_webhook(:'broken', headers => '{"Authorization": "Bearer fixed"}');
SELECT next_attempt_at = now() AS due_now
  FROM webhook.delivery_log WHERE endpoint_id = :'broken' AND status = 'pending';
ROLLBACK;

--
-- 4b. A URL whose host spells an address the SSRF guard refuses is
-- registered with a WARNING that names the parameters which would open it:
-- every delivery to it would fail. (The regression server runs with the
-- guard's defaults.) A host name is not resolved here; a public address
-- warns of nothing.
--
BEGIN;
SELECT count(*) FROM webhook.create_webhook('http://127.0.0.1:8080/hooks');
SELECT count(*) FROM webhook.create_webhook('http://[::1]/hooks');
SELECT count(*) FROM webhook.create_webhook('http://localhost:3000/hooks');
SELECT count(*) FROM webhook.create_webhook('http://api.localhost/hooks');
SELECT count(*) FROM webhook.create_webhook('http://user:pa55word@10.1.2.3/hooks');
SELECT count(*) FROM webhook.create_webhook('http://2130706433/hooks');
SELECT count(*) FROM webhook.create_webhook('http://[::ffff:192.168.1.1]/hooks');
SELECT id AS public_ip FROM webhook.create_webhook('https://8.8.8.8/hooks') \gset
SELECT count(*) FROM webhook.create_webhook('https://receiver.example.com/hooks');
-- update_webhook warns of a new URL as create_webhook does.
SELECT count(*) FROM webhook.update_webhook(:'public_ip', url => 'http://169.254.169.254/latest');
ROLLBACK;

--
-- 5. One role for operators: history and both summary views, as the
-- README's Privileges section grants them; the cookbook's queries run for
-- it, and keep the history of deleted endpoints (a LEFT JOIN).
--
CREATE ROLE first_hour_ops;
GRANT USAGE ON SCHEMA webhook TO first_hour_ops;
GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts, webhook.event_types,
               webhook.endpoint_health, webhook.queue_status, webhook.queue_status_by_tenant
   TO first_hour_ops;
BEGIN;
SELECT id AS gone FROM webhook.create_webhook('https://example.com/gone') \gset
INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
VALUES ('00000000-0000-7000-8000-000000000009', 'journal_entry.posted', '{}', now(), '3'::xid8);
INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, status, attempts, created_at)
VALUES ('00000000-0000-7000-8000-000000000009', :'gone', 'journal_entry.posted', 'failed', 1, now());
INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at, duration_ms,
                                 status_code, error)
VALUES ('00000000-0000-7000-8000-000000000009', :'gone', 1, now(), 5, NULL,
        'address blocked: 127.0.0.1 is in 127.0.0.0/8 (loopback); allow it with webhook.allowed_networks or webhook.allow_private_networks');
SELECT webhook.delete_webhook(:'gone');
SET ROLE first_hour_ops;
SELECT count(*) >= 1 AS endpoints FROM webhook.endpoint_health;
SELECT pending_due FROM webhook.queue_status;
SELECT count(*) >= 0 AS tenants FROM webhook.queue_status_by_tenant;
-- The cookbook's "failed deliveries of the last day".
SELECT d.event_type, ep.url, a.attempt, a.status_code, a.error
  FROM webhook.deliveries d
  LEFT JOIN webhook.endpoint_health ep ON ep.id = d.endpoint_id
  JOIN webhook.attempts a ON a.event_id = d.event_id AND a.endpoint_id = d.endpoint_id
 WHERE d.status = 'failed' AND d.created_at > now() - interval '1 day'
 ORDER BY d.created_at, a.attempt;
RESET ROLE;
ROLLBACK;
DROP OWNED BY first_hour_ops;
DROP ROLE first_hour_ops;

DROP TABLE public.first_hour_entries;
SELECT webhook.delete_webhook(:'endpoint');
DELETE FROM webhook.event_types WHERE name = 'invoice.paid';
