-- webhook_outbox 0.1 -> 0.2.
--
-- The one source of truth for the 0.2 schema. There is no
-- webhook_outbox--0.2.sql: CREATE EXTENSION webhook_outbox runs the released
-- 0.1 script and then this one, so a fresh install and an updated 0.1
-- installation get the very same objects (test/t/005_upgrade.pl compares
-- their catalogs). Later releases add their own upgrade script the same way.
--
-- An update keeps everything a 0.1 installation holds: endpoints, events,
-- pending deliveries, history, and the grants users made on functions whose
-- signature changes (webhook.upgrade_carry_grants below).

\echo Use "ALTER EXTENSION webhook_outbox UPDATE TO '0.2'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Carrying users' grants over to a function that is dropped and created
-- again with another signature. Used only by this script; dropped at its end.
-- ---------------------------------------------------------------------------

-- Grants what old_acl granted (to anyone but the owner) on target, and
-- records them as the user's own, not the extension's: inside an extension
-- script every GRANT also lands in pg_init_privs, and pg_dump would then
-- take it for part of CREATE EXTENSION and never dump it.
CREATE FUNCTION webhook.upgrade_carry_grants(old_acl aclitem[], target regprocedure)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner oid := (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = target);
    v_init  aclitem[];
    v_grant record;
BEGIN
    SELECT i.initprivs INTO v_init
      FROM pg_catalog.pg_init_privs i
     WHERE i.objoid = target AND i.classoid = 'pg_catalog.pg_proc'::regclass
       AND i.objsubid = 0;
    FOR v_grant IN
        SELECT a.grantee, a.privilege_type, a.is_grantable
          FROM pg_catalog.aclexplode(old_acl) AS a
         WHERE a.grantee <> v_owner
    LOOP
        EXECUTE format('GRANT %s ON FUNCTION %s TO %s%s',
                       v_grant.privilege_type, target,
                       CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(v_grant.grantee)) END,
                       CASE WHEN v_grant.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    UPDATE pg_catalog.pg_init_privs i
       SET initprivs = v_init
     WHERE i.objoid = target AND i.classoid = 'pg_catalog.pg_proc'::regclass
       AND i.objsubid = 0;
END
$$;

-- The ACL of a function, as it is before this script drops it.
CREATE TABLE webhook.upgrade_saved_acl (name text PRIMARY KEY, acl aclitem[]);

-- ===========================================================================
-- BEGIN section: events (emit, emit_trigger, the event log)
-- ===========================================================================

-- Since 0.2 an event carries a tenant, an ordering key and an idempotency
-- key (all optional).
ALTER TABLE webhook.event_log
    ADD COLUMN tenant text,
    ADD COLUMN ordering_key text,
    ADD COLUMN idempotency_key text;

-- One event per (tenant, idempotency key) while it is in history; a NULL
-- tenant is one tenant like any other.
CREATE UNIQUE INDEX event_log_idempotency_idx
    ON webhook.event_log (tenant, idempotency_key) NULLS NOT DISTINCT
    WHERE idempotency_key IS NOT NULL;

-- emit gains arguments: a new function, with the grants of the old one.
INSERT INTO webhook.upgrade_saved_acl
    SELECT 'emit', p.proacl FROM pg_catalog.pg_proc p
     WHERE p.oid = 'webhook.emit(text, jsonb)'::regprocedure;
DROP FUNCTION webhook.emit(text, jsonb);

