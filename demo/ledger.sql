-- demo/ledger.sql: a small double-entry ledger that publishes its events.
--
-- Accounts, accounting periods, and journal entries made of debit and credit
-- lines. Triggers record a webhook event in the same transaction as each
-- ledger change, so an event exists if and only if the change committed:
--
--   account.created         INSERT on ledger.accounts            (the row)
--   account.updated         UPDATE on ledger.accounts            (the row)
--   journal_entry.created   INSERT on ledger.journal_entries     (the row)
--   journal_entry.posted    status draft -> posted               (entry, lines, totals)
--   journal_entry.reversed  status posted -> reversed            (entry, lines, totals, reversed_by)
--   period.closed           status open -> closed                (period and its totals)
--   period.reopened         status closed -> open                (period, reason, totals)
--
-- Where the row says it all, webhook.emit_trigger('<event type>') is the
-- whole trigger. Where subscribers need more than the row (an entry's lines
-- and totals, a period's figures), a small trigger function builds the
-- payload and calls webhook.emit(event_type, payload).
--
-- Posting checks that debits equal credits and that the entry's period is
-- open; a refused posting raises an error, its transaction rolls back, and
-- so no event leaves.
--
-- The ledger serves several customers (organizations) from one database:
-- every row belongs to one, named in its org column, and an entry's lines,
-- accounts and period are its org's (foreign keys and the checks below see
-- to it). Each event is recorded for its org as its tenant -- emit_trigger's
-- 'tenant=org' argument, or emit's tenant argument -- so an endpoint a
-- customer registers with webhook.create_webhook(..., tenant => '<org>')
-- receives that customer's events alone, and an endpoint without a tenant
-- (an internal system) receives every customer's.
--
-- An application role that writes the ledger needs, on the webhook side,
-- only:
--   GRANT USAGE ON SCHEMA webhook TO app;
--   GRANT EXECUTE ON FUNCTION webhook.emit TO app;
-- (webhook.emit_trigger turns the row into JSON as the caller and records
-- the event with the extension owner's rights; the trigger functions below
-- run as the caller and call webhook.emit.)

CREATE EXTENSION IF NOT EXISTS webhook_outbox;
CREATE EXTENSION IF NOT EXISTS btree_gist;     -- org = in a period's exclusion constraint

CREATE SCHEMA ledger;

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

CREATE TABLE ledger.accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org         text NOT NULL,                  -- the customer: the events' tenant
    code        text NOT NULL,
    name        text NOT NULL,
    type        text NOT NULL
                CHECK (type IN ('asset', 'liability', 'equity', 'revenue', 'expense')),
    currency    char(3) NOT NULL DEFAULT 'EUR',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org, code),
    UNIQUE (org, id)
);

-- A month (or any range of days) of one org that its entries are posted
-- into; closing it freezes it, reopening it allows postings again.
CREATE TABLE ledger.periods (
    org            text NOT NULL,
    period         text NOT NULL,               -- e.g. '2026-11'
    starts_on      date NOT NULL,
    ends_on        date NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at      timestamptz,
    reopened_at    timestamptz,
    reopen_reason  text,
    PRIMARY KEY (org, period),
    CHECK (starts_on <= ends_on),
    EXCLUDE USING gist (org WITH =, daterange(starts_on, ends_on, '[]') WITH &&)
);

CREATE TABLE ledger.journal_entries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org          text NOT NULL,
    entry_date   date NOT NULL,
    description  text NOT NULL,
    status       text NOT NULL DEFAULT 'draft'
                 CHECK (status IN ('draft', 'posted', 'reversed')),
    posted_at    timestamptz,
    reversal_of  bigint,        -- set on a reversing entry
    reversed_by  bigint,        -- set on the entry it reverses
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org, id),
    FOREIGN KEY (org, reversal_of) REFERENCES ledger.journal_entries (org, id),
    FOREIGN KEY (org, reversed_by) REFERENCES ledger.journal_entries (org, id)
);

-- Each line is a debit or a credit, never both, on an account of its
-- entry's org.
CREATE TABLE ledger.journal_lines (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org         text NOT NULL,
    entry_id    bigint NOT NULL,
    account_id  bigint NOT NULL,
    debit       numeric(14, 2) NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit      numeric(14, 2) NOT NULL DEFAULT 0 CHECK (credit >= 0),
    memo        text,
    CHECK ((debit = 0) <> (credit = 0)),
    FOREIGN KEY (org, entry_id) REFERENCES ledger.journal_entries (org, id) ON DELETE CASCADE,
    FOREIGN KEY (org, account_id) REFERENCES ledger.accounts (org, id)
);
CREATE INDEX journal_lines_entry_idx ON ledger.journal_lines (entry_id);

-- ---------------------------------------------------------------------------
-- Ledger rules
-- ---------------------------------------------------------------------------

