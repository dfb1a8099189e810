--
-- Emitting events: webhook.emit and the trigger function
-- webhook.emit_trigger. An event is recorded in the caller's transaction:
-- it exists if and only if that transaction commits.
--
\set SHOW_CONTEXT never

-- webhook.events shows one row per emitted event.
SELECT * FROM webhook.events LIMIT 0;
SELECT count(*) AS events_before FROM webhook.events \gset

--
-- emit returns the event's id, a UUIDv7: version 7, RFC 9562 variant, and
-- the Unix time in milliseconds in its first 48 bits.
--
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 1001, "amount": "250.00"}') AS event_id \gset
SELECT substr(:'event_id', 15, 1) AS version,
       substr(:'event_id', 20, 1) IN ('8', '9', 'a', 'b') AS rfc_variant,
       abs(('x' || substr(replace(:'event_id', '-', ''), 1, 12))::bit(48)::bigint
           - extract(epoch FROM clock_timestamp()) * 1000) < 60000 AS time_is_now;
SELECT event_type, payload, created_at <= clock_timestamp() AS created_in_the_past,
       created_at > clock_timestamp() - interval '1 minute' AS created_just_now
  FROM webhook.events WHERE id = :'event_id';

-- Ids increase in the order events are emitted (they sort by time), even
-- many within the same millisecond.
WITH emitted AS (
    SELECT n, webhook.emit('account.created', jsonb_build_object('account', n)) AS id
      FROM generate_series(1, 1000) AS n
)
SELECT count(*) AS emitted,
       count(DISTINCT id) AS distinct_ids,
       bool_and(id > previous) AS increasing,
       bool_and(substr(id::text, 15, 1) = '7') AS all_version_7
  FROM (SELECT n, id, lag(id) OVER (ORDER BY n) AS previous FROM emitted) AS e
 WHERE previous IS NOT NULL OR n = 1;
SELECT count(*) - :events_before AS events_recorded FROM webhook.events;

--
-- Atomic with the caller's transaction.
--
-- Rolled back: the event is gone, as if never emitted.
BEGIN;
SELECT webhook.emit('period.closed', '{"period": "2026-10"}') AS rolled_back_id \gset
SELECT count(*) AS visible_inside FROM webhook.events WHERE id = :'rolled_back_id';
ROLLBACK;
SELECT count(*) AS visible_after_rollback FROM webhook.events WHERE id = :'rolled_back_id';

-- A transaction that fails after emitting loses the event too.
BEGIN;
SELECT webhook.emit('period.closed', '{"period": "2026-10"}') AS failed_id \gset
SELECT 1 / 0;
COMMIT;
SELECT count(*) AS visible_after_failure FROM webhook.events WHERE id = :'failed_id';

-- A subtransaction rolled back takes its events with it; the others stay.
BEGIN;
SELECT webhook.emit('period.closed', '{"period": "2026-10"}') AS kept_id \gset
SAVEPOINT before_reopen;
SELECT webhook.emit('period.reopened', '{"period": "2026-10"}') AS undone_id \gset
ROLLBACK TO SAVEPOINT before_reopen;
COMMIT;
SELECT (SELECT count(*) FROM webhook.events WHERE id = :'kept_id') AS kept,
       (SELECT count(*) FROM webhook.events WHERE id = :'undone_id') AS undone;

-- Prepared (two-phase) transactions: recorded when COMMIT PREPARED runs.
BEGIN;
SELECT webhook.emit('period.closed', '{"period": "2026-11"}') AS prepared_id \gset
PREPARE TRANSACTION 'webhook_emit_2pc';
SELECT count(*) AS visible_while_prepared FROM webhook.events WHERE id = :'prepared_id';
COMMIT PREPARED 'webhook_emit_2pc';
SELECT count(*) AS visible_after_commit FROM webhook.events WHERE id = :'prepared_id';