-- SECURITY DEFINER: an application role with EXECUTE on emit records
-- events without any right on the tables. Its arguments are values the
-- caller computed with its own rights; nothing of the caller's runs here.
CREATE FUNCTION webhook.emit(
    event_type      text,
    payload         jsonb,
    tenant          text DEFAULT NULL,
    ordering_key    text DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS uuid
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'webhook_emit';
REVOKE ALL ON FUNCTION webhook.emit(text, jsonb, text, text, text) FROM PUBLIC;
SELECT webhook.upgrade_carry_grants(s.acl, 'webhook.emit(text, jsonb, text, text, text)')
  FROM webhook.upgrade_saved_acl s WHERE s.name = 'emit';

-- The trigger runs with the rights of the role whose statement fired it, so
-- that turning the row into JSON (output functions and casts of the row's
-- types, which the table's owner may control) never runs as the extension's
-- owner. It raises rights for the insert into the event log alone (emit.c).
ALTER FUNCTION webhook.emit_trigger() SECURITY INVOKER;
-- Nor does it need a search_path of its own any more (every name in its
-- insert is qualified), so each row does not pay for setting one; the
-- row's own output functions and casts see the caller's.
ALTER FUNCTION webhook.emit_trigger() RESET search_path;

-- The event's tenant, in the contract's relation.
CREATE OR REPLACE VIEW webhook.events AS
    SELECT id, event_type, payload, created_at, tenant
      FROM webhook.event_log;

-- ===========================================================================
-- END section: events
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: dispatch
-- ===========================================================================

-- Tenants (see the contract): an endpoint may belong to a tenant, for good
-- ('' is no tenant: NULL); a delivery and an attempt belong to their
-- endpoint's, copied when they are written so that history stays scoped
-- after the endpoint is deleted. An endpoint may expire: from expires_at on
-- nothing more is sent to it, and the worker disables it.
-- An endpoint's delivery settings since 0.2 (the worker's scheduler honours
-- them): ordered sends each ordering key's events one after the other, in
-- commit order; rate_limit caps the requests per second (NULL: no cap).
ALTER TABLE webhook.endpoints
    ADD COLUMN tenant text CONSTRAINT endpoints_tenant_not_empty CHECK (tenant <> ''),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN ordered boolean NOT NULL DEFAULT false,
    ADD COLUMN rate_limit integer CONSTRAINT endpoints_rate_limit_positive CHECK (rate_limit > 0);
ALTER TABLE webhook.delivery_log ADD COLUMN tenant text;
ALTER TABLE webhook.attempt_log ADD COLUMN tenant text;

-- Ordered delivery (the contract's "Ordering"). A delivery to an ordered
-- endpoint gets a sequence, order_key (webhook.order_key: its event's
-- tenant and ordering key), and a place in it, order_position: dispatch
-- gives increasing positions in the order it takes events (the commit
-- order, see dispatch_new_events). Of a sequence's pending deliveries at
-- most one is under way (due, scheduled for a retry, or parked with its
-- disabled endpoint); the others wait with next_attempt_at NULL. When the
-- one under way ends, the waiting one with the lowest position starts
-- (webhook.start_order_heads). Only the worker starts one, so two never
-- run at once; a manual retry or replay only makes a delivery wait, at
-- the end of its sequence. Deliveries to other endpoints have neither.
ALTER TABLE webhook.delivery_log
    ADD COLUMN order_key text,
    ADD COLUMN order_position bigint;
-- Positions: a chunk of dispatch (or a replay) takes one value and numbers
-- its events below the next (value * 2^24 + n). Dumped with the outbox, so
-- that positions keep increasing after a restore.
CREATE SEQUENCE webhook.order_positions;
SELECT pg_catalog.pg_extension_config_dump('webhook.order_positions', '');
-- The waiting deliveries of each sequence, in order, and the one under way.
CREATE INDEX delivery_log_order_waiting_idx
    ON webhook.delivery_log (endpoint_id, order_key, order_position, event_id)
    WHERE status = 'pending' AND next_attempt_at IS NULL AND order_key IS NOT NULL;
CREATE INDEX delivery_log_order_started_idx
    ON webhook.delivery_log (endpoint_id, order_key)
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL AND order_key IS NOT NULL;

-- The sequence of an event at an ordered endpoint: one per tenant and
-- ordering key (NULL and '' are no key: one sequence per endpoint and
-- tenant). The tenant's length comes first, so no two pairs make the same
-- text. Inlined where called (no SET clause).
CREATE FUNCTION webhook.order_key(tenant text, ordering_key text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(length(tenant) || ':' || tenant, '') || '/' || coalesce(ordering_key, '');
REVOKE ALL ON FUNCTION webhook.order_key(text, text) FROM PUBLIC;

-- Starts the next delivery of each sequence given (endpoint_ids[i],
-- order_keys[i]) that has none under way: its waiting delivery with the
-- lowest position becomes due (parked if the endpoint is disabled). A
-- waiting delivery another transaction holds is left waiting, never
-- passed over: the worker's next sweep (webhook.start_waiting_sequences)
-- starts it. Only the worker calls this. Returns how many it started.
-- A loop of key look-ups per sequence (through the two partial indexes
-- above), so that its cost follows the sequences given, never the table:
-- one statement over them all let the planner hash every delivery under
-- way, or scan the table for the rows to lock (0.9 s a call at 20,000
-- waiting).
CREATE FUNCTION webhook.start_order_heads(endpoint_ids uuid[], order_keys text[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sequence record;
    v_head     uuid;
    v_started  bigint := 0;
BEGIN
    FOR v_sequence IN
        SELECT DISTINCT s.endpoint_id, s.order_key
          FROM unnest(endpoint_ids, order_keys) AS s(endpoint_id, order_key)
         WHERE s.order_key IS NOT NULL
    LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM webhook.delivery_log a
             WHERE a.endpoint_id = v_sequence.endpoint_id AND a.order_key = v_sequence.order_key
               AND a.status = 'pending' AND a.next_attempt_at IS NOT NULL);
        SELECT w.event_id INTO v_head FROM webhook.delivery_log w
         WHERE w.endpoint_id = v_sequence.endpoint_id AND w.order_key = v_sequence.order_key
           AND w.status = 'pending' AND w.next_attempt_at IS NULL AND w.order_key IS NOT NULL
         ORDER BY w.order_position, w.event_id
         LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        -- the head itself, unless another transaction holds it
        PERFORM FROM webhook.delivery_log d
          WHERE d.event_id = v_head AND d.endpoint_id = v_sequence.endpoint_id
            AND d.status = 'pending' AND d.next_attempt_at IS NULL
            FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        UPDATE webhook.delivery_log d
           SET next_attempt_at = CASE WHEN ep.enabled THEN now() ELSE 'infinity' END
          FROM webhook.endpoints ep
         WHERE d.event_id = v_head AND d.endpoint_id = v_sequence.endpoint_id
           AND ep.id = v_sequence.endpoint_id;
        v_started := v_started + 1;
    END LOOP;
    RETURN v_started;
END
$$;
REVOKE ALL ON FUNCTION webhook.start_order_heads(uuid[], text[]) FROM PUBLIC;

-- Starts every sequence that waits with none of its deliveries under way:
-- after a manual retry or replay, a delivery whose row was held when its
-- predecessor ended, or a change of the endpoint's settings. The worker
-- calls it at each poll and when woken by hand; it reads each waiting
-- sequence once (a skip scan of the waiting index), not every delivery.
CREATE FUNCTION webhook.start_waiting_sequences() RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH RECURSIVE sequences AS (
        (SELECT w.endpoint_id, w.order_key FROM webhook.delivery_log w
          WHERE w.status = 'pending' AND w.next_attempt_at IS NULL AND w.order_key IS NOT NULL
          ORDER BY w.endpoint_id, w.order_key
          LIMIT 1)
        UNION ALL
        SELECT n.endpoint_id, n.order_key
          FROM sequences s
         CROSS JOIN LATERAL (
                SELECT w.endpoint_id, w.order_key FROM webhook.delivery_log w
                 WHERE w.status = 'pending' AND w.next_attempt_at IS NULL
                   AND w.order_key IS NOT NULL
                   AND (w.endpoint_id, w.order_key) > (s.endpoint_id, s.order_key)
                 ORDER BY w.endpoint_id, w.order_key
                 LIMIT 1) n
    )
    SELECT webhook.start_order_heads(array_agg(s.endpoint_id), array_agg(s.order_key))
      FROM sequences s;
END;
REVOKE ALL ON FUNCTION webhook.start_waiting_sequences() FROM PUBLIC;

-- Dispatch finds an event's endpoints through this index: those of its
-- tenant, then those without a tenant; its cost follows those, not the
-- number of endpoints in all.
CREATE INDEX endpoints_tenant_idx ON webhook.endpoints (tenant) WHERE enabled;

-- The endpoints an event of event_tenant and event_type goes to now: the
-- enabled, unexpired endpoints of its tenant and those without a tenant
-- whose filter lets it through (an event without a tenant: only the
-- latter), except the endpoint an operational event is about
-- (about_endpoint: NULL for every other event; see the operational events
-- section). No SET clause, so that the planner inlines it into dispatch.
CREATE FUNCTION webhook.subscribed_endpoints(event_tenant text, event_type text,
                                             about_endpoint uuid)
RETURNS TABLE (id uuid, tenant text, ordered boolean)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT ep.id, ep.tenant, ep.ordered FROM webhook.endpoints ep
     WHERE ep.enabled AND ep.tenant = subscribed_endpoints.event_tenant
       AND (ep.expires_at IS NULL OR ep.expires_at > now())
       AND webhook.filter_matches(ep.event_types, subscribed_endpoints.event_type)
       AND ep.id IS DISTINCT FROM subscribed_endpoints.about_endpoint
    UNION ALL
    SELECT ep.id, ep.tenant, ep.ordered FROM webhook.endpoints ep
     WHERE ep.enabled AND ep.tenant IS NULL
       AND (ep.expires_at IS NULL OR ep.expires_at > now())
       AND webhook.filter_matches(ep.event_types, subscribed_endpoints.event_type)
       AND ep.id IS DISTINCT FROM subscribed_endpoints.about_endpoint;
END;
REVOKE ALL ON FUNCTION webhook.subscribed_endpoints(text, text, uuid) FROM PUBLIC;

-- The dispatch cursor is keyed by where it was written: the cluster's
-- system identifier and the database's OID. pg_dump keeps it with the
-- outbox, so a restore elsewhere brings the origin's row beside the one
-- CREATE EXTENSION made there; the worker then re-bases the restored
-- outbox (webhook.rebase_restored_outbox) and drops the origin's row.
--
-- A dispatch pass may take several chunks (webhook.dispatch_new_events):
-- target is the snapshot the pass dispatches up to, after_txid/after_id
-- where its last chunk ended; both NULL between passes.
ALTER TABLE webhook.dispatch_cursor
    ADD COLUMN system_identifier bigint,
    ADD COLUMN database_oid oid,
    ADD COLUMN target pg_snapshot,
    ADD COLUMN after_txid xid8,
    ADD COLUMN after_id uuid;
UPDATE webhook.dispatch_cursor
   SET system_identifier = (SELECT s.system_identifier FROM pg_catalog.pg_control_system() s),
       database_oid = (SELECT d.oid FROM pg_catalog.pg_database d
                        WHERE d.datname = pg_catalog.current_database());
ALTER TABLE webhook.dispatch_cursor
    DROP COLUMN singleton,
    ALTER COLUMN system_identifier SET NOT NULL,
    ALTER COLUMN database_oid SET NOT NULL,
    ADD PRIMARY KEY (system_identifier, database_oid),
    -- Also orders pg_dump's data: the cursor row is restored after the
    -- events, so the worker re-bases only once they are all there.
    ADD CONSTRAINT dispatch_cursor_after_id_fkey FOREIGN KEY (after_id)
        REFERENCES webhook.event_log (id) ON DELETE SET NULL;

-- Chunks are taken in (txid, id) order.
DROP INDEX webhook.event_log_txid_idx;
CREATE INDEX event_log_txid_idx ON webhook.event_log (txid, id);

-- Dispatch looks up the events of each transaction its cursor saw in
-- progress by txid = x. One transaction that emitted many events (a period
-- closed) makes ANALYZE count few distinct txids, and the planner then
-- expected most of the log to match such a look-up and read it in an order
-- where the match comes last: the whole log per transaction, per pass.
-- About twenty events a transaction keeps the look-up what it is, a short
-- range of the (txid, id) index, whatever the history.
ALTER TABLE webhook.event_log ALTER COLUMN txid SET (n_distinct = -0.05);

-- The outbox itself is kept by pg_dump: events, deliveries, attempts and
-- the dispatch cursor (see above), so that a restored database delivers
-- what was pending and dispatches nothing twice.
SELECT pg_catalog.pg_extension_config_dump('webhook.event_log', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.delivery_log', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.attempt_log', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.dispatch_cursor', '');

-- Whether a cursor row was written here: this cluster, this database.
CREATE FUNCTION webhook.cursor_is_local(system_identifier bigint, database_oid oid)
    RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
RETURN cursor_is_local.system_identifier = (SELECT s.system_identifier FROM pg_control_system() s)
   AND cursor_is_local.database_oid = (SELECT d.oid FROM pg_database d
                                        WHERE d.datname = current_database());
REVOKE ALL ON FUNCTION webhook.cursor_is_local(bigint, oid) FROM PUBLIC;

-- Whether the event of transaction txid was dispatched by the cursor: its
-- transaction was visible in the last complete pass's snapshot, or it is
-- in the chunks the current pass has done.
CREATE FUNCTION webhook.cursor_dispatched(txid xid8, id uuid, snapshot pg_snapshot,
                                          target pg_snapshot, after_txid xid8, after_id uuid)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE
RETURN pg_catalog.pg_visible_in_snapshot(txid, snapshot)
    OR (target IS NOT NULL
        AND pg_catalog.pg_visible_in_snapshot(txid, target)
        AND (txid, id) <= (after_txid, after_id));
REVOKE ALL ON FUNCTION webhook.cursor_dispatched(xid8, uuid, pg_snapshot, pg_snapshot, xid8, uuid) FROM PUBLIC;

-- Gives this database a cursor if it has none, at the current snapshot:
-- events committed before now count as dispatched.
CREATE FUNCTION webhook.start_local_cursor() RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    INSERT INTO webhook.dispatch_cursor (system_identifier, database_oid, snapshot)
    SELECT s.system_identifier, d.oid, pg_current_snapshot()
      FROM pg_control_system() s, pg_database d
     WHERE d.datname = current_database()
    ON CONFLICT DO NOTHING;
END;
REVOKE ALL ON FUNCTION webhook.start_local_cursor() FROM PUBLIC;

-- Re-bases an outbox restored from another database (pg_dump): its events
-- carry the origin's transaction ids, which mean nothing here. Events the
-- origin had not dispatched are dispatched now, to the endpoints subscribed
-- now; then every event's txid becomes 3, which every snapshot sees as
-- long committed, so no later pass takes any of them again; the origin's
-- cursor row goes. One pass over event_log, once per restore. Returns how
-- many deliveries it queued.
--
-- webhook.emit refuses while an origin's row exists, so no event of this
-- database can be mistaken for a restored one.
CREATE FUNCTION webhook.rebase_restored_outbox() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queued bigint;
BEGIN
    WITH origin AS (
        SELECT c.* FROM webhook.dispatch_cursor c
         WHERE NOT webhook.cursor_is_local(c.system_identifier, c.database_oid)
    ), undispatched AS (
        SELECT e.id, e.event_type, e.tenant, e.ordering_key, e.about_endpoint,
               row_number() OVER (ORDER BY e.txid, e.id) AS n
          FROM webhook.event_log e
         WHERE e.txid <> '3'
           AND NOT EXISTS (SELECT 1 FROM origin o
                            WHERE webhook.cursor_dispatched(e.txid, e.id, o.snapshot, o.target,
                                                            o.after_txid, o.after_id))
    ), queued AS (
        -- as dispatch queues them (see there), in the origin's order
        INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at,
                                          tenant, order_key, order_position)
        SELECT u.id, ep.id, u.event_type, CASE WHEN ep.ordered THEN NULL ELSE now() END,
               ep.tenant,
               CASE WHEN ep.ordered THEN webhook.order_key(u.tenant, u.ordering_key) END,
               CASE WHEN ep.ordered
                    THEN (SELECT nextval('webhook.order_positions')) * 16777216 + u.n END
          FROM undispatched u
         CROSS JOIN LATERAL webhook.subscribed_endpoints(u.tenant, u.event_type,
                                                         u.about_endpoint) ep
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO v_queued FROM queued;
    PERFORM webhook.start_waiting_sequences();

    UPDATE webhook.event_log e SET txid = '3' WHERE e.txid <> '3';
    DELETE FROM webhook.dispatch_cursor c
     WHERE NOT webhook.cursor_is_local(c.system_identifier, c.database_oid);
    -- A restore that brought no cursor of this database: start from now.
    PERFORM webhook.start_local_cursor();
    RETURN v_queued;
END
$$;
REVOKE ALL ON FUNCTION webhook.rebase_restored_outbox() FROM PUBLIC;

-- Turns events committed since the previous pass into pending deliveries,
-- one per subscribed, enabled endpoint, at most max_events events a call:
-- a big commit is dispatched in chunks, each in a transaction of its own,
-- and deliveries start between them. Returns how many events the chunk
-- took and how many deliveries it queued; fewer events than max_events
-- means the pass is complete.
--
-- Visibility, not id order. A pass dispatches what committed between two
-- snapshots: the cursor's (the previous pass's) and its target, taken when
-- the pass began. An event is new if its transaction was running in the
-- cursor's snapshot (txid in its xip) or began after it (txid >= its
-- xmax), and visible in the target: so a transaction that commits late
-- with a low xid is never skipped, and one that commits during a pass
-- waits for the next. The set is fixed once the target is, so chunks can
-- walk it in (txid, id) order; xip's transactions all come before xmax.
--
-- Cost: only new events are read, through event_log's (txid, id) index,
-- however long the history: one range per transaction of the cursor's xip
-- and one from its xmax. The plan is made once and kept (generic), with
-- sequential scans off so that it is the index plan whatever the table's
-- size (see 0.1's notes on dispatch).
DROP FUNCTION webhook.dispatch_new_events();
CREATE FUNCTION webhook.dispatch_new_events(max_events integer,
                                            system_identifier bigint DEFAULT NULL,
                                            database_oid oid DEFAULT NULL,
                                            OUT events integer, OUT deliveries bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    v_cursor     webhook.dispatch_cursor;
    v_last_txid  xid8;
    v_last_id    uuid;
    v_system     bigint := system_identifier;
    v_database   oid := database_oid;
    v_found      boolean;
    v_ordered_endpoints uuid[];
    v_ordered_keys      text[];
BEGIN
    IF max_events NOT BETWEEN 1 AND 16777215 THEN
        RAISE EXCEPTION 'max_events must be 1 to 16777215, not %', max_events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Where this runs, unless the caller said. The worker says, at every
    -- pass: reading pg_control costs, and so does starting an executor for
    -- a default expression with a subquery even when it is not needed.
    IF v_system IS NULL THEN
        v_system := (SELECT s.system_identifier FROM pg_control_system() s);
    END IF;
    IF v_database IS NULL THEN
        v_database := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    END IF;
    -- This database's cursor, and whether a restore brought another's.
    SELECT c.* INTO v_cursor FROM webhook.dispatch_cursor c
     WHERE c.system_identifier = v_system AND c.database_oid = v_database
       FOR UPDATE NOWAIT;
    v_found := FOUND;
    IF EXISTS (SELECT 1 FROM webhook.dispatch_cursor c
                WHERE (c.system_identifier, c.database_oid) <> (v_system, v_database)) THEN
        deliveries := webhook.rebase_restored_outbox();
        events := 0;
        RETURN;
    END IF;

    -- NOWAIT above: the worker never waits on a lock (only the owner could
    -- hold this one); a failed pass is tried again.
    IF NOT v_found THEN
        RAISE WARNING 'webhook_outbox dispatch cursor of this database was missing'
            USING DETAIL = 'Events committed before now are taken as dispatched.';
        PERFORM webhook.start_local_cursor();
        events := 0;
        deliveries := 0;
        RETURN;
    END IF;
    IF v_cursor.target IS NULL THEN
        v_cursor.target := pg_current_snapshot();
        v_cursor.after_txid := '0';
        v_cursor.after_id := '00000000-0000-0000-0000-000000000000';
    END IF;

    WITH fresh AS MATERIALIZED (
        SELECT f.id, f.event_type, f.tenant, f.ordering_key, f.about_endpoint, f.txid
          FROM (SELECT e.id, e.event_type, e.tenant, e.ordering_key, e.about_endpoint, e.txid
                  FROM (SELECT x.t FROM pg_snapshot_xip(v_cursor.snapshot) AS x(t)
                         WHERE x.t >= v_cursor.after_txid ORDER BY x.t) x
                 CROSS JOIN LATERAL (
                        SELECT e.id, e.event_type, e.tenant, e.ordering_key, e.about_endpoint, e.txid
                          FROM webhook.event_log e
                         WHERE e.txid = x.t
                           AND (x.t > v_cursor.after_txid OR e.id > v_cursor.after_id)
                           AND pg_visible_in_snapshot(e.txid, v_cursor.target)
                         ORDER BY e.txid, e.id
                         LIMIT max_events) e
                UNION ALL
                (SELECT e.id, e.event_type, e.tenant, e.ordering_key, e.about_endpoint, e.txid
                   FROM webhook.event_log e
                  -- One scalar lower bound for the index scan to start
                  -- from (a row comparison beside it could make the scan
                  -- start at the index's beginning); the tie on after_txid
                  -- is a filter.
                  WHERE e.txid >= greatest(pg_snapshot_xmax(v_cursor.snapshot), v_cursor.after_txid)
                    AND e.txid < pg_snapshot_xmax(v_cursor.target)
                    AND (e.txid > v_cursor.after_txid OR e.id > v_cursor.after_id)
                    AND pg_visible_in_snapshot(e.txid, v_cursor.target)
                  ORDER BY e.txid, e.id
                  LIMIT max_events)) f
         ORDER BY f.txid, f.id
         LIMIT max_events
    ), numbered AS (
        -- the order of the chunk, for ordered endpoints' positions
        SELECT f.*, row_number() OVER (ORDER BY f.txid, f.id) AS n FROM fresh f
    ), queued AS (
        -- An ordered endpoint's deliveries wait; start_order_heads below
        -- starts the first of each sequence that has none under way.
        INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at,
                                          tenant, order_key, order_position)
        SELECT f.id, ep.id, f.event_type, CASE WHEN ep.ordered THEN NULL ELSE now() END,
               ep.tenant,
               CASE WHEN ep.ordered THEN webhook.order_key(f.tenant, f.ordering_key) END,
               -- one value of the sequence per chunk, taken only if needed
               -- (an uncorrelated subquery runs once, when first reached)
               CASE WHEN ep.ordered
                    THEN (SELECT nextval('webhook.order_positions')) * 16777216 + f.n END
          FROM numbered f
         CROSS JOIN LATERAL webhook.subscribed_endpoints(f.tenant, f.event_type,
                                                         f.about_endpoint) ep
        ON CONFLICT DO NOTHING
        RETURNING endpoint_id, order_key
    ), last AS (
        SELECT f.txid, f.id FROM fresh f ORDER BY f.txid DESC, f.id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM fresh), (SELECT count(*) FROM queued),
           (SELECT l.txid FROM last l), (SELECT l.id FROM last l),
           (SELECT array_agg(q.endpoint_id) FROM queued q WHERE q.order_key IS NOT NULL),
           (SELECT array_agg(q.order_key) FROM queued q WHERE q.order_key IS NOT NULL)
      INTO events, deliveries, v_last_txid, v_last_id, v_ordered_endpoints, v_ordered_keys;
    IF v_ordered_endpoints IS NOT NULL THEN
        PERFORM webhook.start_order_heads(v_ordered_endpoints, v_ordered_keys);
    END IF;

    IF events < max_events THEN
        UPDATE webhook.dispatch_cursor c
           SET snapshot = v_cursor.target, target = NULL, after_txid = NULL, after_id = NULL
         WHERE c.system_identifier = v_cursor.system_identifier
           AND c.database_oid = v_cursor.database_oid;
    ELSE
        UPDATE webhook.dispatch_cursor c
           SET target = v_cursor.target, after_txid = v_last_txid, after_id = v_last_id
         WHERE c.system_identifier = v_cursor.system_identifier
           AND c.database_oid = v_cursor.database_oid;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION webhook.dispatch_new_events(integer, bigint, oid) FROM PUBLIC;

-- Whether the event of transaction txid has been dispatched (manual
-- retries and replays act only on those: the worker's dispatch never waits
-- on a delivery an operator's open transaction inserted).
CREATE FUNCTION webhook.event_dispatched(txid xid8, id uuid) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM webhook.dispatch_cursor c
                WHERE webhook.cursor_is_local(c.system_identifier, c.database_oid)
                  AND webhook.cursor_dispatched(event_dispatched.txid, event_dispatched.id,
                                                c.snapshot, c.target, c.after_txid, c.after_id));
REVOKE ALL ON FUNCTION webhook.event_dispatched(xid8, uuid) FROM PUBLIC;

-- ===========================================================================
-- END section: dispatch
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: deliveries
-- ===========================================================================

-- A delivery cannot outlive its event: deleting an event (by hand, or
-- retention) deletes its deliveries. In 0.1 a pending delivery whose event
-- was gone took its endpoint's only slot in a fetch and was then dropped,
-- wedging a failing endpoint for good. Such orphans cannot be sent (their
-- payload is gone): the update removes them.
DELETE FROM webhook.delivery_log d
 WHERE NOT EXISTS (SELECT 1 FROM webhook.event_log e WHERE e.id = d.event_id);
ALTER TABLE webhook.delivery_log
    ADD CONSTRAINT delivery_log_event_id_fkey FOREIGN KEY (event_id)
        REFERENCES webhook.event_log (id) ON DELETE CASCADE;

-- How many times retry_delivery or replay asked for the delivery. The
-- worker notes it when it takes a delivery; if it has grown by the time
-- the outcome is recorded, a request came while the attempt was in flight,
-- and the delivery stays due instead of taking the outcome.
ALTER TABLE webhook.delivery_log
    ADD COLUMN manual_requests integer NOT NULL DEFAULT 0;

-- Due deliveries, as in 0.1 (see there for the positions, the order and
-- why this is a SQL function without SET clause), with these changes:
-- - the circuit breaker is the worker's (src/scheduler.c): it passes the
--   endpoints to pass over now (blocked_endpoints: breaker open, or held
--   by a Retry-After) and those that may get one probe (probe_endpoints);
--   a failure of one message no longer slows its endpoint's others;
-- - a delivery's event is always there (the foreign key), and a row
--   without one could not take its endpoint's slot anyway;
-- - the event is joined by one key look-up per row taken, whatever the
--   planner estimates (0.1 could read the whole event log for 64 rows);
-- - each endpoint's first due delivery is read first, and only the
--   endpoints whose first is among the max_rows earliest are read further,
--   each at most twice its even share of max_rows (0.1 read every busy
--   endpoint's share: with thousands of busy endpoints, most of a second
--   per fetch); the rows taken are the earliest of those read, so one
--   endpoint's long run of early rows no longer fills a whole fetch;
-- - with webhook.workers > 1, a worker takes the deliveries of the
--   endpoints it owns (worker_index of worker_count, by a hash of the id);
-- and it returns what the worker needs besides: the delivery's count of
-- manual requests, its endpoint's tenant and rate limit, and whether it is
-- in an ordered sequence (whose next delivery waits for its outcome).
DROP FUNCTION webhook.due_deliveries(uuid[], uuid[], integer, integer, uuid[], timestamptz[], uuid[]);
CREATE FUNCTION webhook.due_deliveries(busy_events uuid[], busy_endpoints uuid[],
                                       per_endpoint integer, max_rows integer,
                                       after_endpoints uuid[], after_at timestamptz[],
                                       after_events uuid[],
                                       blocked_endpoints uuid[] DEFAULT '{}',
                                       probe_endpoints uuid[] DEFAULT '{}',
                                       worker_index integer DEFAULT 0,
                                       worker_count integer DEFAULT 1)
RETURNS TABLE (event_id uuid, endpoint_id uuid, attempts integer, manual boolean,
               event_type text, payload text, created_at timestamptz, url text,
               secret text, previous_secret text, headers jsonb,
               next_attempt_at timestamptz, manual_requests integer, tenant text,
               rate_limit integer, ordered boolean)
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
    ), candidates AS MATERIALIZED (
        -- Each endpoint this worker serves that may take more, with how
        -- many more (take) and its first due delivery: one key look-up per
        -- endpoint, however long its backlog.
        SELECT ep.id, ep.tenant, ep.rate_limit, ep.url, ep.secret,
               CASE WHEN ep.previous_secret_expires_at > now()
                    THEN ep.previous_secret END AS previous_secret,
               ep.headers, p.at AS after_at, p.event_id AS after_event, t.take,
               f.next_attempt_at AS first_at, f.event_id AS first_event
          FROM webhook.endpoints ep
          LEFT JOIN load l ON l.endpoint_id = ep.id
          LEFT JOIN position p ON p.endpoint_id = ep.id
         CROSS JOIN LATERAL (
                SELECT least(greatest(CASE WHEN ep.id = ANY (probe_endpoints) THEN 1
                                           ELSE per_endpoint END
                                      - coalesce(l.n, 0), 0), max_rows) AS take) t
         CROSS JOIN LATERAL (
                SELECT d.next_attempt_at, d.event_id
                  FROM webhook.delivery_log d
                 WHERE d.endpoint_id = ep.id
                   AND d.status = 'pending'
                   AND (d.next_attempt_at, d.event_id) >
                       (coalesce(p.at, '-infinity'),
                        coalesce(p.event_id, '00000000-0000-0000-0000-000000000000'))
                   AND d.next_attempt_at <= now()
                   AND (d.event_id, d.endpoint_id) NOT IN
                       (SELECT b.event_id, b.endpoint_id FROM busy b)
                   AND EXISTS (SELECT 1 FROM webhook.event_log e WHERE e.id = d.event_id)
                 ORDER BY d.next_attempt_at, d.event_id
                 LIMIT 1) f
         WHERE ep.enabled AND (ep.expires_at IS NULL OR ep.expires_at > now())
           AND ep.id <> ALL (blocked_endpoints)
           AND t.take > 0
           -- the endpoints this worker owns (webhook.workers)
           AND (worker_count = 1 OR
                mod(hashtext(ep.id::text)::bigint + 2147483648, worker_count) = worker_index)
    ), ranked AS (
        -- Each candidate's rank by its first delivery, in the total order
        -- of the result, and how many candidates can take a row at all.
        SELECT c.*, (row_number() OVER (ORDER BY c.first_at, c.first_event, c.id) - 1) AS rank,
               least(count(*) OVER (), greatest(max_rows, 1)) AS sharing
          FROM candidates c
    )
    -- The event is joined, and its payload turned into text, only for the
    -- max_rows rows taken, not for every candidate.
    SELECT q.event_id, q.endpoint_id, q.attempts, q.next_attempt_manual,
           e.event_type, e.payload::text, e.created_at,
           q.url, q.secret, q.previous_secret, q.headers, q.next_attempt_at,
           q.manual_requests, q.tenant, q.rate_limit, q.order_key IS NOT NULL
      FROM (SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                   d.next_attempt_at, d.manual_requests, c.tenant, c.rate_limit, d.order_key,
                   c.url, c.secret, c.previous_secret, c.headers
              FROM ranked c
             CROSS JOIN LATERAL (
                    SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                           d.next_attempt_at, d.manual_requests, d.order_key
                      FROM webhook.delivery_log d
                     WHERE d.endpoint_id = c.id
                       AND d.status = 'pending'
                       AND (d.next_attempt_at, d.event_id) >=
                           (c.first_at, c.first_event)
                       AND d.next_attempt_at <= now()
                       -- NOT IN, not NOT EXISTS: a hashed look-up per row
                       -- rather than a scan of everything the worker holds.
                       AND (d.event_id, d.endpoint_id) NOT IN
                           (SELECT b.event_id, b.endpoint_id FROM busy b)
                       -- Never a delivery without its event (the foreign key
                       -- makes one impossible): it would take the endpoint's
                       -- slot and then be dropped by the join below.
                       AND EXISTS (SELECT 1 FROM webhook.event_log e WHERE e.id = d.event_id)
                     ORDER BY d.next_attempt_at, d.event_id
                     -- How far each endpoint is read: the endpoints ranked
                     -- before it each give a row that comes before all of
                     -- its rows, so at most max_rows - rank of its rows
                     -- can be taken (none once its rank reaches max_rows);
                     -- and no endpoint more than twice its even share of
                     -- max_rows. A fetch may so take an endpoint's later
                     -- rows before another's earlier ones beyond its share:
                     -- every pass fetches again, and the endpoints share
                     -- the free slots. Reading each candidate's rows up to
                     -- max_rows (or to a bound: an index scan cannot stop
                     -- at a bound inside a run of one timestamp, which a
                     -- dispatch or replay leaves) read ten times the rows
                     -- taken in a fan-out, and with a few endpoints beyond
                     -- the bound, their whole backlog at every fetch.
                     LIMIT least(c.take, max_rows - c.rank,
                                 2 * ((max_rows + c.sharing - 1) / c.sharing))) d
             WHERE c.rank < max_rows
             -- A total order: what max_rows leaves out of an endpoint's rows
             -- is always their tail, so the position after the last one
             -- taken skips nothing.
             ORDER BY d.next_attempt_at, d.event_id, d.endpoint_id
             LIMIT max_rows) q
     -- One key look-up per row taken, whatever the estimates: a correlated
     -- subquery the planner cannot turn into a hash join over every event
     -- (OFFSET 0 keeps it from being pulled up into a plain join).
     CROSS JOIN LATERAL (SELECT ev.event_type, ev.payload, ev.created_at
                           FROM webhook.event_log ev
                          WHERE ev.id = q.event_id
                         OFFSET 0) e
     ORDER BY q.next_attempt_at, q.event_id, q.endpoint_id;
END;
REVOKE ALL ON FUNCTION webhook.due_deliveries(uuid[], uuid[], integer, integer, uuid[], timestamptz[], uuid[], uuid[], uuid[], integer, integer) FROM PUBLIC;

-- Parks the pending deliveries of endpoints the worker found disabled. Rows
-- an operator holds stay due; the worker does not fetch a disabled
-- endpoint's deliveries anyway. Those already parked are passed over (the
-- index scan stops before them), so parking an endpoint whose backlog is
-- parked costs only the few that are not.
CREATE FUNCTION webhook.park_deliveries(endpoint_ids uuid[]) RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE webhook.delivery_log d
       SET next_attempt_at = 'infinity'
     WHERE (d.event_id, d.endpoint_id) IN (
            SELECT p.event_id, p.endpoint_id FROM webhook.delivery_log p
             WHERE p.endpoint_id = ANY (park_deliveries.endpoint_ids) AND p.status = 'pending'
               -- a delivery waiting its turn in an ordered sequence waits on
               AND p.next_attempt_at < 'infinity'
               FOR NO KEY UPDATE SKIP LOCKED);
END;
REVOKE ALL ON FUNCTION webhook.park_deliveries(uuid[]) FROM PUBLIC;

-- As in 0.1 (see there), except that a delivery waiting its turn in an
-- ordered sequence (next_attempt_at NULL) is neither parked nor resumed:
-- it waits on, and starts when the one before it ends.
CREATE OR REPLACE FUNCTION webhook.park_pending(endpoint_id uuid, parked boolean) RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE webhook.delivery_log d
       SET next_attempt_at = CASE WHEN park_pending.parked THEN 'infinity'::timestamptz
                                  ELSE pg_catalog.now() END
     WHERE d.endpoint_id = park_pending.endpoint_id
       AND d.status = 'pending'
       AND d.next_attempt_at IS NOT NULL
       AND (park_pending.parked OR d.next_attempt_at = 'infinity');
    SELECT webhook.wake_worker() WHERE NOT park_pending.parked;
END;

-- Disables the endpoints whose expires_at has passed (reason 'expired'),
-- parks their pending deliveries and records webhook.endpoint.disabled for
-- each; the worker calls it at each poll.
-- Nothing is sent to an expired endpoint even before (due_deliveries and
-- dispatch pass it over). Endpoints an operator holds wait for the next
-- poll. Returns the endpoints it disabled.
CREATE FUNCTION webhook.disable_expired_endpoints() RETURNS SETOF uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_expired uuid[];
BEGIN
    WITH expired AS (
        SELECT ep.id FROM webhook.endpoints ep
         WHERE ep.enabled AND ep.expires_at <= now()
           FOR NO KEY UPDATE SKIP LOCKED
    ), changed AS (
        UPDATE webhook.endpoints ep
           SET enabled = false, disabled_at = now(), disabled_reason = 'expired',
               updated_at = now()
          FROM expired x
         WHERE ep.id = x.id
        RETURNING ep.id
    )
    SELECT array_agg(c.id ORDER BY c.id) INTO v_expired FROM changed c;
    IF v_expired IS NOT NULL THEN
        PERFORM webhook.park_deliveries(v_expired);
        PERFORM webhook.record_endpoint_disabled(x.id, 'expired')
           FROM unnest(v_expired) AS x(id);
    END IF;
    RETURN QUERY SELECT unnest(v_expired);
END
$$;
REVOKE ALL ON FUNCTION webhook.disable_expired_endpoints() FROM PUBLIC;

-- Records a batch of attempts: history rows (unless history is false: the
-- worker's last resort for an outcome whose history row cannot be
-- written), delivery state, endpoint health (410 and webhook.disable_after
-- disable an endpoint and park its pending deliveries). outcome is
-- 'succeeded', 'retry', 'failed' or 'gone'; tenants are the endpoints'.
-- With the history, the operational events of the batch (see that
-- section): webhook.delivery.failed for each delivery that ends failed
-- (outcome 'failed': its schedule exhausted, or a manual retry of it
-- failed), unless it delivered an operational event itself, which could
-- otherwise report its own failure without end; and
-- webhook.endpoint.disabled for each endpoint disabled (reason 'gone' or
-- 'failing'). A 410 reports the endpoint disabled, not the delivery.
--
-- The worker never waits on a lock a user can hold. It first records the
-- batch plainly, in a subtransaction whose lock waits end after
-- lock_timeout (an operator's retry_delivery, delete_webhook,
-- update_webhook or rotate_secret left open holds a row); should one end
-- so, it records again with skip_locked: deliveries whose row another
-- transaction holds are not recorded but returned (the worker records them
-- at a later pass), and endpoints whose row is held keep their health as it
-- was, judged again at their next outcome. Taking every row lock up front
-- would cost each outcome a write more; the plain path takes none.
--
-- Bitmap scans are off: each outcome finds its delivery by primary key,
-- and a plan made while delivery_log was small (the worker keeps its plans)
-- chose a bitmap scan for that look-up, rebuilt for every outcome and
-- asking the kernel for the table's size each time: 15 % of recording's
-- cost in the drain.
DROP FUNCTION webhook.record_attempts(uuid[], uuid[], integer[], timestamptz[],
    double precision[], integer[], text[], text[], boolean[], text[], timestamptz[], interval);
CREATE FUNCTION webhook.record_attempts(
    event_ids uuid[], endpoint_ids uuid[], attempt_numbers integer[],
    started timestamptz[], durations double precision[], status_codes integer[],
    errors text[], bodies text[], manuals boolean[], outcomes text[],
    next_attempts timestamptz[], requests integer[], tenants text[], disable_after interval,
    history boolean DEFAULT true, skip_locked boolean DEFAULT false)
RETURNS TABLE (event_id uuid, endpoint_id uuid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms'
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_disabled  uuid[];
    v_gone      uuid[];         -- of those, the ones disabled by a 410
    v_failed_endpoints  uuid[]; -- deliveries that ended failed: their endpoints
    v_failed_deliveries jsonb[];    -- ... and what webhook.delivery.failed says of them
    v_take      boolean[];      -- skip_locked: which outcomes to record now
    v_judgeable uuid[];         -- skip_locked: endpoints whose row we hold
    v_ended_endpoints uuid[];   -- ordered deliveries that ended: their sequences
    v_ended_keys      text[];
    v_late_endpoints  uuid[];   -- endpoints disabled before this batch, with
                                -- deliveries it leaves pending: parked after it
BEGIN
    IF skip_locked THEN
        -- Record now what we can lock; a row gone with its event is dropped.
        SELECT array_agg(l.locked IS NOT NULL ORDER BY o.n) INTO v_take
          FROM unnest(event_ids, endpoint_ids) WITH ORDINALITY AS o(event_id, endpoint_id, n)
          LEFT JOIN LATERAL (
                SELECT true AS locked FROM webhook.delivery_log d
                 WHERE d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id
                   FOR NO KEY UPDATE SKIP LOCKED) l ON true;
        -- What to return: held rows (not those gone with their event).
        RETURN QUERY
            SELECT o.event_id, o.endpoint_id
              FROM unnest(event_ids, endpoint_ids, v_take) AS o(event_id, endpoint_id, take)
             WHERE NOT o.take
               AND EXISTS (SELECT 1 FROM webhook.delivery_log x
                            WHERE x.event_id = o.event_id AND x.endpoint_id = o.endpoint_id);
        SELECT array_agg(ep.id) INTO v_judgeable
          FROM (SELECT ep.id FROM webhook.endpoints ep
                 WHERE ep.id = ANY (endpoint_ids)
                   FOR NO KEY UPDATE SKIP LOCKED) ep;
    END IF;

    WITH outcome_batch AS MATERIALIZED (
        SELECT o.* FROM unnest(event_ids, endpoint_ids, attempt_numbers, started, durations,
                               status_codes, errors, bodies, manuals, outcomes, next_attempts,
                               requests, tenants, coalesce(v_take, array_fill(true, ARRAY[cardinality(event_ids)])))
            AS o(event_id, endpoint_id, attempt, started_at, duration_ms, status_code,
                 error, response_body, manual, outcome, next_attempt_at, manual_requests,
                 tenant, take)
         WHERE o.take
    ), attempts AS (
        INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at,
                                         duration_ms, status_code, error, response_body, manual,
                                         tenant)
        SELECT o.event_id, o.endpoint_id, o.attempt, o.started_at, o.duration_ms,
               o.status_code, o.error, o.response_body, o.manual, o.tenant
          FROM outcome_batch o
         WHERE history
    ), deliveries AS (
        -- A manual request that came during the attempt (manual_requests
        -- grew since the worker took the delivery) stands: the delivery
        -- stays as retry_delivery left it (pending, due, manual).
        UPDATE webhook.delivery_log d
           SET status = CASE WHEN d.manual_requests > o.manual_requests THEN 'pending'
                             WHEN o.outcome = 'succeeded' THEN 'succeeded'
                             WHEN o.outcome = 'retry' THEN 'pending'
                             ELSE 'failed' END,
               attempts = greatest(d.attempts, o.attempt),
               last_status_code = o.status_code,
               last_error = o.error,
               next_attempt_at = CASE WHEN d.manual_requests > o.manual_requests THEN d.next_attempt_at
                                      WHEN o.outcome = 'retry' THEN o.next_attempt_at END,
               next_attempt_manual = d.manual_requests > o.manual_requests AND d.next_attempt_manual,
               succeeded_at = CASE WHEN o.outcome = 'succeeded' THEN o.started_at
                                   ELSE d.succeeded_at END
          FROM outcome_batch o
         WHERE d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id
           -- "Not final" rather than status = 'pending' (the same, given the
           -- CHECK): the latter lets the planner add the partial index of
           -- pending deliveries to each primary-key look-up (see 0.1).
           AND d.status NOT IN ('succeeded', 'failed', 'cancelled')
        RETURNING d.event_id, d.endpoint_id, d.event_type, d.status, d.attempts,
                  d.last_status_code, d.last_error, o.outcome, d.order_key, d.next_attempt_at
    ), late AS (
        -- Endpoints disabled while their deliveries were under way (by the
        -- outcome of another, or by an operator): those left pending are
        -- parked below like the endpoint's others, not left scheduled. The
        -- endpoints read here are as they were before this statement; those
        -- it disables are parked with them.
        SELECT DISTINCT e.endpoint_id FROM deliveries e
         WHERE e.status = 'pending' AND e.next_attempt_at < 'infinity'
           AND EXISTS (SELECT 1 FROM webhook.endpoints ep
                        WHERE ep.id = e.endpoint_id AND NOT ep.enabled)
    ), failed AS (
        -- Deliveries that end failed and report it: not those of
        -- operational events (the prefix webhook. is theirs alone).
        SELECT f.* FROM deliveries f
         WHERE f.status = 'failed' AND f.outcome = 'failed'
           AND NOT starts_with(f.event_type, 'webhook.')
    ), per_endpoint AS (
        SELECT o.endpoint_id,
               bool_or(o.outcome = 'succeeded') AS succeeded,
               bool_or(o.outcome = 'gone') AS gone,
               min(o.started_at) AS first_failure,
               max(o.started_at) AS last_failure
          FROM outcome_batch o
         WHERE NOT skip_locked OR o.endpoint_id = ANY (v_judgeable)
         GROUP BY o.endpoint_id
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
        RETURNING ep.id, j.disable, j.gone
    )
    SELECT (SELECT array_agg(c.id ORDER BY c.id) FILTER (WHERE c.disable) FROM changed c),
           (SELECT array_agg(c.id) FILTER (WHERE c.disable AND c.gone) FROM changed c),
           (SELECT array_agg(f.endpoint_id ORDER BY f.event_id, f.endpoint_id) FROM failed f),
           (SELECT array_agg(jsonb_build_object(
                       'delivery', jsonb_build_object(
                           'event_id', f.event_id, 'event_type', f.event_type,
                           'attempts', f.attempts, 'last_status_code', f.last_status_code,
                           'last_error', f.last_error))
                       ORDER BY f.event_id, f.endpoint_id)
              FROM failed f),
           (SELECT array_agg(e.endpoint_id) FROM deliveries e
             WHERE e.order_key IS NOT NULL AND e.status <> 'pending'),
           (SELECT array_agg(e.order_key) FROM deliveries e
             WHERE e.order_key IS NOT NULL AND e.status <> 'pending'),
           (SELECT array_agg(l.endpoint_id) FROM late l)
      INTO v_disabled, v_gone, v_failed_endpoints, v_failed_deliveries,
           v_ended_endpoints, v_ended_keys, v_late_endpoints;

    -- Ordered sequences whose delivery under way just ended: the next one
    -- of each starts (parked, if its endpoint was just disabled).
    IF v_ended_endpoints IS NOT NULL THEN
        PERFORM webhook.start_order_heads(v_ended_endpoints, v_ended_keys);
    END IF;

    -- Park the pending deliveries of the endpoints just disabled, and of
    -- those disabled while this batch was under way: a statement of its
    -- own, run only when there are some (joined to the one above, it let
    -- the planner read the whole backlog whenever the partial index's
    -- statistics said it was empty).
    IF v_disabled IS NOT NULL OR v_late_endpoints IS NOT NULL THEN
        PERFORM webhook.park_deliveries(v_disabled || v_late_endpoints);
    END IF;

    -- The operational events, once the changes they report are made (and
    -- statements run only when there are some). The last resort (no
    -- history) records the outcomes alone: nothing more that could fail.
    IF history AND v_failed_endpoints IS NOT NULL THEN
        PERFORM webhook.record_operational_event('webhook.delivery.failed', f.endpoint_id,
                                                 f.details)
           FROM unnest(v_failed_endpoints, v_failed_deliveries) AS f(endpoint_id, details);
    END IF;
    IF history AND v_disabled IS NOT NULL THEN
        PERFORM webhook.record_endpoint_disabled(x.id, CASE WHEN x.id = ANY (v_gone)
                                                            THEN 'gone' ELSE 'failing' END)
           FROM unnest(v_disabled) AS x(id);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION webhook.record_attempts(uuid[], uuid[], integer[], timestamptz[],
    double precision[], integer[], text[], text[], boolean[], text[], timestamptz[],
    integer[], text[], interval, boolean, boolean) FROM PUBLIC;

-- Retention walks the old events in (created_at, id) order.
DROP INDEX webhook.event_log_created_at_idx;
CREATE INDEX event_log_created_at_idx ON webhook.event_log (created_at, id);

-- One step of retention: looks at the next batch events older than
-- retention after the position (after_at, after_id) (NULL: from the
-- oldest), removes those it can (their deliveries go with them, by the
-- foreign key; attempts here), and returns how many it removed and the
-- position it reached: NULL once it looked at fewer than batch, when no
-- old event is left after it. Events with a pending delivery are kept
-- whatever their age, and so are events another transaction holds (a
-- retry_delivery or replay under way): the worker never waits for them.
-- A step costs what batch events cost however many are kept before it:
-- the worker carries the position from step to step, so the events kept
-- are read once a pass over the history, not at every batch.
CREATE FUNCTION webhook.remove_old_history_step(retention interval, batch integer,
                                                after_at timestamptz, after_id uuid,
                                                OUT removed bigint,
                                                OUT last_at timestamptz, OUT last_id uuid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_looked integer;
BEGIN
    WITH looked AS MATERIALIZED (
        SELECT e.id, e.created_at FROM webhook.event_log e
         WHERE e.created_at < now() - retention
           AND (e.created_at, e.id) > (coalesce(after_at, '-infinity'),
                                       coalesce(after_id, '00000000-0000-0000-0000-000000000000'))
         ORDER BY e.created_at, e.id
         LIMIT batch
    ), old AS MATERIALIZED (
        SELECT e.id FROM webhook.event_log e
         WHERE e.id IN (SELECT l.id FROM looked l)
           AND NOT EXISTS (SELECT 1 FROM webhook.delivery_log d
                            WHERE d.event_id = e.id
                              -- not "= 'pending'": see record_attempts
                              AND d.status NOT IN ('succeeded', 'failed', 'cancelled'))
           FOR UPDATE SKIP LOCKED
    ), attempts AS (
        DELETE FROM webhook.attempt_log a USING old WHERE a.event_id = old.id
    ), gone AS (
        DELETE FROM webhook.event_log e USING old WHERE e.id = old.id RETURNING 1
    ), last AS (
        SELECT l.created_at, l.id FROM looked l ORDER BY l.created_at DESC, l.id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM looked),
           (SELECT l.created_at FROM last l), (SELECT l.id FROM last l)
      INTO removed, v_looked, last_at, last_id;
    IF v_looked < batch THEN
        last_at := NULL;
        last_id := NULL;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION webhook.remove_old_history_step(interval, integer, timestamptz, uuid)
    FROM PUBLIC;

-- Removes history older than retention, at most batch events a call, the
-- oldest first (see remove_old_history_step): steps from the oldest until
-- batch are removed or no old event is left.
CREATE OR REPLACE FUNCTION webhook.remove_old_history(retention interval, batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_removed bigint := 0;
    v_step    record;
    v_at      timestamptz;
    v_id      uuid;
BEGIN
    IF batch < 0 THEN
        RAISE EXCEPTION 'batch must not be negative, not %', batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        EXIT WHEN v_removed >= batch;
        SELECT * INTO v_step
          FROM webhook.remove_old_history_step(retention, (batch - v_removed)::integer, v_at, v_id);
        v_removed := v_removed + v_step.removed;
        EXIT WHEN v_step.last_at IS NULL;
        v_at := v_step.last_at;
        v_id := v_step.last_id;
    END LOOP;
    RETURN v_removed;
END
$$;

-- ===========================================================================
-- END section: deliveries
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: masking (URLs and headers as listed)
-- ===========================================================================

-- The URL as listed: its userinfo's credentials replaced by ********.
-- "user:password" becomes "user:********"; a userinfo without a colon (a
-- bare token used as user name) becomes "********". The userinfo ends at
-- the last '@' before the path, so a password holding an '@' is masked
-- whole. The same C function masks URLs in errors, so both show one shape;
-- update_webhook keeps the stored URL when given back this masked one.
CREATE OR REPLACE FUNCTION webhook.mask_url(url text) RETURNS text
    LANGUAGE c STRICT IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'webhook_mask_url';

-- Header values as listed: every value is replaced by ******** except
-- those of the standard headers below, which never carry a credential
-- (names compared ignoring case): Accept, Accept-Charset,
-- Accept-Encoding, Accept-Language, Cache-Control, Content-Language. Any
-- other name may hold a secret (api_key, X-Signature, X-Tenant-Key ...),
-- so its value is hidden. update_webhook keeps the stored value of a
-- header given back as ********.
CREATE OR REPLACE FUNCTION webhook.mask_headers(headers jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
RETURN (SELECT jsonb_object_agg(h.key,
                CASE WHEN lower(h.key) IN ('accept', 'accept-charset', 'accept-encoding',
                                           'accept-language', 'cache-control',
                                           'content-language')
                     THEN h.value
                     ELSE to_jsonb('********'::text) END)
          FROM jsonb_each(headers) AS h);

-- The URL as listed, kept in the row for webhook.endpoint_health: a view
-- calls functions with its reader's rights, and a role granted SELECT on
-- that view alone may not execute webhook.mask_url. (A release that
-- changes mask_url recomputes it: UPDATE webhook.endpoints SET url = url.)
ALTER TABLE webhook.endpoints
    ADD COLUMN masked_url text GENERATED ALWAYS AS (webhook.mask_url(url)) STORED;

-- endpoint_health as in 0.1, but its url masked, and with the endpoint's
-- tenant: a session with webhook.tenant set sees that tenant's endpoints
-- only (the scope is tested as in webhook.events, see the tenants section;
-- the attempts and pending deliveries read are those of the scope too).
CREATE OR REPLACE VIEW webhook.endpoint_health AS
WITH recent AS (
    SELECT a.endpoint_id, a.started_at, a.duration_ms,
           coalesce(a.status_code BETWEEN 200 AND 299, false) AS ok
      FROM webhook.attempt_log a
     WHERE a.started_at >= pg_catalog.now() - interval '1 hour'
       AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
            OR a.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))
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
       AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
            OR d.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))
     GROUP BY d.endpoint_id
)
SELECT ep.id, ep.masked_url AS url, ep.description, ep.enabled, ep.disabled_at,
       ep.disabled_reason, ep.failing_since,
       coalesce(b.pending, 0) AS pending,
       coalesce(p.succeeded, 0) AS succeeded,
       coalesce(p.failed, 0) AS failed,
       round(p.succeeded::numeric / nullif(p.succeeded + p.failed, 0), 4) AS success_rate,
       round(p.p50_ms::numeric, 1) AS p50_ms,
       round(p.p99_ms::numeric, 1) AS p99_ms,
       p.last_success_at, p.last_failure_at,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures,
       ep.tenant
  FROM webhook.endpoints ep
  LEFT JOIN backlog b ON b.endpoint_id = ep.id
  LEFT JOIN per_endpoint p ON p.endpoint_id = ep.id
  LEFT JOIN streak s ON s.endpoint_id = ep.id
 WHERE (SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
    OR ep.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true));

-- ===========================================================================
-- END section: masking
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: tenants (endpoints of a tenant, scoped sessions, views by tenant)
-- ===========================================================================

-- (The endpoint columns ordered and rate_limit are added in the dispatch
-- section, with tenant and expires_at: the worker's queries read them.)

-- The tenant the session is scoped to (webhook.tenant), NULL when it is
-- unset or empty.
CREATE FUNCTION webhook.session_tenant() RETURNS text
    LANGUAGE sql STABLE
RETURN nullif(pg_catalog.current_setting('webhook.tenant', true), '');
REVOKE ALL ON FUNCTION webhook.session_tenant() FROM PUBLIC;

-- Whether a row of tenant is in the session's scope: every row when the
-- session has no tenant, else that tenant's rows alone (rows without a
-- tenant are outside it). Out of scope is "does not exist". The views
-- write the same test out with current_setting(), which any reader may
-- call. No SET clause, so that the planner inlines it.
CREATE FUNCTION webhook.in_tenant_scope(tenant text) RETURNS boolean
    LANGUAGE sql STABLE
RETURN webhook.session_tenant() IS NULL OR in_tenant_scope.tenant = webhook.session_tenant();
REVOKE ALL ON FUNCTION webhook.in_tenant_scope(text) FROM PUBLIC;

-- Raises 22023 unless a rate limit given is 1 to 100000 requests per
-- second and an expiry time given is still to come (an endpoint that has
-- expired would never receive anything). NULL: not given.
CREATE FUNCTION webhook.check_delivery_settings(rate_limit integer, expires_at timestamptz)
    RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF rate_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'rate limit % is out of range', rate_limit
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A rate limit is 1 to 100000 requests per second.',
                  HINT = 'NULL means no limit; update_webhook removes a limit given 0.';
    END IF;
    IF expires_at <= now() THEN
        RAISE EXCEPTION 'expiry time "%" is not in the future', expires_at
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Nothing is sent to an endpoint after its expiry time.',
                  HINT = 'NULL means no expiry; update_webhook removes an expiry given ''infinity''.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION webhook.check_delivery_settings(integer, timestamptz) FROM PUBLIC;

-- The endpoint functions return the new columns (tenant, ordered,
-- rate_limit, expires_at) and create_webhook and update_webhook take new
-- arguments: their result types are made again, and the functions with
-- them, keeping the grants users made on the old ones.
INSERT INTO webhook.upgrade_saved_acl
    SELECT f.name, p.proacl
      FROM (VALUES ('create_webhook', 'webhook.create_webhook(text, text[], text, text, jsonb, boolean)'),
                   ('list_webhooks', 'webhook.list_webhooks()'),
                   ('get_webhook', 'webhook.get_webhook(uuid)'),
                   ('update_webhook', 'webhook.update_webhook(uuid, text, text[], text, jsonb, boolean)'))
           AS f(name, signature)
      JOIN pg_catalog.pg_proc p ON p.oid = f.signature::pg_catalog.regprocedure;
DROP FUNCTION webhook.create_webhook(text, text[], text, text, jsonb, boolean);
DROP FUNCTION webhook.update_webhook(uuid, text, text[], text, jsonb, boolean);
DROP FUNCTION webhook.get_webhook(uuid);
DROP FUNCTION webhook.list_webhooks();
DROP TYPE webhook.endpoint_info;
DROP TYPE webhook.endpoint_with_secret;

-- What the endpoint functions return, in the contract's column order.
CREATE TYPE webhook.endpoint_info AS
    (id uuid, url text, event_types text[], description text,
     headers jsonb, enabled boolean, disabled_at timestamptz,
     disabled_reason text, created_at timestamptz, updated_at timestamptz,
     tenant text, ordered boolean, rate_limit integer, expires_at timestamptz);
CREATE TYPE webhook.endpoint_with_secret AS
    (id uuid, url text, event_types text[], description text,
     headers jsonb, enabled boolean, disabled_at timestamptz,
     disabled_reason text, created_at timestamptz, updated_at timestamptz,
     secret text,
     tenant text, ordered boolean, rate_limit integer, expires_at timestamptz);
REVOKE ALL ON TYPE webhook.endpoint_info, webhook.endpoint_with_secret FROM PUBLIC;

-- create_webhook as in 0.1 (see there), and since 0.2: the endpoint's
-- tenant (NULL: the session's, if it has one; '': none), which a scoped
-- session may not set to another (the endpoint would leave its scope at
-- once), and its delivery settings. An expiry of 'infinity' is none.
CREATE FUNCTION webhook.create_webhook(
    url          text,
    event_types  text[]      DEFAULT NULL,
    secret       text        DEFAULT NULL,
    description  text        DEFAULT NULL,
    headers      jsonb       DEFAULT NULL,
    enabled      boolean     DEFAULT true,
    tenant       text        DEFAULT NULL,
    ordered      boolean     DEFAULT false,
    rate_limit   integer     DEFAULT NULL,
    expires_at   timestamptz DEFAULT NULL)
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
    v_session text := webhook.session_tenant();
    v_tenant  text := nullif(coalesce(create_webhook.tenant, v_session), '');
    v_expires timestamptz := nullif(create_webhook.expires_at, 'infinity');
BEGIN
    IF v_url IS NULL THEN
        RAISE EXCEPTION 'url must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM webhook.check_url(v_url);
    PERFORM webhook.warn_blocked_url(v_url);
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
    IF v_tenant IS DISTINCT FROM v_session AND v_session IS NOT NULL THEN
        RAISE EXCEPTION '%', CASE WHEN v_tenant IS NULL
                    THEN format('cannot create an endpoint without a tenant in a session scoped to tenant "%s"',
                                v_session)
                    ELSE format('cannot create an endpoint of tenant "%s" in a session scoped to tenant "%s"',
                                v_tenant, v_session) END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A session with webhook.tenant set creates endpoints of that tenant only.',
                  HINT = 'Omit tenant, or RESET webhook.tenant to create an endpoint of another tenant or without one.';
    END IF;
    IF char_length(v_tenant) > 255 THEN
        RAISE EXCEPTION 'tenant is too long'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It has %s characters; at most 255 are allowed.',
                                  char_length(v_tenant));
    END IF;
    IF create_webhook.ordered IS NULL THEN
        RAISE EXCEPTION 'ordered must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM webhook.check_delivery_settings(create_webhook.rate_limit, v_expires);

    RETURN QUERY
    INSERT INTO webhook.endpoints AS e
           (id, url, event_types, secret, description, headers, enabled,
            disabled_at, disabled_reason, tenant, ordered, rate_limit, expires_at)
    VALUES (webhook.uuid_v7(), v_url, v_filter, v_secret, create_webhook.description,
            v_headers, v_enabled,
            CASE WHEN v_enabled THEN NULL ELSE now() END,
            CASE WHEN v_enabled THEN NULL ELSE 'disabled at creation' END,
            v_tenant, create_webhook.ordered, create_webhook.rate_limit, v_expires)
    RETURNING e.id, e.url, e.event_types, e.description,
              e.headers, e.enabled, e.disabled_at,
              e.disabled_reason, e.created_at, e.updated_at, e.secret,
              e.tenant, e.ordered, e.rate_limit, e.expires_at;
END
$$;

-- list_webhooks and get_webhook as in 0.1 (see there): the endpoints of
-- the session's scope.
CREATE FUNCTION webhook.list_webhooks()
RETURNS SETOF webhook.endpoint_info
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT e.id, webhook.mask_url(e.url), e.event_types, e.description,
           webhook.mask_headers(e.headers), e.enabled, e.disabled_at,
           e.disabled_reason, e.created_at, e.updated_at,
           e.tenant, e.ordered, e.rate_limit, e.expires_at
      FROM webhook.endpoints e
     WHERE webhook.in_tenant_scope(e.tenant)
     ORDER BY e.created_at, e.id;
END;

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

-- update_webhook as in 0.1 (see there), for the endpoints of the session's
-- scope; the headers are checked again once the values passed back masked
-- are replaced by the stored ones (the limits on headers hold for what is
-- stored, not just for what was passed). Since 0.2 it sets the delivery
-- settings too: rate_limit 0 removes the limit, expires_at 'infinity' the
-- expiry. An endpoint past its expiry time is not enabled again unless the
-- same call moves that time. Disabling an enabled endpoint records
-- webhook.endpoint.disabled (reason 'manual').
-- An endpoint no longer ordered: its deliveries waiting their turn are
-- due now (parked if it is disabled). update_webhook calls it, and
-- webhook.apply_catalog_row on a Citus worker node.
CREATE FUNCTION webhook.release_waiting(endpoint_id uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE webhook.delivery_log d
       SET next_attempt_at = CASE WHEN e.enabled THEN now() ELSE 'infinity' END
      FROM webhook.endpoints e
     WHERE e.id = release_waiting.endpoint_id AND d.endpoint_id = e.id
       AND d.status = 'pending' AND d.next_attempt_at IS NULL;
    PERFORM webhook.wake_worker();
END
$$;
REVOKE ALL ON FUNCTION webhook.release_waiting(uuid) FROM PUBLIC;

CREATE FUNCTION webhook.update_webhook(
    id           uuid,
    url          text        DEFAULT NULL,
    event_types  text[]      DEFAULT NULL,
    description  text        DEFAULT NULL,
    headers      jsonb       DEFAULT NULL,
    enabled      boolean     DEFAULT NULL,
    ordered      boolean     DEFAULT NULL,
    rate_limit   integer     DEFAULT NULL,
    expires_at   timestamptz DEFAULT NULL)
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
    v_expires timestamptz;
BEGIN
    SELECT e.enabled, e.expires_at INTO v_was, v_expires
      FROM webhook.endpoints e
     WHERE e.id = v_id AND webhook.in_tenant_scope(e.tenant)
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(v_id);
    END IF;
    IF update_webhook.url IS NOT NULL THEN
        PERFORM webhook.check_url(update_webhook.url);
        PERFORM webhook.warn_blocked_url(update_webhook.url);
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
        -- The merged headers as they will be stored: within the limits too.
        PERFORM webhook.check_headers(v_headers);
    END IF;
    PERFORM webhook.check_delivery_settings(nullif(update_webhook.rate_limit, 0),
                                            nullif(update_webhook.expires_at, 'infinity'));
    IF update_webhook.expires_at IS NOT NULL THEN
        v_expires := nullif(update_webhook.expires_at, 'infinity');
    END IF;
    IF update_webhook.enabled AND v_expires <= now() THEN
        RAISE EXCEPTION 'cannot enable webhook endpoint "%": it expired at %', v_id, v_expires
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a later expires_at in the same call, or ''infinity'' for no expiry.';
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
        ordered     = coalesce(update_webhook.ordered, e.ordered),
        rate_limit  = CASE WHEN update_webhook.rate_limit IS NULL THEN e.rate_limit
                           ELSE nullif(update_webhook.rate_limit, 0) END,
        expires_at  = v_expires,
        updated_at  = now()
     WHERE e.id = v_id;

    -- No longer ordered: what waited its turn is due (or parked) now. What
    -- dispatch queued meanwhile under the old setting still waits, and goes
    -- one at a time as those ahead of it end.
    IF NOT update_webhook.ordered THEN
        PERFORM webhook.release_waiting(v_id);
    END IF;
    IF update_webhook.enabled IS NOT NULL AND update_webhook.enabled IS DISTINCT FROM v_was THEN
        PERFORM webhook.park_pending(v_id, NOT update_webhook.enabled);
        IF NOT update_webhook.enabled THEN
            PERFORM webhook.record_endpoint_disabled(v_id, 'manual');
        END IF;
    END IF;
    -- Where the endpoint is delivered to, or how, has changed: its
    -- scheduled retries need not wait for delays the old settings earned.
    IF v_url IS NOT NULL OR v_headers IS NOT NULL THEN
        PERFORM webhook.retry_now(v_id);
    END IF;

    RETURN QUERY SELECT * FROM webhook.get_webhook(v_id);
END
$$;

REVOKE ALL ON FUNCTION
    webhook.create_webhook(text, text[], text, text, jsonb, boolean, text, boolean, integer, timestamptz),
    webhook.list_webhooks(),
    webhook.get_webhook(uuid),
    webhook.update_webhook(uuid, text, text[], text, jsonb, boolean, boolean, integer, timestamptz)
    FROM PUBLIC;
SELECT webhook.upgrade_carry_grants(s.acl, f.signature::pg_catalog.regprocedure)
  FROM (VALUES ('create_webhook', 'webhook.create_webhook(text, text[], text, text, jsonb, boolean, text, boolean, integer, timestamptz)'),
               ('list_webhooks', 'webhook.list_webhooks()'),
               ('get_webhook', 'webhook.get_webhook(uuid)'),
               ('update_webhook', 'webhook.update_webhook(uuid, text, text[], text, jsonb, boolean, boolean, integer, timestamptz)'))
       AS f(name, signature)
  JOIN webhook.upgrade_saved_acl s ON s.name = f.name;

-- delete_webhook and rotate_secret as in 0.1 (see there), for the
-- endpoints of the session's scope.
CREATE OR REPLACE FUNCTION webhook.delete_webhook(id uuid) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'endpoint id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM webhook.endpoints e
     WHERE e.id = delete_webhook.id AND webhook.in_tenant_scope(e.tenant);
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


-- Sending again by hand acts on dispatched events only, and holds the
-- event (FOR KEY SHARE) so that retention cannot remove it meanwhile. It
-- sends an event only where dispatch could have: an endpoint of a tenant
-- receives that tenant's events alone. A scoped session sees its tenant's
-- endpoints and events only. The delivery is the endpoint's tenant's.
CREATE OR REPLACE FUNCTION webhook.retry_delivery(event_id uuid, endpoint_id uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_enabled      boolean;
    v_tenant       text;
    v_event_type   text;
    v_event_tenant text;
    v_txid         xid8;
    v_about        uuid;
    v_ordered      boolean;
    v_ordering_key text;
    v_due          timestamptz;
BEGIN
    IF event_id IS NULL OR endpoint_id IS NULL THEN
        RAISE EXCEPTION 'event id and endpoint id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT e.enabled, e.tenant, e.ordered INTO v_enabled, v_tenant, v_ordered
      FROM webhook.endpoints e
     WHERE e.id = retry_delivery.endpoint_id AND webhook.in_tenant_scope(e.tenant);
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(retry_delivery.endpoint_id);
    END IF;
    SELECT ev.event_type, ev.tenant, ev.txid, ev.about_endpoint, ev.ordering_key
      INTO v_event_type, v_event_tenant, v_txid, v_about, v_ordering_key
      FROM webhook.event_log ev
     WHERE ev.id = retry_delivery.event_id AND webhook.in_tenant_scope(ev.tenant)
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event "%" does not exist', retry_delivery.event_id
            USING ERRCODE = 'undefined_object';
    END IF;
    IF v_tenant IS NOT NULL AND v_event_tenant IS DISTINCT FROM v_tenant THEN
        RAISE EXCEPTION '%', CASE WHEN v_event_tenant IS NULL
                    THEN format('webhook endpoint "%s" does not receive events without a tenant',
                                retry_delivery.endpoint_id)
                    ELSE format('webhook endpoint "%s" does not receive events of tenant "%s"',
                                retry_delivery.endpoint_id, v_event_tenant) END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The endpoint belongs to tenant "%s": it receives that tenant''s events only.',
                                  v_tenant);
    END IF;
    IF v_about = retry_delivery.endpoint_id THEN
        RAISE EXCEPTION 'event "%" is about webhook endpoint "%" itself', retry_delivery.event_id,
                        retry_delivery.endpoint_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An operational event is never sent to the endpoint it is about.';
    END IF;
    IF NOT webhook.event_dispatched(v_txid, retry_delivery.event_id) THEN
        RAISE EXCEPTION 'event "%" has not been dispatched yet', retry_delivery.event_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The worker dispatches it to its subscribed endpoints within moments; retry after that.';
    END IF;
    -- At an ordered endpoint, a delivery sent again takes the end of its
    -- sequence and waits its turn (the worker starts it): one under way or
    -- waiting keeps its place; one under way is due now, as elsewhere.
    v_due := CASE WHEN v_enabled THEN now() ELSE 'infinity' END;
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual,
            manual_requests, tenant, order_key, order_position)
    VALUES (retry_delivery.event_id, retry_delivery.endpoint_id, v_event_type, 'pending',
            CASE WHEN NOT v_ordered THEN v_due END, true, 1, v_tenant,
            CASE WHEN v_ordered THEN webhook.order_key(v_event_tenant, v_ordering_key) END,
            CASE WHEN v_ordered THEN nextval('webhook.order_positions') * 16777216 END)
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = CASE WHEN d.status <> 'pending' THEN excluded.next_attempt_at
                                  WHEN d.next_attempt_at IS NULL THEN NULL
                                  ELSE v_due END,
           order_key = CASE WHEN d.status <> 'pending' THEN excluded.order_key
                            ELSE d.order_key END,
           order_position = CASE WHEN d.status <> 'pending' THEN excluded.order_position
                                 ELSE d.order_position END,
           next_attempt_manual = true,
           manual_requests = d.manual_requests + 1;
    PERFORM webhook.wake_worker();
END
$$;

-- As in 0.1 (see there), for dispatched events only: an event not yet
-- dispatched is dispatched to this endpoint anyway if it subscribes. Only
-- events dispatch could send to the endpoint are chosen: an endpoint of a
-- tenant receives that tenant's events alone. A scoped session sees its
-- tenant's endpoints only.
CREATE OR REPLACE FUNCTION webhook.replay(endpoint_id uuid, since timestamptz, until timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_filter  text[];
    v_enabled boolean;
    v_tenant  text;
    v_ordered boolean;
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
    SELECT e.event_types, e.enabled, e.tenant, e.ordered
      INTO v_filter, v_enabled, v_tenant, v_ordered
      FROM webhook.endpoints e
     WHERE e.id = replay.endpoint_id AND webhook.in_tenant_scope(e.tenant);
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(replay.endpoint_id);
    END IF;
    -- This database's cursor, read once (event_dispatched per row would
    -- read pg_control for each: 12 s for a window of 100,000 events).
    WITH local_cursor AS MATERIALIZED (
        SELECT c.snapshot, c.target, c.after_txid, c.after_id
          FROM webhook.dispatch_cursor c
         WHERE webhook.cursor_is_local(c.system_identifier, c.database_oid)
    ), chosen AS MATERIALIZED (
        SELECT ev.id, ev.event_type, ev.tenant, ev.ordering_key, ev.txid
          FROM webhook.event_log ev
         WHERE ev.created_at >= replay.since AND ev.created_at < replay.until
           AND (v_tenant IS NULL OR ev.tenant = v_tenant)
           AND webhook.filter_matches(v_filter, ev.event_type)
           AND EXISTS (SELECT 1 FROM local_cursor c
                        WHERE webhook.cursor_dispatched(ev.txid, ev.id, c.snapshot, c.target,
                                                        c.after_txid, c.after_id))
           -- never an operational event to the endpoint it is about
           AND ev.about_endpoint IS DISTINCT FROM replay.endpoint_id
           FOR KEY SHARE OF ev
    )
    -- At an ordered endpoint the replayed deliveries wait their turn at the
    -- end of their sequences, in the order dispatch took the events
    -- (transaction, then emit order); the worker starts them.
    , numbered AS (
        SELECT c.*, row_number() OVER (ORDER BY c.txid, c.id) AS n FROM chosen c
    )
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual,
            manual_requests, tenant, order_key, order_position)
    SELECT c.id, replay.endpoint_id, c.event_type, 'pending',
           CASE WHEN v_ordered THEN NULL WHEN v_enabled THEN now() ELSE 'infinity' END,
           true, 1, v_tenant,
           CASE WHEN v_ordered THEN webhook.order_key(c.tenant, c.ordering_key) END,
           -- (a replay of more than 2^24 events spills into the next
           -- block of positions: it may interleave with what is queued then)
           CASE WHEN v_ordered
                THEN (SELECT nextval('webhook.order_positions')) * 16777216 + c.n END
      FROM numbered c
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = excluded.next_attempt_at,
           order_key = excluded.order_key,
           order_position = excluded.order_position,
           next_attempt_manual = true,
           manual_requests = d.manual_requests + 1
     WHERE d.status IN ('failed', 'cancelled');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM webhook.wake_worker();
    RETURN v_count;
