--
-- Privileges. Nothing is granted to PUBLIC; the extension's owner (and
-- superusers) manage endpoints. An application role is granted USAGE on the
-- schema and EXECUTE on webhook.emit: it can then record events, directly
-- or through triggers that use webhook.emit_trigger, but cannot list, read
-- or change endpoints, and sees no secret anywhere. Read access to the
-- delivery history is granted separately.
--
\set SHOW_CONTEXT never

SELECT id AS endpoint_id FROM webhook.create_webhook(
    'https://example.com/hooks', secret => 'the-endpoint-secret-0123456789') \gset
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 1}') AS event_id \gset

-- A role with no grant at all can do nothing with the extension.
CREATE ROLE regress_webhook_nobody;
SET ROLE regress_webhook_nobody;
SELECT webhook.emit('journal_entry.posted', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- The application role: the two grants the contract documents.
--
CREATE ROLE regress_webhook_app LOGIN;
GRANT USAGE ON SCHEMA webhook TO regress_webhook_app;
GRANT EXECUTE ON FUNCTION webhook.emit(text, jsonb, text, text, text) TO regress_webhook_app;

-- Its own ledger table; the owner of the extension adds the trigger.
CREATE TABLE app_journal (id integer PRIMARY KEY, status text NOT NULL DEFAULT 'draft');
ALTER TABLE app_journal OWNER TO regress_webhook_app;
CREATE TRIGGER journal_entry_created AFTER INSERT ON app_journal
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created');

SET ROLE regress_webhook_app;
SELECT clock_timestamp() AS mark \gset

-- It can emit, and write to its table whose trigger emits.
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 2}') IS NOT NULL AS emitted;
INSERT INTO app_journal VALUES (1);
-- Errors it meets are the usual ones.
SELECT webhook.emit('journal_entry.voided', '{}');
\echo :LAST_ERROR_SQLSTATE
-- It may not raise the payload limit (a superuser setting).
SET webhook.max_payload_size = '100MB';
\echo :LAST_ERROR_SQLSTATE

-- It cannot manage, list or read endpoints, nor anything else of the
-- extension: every other function is refused ...
SELECT fn, o.code, o.message
  FROM (VALUES ('list_webhooks',       'SELECT * FROM webhook.list_webhooks()'),
               ('get_webhook',         format('SELECT * FROM webhook.get_webhook(%L)', :'endpoint_id')),
               ('create_webhook',      'SELECT * FROM webhook.create_webhook(''https://evil.example/'')'),
               ('update_webhook',      format('SELECT * FROM webhook.update_webhook(%L, url => %L)',
                                              :'endpoint_id', 'https://evil.example/')),
               ('delete_webhook',      format('SELECT webhook.delete_webhook(%L)', :'endpoint_id')),
               ('rotate_secret',       format('SELECT webhook.rotate_secret(%L)', :'endpoint_id')),
               ('register_event_type', 'SELECT webhook.register_event_type(''evil.event'')'),
               ('retry_delivery',      format('SELECT webhook.retry_delivery(%L, %L)',
                                              :'event_id', :'endpoint_id')),
               ('replay',              format('SELECT webhook.replay(%L, %L)',
                                              :'endpoint_id', '-infinity')),
               ('sign',                'SELECT webhook.sign(''whsec_x'', ''m'', 1, ''b'')'),
               ('generate_secret',     'SELECT webhook.generate_secret()')
       ) AS t(fn, statement),
       outcome(statement) AS o;
-- ... and so is every table and view.
SELECT relname, o.code, o.message
  FROM (VALUES ('endpoints'), ('events'), ('deliveries'), ('attempts'),
               ('event_types'), ('event_log'), ('delivery_log'), ('attempt_log'),
               ('dispatch_cursor')) AS t(relname),
       outcome(format('SELECT * FROM webhook.%I', relname)) AS o;
SELECT o.code, o.message
  FROM outcome('INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid)
                VALUES (gen_random_uuid(), ''journal_entry.posted'', ''{}'', now(),
                        pg_current_xact_id())') AS o;
-- It cannot add emit_trigger to its own tables either, unless granted
-- EXECUTE on it (see below).
CREATE TRIGGER journal_entry_posted AFTER UPDATE ON app_journal
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- What it recorded, as the owner sees it.
SELECT event_type, payload FROM webhook.events WHERE created_at >= :'mark' ORDER BY id;
-- The endpoint is untouched.
SELECT url, secret = 'the-endpoint-secret-0123456789' AS same_secret
  FROM webhook.endpoints WHERE id = :'endpoint_id';

-- Granted EXECUTE on emit_trigger, the role can create such triggers on
-- tables it owns.
GRANT EXECUTE ON FUNCTION webhook.emit_trigger() TO regress_webhook_app;
SET ROLE regress_webhook_app;
CREATE TRIGGER journal_entry_posted AFTER UPDATE ON app_journal
    FOR EACH ROW WHEN (NEW.status = 'posted')
    EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted');
UPDATE app_journal SET status = 'posted' WHERE id = 1;
RESET ROLE;
SELECT event_type, payload FROM webhook.events WHERE created_at >= :'mark' ORDER BY id;

--
-- Reading the history: grant SELECT on the three history views and the
-- event catalog (and USAGE on the schema), as the README shows. They show
-- no secret; endpoints stay hidden.
--
CREATE ROLE regress_webhook_reader;
GRANT USAGE ON SCHEMA webhook TO regress_webhook_reader;
GRANT SELECT ON webhook.events, webhook.deliveries, webhook.attempts,
                webhook.event_types TO regress_webhook_reader;
SET ROLE regress_webhook_reader;
SELECT count(*) > 0 AS reads_events FROM webhook.events;
SELECT count(*) >= 0 AS reads_deliveries FROM webhook.deliveries;
SELECT count(*) >= 0 AS reads_attempts FROM webhook.attempts;
-- Every column this role can see in schema webhook:
SELECT table_name, string_agg(column_name, ', ' ORDER BY ordinal_position) AS columns
  FROM information_schema.columns
 WHERE table_schema = 'webhook'
 GROUP BY table_name
 ORDER BY table_name COLLATE "C";
SELECT * FROM webhook.endpoints;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM webhook.list_webhooks();
\echo :LAST_ERROR_SQLSTATE
-- Reading is all it can do.
SELECT webhook.emit('journal_entry.posted', '{}');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM webhook.events;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Clean up.
DROP TABLE app_journal;
SELECT webhook.delete_webhook(:'endpoint_id') AS deleted;
DROP OWNED BY regress_webhook_app, regress_webhook_reader, regress_webhook_nobody;
DROP ROLE regress_webhook_app, regress_webhook_reader, regress_webhook_nobody;
