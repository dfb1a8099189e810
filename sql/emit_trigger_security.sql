--
-- emit_trigger and the rights of the extension's owner. Turning a row into
-- JSON runs code chosen by whoever owns the row's types: their output
-- functions and casts to json. webhook.emit_trigger() does that with the
-- rights of the role whose statement fired the trigger, never with those
-- of the extension's owner (a superuser, as a rule), and raises rights only
-- for the insert into the event log.
--
-- Here an application role granted what the README's Privileges section
-- grants attacks: a cast to json on a type of its own that records who it
-- runs as, tries to read the endpoints' secrets, and tries to make its
-- role a superuser.
--
\set SHOW_CONTEXT never

SELECT id AS endpoint_id FROM webhook.create_webhook(
    'https://example.com/hooks', secret => 'the-endpoint-secret-0123456789') \gset

CREATE ROLE regress_webhook_attacker;
GRANT USAGE ON SCHEMA webhook TO regress_webhook_attacker;
GRANT EXECUTE ON FUNCTION webhook.emit(text, jsonb, text, text, text) TO regress_webhook_attacker;
GRANT EXECUTE ON FUNCTION webhook.emit_trigger() TO regress_webhook_attacker;
CREATE SCHEMA regress_attack AUTHORIZATION regress_webhook_attacker;

SET ROLE regress_webhook_attacker;
CREATE TABLE regress_attack.loot (attempt serial, ran_as text, secrets text, superuser text);
CREATE TYPE regress_attack.mood AS ENUM ('calm', 'evil');
-- Whenever a mood is turned into JSON, this runs.
CREATE FUNCTION regress_attack.mood_to_json(m regress_attack.mood) RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    v_secrets   text;
    v_superuser text;
BEGIN
    BEGIN
        SELECT string_agg(e.secret, ', ') INTO v_secrets FROM webhook.endpoints e;
    EXCEPTION WHEN OTHERS THEN
        v_secrets := 'denied: ' || SQLSTATE;
    END;
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', current_user);
        v_superuser := 'granted';
    EXCEPTION WHEN OTHERS THEN
        v_superuser := 'denied: ' || SQLSTATE;
    END;
    INSERT INTO regress_attack.loot (ran_as, secrets, superuser)
        VALUES (current_user, v_secrets, v_superuser);
    RETURN to_json(m::text);
END
$$;
CREATE CAST (regress_attack.mood AS json)
    WITH FUNCTION regress_attack.mood_to_json(regress_attack.mood);

CREATE TABLE regress_attack.entries (id integer PRIMARY KEY, memo text, mood regress_attack.mood);
CREATE TRIGGER entry_created AFTER INSERT ON regress_attack.entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created');
INSERT INTO regress_attack.entries VALUES (1, 'rent', 'evil');

-- The cast ran as the attacker, and gained nothing ...
SELECT ran_as, secrets, superuser FROM regress_attack.loot ORDER BY attempt;
RESET ROLE;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_webhook_attacker';
SELECT secret = 'the-endpoint-secret-0123456789' AS secret_unchanged
  FROM webhook.endpoints WHERE id = :'endpoint_id';
-- ... and the event was recorded, the row as the cast made it.
SELECT event_type, payload FROM webhook.events
 WHERE payload ? 'mood' ORDER BY id;

-- The tenant and ordering key columns are turned into text with the same
-- rights (the type's output function).
SET ROLE regress_webhook_attacker;
CREATE TRIGGER entry_posted AFTER UPDATE ON regress_attack.entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted',
                                                       'tenant=mood', 'ordering_key=memo');
UPDATE regress_attack.entries SET memo = 'rent (October)' WHERE id = 1;
RESET ROLE;
SELECT e.event_type, e.payload, e.tenant, e.ordering_key
  FROM webhook.event_log e
 WHERE e.event_type = 'journal_entry.posted' AND e.payload ? 'mood';

--
-- A database still on 0.1, whose library was updated before ALTER
-- EXTENSION UPDATE ran, declares emit_trigger SECURITY DEFINER: there the
-- row is turned into JSON with the rights of the table's owner, whoever
-- fired the trigger. (Declared so by hand here.)
--
ALTER FUNCTION webhook.emit_trigger() SECURITY DEFINER;
DROP TRIGGER entry_posted ON regress_attack.entries;
TRUNCATE regress_attack.loot;
SET ROLE regress_webhook_attacker;
INSERT INTO regress_attack.entries VALUES (2, 'payroll', 'evil');
RESET ROLE;
-- Fired by a superuser's statement, too.
INSERT INTO regress_attack.entries VALUES (3, 'depreciation', 'evil');
SELECT ran_as, secrets, superuser FROM regress_attack.loot ORDER BY attempt;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_webhook_attacker';
SELECT event_type, payload FROM webhook.events
 WHERE payload ? 'mood' AND payload ->> 'id' <> '1' ORDER BY id;
-- The 0.1 declaration takes the event type alone.
CREATE TRIGGER entry_posted AFTER UPDATE ON regress_attack.entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted', 'tenant=memo');
UPDATE regress_attack.entries SET memo = 'payroll (October)' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
ALTER FUNCTION webhook.emit_trigger() SECURITY INVOKER;

-- Clean up.
SELECT webhook.delete_webhook(:'endpoint_id') AS deleted;
SET client_min_messages = warning;
DROP SCHEMA regress_attack CASCADE;
RESET client_min_messages;
DROP OWNED BY regress_webhook_attacker;
DROP ROLE regress_webhook_attacker;