END
$$;

-- The history relations, scoped: a session with webhook.tenant set sees
-- that tenant's rows alone, whatever path it takes (these views are what
-- readers are granted; the tables are granted to no one). An event's
-- tenant is the one it was emitted for; a delivery's and an attempt's are
-- their endpoint's, so a tenant's scope shows the deliveries to its own
-- endpoints, never those to internal ones. Each view tests the scope with
-- current_setting(), which any reader may call (a view calls functions
-- with its reader's rights); the scalar subqueries make it one call per
-- query, not per row.
CREATE OR REPLACE VIEW webhook.events AS
    SELECT id, event_type, payload, created_at, tenant
      FROM webhook.event_log
     WHERE (SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
        OR tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true));

CREATE OR REPLACE VIEW webhook.deliveries AS
    SELECT event_id, endpoint_id, event_type, status, attempts,
           last_status_code, last_error, next_attempt_at, succeeded_at,
           created_at, tenant
      FROM webhook.delivery_log
     WHERE (SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
        OR tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true));

CREATE OR REPLACE VIEW webhook.attempts AS
    SELECT event_id, endpoint_id, attempt, started_at, duration_ms,
           status_code, error, response_body, manual, tenant
      FROM webhook.attempt_log
     WHERE (SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
        OR tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true));