-- Guards an entry's status changes: only draft -> posted and posted ->
-- reversed exist; posting needs lines that balance, in an open period.
CREATE FUNCTION ledger.check_entry_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_lines  bigint;
    v_debit  numeric;
    v_credit numeric;
    v_period ledger.periods;
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT ((OLD.status = 'draft' AND NEW.status = 'posted') OR
            (OLD.status = 'posted' AND NEW.status = 'reversed')) THEN
        RAISE EXCEPTION 'journal entry % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NEW.status = 'reversed' THEN
        RETURN NEW;
    END IF;

    SELECT count(*), coalesce(sum(l.debit), 0), coalesce(sum(l.credit), 0)
      INTO v_lines, v_debit, v_credit
      FROM ledger.journal_lines l WHERE l.entry_id = NEW.id;
    IF v_lines = 0 THEN
        RAISE EXCEPTION 'journal entry % has no lines', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF v_debit <> v_credit THEN
        RAISE EXCEPTION 'journal entry % does not balance', NEW.id
            USING ERRCODE = 'check_violation',
                  DETAIL = format('Debits total %s, credits total %s.', v_debit, v_credit);
    END IF;

    SELECT * INTO v_period FROM ledger.periods p
     WHERE p.org = NEW.org AND NEW.entry_date BETWEEN p.starts_on AND p.ends_on;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no accounting period of "%" covers %', NEW.org, NEW.entry_date
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_period.status = 'closed' THEN
        RAISE EXCEPTION 'accounting period "%" of "%" is closed', v_period.period, NEW.org
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Reopen it with ledger.reopen_period() first.';
    END IF;

    NEW.posted_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER check_entry_status
    BEFORE UPDATE OF status ON ledger.journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger.check_entry_status();

-- Lines can be changed only while their entry is a draft.
CREATE FUNCTION ledger.check_lines_editable() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_entry_id bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.entry_id ELSE NEW.entry_id END;
BEGIN
    IF (SELECT e.status FROM ledger.journal_entries e WHERE e.id = v_entry_id) <> 'draft' THEN
        RAISE EXCEPTION 'journal entry % is not a draft: its lines cannot change', v_entry_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Reverse it with ledger.reverse_entry() instead.';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER check_lines_editable
    BEFORE INSERT OR UPDATE OR DELETE ON ledger.journal_lines
    FOR EACH ROW EXECUTE FUNCTION ledger.check_lines_editable();

-- ---------------------------------------------------------------------------
-- Payloads
-- ---------------------------------------------------------------------------

-- An entry as subscribers see it: its org, header, lines with their
-- accounts, totals.
CREATE FUNCTION ledger.entry_document(entry_id bigint) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (
    SELECT jsonb_build_object(
               'org',          e.org,
               'entry_id',     e.id,
               'date',         e.entry_date,
               'period',       (SELECT p.period FROM ledger.periods p
                                 WHERE p.org = e.org
                                   AND e.entry_date BETWEEN p.starts_on AND p.ends_on),
               'description',  e.description,
               'status',       e.status,
               'posted_at',    e.posted_at,
               'reversal_of',  e.reversal_of,
               'reversed_by',  e.reversed_by,
               'lines',        coalesce(l.lines, '[]'::jsonb),
               'total_debit',  coalesce(l.total_debit, 0),
               'total_credit', coalesce(l.total_credit, 0))
      FROM ledger.journal_entries e
      LEFT JOIN LATERAL (
             SELECT jsonb_agg(jsonb_build_object(
                        'account',  a.code,
                        'name',     a.name,
                        'debit',    jl.debit,
                        'credit',   jl.credit,
                        'currency', a.currency,
                        'memo',     jl.memo) ORDER BY jl.id) AS lines,
                    sum(jl.debit) AS total_debit,
                    sum(jl.credit) AS total_credit
               FROM ledger.journal_lines jl
               JOIN ledger.accounts a ON a.id = jl.account_id
              WHERE jl.entry_id = e.id) l ON true
     WHERE e.id = entry_document.entry_id);

-- A period as subscribers see it: its org, dates and state, and what was
-- posted into it.
CREATE FUNCTION ledger.period_document(org text, period text) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (
    SELECT jsonb_build_object(
               'org',            p.org,
               'period',         p.period,
               'starts_on',      p.starts_on,
               'ends_on',        p.ends_on,
               'status',         p.status,
               'closed_at',      p.closed_at,
               'reopened_at',    p.reopened_at,
               'reopen_reason',  p.reopen_reason,
               'entries_posted', count(DISTINCT e.id),
               'total_debit',    coalesce(sum(l.debit), 0),
               'total_credit',   coalesce(sum(l.credit), 0))
      FROM ledger.periods p
      LEFT JOIN ledger.journal_entries e
             ON e.org = p.org
            AND e.entry_date BETWEEN p.starts_on AND p.ends_on
            AND e.status IN ('posted', 'reversed')
      LEFT JOIN ledger.journal_lines l ON l.entry_id = e.id
     WHERE p.org = period_document.org AND p.period = period_document.period
     GROUP BY p.org, p.period);

