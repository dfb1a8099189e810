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
        SELECT e.id, e.event_type
          FROM webhook.event_log e
         WHERE e.txid <> '3'
           AND NOT EXISTS (SELECT 1 FROM origin o
                            WHERE webhook.cursor_dispatched(e.txid, e.id, o.snapshot, o.target,
                                                            o.after_txid, o.after_id))
    ), queued AS (
        INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
        SELECT u.id, ep.id, u.event_type, now()
          FROM undispatched u
          JOIN webhook.endpoints ep
            ON ep.enabled AND webhook.filter_matches(ep.event_types, u.event_type)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO v_queued FROM queued;

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
BEGIN
    IF EXISTS (SELECT 1 FROM webhook.dispatch_cursor c
                WHERE NOT webhook.cursor_is_local(c.system_identifier, c.database_oid)) THEN
        deliveries := webhook.rebase_restored_outbox();
        events := 0;
        RETURN;
    END IF;

    -- NOWAIT: the worker never waits on a lock (only the owner could hold
    -- this one); a failed pass is tried again.
    SELECT c.* INTO v_cursor FROM webhook.dispatch_cursor c FOR UPDATE NOWAIT;
    IF NOT FOUND THEN
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
        SELECT f.id, f.event_type, f.txid
          FROM (SELECT e.id, e.event_type, e.txid
                  FROM (SELECT x.t FROM pg_snapshot_xip(v_cursor.snapshot) AS x(t)
                         WHERE x.t >= v_cursor.after_txid ORDER BY x.t) x
                 CROSS JOIN LATERAL (
                        SELECT e.id, e.event_type, e.txid
                          FROM webhook.event_log e
                         WHERE e.txid = x.t
                           AND (e.txid, e.id) > (v_cursor.after_txid, v_cursor.after_id)
                           AND pg_visible_in_snapshot(e.txid, v_cursor.target)
                         ORDER BY e.txid, e.id
                         LIMIT max_events) e
                UNION ALL
                (SELECT e.id, e.event_type, e.txid
                   FROM webhook.event_log e
                  WHERE e.txid >= pg_snapshot_xmax(v_cursor.snapshot)
                    AND e.txid < pg_snapshot_xmax(v_cursor.target)
                    AND (e.txid, e.id) > (v_cursor.after_txid, v_cursor.after_id)
                    AND pg_visible_in_snapshot(e.txid, v_cursor.target)
                  ORDER BY e.txid, e.id
                  LIMIT max_events)) f
         ORDER BY f.txid, f.id
         LIMIT max_events
    ), queued AS (
        INSERT INTO webhook.delivery_log (event_id, endpoint_id, event_type, next_attempt_at)
        SELECT f.id, ep.id, f.event_type, now()
          FROM fresh f
          JOIN webhook.endpoints ep
            ON ep.enabled AND webhook.filter_matches(ep.event_types, f.event_type)
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), last AS (
        SELECT f.txid, f.id FROM fresh f ORDER BY f.txid DESC, f.id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM fresh), (SELECT count(*) FROM queued),
           (SELECT l.txid FROM last l), (SELECT l.id FROM last l)
      INTO events, deliveries, v_last_txid, v_last_id;

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
REVOKE ALL ON FUNCTION webhook.dispatch_new_events(integer) FROM PUBLIC;

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

DROP FUNCTION webhook.due_deliveries(uuid[], uuid[], integer, integer, uuid[], timestamptz[], uuid[]);
CREATE FUNCTION webhook.due_deliveries(busy_events uuid[], busy_endpoints uuid[],
                                       per_endpoint integer, max_rows integer,
                                       after_endpoints uuid[], after_at timestamptz[],
                                       after_events uuid[])