-- queue_status as in 0.1 (see there), reading this database's cursor only,
-- and scoped: in a session with webhook.tenant set, its pending deliveries
-- and attempts are those to the tenant's endpoints, its events (recent and
-- undispatched) those emitted for the tenant. The worker is the
-- database's.
CREATE OR REPLACE VIEW webhook.queue_status AS
SELECT q.pending_due, q.pending_scheduled, q.pending_parked,
       pg_catalog.now() - q.oldest_pending_at AS oldest_pending_age,
       u.undispatched_events,
       (SELECT count(*) FROM webhook.event_log e
         WHERE e.created_at >= pg_catalog.now() - interval '1 minute'
           AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                OR e.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true))))
         AS events_last_minute,
       a.attempts_last_minute,
       a.delivered_last_minute,
       round(a.delivered_last_minute / 60.0, 2) AS deliveries_per_second,
       w.pid AS worker_pid,
       w.query AS worker_activity,
       q.pending_in_order
  FROM (SELECT count(*) FILTER (WHERE d.next_attempt_at <= pg_catalog.now()) AS pending_due,
               count(*) FILTER (WHERE d.next_attempt_at > pg_catalog.now()
                                  AND d.next_attempt_at < 'infinity') AS pending_scheduled,
               count(*) FILTER (WHERE d.next_attempt_at = 'infinity') AS pending_parked,
               count(*) FILTER (WHERE d.next_attempt_at IS NULL) AS pending_in_order,
               min(d.created_at) FILTER (WHERE coalesce(d.next_attempt_at, '-infinity') < 'infinity')
                 AS oldest_pending_at
          FROM webhook.delivery_log d
         WHERE d.status = 'pending'
           AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                OR d.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))) q
 CROSS JOIN (SELECT (SELECT count(*) FROM webhook.event_log e
                      WHERE e.txid >= pg_catalog.pg_snapshot_xmax(c.snapshot)
                        AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                             OR e.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true))))
                  + (SELECT count(*) FROM webhook.event_log e
                      WHERE e.txid IN (SELECT pg_catalog.pg_snapshot_xip(c.snapshot))
                        AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                             OR e.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true))))
                    AS undispatched_events
               FROM (SELECT c.snapshot FROM webhook.dispatch_cursor c
                      -- this database's row (a reader may not call
                      -- pg_control_system(); a restored origin's row lives
                      -- only until the worker's next pass)
                      ORDER BY c.database_oid = (SELECT d.oid FROM pg_catalog.pg_database d
                                                  WHERE d.datname = pg_catalog.current_database()) DESC
                      LIMIT 1) c) u
 CROSS JOIN (SELECT count(*) AS attempts_last_minute,
                    count(*) FILTER (WHERE t.status_code BETWEEN 200 AND 299) AS delivered_last_minute
               FROM webhook.attempt_log t
              WHERE t.started_at >= pg_catalog.now() - interval '1 minute'
                AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                     OR t.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))) a
  LEFT JOIN (SELECT s.pid, s.query FROM pg_catalog.pg_stat_activity s
              WHERE s.backend_type = 'webhook_outbox worker'
                AND s.datname = pg_catalog.current_database()
              LIMIT 1) w ON true;

