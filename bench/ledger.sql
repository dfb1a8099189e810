-- bench/ledger.sql: the ledger the pgbench scenario writes to, three
-- times: ledger_plain without the outbox; ledger_outbox with the trigger
-- that emits journal_entry.posted (the README's typical use); ledger_audit
-- with a hand-written PL/pgSQL trigger that inserts the same row into a
-- plain table shaped like webhook.event_log (same columns and indexes) --
-- the floor for any outbox that records its events in the transaction.
-- Same tables, same indexes, same foreign keys; only the trigger differs.
-- ledger_tenant is ledger_outbox with an org column on journal_entries
-- whose value the trigger passes as the event's tenant ('tenant=org').

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['ledger_plain', 'ledger_outbox', 'ledger_audit', 'ledger_tenant'] LOOP
        EXECUTE format('CREATE SCHEMA %I', s);
        EXECUTE format($sql$
            CREATE TABLE %1$I.accounts (
                id   integer PRIMARY KEY,
                code text NOT NULL UNIQUE,
                name text NOT NULL
            );
            INSERT INTO %1$I.accounts
                SELECT i, lpad(i::text, 6, '0'), 'Account ' || i
                  FROM generate_series(1, 1000) AS i;
            CREATE TABLE %1$I.journal_entries (
                id          bigserial PRIMARY KEY,
                entry_date  date NOT NULL,
                description text NOT NULL,
                status      text NOT NULL DEFAULT 'draft'
                            CHECK (status IN ('draft', 'posted', 'reversed')),
                posted_at   timestamptz
            );
            CREATE TABLE %1$I.journal_lines (
                id         bigserial PRIMARY KEY,
                entry_id   bigint NOT NULL REFERENCES %1$I.journal_entries,
                account_id integer NOT NULL REFERENCES %1$I.accounts,
                debit      numeric(18, 2) NOT NULL,
                credit     numeric(18, 2) NOT NULL
            );
            CREATE INDEX ON %1$I.journal_lines (entry_id);
            CREATE INDEX ON %1$I.journal_lines (account_id);
            -- A ledger with a past: 100,000 posted entries (inserted, so the
            -- trigger below does not fire for them).
            INSERT INTO %1$I.journal_entries (entry_date, description, status, posted_at)
                SELECT date '2026-01-01' + i / 500, 'Opening entry ' || i, 'posted', now()
                  FROM generate_series(1, 100000) AS i;
            INSERT INTO %1$I.journal_lines (entry_id, account_id, debit, credit)
                SELECT e.id, 1 + (e.id * 7 + side) %% 1000,
                       CASE side WHEN 0 THEN 100.00 ELSE 0 END,
                       CASE side WHEN 1 THEN 100.00 ELSE 0 END
                  FROM %1$I.journal_entries e, generate_series(0, 1) AS side;
        $sql$, s);
    END LOOP;
END
$$;

CREATE TRIGGER journal_entry_posted
    AFTER UPDATE OF status ON ledger_outbox.journal_entries
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted');

-- A thousand customers' entries: the tenant is the row's org.
ALTER TABLE ledger_tenant.journal_entries
    ADD COLUMN org text NOT NULL DEFAULT 'org_' || (random() * 999)::int;
CREATE TRIGGER journal_entry_posted
    AFTER UPDATE OF status ON ledger_tenant.journal_entries
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION webhook.emit_trigger('journal_entry.posted', 'tenant=org');

CREATE TABLE ledger_audit.event_log (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    txid        xid8 NOT NULL
);
CREATE INDEX ON ledger_audit.event_log (txid);
CREATE INDEX ON ledger_audit.event_log (created_at);

CREATE FUNCTION ledger_audit.record_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_audit.event_log
    VALUES (gen_random_uuid(), TG_ARGV[0], to_jsonb(NEW), clock_timestamp(),
            pg_current_xact_id());
    RETURN NEW;
END
$$;

CREATE TRIGGER journal_entry_posted
    AFTER UPDATE OF status ON ledger_audit.journal_entries
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION ledger_audit.record_event('journal_entry.posted');

-- (bench/scenarios.py runs VACUUM ANALYZE next: it cannot share this batch.)
