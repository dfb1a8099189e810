--
-- Size limits on user input: each value is accepted at its limit and
-- refused one past it, with a clear error and SQLSTATE, and a refused call
-- changes nothing. Limits stated in characters count characters, not bytes
-- (this file runs in a UTF8 database).
--
\set SHOW_CONTEXT never

-- What this file creates is removed as it goes; earlier files' rows stay.
SELECT count(*) AS endpoints_before, clock_timestamp() AS limits_start
  FROM webhook.endpoints \gset

--
-- url: at most 1024 characters.
--
SELECT label, length(url) AS characters, octet_length(url) AS bytes,
       o.code, o.detail
  FROM (VALUES ('ASCII, at the limit',        'https://example.com/' || repeat('x', 1004)),
               ('ASCII, one past',            'https://example.com/' || repeat('x', 1005)),
               ('2-byte characters, at',      'https://example.com/' || repeat('é', 1004)),
               ('2-byte characters, past',    'https://example.com/' || repeat('é', 1005)),
               ('4-byte characters, at',      'https://example.com/' || repeat('😀', 1004)),
               ('4-byte characters, past',    'https://example.com/' || repeat('😀', 1005)),
               ('IDN host, at',               'https://bücher.example/' || repeat('ü', 1001)),
               ('IDN host, past',             'https://bücher.example/' || repeat('ü', 1002))
       ) AS t(label, url),
       outcome(format('SELECT webhook.create_webhook(%L)', url)) AS o;
SELECT count(*) AS endpoints_created, max(length(url)) AS longest_url
  FROM webhook.endpoints WHERE created_at >= :'limits_start';
-- The URL in the error is cut short, between characters.
SELECT webhook.create_webhook('https://example.com/' || repeat('é', 1005));
\echo :LAST_ERROR_SQLSTATE
-- update_webhook applies the same limit, and a refused update changes nothing.
SELECT id AS endpoint_id FROM webhook.endpoints
 WHERE created_at >= :'limits_start' ORDER BY id LIMIT 1 \gset
SELECT o.code, o.detail
  FROM outcome(format('SELECT webhook.update_webhook(%L, url => %L)', :'endpoint_id',
                      'https://example.com/' || repeat('y', 1005))) AS o;
SELECT o.code
  FROM outcome(format('SELECT webhook.update_webhook(%L, url => %L)', :'endpoint_id',
                      'https://example.com/' || repeat('y', 1004))) AS o;
SELECT length(url) AS updated_length FROM webhook.endpoints WHERE id = :'endpoint_id';
DELETE FROM webhook.endpoints WHERE created_at >= :'limits_start';

--
-- secret: 16 to 256 characters, whatever their bytes. The secret itself is
-- never in the error.
--
SELECT label, o.code, o.message
  FROM (VALUES ('15 ASCII',         repeat('s', 15)),
               ('16 ASCII',         repeat('s', 16)),
               ('256 ASCII',        repeat('s', 256)),
               ('257 ASCII',        repeat('s', 257)),
               ('15 two-byte',      repeat('é', 15)),
               ('16 two-byte',      repeat('é', 16)),
               ('256 two-byte',     repeat('é', 256)),
               ('257 two-byte',     repeat('é', 257)),
               ('16 four-byte',     repeat('🔑', 16)),
               ('256 four-byte',    repeat('🔑', 256)),
               ('257 four-byte',    repeat('🔑', 257))
       ) AS t(label, secret),
       outcome(format('SELECT webhook.create_webhook(%L, secret => %L)',
                      'https://example.com/hooks', secret)) AS o;
SELECT length(secret) AS characters, octet_length(secret) AS bytes
  FROM webhook.endpoints WHERE created_at >= :'limits_start' ORDER BY id;
DELETE FROM webhook.endpoints WHERE created_at >= :'limits_start';

--
-- headers: a name has at most 256 characters (ASCII: names are HTTP
-- tokens), a value at most 8192 characters and at least one that is not
-- blank.
--
SELECT label, length(name) AS name_length, length(value) AS value_length,
       o.code, o.detail
  FROM (VALUES ('name at the limit',         'X-' || repeat('n', 254), 'v'),
               ('name one past',             'X-' || repeat('n', 255), 'v'),
               ('value at the limit',        'X-Long', repeat('v', 8192)),
               ('value one past',            'X-Long', repeat('v', 8193)),
               ('2-byte value at the limit', 'X-Long', repeat('é', 8192)),
               ('2-byte value one past',     'X-Long', repeat('é', 8193)),
               ('empty value',               'X-Empty', '')
       ) AS t(label, name, value),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks', jsonb_build_object(name, value))) AS o;
SELECT count(*) AS endpoints_with_headers
  FROM webhook.endpoints WHERE created_at >= :'limits_start';