-- One row per tenant (NULL: the endpoints without a tenant) that has
-- endpoints, pending deliveries or attempts in the last minute, so that an
-- operator sees whose endpoints fail: its endpoints (enabled, failing now,
-- disabled), its deliveries pending (due, scheduled, parked, the age of
-- the oldest one not parked), and its attempts of the last minute (all,
-- and those without a 2xx). A delivery and an attempt count for their
-- endpoint's tenant. Cheap however long the history: it reads the
-- endpoints, the pending deliveries (their partial index) and the last
-- minute of attempts. Scoped like the other views.
CREATE VIEW webhook.queue_status_by_tenant AS
SELECT s.tenant,
       sum(s.endpoints)::bigint AS endpoints,
       sum(s.failing_endpoints)::bigint AS failing_endpoints,
       sum(s.disabled_endpoints)::bigint AS disabled_endpoints,
       sum(s.pending_due)::bigint AS pending_due,
       sum(s.pending_scheduled)::bigint AS pending_scheduled,
       sum(s.pending_parked)::bigint AS pending_parked,
       sum(s.pending_in_order)::bigint AS pending_in_order,
       pg_catalog.now() - min(s.oldest_pending_at) AS oldest_pending_age,
       sum(s.attempts_last_minute)::bigint AS attempts_last_minute,
       sum(s.failed_last_minute)::bigint AS failed_last_minute
  FROM (SELECT ep.tenant,
               count(*) FILTER (WHERE ep.enabled) AS endpoints,
               count(*) FILTER (WHERE ep.enabled AND ep.failing_since IS NOT NULL) AS failing_endpoints,
               count(*) FILTER (WHERE NOT ep.enabled) AS disabled_endpoints,
               0 AS pending_due, 0 AS pending_scheduled, 0 AS pending_parked,
               0 AS pending_in_order, NULL::timestamptz AS oldest_pending_at,
               0 AS attempts_last_minute, 0 AS failed_last_minute
          FROM webhook.endpoints ep
         WHERE (SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
            OR ep.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true))
         GROUP BY ep.tenant
        UNION ALL
        SELECT d.tenant, 0, 0, 0,
               count(*) FILTER (WHERE d.next_attempt_at <= pg_catalog.now()),
               count(*) FILTER (WHERE d.next_attempt_at > pg_catalog.now()
                                  AND d.next_attempt_at < 'infinity'),
               count(*) FILTER (WHERE d.next_attempt_at = 'infinity'),
               count(*) FILTER (WHERE d.next_attempt_at IS NULL),
               min(d.created_at) FILTER (WHERE coalesce(d.next_attempt_at, '-infinity') < 'infinity'),
               0, 0
          FROM webhook.delivery_log d
         WHERE d.status = 'pending'
           AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                OR d.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))
         GROUP BY d.tenant
        UNION ALL
        SELECT t.tenant, 0, 0, 0, 0, 0, 0, 0, NULL,
               count(*),
               count(*) FILTER (WHERE t.status_code IS NULL OR t.status_code NOT BETWEEN 200 AND 299)
          FROM webhook.attempt_log t
         WHERE t.started_at >= pg_catalog.now() - interval '1 minute'
           AND ((SELECT coalesce(pg_catalog.current_setting('webhook.tenant', true), '') = '')
                OR t.tenant = (SELECT pg_catalog.current_setting('webhook.tenant', true)))
         GROUP BY t.tenant) s
 GROUP BY s.tenant;

