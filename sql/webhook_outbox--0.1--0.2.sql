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

-- ===========================================================================
-- END section: events
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: dispatch
-- ===========================================================================

-- ===========================================================================
-- END section: dispatch
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: deliveries
-- ===========================================================================

-- ===========================================================================
-- END section: deliveries
-- ===========================================================================

-- ===========================================================================
-- BEGIN section: masking (URLs and headers as listed)
-- ===========================================================================

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
