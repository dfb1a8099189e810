-- webhook_outbox 0.1: tables, views and functions of the webhook outbox.
--
-- Layout: base tables hold everything the worker needs (including internal
-- columns such as secrets and the inserting transaction's id); the views
-- webhook.events, webhook.deliveries and webhook.attempts show exactly the
-- columns of the contract. Every object is schema-qualified; nothing is
-- granted to PUBLIC.

\echo Use "CREATE EXTENSION webhook_outbox" to load this file. \quit

REVOKE ALL ON SCHEMA webhook FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Event catalog
-- ---------------------------------------------------------------------------

CREATE TABLE webhook.event_types (
    name        text PRIMARY KEY
                CONSTRAINT event_types_name_format
                CHECK (name ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$'),
    description text
);

INSERT INTO webhook.event_types (name, description) VALUES
    ('journal_entry.created',  'A journal entry was drafted'),
    ('journal_entry.posted',   'A journal entry was posted to the ledger'),
    ('journal_entry.reversed', 'A posted journal entry was reversed'),
    ('account.created',        'An account was opened'),
    ('account.updated',        'An account was changed'),
    ('period.closed',          'An accounting period was closed'),
    ('period.reopened',        'A closed accounting period was reopened');

-- pg_dump keeps the event types users registered; the shipped ones come back
-- with CREATE EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('webhook.event_types',
    $$WHERE name NOT IN ('journal_entry.created', 'journal_entry.posted',
        'journal_entry.reversed', 'account.created', 'account.updated',
        'period.closed', 'period.reopened')$$);

-- ---------------------------------------------------------------------------
-- Endpoints
-- ---------------------------------------------------------------------------

CREATE TABLE webhook.endpoints (
    id                  uuid PRIMARY KEY,
    url                 text NOT NULL,
    event_types         text[],             -- NULL = every event
    secret              text NOT NULL,
    previous_secret     text,               -- still signs until ...
    previous_secret_expires_at timestamptz, -- ... this moment (rotate_secret)
    description         text,
    headers             jsonb,
    enabled             boolean NOT NULL DEFAULT true,
    disabled_at         timestamptz,
    disabled_reason     text,
    failing_since       timestamptz,        -- first failure since the last success
    last_failure_at     timestamptz,        -- latest failure since then (probe pacing)
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);

SELECT pg_catalog.pg_extension_config_dump('webhook.endpoints', '');

-- ---------------------------------------------------------------------------
-- Events: insert-only, one row per webhook.emit.
-- ---------------------------------------------------------------------------

-- txid is the top-level transaction id of the emitter. The worker compares
-- it with the snapshot it took at its previous dispatch pass to find events
-- whose transactions have committed since, including those with a lower id
-- that committed late (see src/queue.c).
CREATE TABLE webhook.event_log (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    txid        xid8 NOT NULL
);
CREATE INDEX event_log_txid_idx ON webhook.event_log (txid);
CREATE INDEX event_log_created_at_idx ON webhook.event_log (created_at);

-- Where dispatch stopped: the snapshot of the last dispatch pass. One row.
CREATE TABLE webhook.dispatch_cursor (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    snapshot    pg_snapshot NOT NULL
);
INSERT INTO webhook.dispatch_cursor (snapshot) VALUES (pg_catalog.pg_current_snapshot());

-- ---------------------------------------------------------------------------
-- Deliveries and attempts
-- ---------------------------------------------------------------------------

-- One row per (event, endpoint). A pending delivery whose endpoint is
-- disabled is parked at next_attempt_at = 'infinity' and resumes when the
-- endpoint is enabled again.
CREATE TABLE webhook.delivery_log (
    event_id         uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    event_type       text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz,
    next_attempt_manual boolean NOT NULL DEFAULT false,
    succeeded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (event_id, endpoint_id)
);
-- The worker takes due deliveries endpoint by endpoint (so that one
-- endpoint's backlog never hides another's): pending rows by endpoint.
-- event_id makes the order total, so the worker can resume a scan after
-- the last row it took (see due_deliveries).
CREATE INDEX delivery_log_pending_idx
    ON webhook.delivery_log (endpoint_id, next_attempt_at, event_id)
    WHERE status = 'pending';
CREATE INDEX delivery_log_created_at_idx ON webhook.delivery_log (created_at);

CREATE TABLE webhook.attempt_log (
    event_id      uuid NOT NULL,
    endpoint_id   uuid NOT NULL,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer,
    error         text,
    response_body text,
    manual        boolean NOT NULL DEFAULT false
);
CREATE INDEX attempt_log_delivery_idx ON webhook.attempt_log (event_id, endpoint_id);
CREATE INDEX attempt_log_started_at_idx ON webhook.attempt_log (started_at);

-- The contract's relations.
CREATE VIEW webhook.events AS
    SELECT id, event_type, payload, created_at
      FROM webhook.event_log;

CREATE VIEW webhook.deliveries AS
    SELECT event_id, endpoint_id, event_type, status, attempts,
           last_status_code, last_error, next_attempt_at, succeeded_at,
           created_at
      FROM webhook.delivery_log;

CREATE VIEW webhook.attempts AS
    SELECT event_id, endpoint_id, attempt, started_at, duration_ms,
           status_code, error, response_body, manual
      FROM webhook.attempt_log;

-- ---------------------------------------------------------------------------
-- Validation helpers (C, src/validate.c): each raises a specific error.
-- ---------------------------------------------------------------------------

CREATE FUNCTION webhook.check_url(url text) RETURNS void
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_check_url';
CREATE FUNCTION webhook.check_headers(headers jsonb) RETURNS void
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_check_headers';
CREATE FUNCTION webhook.check_secret(secret text) RETURNS void
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_check_secret';
CREATE FUNCTION webhook.check_event_type_name(name text) RETURNS void
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_check_event_type_name';
CREATE FUNCTION webhook.generate_secret() RETURNS text
    LANGUAGE c STRICT VOLATILE AS 'MODULE_PATHNAME', 'webhook_generate_secret';
CREATE FUNCTION webhook.uuid_v7() RETURNS uuid
    LANGUAGE c STRICT VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'webhook_uuid_v7';

-- Signatures as the worker makes them, for receivers' tests and support.
CREATE FUNCTION webhook.sign(secret text, webhook_id text, unix_timestamp bigint, body text)
    RETURNS text
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_sign';
CREATE FUNCTION webhook.sign_hex(secret text, body text) RETURNS text
    LANGUAGE c STRICT IMMUTABLE AS 'MODULE_PATHNAME', 'webhook_sign_hex';

-- Raises the catalog error unless every entry names an event type or is a
-- 'prefix.*' pattern; returns the filter normalised ('{}' becomes NULL).
CREATE FUNCTION webhook.check_event_filter(event_types text[]) RETURNS text[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry text;
BEGIN
    IF event_types IS NULL OR cardinality(event_types) = 0 THEN
        RETURN NULL;
    END IF;
    FOREACH entry IN ARRAY event_types LOOP
        IF entry IS NULL THEN
            RAISE EXCEPTION 'event type filter entries must not be null'
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF entry = '' THEN
            RAISE EXCEPTION 'event type filter entries must not be empty'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF entry ~ '^[a-z0-9_]+(\.[a-z0-9_]+)*\.\*$' THEN
            CONTINUE;
        END IF;
        PERFORM webhook.check_event_type_name(entry);
        IF NOT EXISTS (SELECT 1 FROM webhook.event_types t WHERE t.name = entry) THEN
            RAISE EXCEPTION 'event type "%" is not in the catalog', entry
                USING ERRCODE = 'undefined_object',
                      DETAIL = 'Known event types: ' ||
                          (SELECT string_agg(t.name, ', ' ORDER BY t.name COLLATE "C") FROM webhook.event_types t) || '.',
                      HINT = 'Register it with webhook.register_event_type(), or use a pattern such as ''journal_entry.*''.';
        END IF;
    END LOOP;
    RETURN (SELECT array_agg(DISTINCT e ORDER BY e) FROM unnest(event_types) AS e);
END
$$;

-- Whether an endpoint's filter lets an event type through.
CREATE FUNCTION webhook.filter_matches(event_types text[], event_type text)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
-- No SET clause: it would stop the planner inlining this into dispatch. The
-- body is parsed at creation, so the caller's search_path cannot change it.
RETURN event_types IS NULL
    OR cardinality(event_types) = 0
    OR event_type = ANY (event_types)
    OR EXISTS (SELECT 1 FROM unnest(event_types) AS p
                WHERE p LIKE '%.*'
                  AND starts_with(event_type, left(p, -1)));

-- ---------------------------------------------------------------------------
-- Event catalog API
-- ---------------------------------------------------------------------------

CREATE FUNCTION webhook.register_event_type(name text, description text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'event type name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM webhook.check_event_type_name(name);
    INSERT INTO webhook.event_types AS t (name, description)
        VALUES (register_event_type.name, register_event_type.description)
        ON CONFLICT ON CONSTRAINT event_types_pkey DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event type "%" already exists', name
            USING ERRCODE = 'unique_violation';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Endpoint API
-- ---------------------------------------------------------------------------

-- Credential-carrying header values are masked wherever endpoints are listed.
CREATE FUNCTION webhook.mask_headers(headers jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
RETURN (SELECT jsonb_object_agg(h.key,
                CASE WHEN lower(h.key) IN ('authorization', 'proxy-authorization', 'cookie',
                                           'x-api-key', 'api-key', 'x-auth-token')
                          OR lower(h.key) LIKE '%token%'
                          OR lower(h.key) LIKE '%secret%'
                          OR lower(h.key) LIKE '%password%'
                     THEN to_jsonb('********'::text)
                     ELSE h.value END)
          FROM jsonb_each(headers) AS h);

-- What the endpoint functions return. (plpgsql cannot declare a RETURNS
-- TABLE column with the name of an argument, e.g. url; a composite type
-- gives callers the same columns.)
CREATE TYPE webhook.endpoint_info AS
    (id uuid, url text, event_types text[], description text,
     headers jsonb, enabled boolean, disabled_at timestamptz,
     disabled_reason text, created_at timestamptz, updated_at timestamptz);
CREATE TYPE webhook.endpoint_with_secret AS
    (id uuid, url text, event_types text[], description text,
     headers jsonb, enabled boolean, disabled_at timestamptz,
     disabled_reason text, created_at timestamptz, updated_at timestamptz,
     secret text);

-- The URL as listed: a password in it (https://user:password@host/)
-- replaced by ********.
CREATE FUNCTION webhook.mask_url(url text) RETURNS text
    LANGUAGE sql IMMUTABLE
RETURN regexp_replace(url, '^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)[^/?#@]*@', '\1********@');

CREATE FUNCTION webhook.create_webhook(
    url          text,
    event_types  text[]  DEFAULT NULL,
    secret       text    DEFAULT NULL,
    description  text    DEFAULT NULL,
    headers      jsonb   DEFAULT NULL,
    enabled      boolean DEFAULT true)
RETURNS SETOF webhook.endpoint_with_secret
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_url     text := url;
    v_filter  text[];
    v_secret  text := secret;
    v_headers jsonb := headers;
    v_enabled boolean := enabled;
BEGIN
    IF v_url IS NULL THEN
        RAISE EXCEPTION 'url must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM webhook.check_url(v_url);
    v_filter := webhook.check_event_filter(event_types);
    IF v_secret IS NULL THEN
        v_secret := webhook.generate_secret();
    ELSE
        PERFORM webhook.check_secret(v_secret);
    END IF;
    IF v_headers IS NOT NULL THEN
        PERFORM webhook.check_headers(v_headers);
        IF v_headers = '{}'::jsonb THEN
            v_headers := NULL;
        END IF;
    END IF;
    IF v_enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;

    RETURN QUERY
    INSERT INTO webhook.endpoints AS e
           (id, url, event_types, secret, description, headers, enabled,
            disabled_at, disabled_reason)
    VALUES (webhook.uuid_v7(), v_url, v_filter, v_secret, create_webhook.description,
            v_headers, v_enabled,
            CASE WHEN v_enabled THEN NULL ELSE now() END,
            CASE WHEN v_enabled THEN NULL ELSE 'disabled at creation' END)
    RETURNING e.id, e.url, e.event_types, e.description,
              e.headers, e.enabled, e.disabled_at,
              e.disabled_reason, e.created_at, e.updated_at, e.secret;
END
$$;

-- list_webhooks and get_webhook run with the owner's rights, so that
-- EXECUTE on them is the one grant a role needs to see endpoints (never
-- their secrets).
CREATE FUNCTION webhook.list_webhooks()
RETURNS SETOF webhook.endpoint_info
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT e.id, webhook.mask_url(e.url), e.event_types, e.description,
           webhook.mask_headers(e.headers), e.enabled, e.disabled_at,
           e.disabled_reason, e.created_at, e.updated_at
      FROM webhook.endpoints e
     ORDER BY e.created_at, e.id;
END;

-- Raises the "no such endpoint" error (42704) for an id that names none.
CREATE FUNCTION webhook.endpoint_not_found(id uuid) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'endpoint id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RAISE EXCEPTION 'webhook endpoint "%" does not exist', id
        USING ERRCODE = 'undefined_object';
END
$$;

CREATE FUNCTION webhook.get_webhook(id uuid)
RETURNS SETOF webhook.endpoint_info
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT w.* FROM webhook.list_webhooks() w WHERE w.id = get_webhook.id;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(get_webhook.id);
    END IF;
END
$$;

-- Wakes the worker when the calling transaction commits, to look at the
-- deliveries it made due (they may sit behind the worker's position).
CREATE FUNCTION webhook.wake_worker() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'webhook_wake_worker';

-- Parks or resumes an endpoint's pending deliveries as it is disabled or
-- enabled, so that the worker never scans deliveries it may not send.
CREATE FUNCTION webhook.park_pending(endpoint_id uuid, parked boolean) RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE webhook.delivery_log d
       SET next_attempt_at = CASE WHEN park_pending.parked THEN 'infinity'::timestamptz
                                  ELSE pg_catalog.now() END
     WHERE d.endpoint_id = park_pending.endpoint_id
       AND d.status = 'pending'
       AND (park_pending.parked OR d.next_attempt_at = 'infinity');
    SELECT webhook.wake_worker() WHERE NOT park_pending.parked;
END;

CREATE FUNCTION webhook.update_webhook(
    id           uuid,
    url          text    DEFAULT NULL,
    event_types  text[]  DEFAULT NULL,
    description  text    DEFAULT NULL,
    headers      jsonb   DEFAULT NULL,
    enabled      boolean DEFAULT NULL)
RETURNS SETOF webhook.endpoint_info
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id      uuid := id;
    v_url     text;
    v_was     boolean;
    v_filter  text[];
    v_headers jsonb := headers;
BEGIN
    SELECT e.enabled INTO v_was FROM webhook.endpoints e WHERE e.id = v_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(v_id);
    END IF;
    IF update_webhook.url IS NOT NULL THEN
        PERFORM webhook.check_url(update_webhook.url);
    END IF;
    -- The URL read back masked from get_webhook keeps the stored password.
    v_url := CASE WHEN update_webhook.url = (SELECT webhook.mask_url(e.url)
                                               FROM webhook.endpoints e WHERE e.id = v_id)
                  THEN NULL ELSE update_webhook.url END;
    IF update_webhook.event_types IS NOT NULL THEN
        v_filter := webhook.check_event_filter(update_webhook.event_types);
    END IF;
    IF v_headers IS NOT NULL THEN
        PERFORM webhook.check_headers(v_headers);
        -- A masked value read back from get_webhook keeps the stored value.
        SELECT jsonb_object_agg(h.key,
                   CASE WHEN h.value = to_jsonb('********'::text) AND e.headers ? h.key
                        THEN e.headers -> h.key ELSE h.value END)
          INTO v_headers
          FROM jsonb_each(v_headers) AS h, webhook.endpoints e
         WHERE e.id = v_id;
        v_headers := coalesce(v_headers, '{}'::jsonb);
    END IF;

    UPDATE webhook.endpoints e SET
        url         = coalesce(v_url, e.url),
        event_types = CASE WHEN update_webhook.event_types IS NULL THEN e.event_types
                           ELSE v_filter END,
        description = coalesce(update_webhook.description, e.description),
        headers     = CASE WHEN v_headers IS NULL THEN e.headers
                           WHEN v_headers = '{}'::jsonb THEN NULL
                           ELSE v_headers END,
        enabled     = coalesce(update_webhook.enabled, e.enabled),
        disabled_at = CASE WHEN update_webhook.enabled IS NULL THEN e.disabled_at
                           WHEN update_webhook.enabled THEN NULL
                           WHEN v_was THEN now()
                           ELSE e.disabled_at END,
        disabled_reason = CASE WHEN update_webhook.enabled IS NULL THEN e.disabled_reason
                           WHEN update_webhook.enabled THEN NULL
                           WHEN v_was THEN 'disabled by ' || session_user
                           ELSE e.disabled_reason END,
        failing_since = CASE WHEN update_webhook.enabled THEN NULL ELSE e.failing_since END,
        last_failure_at = CASE WHEN update_webhook.enabled THEN NULL ELSE e.last_failure_at END,
        updated_at  = now()
     WHERE e.id = v_id;

    IF update_webhook.enabled IS NOT NULL AND update_webhook.enabled IS DISTINCT FROM v_was THEN
        PERFORM webhook.park_pending(v_id, NOT update_webhook.enabled);
    END IF;

    RETURN QUERY SELECT * FROM webhook.get_webhook(v_id);
END
$$;

CREATE FUNCTION webhook.delete_webhook(id uuid) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'endpoint id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM webhook.endpoints e WHERE e.id = delete_webhook.id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE webhook.delivery_log d
       SET status = 'cancelled', next_attempt_at = NULL,
           last_error = coalesce(d.last_error, 'endpoint deleted')
     WHERE d.endpoint_id = delete_webhook.id AND d.status = 'pending';
    RETURN true;
END
$$;

CREATE FUNCTION webhook.rotate_secret(id uuid, grace interval DEFAULT '24 hours')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_secret text := webhook.generate_secret();
BEGIN
    IF grace IS NULL THEN
        RAISE EXCEPTION 'grace period must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass interval ''0'' to stop signing with the old secret at once.';
    END IF;
    IF grace < interval '0' THEN
        RAISE EXCEPTION 'grace period must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE webhook.endpoints e
       SET previous_secret = CASE WHEN grace > interval '0' THEN e.secret END,
           previous_secret_expires_at = CASE WHEN grace > interval '0' THEN now() + grace END,
           secret = v_secret,
           updated_at = now()
     WHERE e.id = rotate_secret.id;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(rotate_secret.id);
    END IF;
    RETURN v_secret;
END
$$;

-- ---------------------------------------------------------------------------
-- Emitting events (C, src/emit.c). SECURITY DEFINER: an application role with
-- EXECUTE on emit records events without any right on the tables.
-- ---------------------------------------------------------------------------

CREATE FUNCTION webhook.emit(event_type text, payload jsonb) RETURNS uuid
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'webhook_emit';

CREATE FUNCTION webhook.emit_trigger() RETURNS trigger
    LANGUAGE c SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'webhook_emit_trigger';

-- ---------------------------------------------------------------------------
-- Sending again by hand
-- ---------------------------------------------------------------------------

CREATE FUNCTION webhook.retry_delivery(event_id uuid, endpoint_id uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_enabled boolean;
BEGIN
    IF event_id IS NULL OR endpoint_id IS NULL THEN
        RAISE EXCEPTION 'event id and endpoint id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT e.enabled INTO v_enabled FROM webhook.endpoints e WHERE e.id = retry_delivery.endpoint_id;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(retry_delivery.endpoint_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook.event_log ev WHERE ev.id = retry_delivery.event_id) THEN
        RAISE EXCEPTION 'event "%" does not exist', retry_delivery.event_id
            USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual)
    SELECT ev.id, retry_delivery.endpoint_id, ev.event_type, 'pending',
           CASE WHEN v_enabled THEN now() ELSE 'infinity' END, true
      FROM webhook.event_log ev WHERE ev.id = retry_delivery.event_id
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = excluded.next_attempt_at,
           next_attempt_manual = true;
    PERFORM webhook.wake_worker();
END
$$;

-- Sends again, by hand, every event of the window that the endpoint's
-- filter selects and that it has not received: failed or cancelled
-- deliveries, and events dispatched while it was disabled. Deliveries that
-- succeeded or are still pending are left as they are (retry_delivery
-- re-sends one that succeeded). Returns how many deliveries it queued.
CREATE FUNCTION webhook.replay(endpoint_id uuid, since timestamptz, until timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_filter  text[];
    v_enabled boolean;
    v_count   bigint;
BEGIN
    IF endpoint_id IS NULL OR since IS NULL OR until IS NULL THEN
        RAISE EXCEPTION 'endpoint id, since and until must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF since > until THEN
        RAISE EXCEPTION 'replay window is empty: since is after until'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e.event_types, e.enabled INTO v_filter, v_enabled
      FROM webhook.endpoints e WHERE e.id = replay.endpoint_id;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(replay.endpoint_id);
    END IF;
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual)
    SELECT ev.id, replay.endpoint_id, ev.event_type, 'pending',
           CASE WHEN v_enabled THEN now() ELSE 'infinity' END, true
      FROM webhook.event_log ev
     WHERE ev.created_at >= replay.since AND ev.created_at < replay.until
       AND webhook.filter_matches(v_filter, ev.event_type)
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = excluded.next_attempt_at,
           next_attempt_manual = true
     WHERE d.status IN ('failed', 'cancelled');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM webhook.wake_worker();
    RETURN v_count;
END
$$;

-- ---------------------------------------------------------------------------
-- The worker's queue operations (called by the delivery worker only)
-- ---------------------------------------------------------------------------

-- Turns events committed since the previous pass into pending deliveries,
-- one per subscribed, enabled endpoint, and advances the cursor.
--
-- Visibility, not id order: the cursor is the snapshot the previous pass ran
-- with. An event is new if its transaction was still running in that
-- snapshot (its xid is in xip) or started after it (xid >= xmax) -- and, as
-- this statement only sees committed rows, has committed since. Everything
-- older was already visible, hence already dispatched. A transaction that
-- commits late with a low xid is thus never skipped. One statement, one
-- snapshot: the new cursor is exactly the snapshot the rows were read with.
--
-- Cost: only new events are read, through event_log's txid index, however
-- long the history; the filter is matched against new events only. The
-- cursor's bounds are read first and passed in as values. The plan is made
-- once and kept (generic), with sequential scans off so that it is the
-- index plan whatever the table's size: a generic plan would otherwise
-- guess that a third of the table qualifies and scan all of it, and a
-- custom plan per call costs five times what the statement does -- this
-- runs at every commit that emits, up to thousands of times a second.
CREATE FUNCTION webhook.dispatch_new_events() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    v_xmax   xid8;
    v_xip    xid8[];
    v_queued bigint;
BEGIN
    SELECT pg_snapshot_xmax(c.snapshot), ARRAY(SELECT pg_snapshot_xip(c.snapshot))
      INTO STRICT v_xmax, v_xip
      FROM webhook.dispatch_cursor c;

    WITH fresh AS MATERIALIZED (
        SELECT e.id, e.event_type
          FROM webhook.event_log e
         WHERE e.txid >= v_xmax OR e.txid = ANY (v_xip)
    ), queued AS (
        INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
        SELECT f.id, ep.id, f.event_type, now()
          FROM fresh f
          JOIN webhook.endpoints ep
            ON ep.enabled AND webhook.filter_matches(ep.event_types, f.event_type)
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), advanced AS (
        UPDATE webhook.dispatch_cursor c
           SET snapshot = pg_current_snapshot()
         WHERE c.snapshot::text <> pg_current_snapshot()::text
    )
    SELECT count(*) INTO v_queued FROM queued;
    RETURN v_queued;
END
$$;

-- Due deliveries with everything needed to send them, oldest first, at
-- most per_endpoint taken for any one endpoint (busy_* lists those the
-- worker holds now). Taken endpoint by endpoint so that one endpoint's
-- backlog cannot hide another's due work.
--
-- after_* is the worker's position in each endpoint's queue: the last
-- (next_attempt_at, event_id) it took. The scan starts after it instead of
-- at the oldest pending row, because the index keeps an entry for every
-- version of every delivery that was pending; while any snapshot older
-- than them is open (a long report, a REPEATABLE READ transaction, a
-- pg_dump) those entries cannot be removed, and a scan from the start
-- would read all of them each time, ever more as the queue drains. The
-- worker forgets its positions whenever rows may have become due behind
-- them (see worker.c).
--
-- A failing endpoint is a circuit breaker's half-open state: one request
-- at a time, so dead endpoints cannot fill the slots of healthy ones, and
-- paced: the next probe waits a tenth of how long the endpoint has been
-- failing, up to a second. A flaky endpoint is tried again at once; one
-- that is down costs about one attempt a second, however fast the worker
-- runs, and its first success lifts the limit.
--
-- No SET clause: without one the planner inlines this into the worker's
-- prepared statement, whose plan is then kept (a SQL function called as
-- such is parsed and planned again on every call, several times a second).
-- The body is parsed at creation, so the caller's search_path cannot change it.
CREATE FUNCTION webhook.due_deliveries(busy_events uuid[], busy_endpoints uuid[],
                                       per_endpoint integer, max_rows integer,
                                       after_endpoints uuid[], after_at timestamptz[],
                                       after_events uuid[])
RETURNS TABLE (event_id uuid, endpoint_id uuid, attempts integer, manual boolean,
               event_type text, payload text, created_at timestamptz, url text,
               secret text, previous_secret text, headers jsonb,
               next_attempt_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH busy AS (
        SELECT b.event_id, b.endpoint_id
          FROM unnest(busy_events, busy_endpoints) AS b(event_id, endpoint_id)
    ), load AS (
        SELECT b.endpoint_id, count(*) AS n FROM busy b GROUP BY b.endpoint_id
    ), position AS (
        SELECT p.endpoint_id, p.at, p.event_id
          FROM unnest(after_endpoints, after_at, after_events) AS p(endpoint_id, at, event_id)
    )
    -- The event is joined, and its payload turned into text, only for the
    -- max_rows rows taken, not for every candidate.
    SELECT q.event_id, q.endpoint_id, q.attempts, q.next_attempt_manual,
           e.event_type, e.payload::text, e.created_at,
           q.url, q.secret, q.previous_secret, q.headers, q.next_attempt_at
      FROM (SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                   d.next_attempt_at, ep.url, ep.secret,
                   CASE WHEN ep.previous_secret_expires_at > now()
                        THEN ep.previous_secret END AS previous_secret,
                   ep.headers
              FROM webhook.endpoints ep
              LEFT JOIN load l ON l.endpoint_id = ep.id
              LEFT JOIN position p ON p.endpoint_id = ep.id
             CROSS JOIN LATERAL (
                    SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                           d.next_attempt_at
                      FROM webhook.delivery_log d
                     WHERE d.endpoint_id = ep.id
                       AND d.status = 'pending'
                       AND (d.next_attempt_at, d.event_id) >
                           (coalesce(p.at, '-infinity'),
                            coalesce(p.event_id, '00000000-0000-0000-0000-000000000000'))
                       AND d.next_attempt_at <= now()
                       -- NOT IN, not NOT EXISTS: a hashed look-up per row
                       -- rather than a scan of everything the worker holds.
                       AND (d.event_id, d.endpoint_id) NOT IN
                           (SELECT b.event_id, b.endpoint_id FROM busy b)
                     ORDER BY d.next_attempt_at, d.event_id
                     LIMIT least(greatest(
                               CASE WHEN ep.failing_since IS NULL THEN per_endpoint
                                    WHEN ep.last_failure_at > now() - least(
                                             (ep.last_failure_at - ep.failing_since) / 10,
                                             interval '1 second') THEN 0
                                    ELSE 1 END
                               - coalesce(l.n, 0), 0), max_rows)) d
             WHERE ep.enabled
             -- A total order: what max_rows leaves out of an endpoint's rows
             -- is always their tail, so the position after the last one
             -- taken skips nothing.
             ORDER BY d.next_attempt_at, d.event_id, d.endpoint_id
             LIMIT max_rows) q
      JOIN webhook.event_log e ON e.id = q.event_id
     ORDER BY q.next_attempt_at, q.event_id, q.endpoint_id;
END;

-- Records a batch of attempts: history rows, delivery state, endpoint
-- health (410 and webhook.disable_after disable an endpoint and park its
-- pending deliveries). outcome is 'succeeded', 'retry', 'failed' or 'gone'.
CREATE FUNCTION webhook.record_attempts(
    event_ids uuid[], endpoint_ids uuid[], attempt_numbers integer[],
    started timestamptz[], durations double precision[], status_codes integer[],
    errors text[], bodies text[], manuals boolean[], outcomes text[],
    next_attempts timestamptz[], disable_after interval)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_disabled uuid[];
BEGIN
    -- One statement, the batch unnested once: the attempts, the deliveries'
    -- new state, and endpoint health (a success clears the failure clock; a
    -- failure starts it and moves last_failure_at, which paces the probes of
    -- due_deliveries; 410 or a clock older than disable_after disables the
    -- endpoint).
    WITH outcome_batch AS MATERIALIZED (
        SELECT * FROM unnest(event_ids, endpoint_ids, attempt_numbers, started, durations,
                             status_codes, errors, bodies, manuals, outcomes, next_attempts)
            AS o(event_id, endpoint_id, attempt, started_at, duration_ms, status_code,
                 error, response_body, manual, outcome, next_attempt_at)
    ), attempts AS (
        INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at,
                                         duration_ms, status_code, error, response_body, manual)
        SELECT o.event_id, o.endpoint_id, o.attempt, o.started_at, o.duration_ms,
               o.status_code, o.error, o.response_body, o.manual
          FROM outcome_batch o
    ), deliveries AS (
        UPDATE webhook.delivery_log d
           SET status = CASE o.outcome WHEN 'succeeded' THEN 'succeeded'
                                       WHEN 'retry' THEN 'pending'
                                       ELSE 'failed' END,
               attempts = greatest(d.attempts, o.attempt),
               last_status_code = o.status_code,
               last_error = o.error,
               next_attempt_at = CASE WHEN o.outcome = 'retry' THEN o.next_attempt_at END,
               next_attempt_manual = false,
               succeeded_at = CASE WHEN o.outcome = 'succeeded' THEN o.started_at
                                   ELSE d.succeeded_at END
          FROM outcome_batch o
         WHERE d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id
           -- "Not final" rather than status = 'pending' (the same, given the
           -- CHECK): the latter lets the planner add the partial index of
           -- pending deliveries to each primary-key look-up (a BitmapAnd that
           -- reads the whole backlog per outcome) whenever that index's
           -- statistics date from a quieter moment, as after any VACUUM of an
           -- empty queue followed by a burst.
           AND d.status NOT IN ('succeeded', 'failed', 'cancelled')
    ), per_endpoint AS (
        SELECT o.endpoint_id,
               bool_or(o.outcome = 'succeeded') AS succeeded,
               bool_or(o.outcome = 'gone') AS gone,
               min(o.started_at) AS first_failure,
               max(o.started_at) AS last_failure
          FROM outcome_batch o GROUP BY o.endpoint_id
    ), judged AS (
        SELECT p.*, ep.failing_since AS was_failing_since,
               ep.last_failure_at AS was_last_failure_at,
               CASE WHEN p.succeeded THEN NULL
                    ELSE coalesce(ep.failing_since, p.first_failure) END AS failing_since,
               CASE WHEN p.succeeded THEN NULL
                    ELSE greatest(ep.last_failure_at, p.last_failure) END AS last_failure_at,
               ep.enabled AND (p.gone OR (NOT p.succeeded AND
                   coalesce(ep.failing_since, p.first_failure) < now() - disable_after)) AS disable
          FROM per_endpoint p JOIN webhook.endpoints ep ON ep.id = p.endpoint_id
    ), changed AS (
        UPDATE webhook.endpoints ep
           SET failing_since = j.failing_since,
               last_failure_at = j.last_failure_at,
               enabled = ep.enabled AND NOT j.disable,
               disabled_at = CASE WHEN j.disable THEN now() ELSE ep.disabled_at END,
               disabled_reason = CASE
                   WHEN j.disable AND j.gone THEN 'receiver answered 410 Gone'
                   WHEN j.disable THEN 'failing continuously since ' ||
                        to_char(j.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                   ELSE ep.disabled_reason END,
               updated_at = CASE WHEN j.disable THEN now() ELSE ep.updated_at END
          FROM judged j
         WHERE ep.id = j.endpoint_id
           AND (j.disable OR j.failing_since IS DISTINCT FROM j.was_failing_since
                OR j.last_failure_at IS DISTINCT FROM j.was_last_failure_at)
        RETURNING ep.id, j.disable
    )
    SELECT array_agg(c.id) FILTER (WHERE c.disable) INTO v_disabled FROM changed c;

    -- Park the pending deliveries of the endpoints just disabled: a statement
    -- of its own, run only when there are some. Joined to the one above, it
    -- let the planner read the whole backlog on every batch whenever the
    -- partial index's statistics said it was empty.
    IF v_disabled IS NOT NULL THEN
        UPDATE webhook.delivery_log d
           SET next_attempt_at = 'infinity'
         WHERE d.endpoint_id = ANY (v_disabled) AND d.status = 'pending';
    END IF;
END
$$;

-- Removes history older than retention, at most batch events at a time
-- (with their deliveries and attempts) so no lock is held for long. Events
-- with a pending delivery are kept whatever their age.
CREATE FUNCTION webhook.remove_old_history(retention interval, batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_removed bigint;
BEGIN
    WITH old AS (
        SELECT e.id FROM webhook.event_log e
         WHERE e.created_at < now() - retention
           AND NOT EXISTS (SELECT 1 FROM webhook.delivery_log d
                            WHERE d.event_id = e.id
                              -- not "= 'pending'": see record_attempts
                              AND d.status NOT IN ('succeeded', 'failed', 'cancelled'))
         ORDER BY e.created_at
         LIMIT batch
    ), attempts AS (
        DELETE FROM webhook.attempt_log a USING old WHERE a.event_id = old.id
    ), deliveries AS (
        DELETE FROM webhook.delivery_log d USING old WHERE d.event_id = old.id
    )
    DELETE FROM webhook.event_log e USING old WHERE e.id = old.id;
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END
$$;

-- ---------------------------------------------------------------------------
-- Operations: endpoint health and queue status at a glance
--
-- Both views stay cheap however long the history: the recent window is
-- read through attempt_log's started_at index, the backlog through the
-- partial index of pending deliveries. Neither shows a secret or a header.
-- ---------------------------------------------------------------------------

-- One row per endpoint: its state, its backlog, and how its HTTP attempts
-- went in the last hour (an attempt succeeded when it got a 2xx; manual
-- ones count too). failing_since is when the current run of failures began
-- (NULL when the latest outcome was a success), however long ago;
-- consecutive_failures counts the failed attempts since the last success
-- within the hour.
CREATE VIEW webhook.endpoint_health AS
WITH recent AS (
    SELECT a.endpoint_id, a.started_at, a.duration_ms,
           coalesce(a.status_code BETWEEN 200 AND 299, false) AS ok
      FROM webhook.attempt_log a
     WHERE a.started_at >= pg_catalog.now() - interval '1 hour'
), per_endpoint AS (
    SELECT r.endpoint_id,
           count(*) FILTER (WHERE r.ok) AS succeeded,
           count(*) FILTER (WHERE NOT r.ok) AS failed,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms) AS p50_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_ms) AS p99_ms,
           max(r.started_at) FILTER (WHERE r.ok) AS last_success_at,
           max(r.started_at) FILTER (WHERE NOT r.ok) AS last_failure_at
      FROM recent r
     GROUP BY r.endpoint_id
), streak AS (
    SELECT r.endpoint_id, count(*) AS consecutive_failures
      FROM recent r
      JOIN per_endpoint p ON p.endpoint_id = r.endpoint_id
     WHERE NOT r.ok AND r.started_at > coalesce(p.last_success_at, '-infinity')
     GROUP BY r.endpoint_id
), backlog AS (
    SELECT d.endpoint_id, count(*) AS pending
      FROM webhook.delivery_log d
     WHERE d.status = 'pending'
     GROUP BY d.endpoint_id
)
SELECT ep.id, ep.url, ep.description, ep.enabled, ep.disabled_at,
       ep.disabled_reason, ep.failing_since,
       coalesce(b.pending, 0) AS pending,
       coalesce(p.succeeded, 0) AS succeeded,
       coalesce(p.failed, 0) AS failed,
       round(p.succeeded::numeric / nullif(p.succeeded + p.failed, 0), 4) AS success_rate,
       round(p.p50_ms::numeric, 1) AS p50_ms,
       round(p.p99_ms::numeric, 1) AS p99_ms,
       p.last_success_at, p.last_failure_at,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures
  FROM webhook.endpoints ep
  LEFT JOIN backlog b ON b.endpoint_id = ep.id
  LEFT JOIN per_endpoint p ON p.endpoint_id = ep.id
  LEFT JOIN streak s ON s.endpoint_id = ep.id;

-- One row: the queue now. Pending deliveries are due (the worker sends or is
-- sending them: a request in flight stays pending until its outcome is
-- recorded), scheduled (a retry waiting for its time) or parked (their
-- endpoint is disabled); oldest_pending_age ignores parked ones.
-- undispatched_events counts committed events the worker has not yet
-- turned into deliveries: it grows when the worker is not running. The
-- rates are over the last minute. worker_pid and worker_activity come from
-- pg_stat_activity, so they are NULL when no worker serves this database --
-- or when the reader may not see other sessions (grant pg_read_all_stats).
CREATE VIEW webhook.queue_status AS
SELECT q.pending_due, q.pending_scheduled, q.pending_parked,
       pg_catalog.now() - q.oldest_pending_at AS oldest_pending_age,
       u.undispatched_events,
       (SELECT count(*) FROM webhook.event_log e
         WHERE e.created_at >= pg_catalog.now() - interval '1 minute') AS events_last_minute,
       a.attempts_last_minute,
       a.delivered_last_minute,
       round(a.delivered_last_minute / 60.0, 2) AS deliveries_per_second,
       w.pid AS worker_pid,
       w.query AS worker_activity
  FROM (SELECT count(*) FILTER (WHERE d.next_attempt_at <= pg_catalog.now()) AS pending_due,
               count(*) FILTER (WHERE d.next_attempt_at > pg_catalog.now()
                                  AND d.next_attempt_at < 'infinity') AS pending_scheduled,
               count(*) FILTER (WHERE d.next_attempt_at = 'infinity') AS pending_parked,
               min(d.created_at) FILTER (WHERE d.next_attempt_at < 'infinity') AS oldest_pending_at
          FROM webhook.delivery_log d
         WHERE d.status = 'pending') q
 CROSS JOIN (SELECT (SELECT count(*) FROM webhook.event_log e
                      WHERE e.txid >= pg_catalog.pg_snapshot_xmax(c.snapshot))
                  + (SELECT count(*) FROM webhook.event_log e
                      WHERE e.txid IN (SELECT pg_catalog.pg_snapshot_xip(c.snapshot)))
                    AS undispatched_events
               FROM webhook.dispatch_cursor c) u
 CROSS JOIN (SELECT count(*) AS attempts_last_minute,
                    count(*) FILTER (WHERE t.status_code BETWEEN 200 AND 299) AS delivered_last_minute
               FROM webhook.attempt_log t
              WHERE t.started_at >= pg_catalog.now() - interval '1 minute') a
  LEFT JOIN (SELECT s.pid, s.query FROM pg_catalog.pg_stat_activity s
              WHERE s.backend_type = 'webhook_outbox worker'
                AND s.datname = pg_catalog.current_database()
              LIMIT 1) w ON true;

-- ---------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC. The owner grants what a deployment needs
-- (see README, "Privileges").
-- ---------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA webhook FROM PUBLIC;
REVOKE ALL ON TYPE webhook.endpoint_info, webhook.endpoint_with_secret FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webhook FROM PUBLIC;