-- ===========================================================================
-- END section: tenants
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: operational events (the extension's own events about endpoints and deliveries)
-- ===========================================================================

-- The extension records events of its own, named under the prefix
-- webhook., which is reserved for them:
--   webhook.endpoint.disabled  an endpoint was disabled: it answered 410
--                              Gone, failed for webhook.disable_after,
--                              expired, or was disabled by hand (not when
--                              it is deleted);
--   webhook.delivery.failed    a delivery ended failed: its retry schedule
--                              was exhausted (or a manual retry of it
--                              failed).
-- Each is recorded in the transaction that makes the change it reports,
-- with the tenant of the endpoint concerned, and is dispatched and
-- delivered like any other event, except to that endpoint. Payloads:
--   {"endpoint": {"id", "url" (its credentials masked), "description", "tenant"},
--    "reason": "gone" | "failing" | "expired" | "manual",
--    "detail": <disabled_reason>, "disabled_at": <UTC, ISO 8601>}
--   {"endpoint": {...},
--    "delivery": {"event_id", "event_type", "attempts", "last_status_code", "last_error"}}
-- never a secret or a header value. Only endpoints that name them receive
-- them (an entry 'webhook.*', 'webhook.endpoint.*' or the type itself): an
-- endpoint subscribed to every event does not (see filter_matches below).
-- No operational event reports the failure of a delivery of another one,
-- so that endpoints failing to receive them cannot feed each other events
-- without end.

-- The endpoint an operational event is about; NULL for every other event.
-- Dispatch (webhook.subscribed_endpoints) never sends the event there.
ALTER TABLE webhook.event_log ADD COLUMN about_endpoint uuid;

-- They ship with the extension, like the other built-in event types. (A
-- 0.1 installation where a user registered one of these names keeps the
-- row, with the shipped description.)
INSERT INTO webhook.event_types AS t (name, description) VALUES
    ('webhook.endpoint.disabled',
     'A webhook endpoint was disabled: it answered 410 Gone, kept failing, expired, or was disabled by hand'),
    ('webhook.delivery.failed',
     'A webhook delivery failed for good: its retry schedule was exhausted')
    ON CONFLICT ON CONSTRAINT event_types_pkey DO UPDATE SET description = excluded.description;

-- pg_dump keeps the event types users registered (names under webhook.
-- registered in 0.1 included); the shipped ones come back with CREATE
-- EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('webhook.event_types',
    $$WHERE name NOT IN ('journal_entry.created', 'journal_entry.posted',
        'journal_entry.reversed', 'account.created', 'account.updated',
        'period.closed', 'period.reopened',
        'webhook.endpoint.disabled', 'webhook.delivery.failed')$$);

-- register_event_type as in 0.1 (see there), refusing names under the
-- reserved prefix webhook.
CREATE OR REPLACE FUNCTION webhook.register_event_type(name text, description text DEFAULT NULL)
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
    IF starts_with(name, 'webhook.') THEN
        RAISE EXCEPTION 'event type name "%" is reserved', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Event types under webhook. are the operational events the extension records itself.',
                  HINT = 'The webhook. prefix is reserved: choose a name under another prefix.';
    END IF;
    INSERT INTO webhook.event_types AS t (name, description)
        VALUES (register_event_type.name, register_event_type.description)
        ON CONFLICT ON CONSTRAINT event_types_pkey DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event type "%" already exists', name
            USING ERRCODE = 'unique_violation';
    END IF;
END
$$;

-- Whether an endpoint's filter lets an event type through: as in 0.1, but
-- a filter of every event (NULL or '{}') lets no operational event
-- through; those go only to endpoints that name them, by name or by a
-- pattern. An endpoint created to receive the ledger's events does not
-- start receiving the extension's own on update. Dispatch and replay
-- route by it, once per event and endpoint: it is C (src/endpoints.c), as
-- a SQL function it could not be inlined and would be planned at every
-- dispatch pass.
CREATE OR REPLACE FUNCTION webhook.filter_matches(event_types text[], event_type text)
    RETURNS boolean
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'webhook_filter_matches';

-- Records an operational event of event_type about the endpoint endpoint_id
-- in the current transaction, as webhook.emit records an event: a new
-- UUIDv7, the transaction's id (dispatch finds it once it commits), the
-- endpoint's tenant. The payload is {"endpoint": {...}} and details' keys.
-- The endpoint's URL is the masked one (webhook.mask_url); its secret and
-- headers are never part of it. Wakes the worker at commit to dispatch it.
-- Returns the event's id (NULL if the endpoint does not exist).
CREATE FUNCTION webhook.record_operational_event(event_type text, endpoint_id uuid,
                                                 details jsonb)
RETURNS uuid
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT webhook.wake_worker();
    INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid, tenant,
                                   about_endpoint)
    SELECT webhook.uuid_v7(), record_operational_event.event_type,
           jsonb_build_object('endpoint', jsonb_build_object('id', ep.id,
                                                             'url', ep.masked_url,
                                                             'description', ep.description,
                                                             'tenant', ep.tenant))
               || record_operational_event.details,
           clock_timestamp(), pg_current_xact_id(), ep.tenant, ep.id
      FROM webhook.endpoints ep
     WHERE ep.id = record_operational_event.endpoint_id
    RETURNING id;