--
-- Errors: none of them records anything.
--
SELECT count(*) AS events_before FROM webhook.events \gset
-- An event type that is not in the catalog; the error lists what is.
SELECT webhook.emit('journal_entry.voided', '{}');
\echo :LAST_ERROR_SQLSTATE
-- A name that is not an event type name at all.
SELECT webhook.emit('Journal Entry Posted', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit(E'journal_entry.posted\nforged log line', '{}');
-- NULL arguments.
SELECT webhook.emit(NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit('journal_entry.posted', NULL);
\echo :LAST_ERROR_SQLSTATE
-- A payload larger than webhook.max_payload_size (1MB by default; only a
-- superuser may change it).
SHOW webhook.max_payload_size;
SET webhook.max_payload_size = 64;
SELECT webhook.emit('journal_entry.posted', jsonb_build_object('memo', repeat('x', 100)));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit('journal_entry.posted', '{"memo": "short"}') IS NOT NULL AS small_one_fits;
RESET webhook.max_payload_size;
SELECT webhook.emit('journal_entry.posted', jsonb_build_object('memo', repeat('x', 100))) IS NOT NULL AS fits_again;
-- Payloads may be any JSON value, not only objects.
SELECT webhook.emit('account.updated', '[1, 2, 3]') IS NOT NULL AS array_payload,
       webhook.emit('account.updated', '"text"') IS NOT NULL AS string_payload,
       webhook.emit('account.updated', 'null') IS NOT NULL AS json_null_payload;
SELECT count(*) - :events_before AS events_recorded FROM webhook.events;

--
-- Tenants, ordering keys and idempotency keys (since 0.2). The event log
-- keeps them beside each event.
--
CREATE VIEW recorded AS
    SELECT e.id, e.event_type, e.payload, e.tenant, e.ordering_key, e.idempotency_key
      FROM webhook.event_log e;

-- The tenant: as given; NULL means the session's webhook.tenant, and the
-- empty string (as given, or as webhook.tenant) means no tenant.
SELECT webhook.emit('account.created', '{"account": 1}', tenant => 'acme') AS given \gset
SELECT webhook.emit('account.created', '{"account": 2}') AS unset \gset
BEGIN;
SET LOCAL webhook.tenant = 'globex';
SELECT webhook.emit('account.created', '{"account": 3}') AS from_session \gset
SELECT webhook.emit('account.created', '{"account": 4}', tenant => 'acme') AS given_in_session \gset
SELECT webhook.emit('account.created', '{"account": 5}', tenant => '') AS none_in_session \gset
COMMIT;
SELECT payload, tenant FROM recorded
 WHERE id IN (:'given', :'unset', :'from_session', :'given_in_session', :'none_in_session')
 ORDER BY id;

-- The ordering key is kept as given (see the README's Ordering).
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 7}', ordering_key => 'account-42') AS ordered \gset
SELECT tenant, ordering_key, idempotency_key FROM recorded WHERE id = :'ordered';

-- Idempotency: a second emit with the same tenant and key records nothing
-- and returns the first event's id -- even if it names another type or
-- payload: the first event stands.
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}', idempotency_key => 'entry-8-posted') AS first \gset
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}', idempotency_key => 'entry-8-posted') = :'first' AS same_id,
       webhook.emit('journal_entry.reversed', '{"entry_id": 8, "retry": true}',
                    idempotency_key => 'entry-8-posted') = :'first' AS same_id_other_event;
SELECT event_type, payload, idempotency_key FROM recorded WHERE idempotency_key = 'entry-8-posted';
-- Keys are per tenant: another tenant's (or no tenant's) key is another key.
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}', tenant => 'acme',
                    idempotency_key => 'entry-8-posted') = :'first' AS same_as_no_tenant;
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}', tenant => 'globex',
                    idempotency_key => 'entry-8-posted') AS globex_first \gset
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}', tenant => 'globex',
                    idempotency_key => 'entry-8-posted') = :'globex_first' AS globex_same_id;
BEGIN;
SET LOCAL webhook.tenant = 'globex';
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 8}',
                    idempotency_key => 'entry-8-posted') = :'globex_first' AS session_tenant_same_id;
COMMIT;
SELECT tenant, count(*) AS events FROM recorded WHERE idempotency_key = 'entry-8-posted'
 GROUP BY tenant ORDER BY tenant NULLS FIRST;
