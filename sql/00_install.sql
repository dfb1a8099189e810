--
-- Installing the extension: what CREATE EXTENSION makes, where, and who
-- may use it.
--
-- This file runs first; the other files of the suite use the extension it
-- creates and the helper function it defines at the end.
--
\set SHOW_CONTEXT never

CREATE EXTENSION webhook_outbox;

-- The extension lives in the schema "webhook", which it creates; it cannot
-- be moved to another schema.
SELECT e.extname, n.nspname AS schema, e.extversion, e.extrelocatable
  FROM pg_extension e
  JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'webhook_outbox';
ALTER EXTENSION webhook_outbox SET SCHEMA public;

-- Everything the extension owns, all of it in schema "webhook".
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'webhook_outbox')
   AND d.deptype = 'e'
 ORDER BY 1;
SELECT count(*) AS outside_schema_webhook
  FROM pg_depend d
  JOIN pg_identify_object(d.classid, d.objid, d.objsubid) o ON true
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'webhook_outbox')
   AND d.deptype = 'e'
   AND o.type <> 'schema'
   AND o.schema IS DISTINCT FROM 'webhook';

-- The functions of the SQL API and their signatures.
SELECT p.proname AS function,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
 WHERE p.pronamespace = 'webhook'::regnamespace
   AND p.proname IN ('create_webhook', 'list_webhooks', 'get_webhook',
                     'update_webhook', 'delete_webhook', 'rotate_secret',
                     'register_event_type', 'emit', 'emit_trigger',
                     'retry_delivery', 'replay', 'sign', 'sign_hex')
 ORDER BY 1;

-- The columns endpoints are returned with (create_webhook and
-- rotate_secret are the only functions that return a secret).
SELECT t.typname AS type,
       string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                  ORDER BY a.attnum) AS columns
  FROM pg_type t
  JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0
 WHERE t.typnamespace = 'webhook'::regnamespace
   AND t.typname IN ('endpoint_info', 'endpoint_with_secret')
 GROUP BY t.typname
 ORDER BY 1;

-- The shipped event catalog.
SELECT name, description FROM webhook.event_types ORDER BY name;

-- pg_dump keeps user configuration: the endpoints, and the event types
-- users register (the shipped ones come back with CREATE EXTENSION).
SELECT c.relname AS dumped_table, x.condition
  FROM pg_extension e,
       unnest(e.extconfig, e.extcondition) AS x(config, condition)
  JOIN pg_class c ON c.oid = x.config
 WHERE e.extname = 'webhook_outbox'
 ORDER BY 1;

-- Configuration parameters and their defaults. The prefix "webhook." is
-- reserved: a misspelt parameter is an error, not a silent placeholder.
SELECT name, current_setting(name) AS value, context
  FROM pg_settings
 WHERE name LIKE 'webhook.%'
 ORDER BY name;
SET webhook.no_such_parameter = 1;

-- Nothing is granted to PUBLIC: not the schema, not a table or view, not a
-- function. (Each of these lists the objects PUBLIC could use: none.)
SELECT has_schema_privilege('public', 'webhook', 'USAGE') AS public_usage,
       has_schema_privilege('public', 'webhook', 'CREATE') AS public_create;
SELECT c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'webhook'::regnamespace
   AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')
   AND has_table_privilege('public', c.oid,
           'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER');
SELECT p.oid::regprocedure AS function
  FROM pg_proc p
 WHERE p.pronamespace = 'webhook'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE');
-- The same seen from the ACLs themselves: no entry has PUBLIC (grantee 0).
SELECT count(*) AS public_acl_entries
  FROM (SELECT (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).grantee
          FROM pg_class c WHERE c.relnamespace = 'webhook'::regnamespace
        UNION ALL
        SELECT (aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))).grantee
          FROM pg_proc p WHERE p.pronamespace = 'webhook'::regnamespace
        UNION ALL
        SELECT (aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner)))).grantee
          FROM pg_namespace n WHERE n.nspname = 'webhook') AS acl
 WHERE acl.grantee = 0;

-- DROP EXTENSION removes every object it made (the schema, which CREATE
-- EXTENSION created for it, stays, empty). It can then be created again,
-- and a session that emitted before keeps working.
SELECT webhook.emit('account.created', '{"id": 1}') IS NOT NULL AS emitted;
DROP EXTENSION webhook_outbox;
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'webhook'::regnamespace)
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhook'::regnamespace)
     + (SELECT count(*) FROM pg_type WHERE typnamespace = 'webhook'::regnamespace)
       AS objects_left;
CREATE EXTENSION webhook_outbox;
SELECT webhook.emit('account.created', '{"id": 2}') IS NOT NULL AS emitted_again;
SELECT event_type, payload FROM webhook.events;

--
-- A helper for the rest of the suite: runs a statement and reports how it
-- ended, as a row: code 00000 when it succeeded, else the SQLSTATE,
-- message and detail of its error.
--
CREATE FUNCTION public.outcome(statement text,
                               OUT code text, OUT message text, OUT detail text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    code := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE,
                            message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL;
    detail := nullif(detail, '');
END
$$;
SELECT * FROM outcome('SELECT 1');
SELECT * FROM outcome('SELECT 1/0');