END;
REVOKE ALL ON FUNCTION webhook.record_operational_event(text, uuid, jsonb) FROM PUBLIC;

-- Records webhook.endpoint.disabled for an endpoint just disabled, for
-- reason 'gone', 'failing', 'expired' or 'manual'; its disabled_reason
-- and disabled_at (in UTC, as the timestamp of the events on the wire)
-- say the rest.
CREATE FUNCTION webhook.record_endpoint_disabled(endpoint_id uuid, reason text)
RETURNS uuid
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT webhook.record_operational_event(
               'webhook.endpoint.disabled', ep.id,
               jsonb_build_object('reason', record_endpoint_disabled.reason,
                                  'detail', ep.disabled_reason,
                                  'disabled_at', to_char(ep.disabled_at AT TIME ZONE 'UTC',
                                                         'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
      FROM webhook.endpoints ep
     WHERE ep.id = record_endpoint_disabled.endpoint_id;
END;
REVOKE ALL ON FUNCTION webhook.record_endpoint_disabled(uuid, text) FROM PUBLIC;

-- ===========================================================================
-- END section: operational events
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: first hour
-- ===========================================================================

-- What trips a newcomer in the first hour, caught where it is made: a
-- filter that can never match, an emit_trigger argument that fails only
-- when the ledger write fires it, a rotation the receiver cannot follow,
-- and a fixed URL whose deliveries still wait out their retry delays.

-- The Levenshtein distance between a and b (insertions, deletions and
-- substitutions of one character each), for suggesting the catalog entry
-- a mistyped name meant. fuzzystrmatch is not always installed; the
-- strings compared here are short event type names.
CREATE FUNCTION webhook.edit_distance(a text, b text) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_previous integer[];
    v_current  integer[];
    v_a        text[] := regexp_split_to_array(a, '');
    v_b        text[] := regexp_split_to_array(b, '');
    v_la       integer := coalesce(array_length(v_a, 1), 0);
    v_lb       integer := coalesce(array_length(v_b, 1), 0);
BEGIN
    v_previous := array(SELECT generate_series(0, v_lb));
    FOR i IN 1 .. v_la LOOP
        v_current := array[i];
        FOR j IN 1 .. v_lb LOOP
            v_current := v_current || least(v_previous[j + 1] + 1, v_current[j] + 1,
                                            v_previous[j] + CASE WHEN v_a[i] = v_b[j] THEN 0 ELSE 1 END);
        END LOOP;
        v_previous := v_current;
    END LOOP;
    RETURN v_previous[v_lb + 1];
END
$$;
REVOKE ALL ON FUNCTION webhook.edit_distance(text, text) FROM PUBLIC;

-- The catalog's prefix patterns ('account.*', 'webhook.endpoint.*', ...):
-- every proper dot-separated prefix of a catalog name, followed by '.*'.
CREATE FUNCTION webhook.catalog_prefixes() RETURNS SETOF text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT DISTINCT array_to_string(w.words[1:n], '.') || '.*'
      FROM (SELECT string_to_array(t.name, '.') AS words FROM webhook.event_types t) w,
           generate_series(1, cardinality(w.words) - 1) AS n;
END;
REVOKE ALL ON FUNCTION webhook.catalog_prefixes() FROM PUBLIC;

-- The catalog names and prefix patterns close to entry (a mistyped filter
-- entry or event type), nearest first, at most three, as '"a", "b"'; NULL
-- when none is close. Close: at most three edits away (one in four
-- characters of a short name), or a pattern that continues what was typed.
CREATE FUNCTION webhook.close_event_types(entry text) RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT string_agg(format('"%s"', c.candidate), ', ' ORDER BY c.distance, c.candidate COLLATE "C")
      FROM (SELECT y.candidate, y.distance
              FROM (SELECT x.candidate,
                           webhook.edit_distance(close_event_types.entry, x.candidate) AS distance
                      FROM (SELECT t.name AS candidate FROM webhook.event_types t
                            UNION
                            SELECT p FROM webhook.catalog_prefixes() AS p) x
                     WHERE x.candidate <> close_event_types.entry) y
             WHERE y.distance <= least(3, greatest(1, char_length(close_event_types.entry) / 4))
                OR (char_length(rtrim(close_event_types.entry, '.*')) >= 3
                    AND y.candidate LIKE '%.*'
                    AND starts_with(y.candidate, rtrim(close_event_types.entry, '.*')))
             ORDER BY y.distance, y.candidate COLLATE "C"
             LIMIT 3) c;
END;
REVOKE ALL ON FUNCTION webhook.close_event_types(text) FROM PUBLIC;

-- check_event_filter as in 0.1 (see there), stricter, so that a filter
-- that can never match is refused rather than taken and never served: a
-- 'prefix.*' pattern must match an event type of the catalog (register
-- the type first), and the error names the catalog's entries closest to
-- what was typed; '*' and a bare word (entries that look like "every
-- event" and "this prefix") are refused with a hint saying how to write
-- those.
CREATE OR REPLACE FUNCTION webhook.check_event_filter(event_types text[]) RETURNS text[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry   text;
    v_close text;
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
            IF NOT EXISTS (SELECT 1 FROM webhook.event_types t
                            WHERE starts_with(t.name, left(entry, -1))) THEN
                v_close := webhook.close_event_types(entry);
                RAISE EXCEPTION 'event type pattern "%" matches no event type in the catalog', entry
                    USING ERRCODE = 'undefined_object',
                          DETAIL = 'The catalog''s prefixes are: ' ||
                              (SELECT string_agg(p, ', ' ORDER BY p COLLATE "C")
                                 FROM webhook.catalog_prefixes() AS p) || '.',
                          HINT = CASE WHEN v_close IS NOT NULL
                                      THEN format('Perhaps you meant %s.', v_close)
                                      ELSE 'Register the event types first with webhook.register_event_type().' END;
            END IF;
            CONTINUE;
        END IF;
        IF strpos(entry, '*') > 0 OR entry ~ '^[a-z0-9_]+$' THEN
            RAISE EXCEPTION 'invalid event type filter entry "%"', entry
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'An entry is an event type name, such as "journal_entry.posted", or a prefix pattern, such as "journal_entry.*".',
                      HINT = format('Use NULL or ''{}'' for every event, and ''%s.*'' for a prefix.',
                                    CASE WHEN entry ~ '^[a-z0-9_]+$' THEN entry
                                         ELSE 'journal_entry' END);
        END IF;
        PERFORM webhook.check_event_type_name(entry);
        IF NOT EXISTS (SELECT 1 FROM webhook.event_types t WHERE t.name = entry) THEN
            v_close := webhook.close_event_types(entry);
            RAISE EXCEPTION 'event type "%" is not in the catalog', entry
                USING ERRCODE = 'undefined_object',
                      DETAIL = 'Known event types: ' ||
                          (SELECT string_agg(t.name, ', ' ORDER BY t.name COLLATE "C") FROM webhook.event_types t) || '.',
                      HINT = CASE WHEN v_close IS NOT NULL
                                  THEN format('Perhaps you meant %s.', v_close)
                                  ELSE 'Register it with webhook.register_event_type(), or use a pattern such as ''journal_entry.*''.' END;
        END IF;
    END LOOP;
    RETURN (SELECT array_agg(DISTINCT e ORDER BY e) FROM unnest(event_types) AS e);
END
$$;

-- Every trigger that uses webhook.emit_trigger() with arguments it would
-- refuse when it fires, one row per problem: no event type, an event type
-- that is malformed, reserved or not in the catalog, a statement-level
-- trigger, an argument other than 'tenant=<column>' and
-- 'ordering_key=<column>' (or one given twice), a column the table does
-- not have. No row: every such trigger is fine. emit_trigger (src/emit.c)
-- checks the same when the trigger first fires; this finds the mistakes
-- before a ledger write does. Run it after creating triggers (and in CI).
CREATE FUNCTION webhook.check_triggers()
RETURNS TABLE (table_name regclass, trigger_name name, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_trigger  record;
    v_args     text[];
    v_rest     bytea;
    v_end      integer;
    v_key      text;
    v_column   text;
    v_seen     text[];
    v_close    text;
BEGIN
    FOR v_trigger IN
        SELECT tg.tgrelid, tg.tgname, tg.tgtype, tg.tgnargs, tg.tgargs
          FROM pg_catalog.pg_trigger tg
         WHERE tg.tgfoid = 'webhook.emit_trigger()'::pg_catalog.regprocedure
         ORDER BY tg.tgrelid::regclass::text, tg.tgname
    LOOP
        table_name := v_trigger.tgrelid;
        trigger_name := v_trigger.tgname;
        -- tgargs holds each argument followed by a NUL byte.
        v_args := '{}';
        v_rest := v_trigger.tgargs;
        FOR i IN 1 .. v_trigger.tgnargs LOOP
            v_end := position('\x00'::bytea IN v_rest);
            v_args := v_args || convert_from(substring(v_rest FROM 1 FOR v_end - 1),
                                             current_setting('server_encoding'));
            v_rest := substring(v_rest FROM v_end + 1);
        END LOOP;

        IF v_trigger.tgtype & 1 = 0 THEN
            problem := 'the trigger is FOR EACH STATEMENT: webhook.emit_trigger() needs FOR EACH ROW';
            RETURN NEXT;
        END IF;
        IF cardinality(v_args) = 0 THEN
            problem := 'no event type: pass it as the first argument, as in webhook.emit_trigger(''account.created'')';
            RETURN NEXT;
            CONTINUE;
        END IF;

        problem := NULL;
        BEGIN
            PERFORM webhook.check_event_type_name(v_args[1]);
        EXCEPTION WHEN invalid_parameter_value THEN
            problem := format('invalid event type name "%s"', v_args[1]);
        END;
        IF problem IS NULL AND starts_with(v_args[1], 'webhook.') THEN
            problem := format('event type "%s" is reserved for the extension''s operational events',
                              v_args[1]);
        ELSIF problem IS NULL
              AND NOT EXISTS (SELECT 1 FROM webhook.event_types t WHERE t.name = v_args[1]) THEN
            v_close := webhook.close_event_types(v_args[1]);
            problem := format('event type "%s" is not in the catalog', v_args[1])
                       || coalesce(format(' (perhaps you meant %s)', v_close), '');
        END IF;
        IF problem IS NOT NULL THEN
            RETURN NEXT;
        END IF;

        v_seen := '{}';
        FOR i IN 2 .. cardinality(v_args) LOOP
            v_key := substring(v_args[i] FROM '^(tenant|ordering_key)=');
            v_column := substring(v_args[i] FROM '^(?:tenant|ordering_key)=(.*)$');
            IF v_key IS NULL THEN
                problem := format('invalid argument "%s": after the event type only ''tenant=<column>'' and ''ordering_key=<column>'' are taken',
                                  v_args[i]);
                RETURN NEXT;
            ELSIF v_key = ANY (v_seen) THEN
                problem := format('argument "%s" is given more than once', v_key);
                RETURN NEXT;
            ELSE
                v_seen := v_seen || v_key;
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = v_trigger.tgrelid AND a.attname = v_column
                                  AND a.attnum > 0 AND NOT a.attisdropped) THEN
                    problem := format('column "%s" of argument "%s" does not exist', v_column, v_args[i]);
                    RETURN NEXT;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION webhook.check_triggers() FROM PUBLIC;

-- rotate_secret gains an argument, secret: the new secret, supplied by the
-- caller (checked as create_webhook checks one) so that a receiver can be
-- given it before deliveries are signed with it; NULL generates one as
-- before. A new function, with the grants of the old one.
INSERT INTO webhook.upgrade_saved_acl
    SELECT 'rotate_secret', p.proacl FROM pg_catalog.pg_proc p
     WHERE p.oid = 'webhook.rotate_secret(uuid, interval)'::pg_catalog.regprocedure;
DROP FUNCTION webhook.rotate_secret(uuid, interval);

-- rotate_secret as in 0.1 (see there), seeing only the session tenant's
-- endpoints (as the tenants section's functions do), with the secret given
-- or generated.
CREATE FUNCTION webhook.rotate_secret(id uuid, grace interval DEFAULT '24 hours',
                                      secret text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_secret text := rotate_secret.secret;
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
    IF v_secret IS NULL THEN
        v_secret := webhook.generate_secret();
    ELSE
        PERFORM webhook.check_secret(v_secret);
    END IF;
    UPDATE webhook.endpoints e
       SET previous_secret = CASE WHEN grace > interval '0' THEN e.secret END,
           previous_secret_expires_at = CASE WHEN grace > interval '0' THEN now() + grace END,
           secret = v_secret,
           updated_at = now()
     WHERE e.id = rotate_secret.id AND webhook.in_tenant_scope(e.tenant);
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(rotate_secret.id);
    END IF;
    RETURN v_secret;
END
$$;
REVOKE ALL ON FUNCTION webhook.rotate_secret(uuid, interval, text) FROM PUBLIC;
SELECT webhook.upgrade_carry_grants(s.acl, 'webhook.rotate_secret(uuid, interval, text)')
  FROM webhook.upgrade_saved_acl s WHERE s.name = 'rotate_secret';

-- Makes an enabled endpoint's pending deliveries that wait for a later
-- retry due now, and wakes the worker: after its URL or headers were
-- fixed, the next try need not wait out a delay earned by the old ones.
-- Parked deliveries (a disabled endpoint's) and those due or in flight are
-- left alone. Returns how many it made due.
CREATE FUNCTION webhook.retry_now(endpoint_id uuid) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    UPDATE webhook.delivery_log d
       SET next_attempt_at = now()
      FROM webhook.endpoints e
     WHERE e.id = retry_now.endpoint_id AND e.enabled
       AND d.endpoint_id = e.id
       AND d.status = 'pending'
       AND d.next_attempt_at > now() AND d.next_attempt_at < 'infinity';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM webhook.wake_worker();
    END IF;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION webhook.retry_now(uuid) FROM PUBLIC;


-- A WARNING when a URL's host spells an address the SSRF guard refuses
-- (127.0.0.1, [::1], localhost, 10.0.0.5 ...), as now configured: the
-- endpoint is still registered (the guard may be opened later), but its
-- deliveries would all fail. create_webhook and update_webhook call it.
CREATE FUNCTION webhook.warn_blocked_url(url text) RETURNS void
    LANGUAGE c STRICT VOLATILE AS 'MODULE_PATHNAME', 'webhook_warn_blocked_url';
REVOKE ALL ON FUNCTION webhook.warn_blocked_url(text) FROM PUBLIC;

-- ===========================================================================
-- END section: first hour
-- ===========================================================================

-- ===========================================================================
-- Citus: every node delivers what is recorded on it
-- ===========================================================================
--
-- On a Citus cluster the coordinator owns the endpoints and event types;
-- each change to them is applied on every worker node in the same
-- distributed transaction (src/citus.c), so that the node where an event is
-- recorded (emit on the coordinator, a trigger on a shard, a distributed
-- function) can deliver it. Delivery state (deliveries, attempts, an
-- endpoint's failing_since) is each node's own; the cluster_* views below
-- show it from the coordinator. Without Citus the trigger does nothing.

CREATE FUNCTION webhook.propagate_catalog_change() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'webhook_propagate_catalog_change';
REVOKE ALL ON FUNCTION webhook.propagate_catalog_change() FROM PUBLIC;

CREATE TRIGGER endpoints_propagate
    AFTER INSERT OR UPDATE OR DELETE ON webhook.endpoints
    FOR EACH ROW EXECUTE FUNCTION webhook.propagate_catalog_change();
CREATE TRIGGER event_types_propagate
    AFTER INSERT OR UPDATE OR DELETE ON webhook.event_types
    FOR EACH ROW EXECUTE FUNCTION webhook.propagate_catalog_change();

-- What the coordinator sends to a worker node: apply a change of relation
-- ('endpoints' or 'event_types'; operation 'UPSERT' or 'DELETE', row the
-- coordinator's row) or replace the whole catalog ('catalog', 'REPLACE',
-- the coordinator's webhook.catalog_snapshot()). Superuser (the extension
-- owner) only: it writes endpoints with their secrets.
CREATE FUNCTION webhook.apply_catalog_change(relation text, operation text, row_data jsonb)
    RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'webhook_apply_catalog_change';
REVOKE ALL ON FUNCTION webhook.apply_catalog_change(text, text, jsonb) FROM PUBLIC;

-- The coordinator's catalog, as webhook.sync_catalog_to_nodes sends it.
CREATE FUNCTION webhook.catalog_snapshot() RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'event_types', (SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM webhook.event_types t),
        'endpoints', (SELECT coalesce(jsonb_agg(to_jsonb(e)), '[]') FROM webhook.endpoints e));
END;
REVOKE ALL ON FUNCTION webhook.catalog_snapshot() FROM PUBLIC;

-- Applies one change from the coordinator on this node (see
-- apply_catalog_change, which calls it). An endpoint's configuration,
-- enabled state included, becomes the coordinator's; its delivery state
-- stays this node's, and the pending deliveries follow as they do on the
-- coordinator: parked or resumed, due at once after a URL or header change,
-- released when ordering ends, cancelled when it is deleted.
CREATE FUNCTION webhook.apply_catalog_row(relation text, operation text, row_data jsonb)
    RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new webhook.endpoints;
    v_old webhook.endpoints;
BEGIN
    -- the coordinator's change, whatever tenant a propagated SET named
    PERFORM set_config('webhook.tenant', '', true);
    IF relation = 'catalog' AND operation = 'REPLACE' THEN
        DELETE FROM webhook.event_types t
         WHERE t.name NOT IN (SELECT x->>'name' FROM jsonb_array_elements(row_data->'event_types') x);
        PERFORM webhook.apply_catalog_row('event_types', 'UPSERT', x)
           FROM jsonb_array_elements(row_data->'event_types') x;
        PERFORM webhook.delete_webhook(e.id)
           FROM webhook.endpoints e
          WHERE e.id NOT IN (SELECT (x->>'id')::uuid FROM jsonb_array_elements(row_data->'endpoints') x);
        PERFORM webhook.apply_catalog_row('endpoints', 'UPSERT', x)
           FROM jsonb_array_elements(row_data->'endpoints') x;
        RETURN;
    ELSIF relation = 'event_types' AND operation = 'DELETE' THEN
        DELETE FROM webhook.event_types t WHERE t.name = row_data->>'name';
        RETURN;
    ELSIF relation = 'event_types' AND operation = 'UPSERT' THEN
        INSERT INTO webhook.event_types (name, description)
        VALUES (row_data->>'name', row_data->>'description')
        ON CONFLICT (name) DO UPDATE SET description = excluded.description;
        RETURN;
    ELSIF relation = 'endpoints' AND operation = 'DELETE' THEN
        PERFORM webhook.delete_webhook((row_data->>'id')::uuid);
        RETURN;
    ELSIF relation IS DISTINCT FROM 'endpoints' OR operation IS DISTINCT FROM 'UPSERT' THEN
        RAISE EXCEPTION 'unknown catalog change "% %"', operation, relation
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_new := jsonb_populate_record(NULL::webhook.endpoints, row_data);
    SELECT * INTO v_old FROM webhook.endpoints e WHERE e.id = v_new.id FOR UPDATE;
    INSERT INTO webhook.endpoints AS e
           (id, url, event_types, secret, previous_secret, previous_secret_expires_at,
            description, headers, enabled, disabled_at, disabled_reason,
            created_at, updated_at, tenant, expires_at, ordered, rate_limit)
    VALUES (v_new.id, v_new.url, v_new.event_types, v_new.secret, v_new.previous_secret,
            v_new.previous_secret_expires_at, v_new.description, v_new.headers,
            v_new.enabled, v_new.disabled_at, v_new.disabled_reason,
            v_new.created_at, v_new.updated_at, v_new.tenant, v_new.expires_at,
            v_new.ordered, v_new.rate_limit)
    ON CONFLICT (id) DO UPDATE SET
        url = excluded.url, event_types = excluded.event_types, secret = excluded.secret,
        previous_secret = excluded.previous_secret,
        previous_secret_expires_at = excluded.previous_secret_expires_at,
        description = excluded.description, headers = excluded.headers,
        enabled = excluded.enabled, disabled_at = excluded.disabled_at,
        disabled_reason = excluded.disabled_reason,
        -- enabled again here: its failures here are forgiven, as by update_webhook
        failing_since = CASE WHEN excluded.enabled AND NOT e.enabled THEN NULL
                             ELSE e.failing_since END,
        last_failure_at = CASE WHEN excluded.enabled AND NOT e.enabled THEN NULL
                               ELSE e.last_failure_at END,
        updated_at = excluded.updated_at, tenant = excluded.tenant,
        expires_at = excluded.expires_at, ordered = excluded.ordered,
        rate_limit = excluded.rate_limit;
    IF v_old.id IS NULL THEN
        RETURN;
    END IF;
    IF v_old.ordered AND NOT v_new.ordered THEN
        PERFORM webhook.release_waiting(v_new.id);
    END IF;
    IF v_old.enabled IS DISTINCT FROM v_new.enabled THEN
        PERFORM webhook.park_pending(v_new.id, NOT v_new.enabled);
    END IF;
    IF v_old.url IS DISTINCT FROM v_new.url OR v_old.headers IS DISTINCT FROM v_new.headers THEN
        PERFORM webhook.retry_now(v_new.id);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION webhook.apply_catalog_row(text, text, jsonb) FROM PUBLIC;

-- Makes every worker node's catalog the coordinator's: after adding a node
-- (citus_add_node creates the extension there, not its rows), or to repair
-- one. Returns the number of worker nodes.
CREATE FUNCTION webhook.sync_catalog_to_nodes() RETURNS integer
    LANGUAGE c AS 'MODULE_PATHNAME', 'webhook_sync_catalog_to_nodes';
REVOKE ALL ON FUNCTION webhook.sync_catalog_to_nodes() FROM PUBLIC;

-- One of the history or operator views of this node, as JSON, in the scope
-- of tenant (NULL: every tenant); what cluster_rows asks each node for.
CREATE FUNCTION webhook.node_rows(relation text, tenant text) RETURNS json
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows json;
BEGIN
    IF relation IS NULL THEN
        RAISE EXCEPTION 'relation must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF relation NOT IN ('events', 'deliveries', 'attempts', 'queue_status', 'endpoint_health') THEN
        RAISE EXCEPTION 'relation "%" is not a webhook history or operator view', relation
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('webhook.tenant', coalesce(tenant, ''), true);
    EXECUTE format('SELECT coalesce(json_agg(r), ''[]'') FROM webhook.%I r', relation)
       INTO v_rows;
    RETURN v_rows;
END
$$;
REVOKE ALL ON FUNCTION webhook.node_rows(text, text) FROM PUBLIC;

-- A view of every node of the Citus cluster, read on each node with the
-- caller's rights and tenant scope (Citus's run_command_on_all_nodes):
-- one row per node, node being its name:port (or 'coordinator' when the
-- coordinator is not in Citus's node list). A node that cannot be read
-- fails the query: a partial history would look complete.
CREATE FUNCTION webhook.cluster_rows(relation text) RETURNS TABLE (node text, rows json)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result record;
BEGIN
    IF pg_catalog.to_regprocedure('pg_catalog.run_command_on_all_nodes(text, boolean, boolean)') IS NULL THEN
        RAISE EXCEPTION 'the webhook cluster views need the citus extension'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'On a single server, read the views without "cluster_".';
    END IF;
    FOR v_result IN EXECUTE
        'SELECT r.success, r.result, n.nodename, n.nodeport
           FROM pg_catalog.run_command_on_all_nodes($1) r
           LEFT JOIN pg_catalog.pg_dist_node n ON n.nodeid = r.nodeid
          ORDER BY r.nodeid'
        USING format('SELECT webhook.node_rows(%L, %L)', relation,
                     nullif(current_setting('webhook.tenant', true), ''))
    LOOP
        node := coalesce(v_result.nodename || ':' || v_result.nodeport, 'coordinator');
        IF NOT v_result.success THEN
            RAISE EXCEPTION 'could not read webhook.% on node "%"', relation, node
                USING ERRCODE = 'connection_failure', DETAIL = v_result.result;
        END IF;
        rows := v_result.result::json;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION webhook.cluster_rows(text) FROM PUBLIC;

CREATE VIEW webhook.cluster_events AS
    SELECT c.node, r.* FROM webhook.cluster_rows('events') c,
           json_populate_recordset(NULL::webhook.events, c.rows) r;
CREATE VIEW webhook.cluster_deliveries AS
    SELECT c.node, r.* FROM webhook.cluster_rows('deliveries') c,
           json_populate_recordset(NULL::webhook.deliveries, c.rows) r;
CREATE VIEW webhook.cluster_attempts AS
    SELECT c.node, r.* FROM webhook.cluster_rows('attempts') c,
           json_populate_recordset(NULL::webhook.attempts, c.rows) r;
CREATE VIEW webhook.cluster_queue_status AS
    SELECT c.node, r.* FROM webhook.cluster_rows('queue_status') c,
           json_populate_recordset(NULL::webhook.queue_status, c.rows) r;
CREATE VIEW webhook.cluster_endpoint_health AS
    SELECT c.node, r.* FROM webhook.cluster_rows('endpoint_health') c,
           json_populate_recordset(NULL::webhook.endpoint_health, c.rows) r;

-- ===========================================================================
-- END section: Citus
-- ===========================================================================

-- ---------------------------------------------------------------------------
-- The upgrade's own helpers go.
--
-- Nothing is granted to PUBLIC: each function this script creates is
-- revoked from PUBLIC where it is created (new tables grant nothing). No
-- blanket "REVOKE ... ON ALL ... IN SCHEMA": inside an extension script it
-- would record every object's current ACL, users' own grants included, as
-- the extension's initial privileges, and pg_dump would stop dumping them.
-- ---------------------------------------------------------------------------

DROP TABLE webhook.upgrade_saved_acl;
DROP FUNCTION webhook.upgrade_carry_grants(aclitem[], regprocedure);