-- Within one transaction too; and a rolled-back event does not hold its key.
BEGIN;
SELECT webhook.emit('period.closed', '{"period": "2026-12"}', idempotency_key => 'close-2026-12') AS undone \gset
SELECT webhook.emit('period.closed', '{"period": "2026-12"}', idempotency_key => 'close-2026-12') = :'undone' AS same_in_transaction;
ROLLBACK;
SELECT webhook.emit('period.closed', '{"period": "2026-12"}', idempotency_key => 'close-2026-12') <> :'undone' AS new_after_rollback;
SELECT count(*) AS events FROM recorded WHERE idempotency_key = 'close-2026-12';

-- Errors: keys are NULL or 1 to 255 characters; the catalog still rules.
SELECT webhook.emit('account.created', '{}', ordering_key => '');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit('account.created', '{}', idempotency_key => '');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit('account.created', '{}', idempotency_key => repeat('k', 256));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.emit('account.created', '{}', ordering_key => repeat('é', 256));
SELECT webhook.emit('account.created', '{}', ordering_key => repeat('é', 255),
                    idempotency_key => repeat('k', 255)) IS NOT NULL AS longest_keys;
SELECT webhook.emit('journal_entry.voided', '{}', idempotency_key => 'voided-1');
\echo :LAST_ERROR_SQLSTATE
-- (A key already taken answers with its event, whatever the type named.)
SELECT webhook.emit('journal_entry.voided', '{}', idempotency_key => 'entry-8-posted') = :'first' AS taken_key;

-- An outbox restored from another server (pg_dump) refuses events until the
-- delivery worker has re-based it: here a cursor row of another origin
-- stands in for the restored one.
BEGIN;
INSERT INTO webhook.dispatch_cursor (system_identifier, database_oid, snapshot)
    VALUES (42, 1, pg_current_snapshot());
SELECT webhook.emit('account.created', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT webhook.emit('account.created', '{}') IS NOT NULL AS emits_again;

--
-- emit_trigger: a row trigger whose argument is the event type; the payload
-- is the row as JSON (NEW, or OLD for DELETE).
--
SELECT webhook.register_event_type('account.deleted', 'An account was removed');
CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    name    text NOT NULL,
    balance numeric(12, 2) NOT NULL DEFAULT 0,
    opened  date
);
CREATE TRIGGER account_created AFTER INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created');
CREATE TRIGGER account_updated AFTER UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.updated');
CREATE TRIGGER account_deleted AFTER DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.deleted');

SELECT clock_timestamp() AS mark \gset
INSERT INTO accounts VALUES (1, 'Cash', 0, '2026-01-01'), (2, 'Receivables', 10.5, NULL);
UPDATE accounts SET balance = balance + 100 WHERE id = 1;
DELETE FROM accounts WHERE id = 2;
UPDATE accounts SET name = 'Petty cash' WHERE id = 42;   -- no row, no event
SELECT event_type, payload FROM webhook.events WHERE created_at >= :'mark' ORDER BY id;

-- A statement that fails, or rolls back, emits nothing.
SELECT clock_timestamp() AS mark \gset
INSERT INTO accounts VALUES (3, 'Inventory'), (1, 'Duplicate');
BEGIN;
INSERT INTO accounts VALUES (4, 'Equipment');
ROLLBACK;
SELECT count(*) AS events FROM webhook.events WHERE created_at >= :'mark';

-- The contract's example: only the transition to 'posted' emits.
CREATE TABLE journal_entries (
    id     integer PRIMARY KEY,
    status text NOT NULL DEFAULT 'draft',
    memo   text
);
CREATE TRIGGER journal_entry_posted
    AFTER UPDATE OF status ON journal_entries
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted');
SELECT clock_timestamp() AS mark \gset
INSERT INTO journal_entries (id, memo) VALUES (1, 'rent'), (2, 'payroll');
UPDATE journal_entries SET memo = 'rent (October)' WHERE id = 1;
UPDATE journal_entries SET status = 'posted' WHERE id = 1;
UPDATE journal_entries SET status = 'posted' WHERE id = 1;   -- already posted
SELECT event_type, payload FROM webhook.events WHERE created_at >= :'mark' ORDER BY id;