-- ---------------------------------------------------------------------------
-- Events
-- ---------------------------------------------------------------------------

-- The row is the payload: webhook.emit_trigger does it all, and
-- 'tenant=org' records the event for the row's org.
CREATE TRIGGER account_created
    AFTER INSERT ON ledger.accounts
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('account.created', 'tenant=org');

CREATE TRIGGER account_updated
    AFTER UPDATE ON ledger.accounts
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION webhook.emit_trigger('account.updated', 'tenant=org');

CREATE TRIGGER journal_entry_created
    AFTER INSERT ON ledger.journal_entries
    FOR EACH ROW EXECUTE FUNCTION webhook.emit_trigger('journal_entry.created', 'tenant=org');

-- The payload is built: an entry with its lines and totals; a period with
-- its figures. The trigger's argument is the event type; the row's org is
-- the event's tenant.
CREATE FUNCTION ledger.publish_entry() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook.emit(TG_ARGV[0], ledger.entry_document(NEW.id), tenant => NEW.org);
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger.publish_period() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook.emit(TG_ARGV[0], ledger.period_document(NEW.org, NEW.period),
                         tenant => NEW.org);
    RETURN NULL;
END
$$;

CREATE TRIGGER journal_entry_posted
    AFTER UPDATE OF status ON ledger.journal_entries
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION ledger.publish_entry('journal_entry.posted');

CREATE TRIGGER journal_entry_reversed
    AFTER UPDATE OF status ON ledger.journal_entries
    FOR EACH ROW WHEN (NEW.status = 'reversed' AND OLD.status IS DISTINCT FROM 'reversed')
    EXECUTE FUNCTION ledger.publish_entry('journal_entry.reversed');

CREATE TRIGGER period_closed
    AFTER UPDATE OF status ON ledger.periods
    FOR EACH ROW WHEN (NEW.status = 'closed' AND OLD.status = 'open')
    EXECUTE FUNCTION ledger.publish_period('period.closed');

CREATE TRIGGER period_reopened
    AFTER UPDATE OF status ON ledger.periods
    FOR EACH ROW WHEN (NEW.status = 'open' AND OLD.status = 'closed')
    EXECUTE FUNCTION ledger.publish_period('period.reopened');

-- ---------------------------------------------------------------------------
-- Operations
-- ---------------------------------------------------------------------------

-- Posts a draft: the status change runs the checks and emits
-- journal_entry.posted.
CREATE PROCEDURE ledger.post_entry(entry_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger.journal_entries e SET status = 'posted' WHERE e.id = post_entry.entry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'journal entry % does not exist', entry_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Reverses a posted entry: a new entry with debits and credits swapped is
-- drafted and posted, and the original is marked reversed. One transaction,
-- three events: journal_entry.created and journal_entry.posted for the
-- reversing entry, journal_entry.reversed for the original. Returns the id
-- of the reversing entry.
CREATE FUNCTION ledger.reverse_entry(entry_id bigint, reversal_date date DEFAULT current_date)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_original ledger.journal_entries;
    v_reversal bigint;
BEGIN
    SELECT * INTO v_original FROM ledger.journal_entries e
     WHERE e.id = reverse_entry.entry_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'journal entry % does not exist', entry_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_original.status <> 'posted' THEN
        RAISE EXCEPTION 'journal entry % is %, only a posted entry can be reversed',
                        entry_id, v_original.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    INSERT INTO ledger.journal_entries (org, entry_date, description, reversal_of)
    VALUES (v_original.org, reversal_date,
            'Reversal of #' || entry_id || ': ' || v_original.description, entry_id)
    RETURNING id INTO v_reversal;
    INSERT INTO ledger.journal_lines (org, entry_id, account_id, debit, credit, memo)
    SELECT l.org, v_reversal, l.account_id, l.credit, l.debit, l.memo
      FROM ledger.journal_lines l WHERE l.entry_id = reverse_entry.entry_id ORDER BY l.id;
    CALL ledger.post_entry(v_reversal);

    UPDATE ledger.journal_entries e
       SET status = 'reversed', reversed_by = v_reversal
     WHERE e.id = reverse_entry.entry_id;
    RETURN v_reversal;
END
$$;

CREATE PROCEDURE ledger.close_period(org text, period text)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger.periods p SET status = 'closed', closed_at = now()
     WHERE p.org = close_period.org AND p.period = close_period.period AND p.status = 'open';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'accounting period "%" of "%" does not exist or is not open', period, org
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$$;

CREATE PROCEDURE ledger.reopen_period(org text, period text, reason text)
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(reason, '') = '' THEN
        RAISE EXCEPTION 'reopening a period needs a reason'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    UPDATE ledger.periods p
       SET status = 'open', reopened_at = now(), reopen_reason = reason
     WHERE p.org = reopen_period.org AND p.period = reopen_period.period AND p.status = 'closed';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'accounting period "%" of "%" does not exist or is not closed', period, org
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$$;