DELETE FROM webhook.endpoints WHERE created_at >= :'limits_start';

--
-- Event type names: at most 255 characters, for registering, subscribing
-- and emitting alike.
--
SELECT repeat('a', 127) || '.' || repeat('b', 127) AS name_255,
       repeat('a', 128) || '.' || repeat('b', 127) AS name_256 \gset
SELECT length(:'name_255') AS at_the_limit, length(:'name_256') AS one_past;
SELECT o.code FROM outcome(format('SELECT webhook.register_event_type(%L)', :'name_255')) AS o;
SELECT o.code, o.detail FROM outcome(format('SELECT webhook.register_event_type(%L)', :'name_256')) AS o;
SELECT o.code FROM outcome(format('SELECT webhook.create_webhook(%L, ARRAY[%L])',
                                  'https://example.com/hooks', :'name_255')) AS o;
SELECT o.code, o.detail FROM outcome(format('SELECT webhook.create_webhook(%L, ARRAY[%L])',
                                            'https://example.com/hooks', :'name_256')) AS o;
SELECT o.code FROM outcome(format('SELECT webhook.emit(%L, %L)', :'name_255', '{}')) AS o;
SELECT o.code, o.detail FROM outcome(format('SELECT webhook.emit(%L, %L)', :'name_256', '{}')) AS o;
-- The name in the error is cut short.
SELECT webhook.emit(:'name_256', '{}');
SELECT count(*) AS endpoints_subscribed FROM webhook.endpoints WHERE event_types = ARRAY[:'name_255'];
DELETE FROM webhook.endpoints WHERE created_at >= :'limits_start';
DELETE FROM webhook.event_log WHERE event_type = :'name_255';
DELETE FROM webhook.event_types WHERE name = :'name_255';

--
-- Payloads: at most webhook.max_payload_size bytes of jsonb, for emit and
-- emit_trigger alike; a larger one is refused with 54000 and nothing is
-- recorded. The default is 1MB.
--
SELECT count(*) AS events_before, clock_timestamp() AS payloads_start
  FROM webhook.events \gset
-- A payload {"memo": "..."} of exactly n bytes (jsonb's own size).
CREATE FUNCTION pg_temp.payload(n integer) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('memo', repeat('x', n - (pg_column_size(jsonb_build_object('memo', '')) - 4)))
$$;
SELECT n, pg_column_size(pg_temp.payload(n)) - 4 AS payload_bytes,
       o.code, o.message, o.detail
  FROM (VALUES (1048576), (1048577)) AS t(n),
       outcome(format('SELECT webhook.emit(%L, pg_temp.payload(%s))',
                      'journal_entry.posted', n)) AS o;
SET webhook.max_payload_size = 1024;
SELECT n, pg_column_size(pg_temp.payload(n)) - 4 AS payload_bytes,
       o.code, o.message, o.detail
  FROM (VALUES (1024), (1025)) AS t(n),
       outcome(format('SELECT webhook.emit(%L, pg_temp.payload(%s))',
                      'journal_entry.posted', n)) AS o;
-- The same limit for the row a trigger emits.
CREATE TABLE public.limits_notes (id integer, memo text);
CREATE TRIGGER limits_notes_created AFTER INSERT ON public.limits_notes
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created');
INSERT INTO public.limits_notes VALUES (1, repeat('x', 100));
INSERT INTO public.limits_notes VALUES (2, repeat('x', 2000));
\echo :LAST_ERROR_SQLSTATE
SELECT id FROM public.limits_notes;
DROP TABLE public.limits_notes;
RESET webhook.max_payload_size;
SELECT count(*) - :events_before AS events_recorded FROM webhook.events;
DELETE FROM webhook.event_log WHERE created_at >= :'payloads_start';
-- The parameter's own bounds (only a superuser may change it).
SET webhook.max_payload_size = 0;
SET webhook.max_payload_size = '257MB';
SELECT name, setting, unit, min_val, max_val, context
  FROM pg_settings
 WHERE name IN ('webhook.max_payload_size', 'webhook.max_response_body')
 ORDER BY name;

--
-- webhook.allowed_networks is refused unless every entry is an address
-- range, when set (ALTER SYSTEM checks it before writing anything).
--
ALTER SYSTEM SET webhook.allowed_networks = '10.0.0.0/33';
\echo :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET webhook.allowed_networks = 'fd00::/129';
ALTER SYSTEM SET webhook.allowed_networks = '10.0.0.0/8, 10.1/16';
ALTER SYSTEM SET webhook.allowed_networks = 'localhost';
ALTER SYSTEM SET webhook.allowed_networks = '10.0.0.0/8;192.168.0.0/16';

SELECT count(*) - :endpoints_before AS endpoints_left FROM webhook.endpoints;