-- In a BEFORE trigger it passes the row through unchanged.
CREATE TRIGGER journal_entry_created
    BEFORE INSERT ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created');
SELECT clock_timestamp() AS mark \gset
INSERT INTO journal_entries (id, memo) VALUES (3, 'depreciation') RETURNING *;
SELECT event_type, payload FROM webhook.events WHERE created_at >= :'mark' ORDER BY id;

-- Since 0.2, 'tenant=<column>' and 'ordering_key=<column>' (in either
-- order, after the event type) take the event's tenant and ordering key
-- from that column of the row, as text. A NULL tenant column means the
-- session's webhook.tenant, as for emit.
CREATE TABLE ledger_lines (
    id         integer PRIMARY KEY,
    company    text,
    account_id integer,
    amount     numeric(12, 2)
);
CREATE TRIGGER journal_entry_created AFTER INSERT ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created',
                                                       'ordering_key=account_id', 'tenant=company');
INSERT INTO ledger_lines VALUES (1, 'acme', 4000, 10), (2, 'globex', 4000, 20), (3, NULL, NULL, 30);
BEGIN;
SET LOCAL webhook.tenant = 'initech';
INSERT INTO ledger_lines VALUES (4, NULL, 4100, 40), (5, 'acme', 4100, 50);
COMMIT;
SELECT r.payload, r.tenant, r.ordering_key
  FROM recorded r
 WHERE r.event_type = 'journal_entry.created' AND r.payload ? 'company'
 ORDER BY r.id;

--
-- emit_trigger misused: each is an error when the trigger fires, and the
-- statement that fired it fails.
--
CREATE TABLE misuse (id integer);
CREATE TRIGGER per_statement AFTER INSERT ON misuse
    FOR EACH STATEMENT EXECUTE FUNCTION webhook.emit_trigger('account.created');
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER per_statement ON misuse;
CREATE TRIGGER no_argument AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger();
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER no_argument ON misuse;
-- Arguments after the event type are tenant= or ordering_key=, once each,
-- naming a column of the table.
CREATE TRIGGER two_types AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created', 'account.updated');
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER two_types ON misuse;
CREATE TRIGGER twice AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created', 'tenant=id', 'tenant=id');
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER twice ON misuse;
CREATE TRIGGER no_such_column AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created', 'tenant=company');
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER no_such_column ON misuse;
-- The column's value is checked as emit checks the key.
ALTER TABLE misuse ADD COLUMN code text;
CREATE TRIGGER empty_key AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created', 'ordering_key=code');
INSERT INTO misuse VALUES (1, '');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER empty_key ON misuse;
CREATE TRIGGER unknown_type AFTER INSERT ON misuse
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.archived');
INSERT INTO misuse VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER unknown_type ON misuse;
SELECT count(*) AS rows_inserted FROM misuse;
-- Called as a plain function.
SELECT webhook.emit_trigger();
\echo :LAST_ERROR_SQLSTATE


--
-- A database still on 0.1 (the library updated, ALTER EXTENSION UPDATE not
-- run yet) declares emit with two arguments; the library serves that
-- declaration as 0.1 did. (test/t/005_upgrade.pl runs a real 0.1 schema;
-- here the old declaration is made by hand.)
--
CREATE FUNCTION emit_0_1(event_type text, payload jsonb) RETURNS uuid
    LANGUAGE c VOLATILE AS '$libdir/webhook_outbox', 'webhook_emit';
BEGIN;
SET LOCAL webhook.tenant = 'acme';
SELECT emit_0_1('account.created', '{"account": 9}') AS old_declaration \gset
COMMIT;
SELECT event_type, payload, tenant FROM recorded WHERE id = :'old_declaration';
SELECT emit_0_1('journal_entry.voided', '{}');
\echo :LAST_ERROR_SQLSTATE
DROP FUNCTION emit_0_1(text, jsonb);

DROP VIEW recorded;
DROP TABLE accounts, journal_entries, ledger_lines, misuse;
DELETE FROM webhook.event_types WHERE name = 'account.deleted';