RETURNS TABLE (event_id uuid, endpoint_id uuid, attempts integer, manual boolean,
               event_type text, payload text, created_at timestamptz, url text,
               secret text, previous_secret text, headers jsonb,
               next_attempt_at timestamptz, manual_requests integer)
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
           q.url, q.secret, q.previous_secret, q.headers, q.next_attempt_at,
           q.manual_requests
      FROM (SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                   d.next_attempt_at, d.manual_requests, ep.url, ep.secret,
                   CASE WHEN ep.previous_secret_expires_at > now()
                        THEN ep.previous_secret END AS previous_secret,
                   ep.headers
              FROM webhook.endpoints ep
              LEFT JOIN load l ON l.endpoint_id = ep.id
              LEFT JOIN position p ON p.endpoint_id = ep.id
             CROSS JOIN LATERAL (
                    SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_manual,
                           d.next_attempt_at, d.manual_requests
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
                       -- Never a delivery without its event (the foreign key
                       -- makes one impossible): it would take the endpoint's
                       -- slot and then be dropped by the join below.
                       AND EXISTS (SELECT 1 FROM webhook.event_log e WHERE e.id = d.event_id)
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
REVOKE ALL ON FUNCTION webhook.due_deliveries(uuid[], uuid[], integer, integer, uuid[], timestamptz[], uuid[]) FROM PUBLIC;

-- Records a batch of attempts: history rows (unless history is false: the
-- worker's last resort for an outcome whose history row cannot be
-- written), delivery state, endpoint health (410 and webhook.disable_after
-- disable an endpoint and park its pending deliveries). outcome is
-- 'succeeded', 'retry', 'failed' or 'gone'.
--
-- The worker never waits on a lock a user can hold: a delivery whose row
-- another transaction has locked (an operator's retry_delivery,
-- delete_webhook or update_webhook still open) is not recorded now but
-- returned, and the worker records it at a later pass; an endpoint row
-- locked by an operator (update_webhook, rotate_secret) keeps its health
-- as it was, and is judged again at its next outcome.
DROP FUNCTION webhook.record_attempts(uuid[], uuid[], integer[], timestamptz[],
    double precision[], integer[], text[], text[], boolean[], text[], timestamptz[], interval);
CREATE FUNCTION webhook.record_attempts(
    event_ids uuid[], endpoint_ids uuid[], attempt_numbers integer[],
    started timestamptz[], durations double precision[], status_codes integer[],
    errors text[], bodies text[], manuals boolean[], outcomes text[],
    next_attempts timestamptz[], requests integer[], disable_after interval,
    history boolean DEFAULT true)
RETURNS TABLE (event_id uuid, endpoint_id uuid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_disabled        uuid[];
    v_later_events    uuid[];
    v_later_endpoints uuid[];
BEGIN
    WITH outcome_batch AS MATERIALIZED (
        SELECT * FROM unnest(event_ids, endpoint_ids, attempt_numbers, started, durations,
                             status_codes, errors, bodies, manuals, outcomes, next_attempts,
                             requests)
            AS o(event_id, endpoint_id, attempt, started_at, duration_ms, status_code,
                 error, response_body, manual, outcome, next_attempt_at, manual_requests)
    ), locked AS MATERIALIZED (
        SELECT d.event_id, d.endpoint_id, d.status, d.manual_requests
          FROM outcome_batch o
          JOIN webhook.delivery_log d
            ON d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id
           FOR NO KEY UPDATE OF d SKIP LOCKED
    ), recorded AS MATERIALIZED (
        SELECT o.*, l.status AS was_status,
               l.manual_requests > o.manual_requests AS asked_again
          FROM outcome_batch o
          JOIN locked l ON l.event_id = o.event_id AND l.endpoint_id = o.endpoint_id
    ), attempts AS (
        INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at,
                                         duration_ms, status_code, error, response_body, manual)
        SELECT r.event_id, r.endpoint_id, r.attempt, r.started_at, r.duration_ms,
               r.status_code, r.error, r.response_body, r.manual
          FROM recorded r
         WHERE history
    ), deliveries AS (
        -- A manual request that came during the attempt stands: the
        -- delivery stays as retry_delivery left it (pending, due, manual).
        UPDATE webhook.delivery_log d
           SET status = CASE WHEN r.asked_again THEN 'pending'
                             WHEN r.outcome = 'succeeded' THEN 'succeeded'
                             WHEN r.outcome = 'retry' THEN 'pending'
                             ELSE 'failed' END,
               attempts = greatest(d.attempts, r.attempt),
               last_status_code = r.status_code,
               last_error = r.error,
               next_attempt_at = CASE WHEN r.asked_again THEN d.next_attempt_at
                                      WHEN r.outcome = 'retry' THEN r.next_attempt_at END,
               next_attempt_manual = r.asked_again AND d.next_attempt_manual,
               succeeded_at = CASE WHEN r.outcome = 'succeeded' THEN r.started_at
                                   ELSE d.succeeded_at END
          FROM recorded r
         WHERE d.event_id = r.event_id AND d.endpoint_id = r.endpoint_id
           AND r.was_status NOT IN ('succeeded', 'failed', 'cancelled')
    ), per_endpoint AS (
        SELECT r.endpoint_id,
               bool_or(r.outcome = 'succeeded') AS succeeded,
               bool_or(r.outcome = 'gone') AS gone,
               min(r.started_at) AS first_failure,
               max(r.started_at) AS last_failure
          FROM recorded r GROUP BY r.endpoint_id
    ), endpoint_rows AS MATERIALIZED (
        SELECT ep.id, ep.enabled, ep.failing_since, ep.last_failure_at
          FROM webhook.endpoints ep
         WHERE ep.id IN (SELECT p.endpoint_id FROM per_endpoint p)
           FOR NO KEY UPDATE SKIP LOCKED
    ), judged AS (
        SELECT p.*, ep.failing_since AS was_failing_since,
               ep.last_failure_at AS was_last_failure_at,
               CASE WHEN p.succeeded THEN NULL
                    ELSE coalesce(ep.failing_since, p.first_failure) END AS failing_since,
               CASE WHEN p.succeeded THEN NULL
                    ELSE greatest(ep.last_failure_at, p.last_failure) END AS last_failure_at,
               ep.enabled AND (p.gone OR (NOT p.succeeded AND
                   coalesce(ep.failing_since, p.first_failure) < now() - disable_after)) AS disable
          FROM per_endpoint p JOIN endpoint_rows ep ON ep.id = p.endpoint_id
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
    ), later AS (
        -- Locked by another transaction (not merely gone with its event).
        SELECT o.event_id, o.endpoint_id
          FROM outcome_batch o
         WHERE NOT EXISTS (SELECT 1 FROM locked l
                            WHERE l.event_id = o.event_id AND l.endpoint_id = o.endpoint_id)
           AND EXISTS (SELECT 1 FROM webhook.delivery_log d
                        WHERE d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id)
    )
    SELECT (SELECT array_agg(c.id) FILTER (WHERE c.disable) FROM changed c),
           (SELECT array_agg(l.event_id ORDER BY l.event_id, l.endpoint_id) FROM later l),
           (SELECT array_agg(l.endpoint_id ORDER BY l.event_id, l.endpoint_id) FROM later l)
      INTO v_disabled, v_later_events, v_later_endpoints;

    -- Park the pending deliveries of the endpoints just disabled: a statement
    -- of its own, run only when there are some (joined to the one above, it
    -- let the planner read the whole backlog whenever the partial index's
    -- statistics said it was empty). Rows an operator holds stay due; the
    -- worker does not fetch a disabled endpoint's deliveries anyway.
    IF v_disabled IS NOT NULL THEN
        UPDATE webhook.delivery_log d
           SET next_attempt_at = 'infinity'
         WHERE (d.event_id, d.endpoint_id) IN (
                SELECT p.event_id, p.endpoint_id FROM webhook.delivery_log p
                 WHERE p.endpoint_id = ANY (v_disabled) AND p.status = 'pending'
                   FOR NO KEY UPDATE SKIP LOCKED);
    END IF;

    RETURN QUERY SELECT * FROM unnest(v_later_events, v_later_endpoints);
END
$$;
REVOKE ALL ON FUNCTION webhook.record_attempts(uuid[], uuid[], integer[], timestamptz[],
    double precision[], integer[], text[], text[], boolean[], text[], timestamptz[],
    integer[], interval, boolean) FROM PUBLIC;

-- Removes history older than retention, at most batch events at a time
-- (their deliveries go with them, by the foreign key; attempts here), so
-- no lock is held for long. Events with a pending delivery are kept
-- whatever their age, and so are events another transaction holds (a
-- retry_delivery or replay under way): the worker never waits for them.
CREATE OR REPLACE FUNCTION webhook.remove_old_history(retention interval, batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_removed bigint;
BEGIN
    WITH old AS MATERIALIZED (
        SELECT e.id FROM webhook.event_log e
         WHERE e.created_at < now() - retention
           AND NOT EXISTS (SELECT 1 FROM webhook.delivery_log d
                            WHERE d.event_id = e.id
                              -- not "= 'pending'": see record_attempts
                              AND d.status NOT IN ('succeeded', 'failed', 'cancelled'))
         ORDER BY e.created_at
         LIMIT batch
           FOR UPDATE SKIP LOCKED
    ), attempts AS (
        DELETE FROM webhook.attempt_log a USING old WHERE a.event_id = old.id
    )
    DELETE FROM webhook.event_log e USING old WHERE e.id = old.id;
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END
$$;

-- Sending again by hand acts on dispatched events only, and holds the
-- event (FOR KEY SHARE) so that retention cannot remove it meanwhile.
CREATE OR REPLACE FUNCTION webhook.retry_delivery(event_id uuid, endpoint_id uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_enabled    boolean;
    v_event_type text;
    v_txid       xid8;
BEGIN
    IF event_id IS NULL OR endpoint_id IS NULL THEN
        RAISE EXCEPTION 'event id and endpoint id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT e.enabled INTO v_enabled FROM webhook.endpoints e WHERE e.id = retry_delivery.endpoint_id;
    IF NOT FOUND THEN
        PERFORM webhook.endpoint_not_found(retry_delivery.endpoint_id);
    END IF;
    SELECT ev.event_type, ev.txid INTO v_event_type, v_txid
      FROM webhook.event_log ev WHERE ev.id = retry_delivery.event_id
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event "%" does not exist', retry_delivery.event_id
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT webhook.event_dispatched(v_txid, retry_delivery.event_id) THEN
        RAISE EXCEPTION 'event "%" has not been dispatched yet', retry_delivery.event_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The worker dispatches it to its subscribed endpoints within moments; retry after that.';
    END IF;
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual,
            manual_requests)
    VALUES (retry_delivery.event_id, retry_delivery.endpoint_id, v_event_type, 'pending',
            CASE WHEN v_enabled THEN now() ELSE 'infinity' END, true, 1)
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = excluded.next_attempt_at,
           next_attempt_manual = true,
           manual_requests = d.manual_requests + 1;
    PERFORM webhook.wake_worker();
END
$$;

-- As in 0.1 (see there), for dispatched events only: an event not yet
-- dispatched is dispatched to this endpoint anyway if it subscribes.
CREATE OR REPLACE FUNCTION webhook.replay(endpoint_id uuid, since timestamptz, until timestamptz DEFAULT now())
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
    WITH chosen AS MATERIALIZED (
        SELECT ev.id, ev.event_type
          FROM webhook.event_log ev
         WHERE ev.created_at >= replay.since AND ev.created_at < replay.until
           AND webhook.filter_matches(v_filter, ev.event_type)
           AND webhook.event_dispatched(ev.txid, ev.id)
           FOR KEY SHARE
    )
    INSERT INTO webhook.delivery_log AS d
           (event_id, endpoint_id, event_type, status, next_attempt_at, next_attempt_manual,
            manual_requests)
    SELECT c.id, replay.endpoint_id, c.event_type, 'pending',
           CASE WHEN v_enabled THEN now() ELSE 'infinity' END, true, 1
      FROM chosen c
    ON CONFLICT ON CONSTRAINT delivery_log_pkey DO UPDATE
       SET status = 'pending',
           next_attempt_at = excluded.next_attempt_at,
           next_attempt_manual = true,
           manual_requests = d.manual_requests + 1
     WHERE d.status IN ('failed', 'cancelled');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM webhook.wake_worker();
    RETURN v_count;
END
$$;

-- queue_status as in 0.1 (see there), reading this database's cursor only.
-- Like every view here it calls only functions any reader may call.
CREATE OR REPLACE VIEW webhook.queue_status AS
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
              WHERE t.started_at >= pg_catalog.now() - interval '1 minute') a
  LEFT JOIN (SELECT s.pid, s.query FROM pg_catalog.pg_stat_activity s
              WHERE s.backend_type = 'webhook_outbox worker'
                AND s.datname = pg_catalog.current_database()
              LIMIT 1) w ON true;

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

-- endpoint_health as in 0.1, but its url masked.
CREATE OR REPLACE VIEW webhook.endpoint_health AS
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
SELECT ep.id, ep.masked_url AS url, ep.description, ep.enabled, ep.disabled_at,
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


-- update_webhook as in 0.1 (see there), checking the headers again once the
-- values passed back masked are replaced by the stored ones: the limits
-- on headers hold for what is stored, not just for what was passed.
CREATE OR REPLACE FUNCTION webhook.update_webhook(
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
        -- The merged headers as they will be stored: within the limits too.
        PERFORM webhook.check_headers(v_headers);
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
-- ===========================================================================
-- END section: masking
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
